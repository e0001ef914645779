"""The roofline of the device and the work of each inference component on it.

A component that does F FLOPs and moves B bytes cannot run faster than max(F / peak FLOP/s,
B / bandwidth): below the ridge intensity (peak / bandwidth, FLOPs per byte) it is memory-bound,
above it compute-bound. The peaks are runtime/hardware.py's: datasheets for accelerators, a
nominal FLOP/s per core and a measured bandwidth for a CPU.
"""

import dataclasses

import jax
import jax.numpy as jnp

from model.config import GATED, ModelConfig
from runtime import hardware


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


def device_peaks(dtype: str = "float32") -> Peaks:
    """This process's device on the roofline, from runtime/hardware.py's table."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return Peaks(hardware.peak_flops([device], dtype), hardware.measured_cpu_bandwidth(),
                     hardware.CPU_FLOPS_SOURCE, "measured: sum over 256 MiB")
    chip = hardware.chip_of(device)
    if chip is None:
        return Peaks(float("nan"), float("nan"), f"unknown device kind {device.device_kind!r}",
                     f"unknown device kind {device.device_kind!r}")
    return Peaks(chip.peak_flops(dtype), chip.bandwidth, f"{chip.name} datasheet: dense {dtype}",
                 f"{chip.name} datasheet")


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
    mlp_params = d * cfg.mlp_dim * (3 if cfg.activation in GATED else 2)
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
