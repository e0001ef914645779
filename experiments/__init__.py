"""Experiment definitions: flag files, and the scripts of multi-run studies."""
