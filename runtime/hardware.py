"""Facts about the chips meshlm runs on, one row a chip: dense peak FLOP/s per dtype, memory
bandwidth and memory size (vendor datasheets, no sparsity). Training MFU, the inference roofline
and train.plan all read this one table.

A CPU has no datasheet: its FLOP/s peak is a nominal figure per core (two 256-bit fp32 FMA pipes
at ~3 GHz), which makes CPU MFU comparable between runs on one machine, not with accelerators;
its memory bandwidth is measured once per process (a sum over 256 MiB)."""

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp

GIB = 2.0**30
CPU_PEAK_FLOPS_PER_CORE = 1e11
CPU_FLOPS_SOURCE = "nominal: 1e11 FLOP/s per core"


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # as in --topology: h100, v5p
    platform: str  # jax's platform name: gpu | tpu
    kinds: tuple[str, ...]  # substrings of jax's device_kind that mean this chip
    flops: dict[str, float]  # dense peak FLOP/s of one device, per compute dtype
    bandwidth: float  # memory bytes/s of one device
    memory_gib: float  # memory of one device
    cores_per_device: int = 1  # v4 / v5p slice names count TensorCores: two per chip (one device)

    def peak_flops(self, dtype: str = "bfloat16") -> float:
        """Peak of `dtype` math; MFU against the bf16 peak is the convention of PaLM / MaxText /
        nanoGPT, so bf16 is the default and an fp32 run reads as a low MFU on purpose."""
        return self.flops.get(dtype, self.flops["bfloat16"])


def _gpu(name, kinds, bf16, fp32, int8, bandwidth, memory_gib):
    return Chip(name, "gpu", kinds, {"bfloat16": bf16, "float32": fp32, "int8": int8},
                bandwidth, memory_gib)


def _tpu(name, kinds, bf16, int8, bandwidth, memory_gib, cores=1):
    return Chip(name, "tpu", kinds, {"bfloat16": bf16, "int8": int8}, bandwidth, memory_gib,
                cores)


# Ordered: a device_kind is matched against the rows top down (v5p before v5e's "TPU v5").
CHIPS = {chip.name: chip for chip in (
    _gpu("h200", ("H200",), 989e12, 67e12, 1979e12, 4.8e12, 141),
    _gpu("h100", ("H100",), 989e12, 67e12, 1979e12, 3.35e12, 80),
    _gpu("a100", ("A100",), 312e12, 19.5e12, 624e12, 2.0e12, 80),
    _gpu("l4", ("L4",), 121e12, 30.3e12, 242e12, 3.0e11, 24),
    _gpu("a10", ("A10",), 125e12, 31.2e12, 250e12, 6.0e11, 24),
    _gpu("v100", ("V100",), 125e12, 15.7e12, 62e12, 9.0e11, 32),  # fp16 tensor cores, no bf16
    _tpu("v6e", ("TPU v6",), 918e12, 1836e12, 1.64e12, 32),
    _tpu("v5p", ("TPU v5p",), 459e12, 918e12, 2.76e12, 95, cores=2),
    _tpu("v5e", ("TPU v5 lite", "TPU v5e", "TPU v5"), 197e12, 394e12, 8.2e11, 16),
    _tpu("v4", ("TPU v4",), 275e12, 275e12, 1.2e12, 32, cores=2),
)}


def chip_of(device) -> Chip | None:
    """The table's row for a jax device; None for a CPU or a chip the table does not know."""
    kind = device.device_kind.lower()
    for chip in CHIPS.values():
        if any(k.lower() in kind for k in chip.kinds):
            return chip
    return None


def peak_flops(devices: list | None = None, dtype: str = "bfloat16") -> float:
    """Peak FLOP/s of all `devices` together (default: every device of this process's run);
    NaN for an accelerator the table does not know."""
    devices = devices or jax.devices()
    if devices[0].platform == "cpu":
        # The host's cores are shared by however many (fake) devices it is split into.
        return CPU_PEAK_FLOPS_PER_CORE * (os.cpu_count() or 1)
    chip = chip_of(devices[0])
    return chip.peak_flops(dtype) * len(devices) if chip else float("nan")


@functools.cache
def measured_cpu_bandwidth() -> float:
    """Bytes/s of summing 256 MiB of float32 on this host, best of five runs."""
    big = jnp.ones((64 * 2**20,), jnp.float32)
    total = jax.jit(jnp.sum)
    jax.block_until_ready(total(big))
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(total(big))
        best = min(best, time.perf_counter() - t0)
    return big.nbytes / best


def host_memory_bytes() -> float:
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
