"""The one transformer layer every family stacks, and the stacking itself (`nn.scan` + `nn.remat`).

A layer is self-attention (causal or not), optionally cross-attention over an encoder's output,
then the MLP; each is a residual branch with pre-norm or post-norm as the config says.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.attention import Attention, CrossAttention
from model.config import ModelConfig
from model.layers import Mlp, Norm, constrain

Array = jax.Array

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}

# Stacks this deep or shallower are scanned fully unrolled (lax.scan's `unroll`; params keep the
# stacked `layers` axis). A rolled loop runs one layer at a time and copies each layer's saved
# activations in and out of stacked buffers; at the quickstart shape (4 layers) that was 28% of a
# 2-core CPU train step, and at 12 layers x d 128 unrolling took the step from 1.27 to 0.97 s for
# 4 s more compile time (benchmarks.train_throughput, 2026-12-08). Deeper stacks keep the loop, so
# their compile time stays independent of depth.
UNROLL_UP_TO = 12

# Positional arguments after x of a `Block` in a stack that uses all of them, and how `nn.scan`
# feeds each: the cache is sliced per layer (axis 0), everything else is shared.
BLOCK_IN_AXES = (nn.broadcast,) * 2 + (0,) + (nn.broadcast,) * 5


def residual(cfg: ModelConfig, x: Array, norm: Norm,
             branch: Callable[[Array], tuple[Array, object]]) -> tuple[Array, object]:
    """x + branch(norm(x)) (pre-norm: GPT-2, Llama, T5) or norm(x + branch(x)) (post-norm:
    Vaswani, BERT). `branch` returns (y, anything it wants passed back, e.g. a cache)."""
    y, aux = branch(x if cfg.post_norm else norm(x))
    x = constrain(x + y, "batch", "length", "embed")
    return (norm(x) if cfg.post_norm else x), aux


class Block(nn.Module):
    """One layer. Returns (x, cache) to fit `nn.scan`.

    `causal=False` is the encoder's bidirectional layer; `cross=True` adds cross-attention over
    `encoded` (T5 / Vaswani decoder), and its cache is then {"self": {"k", "v"}, "cross":
    {"k", "v"}}: the cross keys/values are projected from `encoded` when it is given, else read
    from the cache, so decoding projects the encoder output once.
    """

    config: ModelConfig
    causal: bool = True
    cross: bool = False

    @nn.compact
    def __call__(self, x: Array, positions: Array, segment_ids: Array, cache=None,
                 cache_index=None, kv_segments=None, bias: Array | None = None,
                 encoded: Array | None = None,
                 encoder_segment_ids: Array | None = None) -> tuple[Array, dict | None]:
        cfg = self.config
        self_cache = cache["self"] if self.cross and cache is not None else cache
        attention = Attention(cfg, causal=self.causal, name="attention")

        def self_attention(h):
            out = attention(h, positions, segment_ids, self_cache, cache_index, kv_segments, bias)
            return out if self_cache is not None else (out, None)

        x, self_cache = residual(cfg, x, Norm(cfg, name="attention_norm"), self_attention)
        if self.cross:
            cross = CrossAttention(cfg, name="cross_attention")
            cached_kv = cache["cross"] if cache is not None and encoded is None else None
            x, cross_kv = residual(cfg, x, Norm(cfg, name="cross_attention_norm"), lambda h: cross(
                h, encoded, segment_ids, encoder_segment_ids, cached_kv))
        mlp = Mlp(cfg, name="mlp")
        x, _ = residual(cfg, x, Norm(cfg, name="mlp_norm"), lambda h: (mlp(h), None))
        if cache is None:
            return x, None
        return x, ({"self": self_cache, "cross": cross_kv} if self.cross else self_cache)


class CarriedCacheBlock(Block):
    """A decoding layer under `nn.scan` with the self-attention KV cache of *all* layers carried
    through the scan: (x, cache, layer) -> ((x, cache, layer + 1), cross K/V or None).

    Scanning the cache as a per-layer input instead slices every layer's cache out, stacks a
    new cache for the output, and the decode loop then copies that into its carry: several
    whole-cache copies per token, the largest cost of a decode step that `infer.report` found.
    Carried, each layer writes its new slots in place and reads only its own slice. With
    `cross=True` the cross keys/values ([layers, batch, kv_heads, enc_len, head_dim]) are a
    constant each layer reads its slice of; a call given `encoded` projects them instead and
    returns them stacked as the scan's output, which happens once per request.
    """

    def __call__(self, carry, positions: Array, segment_ids: Array, cache_index: Array,
                 kv_segments: Array, bias: Array | None = None, encoded: Array | None = None,
                 encoder_segment_ids: Array | None = None, cross_kv: dict | None = None):
        x, cache, layer = carry
        layer_cache = {**cache, "layer": layer}
        if self.cross:
            kv = None if encoded is not None else {
                name: jax.lax.dynamic_index_in_dim(value, layer, keepdims=False)
                for name, value in cross_kv.items()}
            layer_cache = {"self": layer_cache, "cross": kv}
        x, cache = super().__call__(x, positions, segment_ids, layer_cache, cache_index,
                                    kv_segments, bias, encoded, encoder_segment_ids)
        projected = None
        if self.cross:
            cache, projected = cache["self"], cache["cross"] if encoded is not None else None
        return (x, {k: v for k, v in cache.items() if k != "layer"}, layer + 1), projected


def _carried(cfg: ModelConfig, name: str, num_layers: int, cross: bool):
    """The decode stack over `CarriedCacheBlock`, called like the sliced one: (x, positions,
    segment_ids, cache, cache_index, kv_segments[, bias, encoded, encoder_segment_ids]) ->
    (x, cache), the cache {"k", "v"} or, with `cross`, {"self": {"k", "v"}, "cross": ...}."""
    arity = 8 if cross else 4
    attributes = {"causal": True, "cross": True} if cross else {}
    carried = nn.scan(CarriedCacheBlock, variable_axes={"params": 0},
                      split_rngs={"params": True}, in_axes=(nn.broadcast,) * arity,
                      length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})(
        cfg, name=name, **attributes)

    def run(x, positions, segment_ids, cache, cache_index, kv_segments, *cross_args):
        if not cross:
            (x, cache, _), _ = carried((x, cache, 0), positions, segment_ids, cache_index,
                                       kv_segments)
            return x, cache
        bias, encoded, encoder_segment_ids = cross_args
        cross_kv = None if encoded is not None else cache["cross"]
        (x, self_cache, _), projected = carried(
            (x, cache["self"], 0), positions, segment_ids, cache_index, kv_segments, bias,
            encoded, encoder_segment_ids, cross_kv)
        return x, {"self": self_cache, "cross": projected if encoded is not None else cross_kv}
    return run


def stack_layers(block: type[nn.Module], cfg: ModelConfig, name: str = "layers",
                 decode: bool = False, *, num_layers: int | None = None,
                 in_axes: tuple | None = None, **attributes) -> nn.Module:
    """`num_layers` (default `cfg.num_layers`) copies of `block`, scanned and/or rematerialised
    as the config says; `attributes` go to each block (e.g. causal=False).

    `in_axes` says, per positional argument after x, whether it is sliced per layer (0: a cache
    with a leading `layers` axis, scanned like the params) or shared (`nn.broadcast`). By default
    the decoder's (positions, segment_ids), plus with `decode` (cache, cache_index, kv_segments).
    Remat is a training-memory trade, so decoding never uses it.
    """
    num_layers = num_layers or cfg.num_layers
    if in_axes is None:
        in_axes = (nn.broadcast, nn.broadcast) + ((0, nn.broadcast, nn.broadcast) if decode else ())
    unroll = num_layers if num_layers <= UNROLL_UP_TO else 1
    if cfg.remat != "none" and not decode:
        # Only a rolled loop keeps XLA from merging the recomputation with the forward pass;
        # unrolled (or not scanned) the remat needs prevent_cse, or it saves nothing.
        block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat],
                         prevent_cse=not cfg.scan_layers or unroll > 1)
    if cfg.scan_layers and decode and block is Block:
        if not attributes and in_axes == (nn.broadcast,) * 2 + (0,) + (nn.broadcast,) * 2:
            return _carried(cfg, name, num_layers, cross=False)
        if attributes == {"causal": True, "cross": True} and in_axes == BLOCK_IN_AXES:
            return _carried(cfg, name, num_layers, cross=True)
    if cfg.scan_layers:
        scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=in_axes, length=num_layers,
                          unroll=unroll,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        return scanned(cfg, name=name, **attributes)
    return _Unrolled(block, cfg, num_layers, tuple(axis == 0 for axis in in_axes),
                     tuple(attributes.items()), name=name)


class _Unrolled(nn.Module):
    """The same stack as a Python loop (`layer_0`, `layer_1`, ...): no scan, for debugging and
    per-layer inspection. Per-layer arguments are sliced, outputs stacked, as scan would."""

    block: type[nn.Module]
    config: ModelConfig
    num_layers: int
    per_layer: tuple[bool, ...]
    attributes: tuple = ()

    @nn.compact
    def __call__(self, x: Array, *args) -> tuple[Array, dict | None]:
        outputs = []
        for i in range(self.num_layers):
            layer_args = [jax.tree.map(lambda c, i=i: c[i], a) if sliced else a
                          for a, sliced in zip(args, self.per_layer, strict=True)]
            x, out = self.block(self.config, name=f"layer_{i}", **dict(self.attributes))(
                x, *layer_args)
            outputs.append(out)
        if outputs[0] is None:
            return x, None
        return x, jax.tree.map(lambda *c: jnp.stack(c), *outputs)
