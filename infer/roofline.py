"""The roofline of the device and the work of each inference component on it.

A component that does F FLOPs and moves B bytes cannot run faster than max(F / peak FLOP/s,
B / bandwidth): below the ridge intensity (peak / bandwidth, FLOPs per byte) it is memory-bound,
above it compute-bound. Accelerators take their peaks from datasheets; a CPU has no datasheet
figure worth the name, so its peaks are measured here (a large matmul and a large reduction).
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp

from model.config import ModelConfig
from train.metrics import peak_flops

# HBM bandwidth in bytes/s (vendor datasheets), matched as substrings of jax's device_kind.
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12, "A100": 2.0e12, "L4": 3.0e11, "A10": 6.0e11,
             "V100": 9.0e11, "TPU v6": 1.64e12, "TPU v5p": 2.76e12, "TPU v5 lite": 8.2e11,
             "TPU v5e": 8.2e11, "TPU v4": 1.2e12}


@dataclasses.dataclass(frozen=True)
class Peaks:
    flops: float  # FLOP/s of one device
    bandwidth: float  # bytes/s of one device's memory
    flops_source: str
    bandwidth_source: str

    @property
    def ridge(self) -> float:
        """FLOPs per byte where memory-bound turns compute-bound."""
        return self.flops / self.bandwidth


@dataclasses.dataclass(frozen=True)
class Work:
    flops: float
    bytes: float

    @property
    def intensity(self) -> float:
        return self.flops / max(self.bytes, 1.0)

    def __add__(self, other: "Work") -> "Work":
        return Work(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, n: float) -> "Work":
        return Work(self.flops * n, self.bytes * n)

    def roofline_s(self, peaks: Peaks) -> float:
        return max(self.flops / peaks.flops, self.bytes / peaks.bandwidth)

    def bound(self, peaks: Peaks) -> str:
        return "compute" if self.intensity >= peaks.ridge else "memory"


def _best_time(fn, *args, repeats: int = 5) -> float:
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


@functools.cache
def measured_cpu_peaks(dtype: str) -> tuple[float, float]:
    """(FLOP/s of a 2048^3 matmul, bytes/s of summing 256 MiB) on this CPU, best of five."""
    n = 2048
    a = jnp.ones((n, n), dtype)
    flops = 2 * n ** 3 / _best_time(jax.jit(jnp.matmul), a, a)
    big = jnp.ones((64 * 2 ** 20,), jnp.float32)
    bandwidth = big.nbytes / _best_time(jax.jit(jnp.sum), big)
    return flops, bandwidth


def device_peaks(dtype: str = "float32") -> Peaks:
    device = jax.devices()[0]
    if device.platform == "cpu":
        flops, bandwidth = measured_cpu_peaks(dtype)
        return Peaks(flops, bandwidth, f"measured: {dtype} 2048x2048 matmul",
                     "measured: sum over 256 MiB")
    for name, value in BANDWIDTH.items():
        if name.lower() in device.device_kind.lower():
            return Peaks(peak_flops([device]), value, "datasheet dense bf16", f"{name} datasheet")
    return Peaks(peak_flops([device]), float("nan"), "datasheet dense bf16",
                 f"unknown device kind {device.device_kind!r}")


def component_work(cfg: ModelConfig, batch: int, queries: int, context: int) -> dict[str, Work]:
    """FLOPs and bytes of one forward step per component, all layers together.

    `queries` tokens per row are processed (the prompt in prefill, 1 in decode) against a KV cache
    of `context` slots. Bytes count weights once per step (they are read once whatever the batch),
    the KV cache read, and activations in and out; attention counts every (query, key) pair,
    masked or not, because that is what the XLA kernel computes.
    """
    a = jnp.dtype(cfg.dtype).itemsize
    # Matmul weights and the cache as stored: int8 with --quant (their scales are ~1/d of it).
    w = 1 if cfg.int8_weights else jnp.dtype(cfg.param_dtype).itemsize
    c = 1 if cfg.int8_kv else a
    d, layers, v = cfg.d_model, cfg.num_layers, cfg.vocab_size
    h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
    tokens = batch * queries
    act = tokens * d * a  # one [batch, queries, embed] activation
    projections = d * hd * (h + 2 * kv) + h * hd * d
    attention = Work(
        2 * projections * tokens + 4 * batch * queries * context * h * hd,
        projections * w + 2 * batch * context * kv * hd * c + 2 * act)
    mlp_params = d * cfg.mlp_dim * (3 if cfg.activation == "swiglu" else 2)
    mlp = Work(2 * mlp_params * tokens, mlp_params * w + 2 * act + tokens * cfg.mlp_dim * a)
    norm = Work(5 * tokens * d, 2 * act + d * w)
    embed_rows = 2 if cfg.positions == "learned" else 1
    return {
        "embedding": Work(embed_rows * tokens * d, embed_rows * tokens * d * w + act),
        "attention": attention * layers,
        "mlp": mlp * layers,
        "norms": norm * (2 * layers + 1),
        # The engine asks for the last position's logits only (`last_only`).
        "output": Work(2 * batch * d * v, d * v * w + batch * d * a + batch * v * 4),
        "sampling": Work(batch * v, batch * v * 4),
    }
