"""Test setup: 8 fake CPU devices, set before JAX is imported anywhere."""

import os

# Backend optimization level 0: XLA's CPU compile (LLVM) dominates these tiny programs' time,
# and speed is measured by benchmarks, never by tests; the HLO, and so what is computed, is the
# same. Subprocesses (CLI, multi-host tests) inherit it.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
