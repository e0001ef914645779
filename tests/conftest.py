"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os
import tempfile

# Backend optimization level 0: XLA's CPU compile (LLVM) dominates these tiny programs' time,
# and speed is measured by benchmarks, never by tests; the HLO, and so what is computed, is the
# same. Subprocesses (CLI, multi-host tests) inherit it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The inference commands keep a persistent compilation cache under $XDG_CACHE_HOME/meshlm;
# tests (and the commands they run as subprocesses) keep theirs in a temporary directory, not
# in the user's home.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="meshlm-test-cache-")
