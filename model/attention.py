"""Multi-head attention with grouped KV heads (MHA / GQA / MQA), rotary positions, T5 relative
position bias, masks, and cross-attention (decoder queries over encoder keys/values).

`attention=xla` runs model/blockwise.py's kernel (query blocks, causal key skipping, a written-out
backward); `cudnn` and `auto` hand the same operands to `jax.nn.dot_product_attention` (cuDNN flash
attention, or whatever JAX picks).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import blockwise, quant
from model.config import ModelConfig
from model.layers import constrain, dtype_of, kernel_init

Array = jax.Array

_IMPLEMENTATION = {"cudnn": "cudnn", "auto": None}  # of jax.nn.dot_product_attention


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


def relative_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                    max_distance: int) -> Array:
    """T5's bucket of each offset `key_position - query_position` (int32, any shape).

    Half the buckets hold small offsets exactly; the rest grow logarithmically up to
    `max_distance`, beyond which offsets share the last bucket. Bidirectional (encoder) gives
    keys after the query their own half of the buckets; causal (decoder) sees only the past.
    Same arithmetic (float32 log) as Mesh TensorFlow / T5X / HF, so imported tables line up.
    """
    bucket = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket += (relative_position > 0).astype(bucket.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    scaled = (jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact)
              / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    large = jnp.minimum(max_exact + scaled.astype(bucket.dtype), num_buckets - 1)
    return bucket + jnp.where(distance < max_exact, distance, large)


class RelativeBias(nn.Module):
    """T5 relative position bias: one learned scalar per (bucket, head), computed once per stack
    and added to every layer's attention logits (T5 shares it across layers)."""

    config: ModelConfig
    bidirectional: bool

    @nn.compact
    def __call__(self, q_positions: Array, kv_positions: Array) -> Array:
        """q_positions: int32[batch | 1, q_len], kv_positions: int32[batch | 1, kv_len] ->
        float bias [batch | 1, heads, q_len, kv_len]."""
        cfg = self.config
        # HF T5's `_init_weights` draws this table N(0, 1/d_model) too.
        table = self.param("embedding", nn.with_logical_partitioning(
            kernel_init(cfg, cfg.d_model), ("relpos_buckets", "heads")), (cfg.relative_buckets, cfg.num_heads),
            dtype_of(cfg.param_dtype))
        buckets = relative_bucket(kv_positions[:, None, :] - q_positions[:, :, None],
                                  self.bidirectional, cfg.relative_buckets,
                                  cfg.relative_max_distance)
        bias = jnp.take(table, buckets, axis=0).astype(dtype_of(cfg.dtype))  # [b, q, kv, heads]
        return constrain(bias.transpose(0, 3, 1, 2), "batch", "heads", "length", "kv_length")


def write_cache(cache: dict[str, Array], k: Array, v: Array, index: Array) -> dict[str, Array]:
    """Writes k, v ([batch, length, kv_heads, head_dim]) at slot `index` onward of a cache laid
    out [batch, kv_heads, cache_len, head_dim], the layout decode reads without transposing.

    A cache with a "layer" entry holds every layer ([layers, batch, ...], see
    `model/blocks.py`): only the new slots of that layer are written, in place. An int8 cache
    (with "k_scale", "v_scale": [..., cache_len, 1]) stores each token's key and value of each
    head as int8 with one scale (model/quant.py).
    """
    new = {"k": k.swapaxes(1, 2), "v": v.swapaxes(1, 2)}
    if "k_scale" in cache:
        for name in ("k", "v"):
            new[name], new[f"{name}_scale"] = quant.quantize(new[name], (-1,))
    if "layer" not in cache:
        return {name: jax.lax.dynamic_update_slice(
            cache[name], value.astype(cache[name].dtype), (0, 0, index, 0))
            for name, value in new.items()}
    layer = cache["layer"]
    return {"layer": layer, **{name: jax.lax.dynamic_update_slice(
        cache[name], value[None].astype(cache[name].dtype), (layer, 0, 0, index, 0))
        for name, value in new.items()}}


def read_cache(cache: dict[str, Array], name: str) -> Array | None:
    """This layer's [batch, kv_heads, cache_len, head_dim] keys or values (or, for an int8
    cache, their "k_scale" / "v_scale"; None for a float cache)."""
    if name not in cache:
        return None
    if "layer" not in cache:
        return cache[name]
    return jax.lax.dynamic_index_in_dim(cache[name], cache["layer"], keepdims=False)


def cached_attention(q: Array, k: Array, v: Array, mask: Array, bias: Array | None,
                     scale: float | None = None, k_scale: Array | None = None,
                     v_scale: Array | None = None) -> Array:
    """q: [batch, q_len, heads, head_dim] over cached k, v: [batch, kv_heads, kv_len, head_dim];
    mask: bool[batch, q_len, kv_len]; bias: [batch | 1, heads, q_len, kv_len] or None; scale:
    of the logits (default head_dim**-0.5); k_scale, v_scale ([batch, kv_heads, kv_len, 1]):
    of an int8 cache. Returns [batch, q_len, heads, head_dim].

    Two einsums in the cache's own layout. A decode step's cost is reading the cache once;
    handing it to jax.nn.dot_product_attention, whose operands are [batch, length, heads,
    head_dim], makes XLA transpose (copy) the whole cache of every layer at every step. An int8
    cache's per-token scales are applied to the scores and the probabilities (a key's scale
    multiplies its whole score, a value's its weight), so no float copy of it is made.
    """
    b, length, heads, hd = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads  # query head n uses kv head n // group, as dot_product_attention
    scale = hd ** -0.5 if scale is None else scale
    q = q.reshape(b, length, kv_heads, group, hd) * jnp.asarray(scale, q.dtype)
    scores = jnp.einsum("bqkgd,bksd->bkgqs", q, k.astype(q.dtype),
                        preferred_element_type=jnp.float32)
    if k_scale is not None:
        scores *= k_scale[:, :, None, None, :, 0]
    if bias is not None:
        scores += bias.reshape(bias.shape[0], kv_heads, group, *bias.shape[2:]).astype(jnp.float32)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    if v_scale is not None:
        probs *= v_scale[:, :, None, None, :, 0]
    return jnp.einsum("bkgqs,bksd->bqkgd", probs.astype(q.dtype),
                      v.astype(q.dtype)).reshape(b, length, heads, hd)


class Attention(nn.Module):
    """Self-attention over x: [batch, length, embed] -> [batch, length, embed]."""

    config: ModelConfig
    causal: bool = True

    def _kernel(self, name: str, shape: tuple[int, ...], axes: tuple[str, ...],
                contract: int) -> Array | quant.Int8Kernel:
        cfg = self.config
        fan_in = math.prod(shape[:contract])
        # Unscaled logits (T5) take head_dim**-0.5 in the query init instead, so q.k starts at
        # unit scale either way (HF T5: query std (d_model * d_kv)**-0.5).
        gain = 1.0 if name != "query_kernel" or cfg.scale_attention else cfg.resolved_head_dim ** -0.5
        return quant.kernel(self, name, kernel_init(cfg, fan_in, gain), shape, axes, contract,
                            cfg)

    def _project(self, x: Array, name: str, heads: int, heads_axis: str,
                 length_axis: str = "length") -> Array:
        cfg = self.config
        d, hd = cfg.d_model, cfg.resolved_head_dim
        kernel = self._kernel(f"{name}_kernel", (d, heads, hd), ("embed", heads_axis, "head_dim"),
                              1)
        y = quant.matmul(x, kernel, 1, "ble,ehd->blhd")
        if cfg.use_bias:
            bias = self.param(f"{name}_bias", nn.with_logical_partitioning(
                nn.initializers.zeros, (heads_axis, "head_dim")), (heads, hd),
                dtype_of(cfg.param_dtype))
            y = y + bias.astype(y.dtype)
        return constrain(y, "batch", length_axis, heads_axis, "head_dim")

    @property
    def scale(self) -> float:
        """Of the attention logits: head_dim**-0.5, or 1 where the checkpoint folded it into
        the query weights (T5)."""
        return self.config.resolved_head_dim ** -0.5 if self.config.scale_attention else 1.0

    def _attend(self, q: Array, k: Array, v: Array, mask: Array, bias: Array | None) -> Array:
        """Softmax attention of q over (k, v), then the output projection back to embed."""
        cfg = self.config
        if bias is not None:
            bias = bias.astype(q.dtype)
        if cfg.attention == "xla":
            out = blockwise.attention(q, k, v, mask, bias, self.scale, self.causal)
        else:  # GQA needs no repeat: dot_product_attention groups query heads over kv heads.
            out = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=self.scale,
                                               implementation=_IMPLEMENTATION[cfg.attention])
        return self._output(out)

    def _output(self, out: Array) -> Array:
        """[batch, length, heads, head_dim] -> [batch, length, embed]."""
        cfg = self.config
        out = constrain(out, "batch", "length", "heads", "head_dim")
        kernel = self._kernel("out_kernel", (cfg.num_heads, cfg.resolved_head_dim, cfg.d_model),
                              ("heads", "head_dim", "embed"), 2)
        y = quant.matmul(out, kernel, 2, "blhd,hde->ble")
        if cfg.use_bias:
            out_bias = self.param("out_bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                           ("embed",)),
                                  (cfg.d_model,), dtype_of(cfg.param_dtype))
            y = y + out_bias.astype(y.dtype)
        return y

    @nn.compact
    def __call__(self, x: Array, positions: Array, segment_ids: Array,
                 cache: dict[str, Array] | None = None, cache_index: Array | None = None,
                 kv_segments: Array | None = None,
                 bias: Array | None = None) -> Array | tuple[Array, dict[str, Array]]:
        """Without `cache`: attention within x. With `cache` ({"k", "v"}: [batch, kv_heads,
        cache_len, head_dim]): x's keys/values are written at slot `cache_index` onward and x
        attends to every filled slot whose segment (`kv_segments`: [batch, cache_len], 0 =
        empty or padding) matches its own; returns (y, updated cache). `bias` ([batch | 1,
        heads, q_len, kv_len], e.g. `RelativeBias`) is added to the logits."""
        cfg = self.config
        q = self._project(x, "query", cfg.num_heads, "heads")
        k = self._project(x, "key", cfg.num_kv_heads, "kv_heads")
        v = self._project(x, "value", cfg.num_kv_heads, "kv_heads")
        if cfg.positions == "rope":
            q, k = rotary(q, positions, cfg.rope_theta), rotary(k, positions, cfg.rope_theta)
        if cache is None:
            return self._attend(q, k, v, attention_mask(segment_ids, segment_ids, self.causal),
                                bias)
        cache = write_cache(cache, k, v, cache_index)
        q_slots = cache_index + jnp.arange(x.shape[1])
        mask = (segment_ids[:, :, None] == kv_segments[:, None, :]) & (
            jnp.arange(kv_segments.shape[1])[None, None, :] <= q_slots[None, :, None])
        out = cached_attention(q, read_cache(cache, "k"), read_cache(cache, "v"), mask, bias,
                               self.scale, read_cache(cache, "k_scale"),
                               read_cache(cache, "v_scale"))
        return self._output(out), cache


class CrossAttention(Attention):
    """Decoder queries attend to the encoder's keys/values (T5, Vaswani). Same params and
    projections as `Attention`; keys/values come from `encoded`, or from `kv` when they were
    projected once and cached for decoding."""

    causal: bool = False

    @nn.compact
    def __call__(self, x: Array, encoded: Array | None, segment_ids: Array,
                 encoder_segment_ids: Array, kv: dict[str, Array] | None = None
                 ) -> tuple[Array, dict[str, Array]]:
        """x: [batch, length, embed] decoder stream; encoded: [batch, enc_len, embed] encoder
        output, or None with kv = {"k", "v"}: [batch, kv_heads, enc_len, head_dim]. A query sees
        the encoder positions of its own segment (packed pairs share segment ids).
        Returns (y, {"k", "v"}) so a decoder can cache the projection (in the decode layout)."""
        cfg = self.config
        q = self._project(x, "query", cfg.num_heads, "heads")
        mask = attention_mask(segment_ids, encoder_segment_ids, causal=False)
        if encoded is not None:
            k = self._project(encoded, "key", cfg.num_kv_heads, "kv_heads", "kv_length")
            v = self._project(encoded, "value", cfg.num_kv_heads, "kv_heads", "kv_length")
            return self._attend(q, k, v, mask, None), {"k": k.swapaxes(1, 2),
                                                       "v": v.swapaxes(1, 2)}
        out = cached_attention(q, kv["k"].astype(q.dtype), kv["v"].astype(q.dtype), mask[:, 0],
                               None, self.scale)
        return self._output(out), kv
