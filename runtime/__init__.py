"""The floor below every package: user errors and the command runner, hardware facts per chip, run
provenance, and atomic file writes. It imports nothing of meshlm; everything may import it."""
