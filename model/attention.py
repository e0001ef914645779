"""Multi-head attention with grouped KV heads (MHA / GQA / MQA), rotary positions and masks.

The kernel is `jax.nn.dot_product_attention`, so `attention=xla|cudnn|auto` picks XLA's fused
softmax or cuDNN flash attention without a second code path.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import ModelConfig
from model.layers import constrain, default_init, dtype_of

Array = jax.Array

_IMPLEMENTATION = {"xla": "xla", "cudnn": "cudnn", "auto": None}


def rotary(x: Array, positions: Array, theta: float) -> Array:
    """Rotates x: [batch, length, heads, head_dim] by its positions: int32[batch, length].

    Uses the "rotate half" layout (first half of head_dim pairs with the second half), the layout
    of Llama checkpoints, so imported weights need no permutation.
    """
    half = x.shape[-1] // 2
    freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions[..., None].astype(jnp.float32) * freq  # [batch, length, half]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def attention_mask(q_segments: Array, kv_segments: Array, causal: bool) -> Array:
    """bool[batch, 1, q_len, kv_len]: same segment (packed documents never see each other),
    and no future keys when causal. Padding (segment 0) attends to padding so no row is empty."""
    mask = q_segments[:, :, None] == kv_segments[:, None, :]
    if causal:
        q_len, kv_len = q_segments.shape[1], kv_segments.shape[1]
        mask &= jnp.tril(jnp.ones((q_len, kv_len), bool), k=kv_len - q_len)
    return mask[:, None]


class Attention(nn.Module):
    """Self-attention over x: [batch, length, embed] -> [batch, length, embed]."""

    config: ModelConfig
    causal: bool = True

    def _kernel(self, name: str, shape: tuple[int, ...], axes: tuple[str, ...]) -> Array:
        kernel = self.param(name, nn.with_logical_partitioning(default_init, axes), shape,
                            dtype_of(self.config.param_dtype))
        return kernel.astype(dtype_of(self.config.dtype))

    def _project(self, x: Array, name: str, heads: int, heads_axis: str) -> Array:
        cfg = self.config
        d, hd = cfg.d_model, cfg.resolved_head_dim
        kernel = self._kernel(f"{name}_kernel", (d, heads, hd), ("embed", heads_axis, "head_dim"))
        y = jnp.einsum("ble,ehd->blhd", x, kernel)
        if cfg.use_bias:
            bias = self.param(f"{name}_bias", nn.with_logical_partitioning(
                nn.initializers.zeros, (heads_axis, "head_dim")), (heads, hd),
                dtype_of(cfg.param_dtype))
            y = y + bias.astype(y.dtype)
        return constrain(y, "batch", "length", heads_axis, "head_dim")

    @nn.compact
    def __call__(self, x: Array, positions: Array, segment_ids: Array,
                 cache: dict[str, Array] | None = None, cache_index: Array | None = None,
                 kv_segments: Array | None = None) -> Array | tuple[Array, dict[str, Array]]:
        """Without `cache`: attention within x. With `cache` ({"k", "v"}: [batch, cache_len,
        kv_heads, head_dim]): x's keys/values are written at slot `cache_index` onward and x
        attends to every filled slot whose segment (`kv_segments`: [batch, cache_len], 0 =
        empty or padding) matches its own; returns (y, updated cache)."""
        cfg = self.config
        q = self._project(x, "query", cfg.num_heads, "heads")
        k = self._project(x, "key", cfg.num_kv_heads, "kv_heads")
        v = self._project(x, "value", cfg.num_kv_heads, "kv_heads")
        if cfg.positions == "rope":
            q, k = rotary(q, positions, cfg.rope_theta), rotary(k, positions, cfg.rope_theta)
        if cache is None:
            mask = attention_mask(segment_ids, segment_ids, self.causal)
        else:
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
            v = jax.lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
            cache = {"k": k, "v": v}
            q_slots = cache_index + jnp.arange(x.shape[1])
            mask = (segment_ids[:, :, None] == kv_segments[:, None, :]) & (
                jnp.arange(kv_segments.shape[1])[None, None, :] <= q_slots[None, :, None])
            mask = mask[:, None]
            k, v = k.astype(q.dtype), v.astype(q.dtype)
        # GQA needs no repeat: dot_product_attention groups query heads over the kv heads.
        out = jax.nn.dot_product_attention(q, k, v, mask=mask,
                                           implementation=_IMPLEMENTATION[cfg.attention])
        out = constrain(out, "batch", "length", "heads", "head_dim")
        kernel = self._kernel("out_kernel", (cfg.num_heads, cfg.resolved_head_dim, cfg.d_model),
                              ("heads", "head_dim", "embed"))
        y = jnp.einsum("blhd,hde->ble", out, kernel)
        if cfg.use_bias:
            bias = self.param("out_bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                       ("embed",)),
                              (cfg.d_model,), dtype_of(cfg.param_dtype))
            y = y + bias.astype(y.dtype)
        return y if cache is None else (y, cache)
