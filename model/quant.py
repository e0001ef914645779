"""Int8 weights: per-output-channel symmetric int8 kernels, and the matmul that reads them.

A model whose config says `quant` has int8 weights creates every matmul kernel (attention
projections, MLP, untied output head, token embedding) as an int8 param `NAME` plus a float32
`NAME_scale` that has the kernel's rank with size 1 on the contracted dimensions: weight =
int8 * scale, one scale per output channel (per vocabulary row for the embedding table). Such
params come from a float model by `quantize_params` (post-training, no calibration data) or
straight from a saved quantized checkpoint; there is no float copy.

How the matmul runs is the backend's business:
- CPU: XLA has no kernel for float x int8, and converting the weights first writes (and reads)
  a float copy, slower than the float model. Its int8 x int8 -> int32 GEMM (YNNPACK, VNNI) is
  fast, so activations are quantized on the fly, per row (dynamic range quantization), and the
  int32 result is rescaled. YNNPACK takes no single-row products, so one row is doubled: the
  bs-1 decode step is exactly that case.
- GPU/TPU: the weights are converted inside the matmul (XLA fuses the convert into the GEMM), so
  the activations keep their precision: weight-only quantization proper.
"""

import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from model.config import ModelConfig

Array = jax.Array
INT8_MAX = 127.0
# Backends whose fast int8 matmul is int8 x int8 (XLA CPU: YNNPACK), so rows are quantized too.
DYNAMIC_ROWS_BACKENDS = ("cpu",)


class Int8Kernel(NamedTuple):
    q: Array  # int8, contracted dimensions first
    scale: Array  # float32, same rank, 1 on the contracted dimensions


def kernel(module: nn.Module, name: str, init, shape: tuple[int, ...], axes: tuple[str, ...],
           contract: int, cfg: ModelConfig) -> Array | Int8Kernel:
    """The param `name` of `module`: a float kernel in the compute dtype, or with int8 weights
    an `Int8Kernel` whose first `contract` dimensions are the ones a matmul sums over."""
    if not cfg.int8_weights:
        value = module.param(name, nn.with_logical_partitioning(init, axes), shape,
                             jnp.dtype(cfg.param_dtype))
        return value.astype(jnp.dtype(cfg.dtype))
    q = module.param(name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape,
                     jnp.int8)
    scale = module.param(f"{name}_scale", nn.with_logical_partitioning(
        nn.initializers.ones, (None,) * contract + tuple(axes[contract:])),
        (1,) * contract + tuple(shape[contract:]), jnp.float32)
    return Int8Kernel(q, scale)


def matmul(x: Array, w: Array | Int8Kernel, contract: int, equation: str) -> Array:
    """x's last `contract` dimensions times w's first `contract`: `jnp.einsum(equation, x, w)`
    for a float kernel (the training path, unchanged), the int8 matmul for an `Int8Kernel`."""
    if not isinstance(w, Int8Kernel):
        return jnp.einsum(equation, x, w)
    k = math.prod(w.q.shape[:contract])
    out = w.q.shape[contract:]
    rows = x.reshape(-1, k)
    y = int8_dot(rows, w.q.reshape(k, -1), w.scale.reshape(-1), transposed=False)
    return y.reshape(*x.shape[:x.ndim - contract], *out).astype(x.dtype)


def int8_dot(x: Array, q: Array, scale: Array, transposed: bool) -> Array:
    """x: [rows, k] float times int8 q ([k, n], or [n, k] if `transposed`) rescaled per output
    column by scale: [n]. Float32 result [rows, n]."""
    dims = (((1,), (1 if transposed else 0,)), ((), ()))
    if jax.default_backend() not in DYNAMIC_ROWS_BACKENDS:
        y = jax.lax.dot_general(x, q.astype(x.dtype), dims, preferred_element_type=jnp.float32)
        return y * scale
    x = x.astype(jnp.float32)
    x_scale = jnp.maximum(jnp.max(jnp.abs(x), axis=-1, keepdims=True), 1e-30) / INT8_MAX
    xq = jnp.round(x / x_scale).astype(jnp.int8)
    rows = xq.shape[0]
    if rows == 1:  # YNNPACK's int8 GEMM takes no vector; XLA's own int8 loop is ~20x slower
        xq = jnp.concatenate([xq, xq])
    y = jax.lax.dot_general(xq, q, dims, preferred_element_type=jnp.int32)[:rows]
    return y.astype(jnp.float32) * x_scale * scale


def embedding_rows(table: Array | Int8Kernel, tokens: Array) -> Array:
    """Rows `tokens` of a [vocab, embed] table (int8 rows dequantized by their own scale)."""
    if not isinstance(table, Int8Kernel):
        return jnp.take(table, tokens, axis=0)
    return jnp.take(table.q, tokens, axis=0).astype(jnp.float32) * jnp.take(
        table.scale[:, 0], tokens, axis=0)[..., None]


def quantize(w: Array, reduce_axes: tuple[int, ...]) -> tuple[Array, Array]:
    """(int8 values, float32 scales) of w, symmetric, one scale per slice over `reduce_axes`."""
    w = w.astype(jnp.float32)
    absmax = jnp.max(jnp.abs(w), axis=reduce_axes, keepdims=True)
    scale = jnp.where(absmax > 0, absmax / INT8_MAX, 1.0)
    return jnp.clip(jnp.round(w / scale), -INT8_MAX, INT8_MAX).astype(jnp.int8), scale


def quantize_params(params: dict, target: dict) -> dict:
    """Float params -> the int8 model's params, whose abstract tree (shapes, dtypes, shardings)
    is `target`: each int8 leaf `X` is quantized from the float `X` with the scales `X_scale`,
    over the dimensions where `X_scale` has size 1; every other leaf is copied (cast)."""
    flat = traverse_util.flatten_dict(params)
    shapes = traverse_util.flatten_dict(target)
    out = {}
    for path, spec in shapes.items():
        if path[-1].endswith("_scale") and path[:-1] + (path[-1][:-6],) in shapes:
            continue  # made with its kernel
        value = flat[path]
        if spec.dtype == jnp.int8:
            scale_path = path[:-1] + (f"{path[-1]}_scale",)
            axes = tuple(i for i, n in enumerate(shapes[scale_path].shape) if n == 1)
            out[path], out[scale_path] = _quantize_jit(value, axes, spec.sharding,
                                                       shapes[scale_path].sharding)
        else:
            out[path] = value.astype(spec.dtype)
    return traverse_util.unflatten_dict(out)


def _quantize_jit(value, axes, q_sharding, scale_sharding):
    return jax.jit(quantize, static_argnums=1, out_shardings=(q_sharding, scale_sharding))(
        value, axes)


def param_bytes(params: dict) -> int:
    """Bytes the params occupy (all devices' shards counted once)."""
    return int(sum(np.prod(x.shape) * jnp.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves(params)))

