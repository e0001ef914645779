"""Transformer stacks built from the shared blocks: `Decoder` (GPT-2, Llama).

Layers are stacked with `nn.scan` (compile time independent of depth; params gain a leading
`layers` axis) and wrapped in `nn.remat` with a named policy to trade compute for memory.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.attention import Attention
from model.config import ModelConfig
from model.layers import Embed, Mlp, Norm, PositionEmbed, constrain, default_init, dtype_of

Array = jax.Array

REMAT_POLICIES = {
    "full": None,  # save nothing, recompute the whole block in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class DecoderBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)); x + mlp(norm(x)). Returns (x, None) to fit `nn.scan`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, positions: Array, segment_ids: Array, cache=None,
                 cache_index=None, kv_segments=None) -> tuple[Array, dict | None]:
        cfg = self.config
        h = Attention(cfg, causal=True, name="attention")(Norm(cfg, name="attention_norm")(x),
                                                         positions, segment_ids, cache,
                                                         cache_index, kv_segments)
        if cache is not None:
            h, cache = h
        x = constrain(x + h, "batch", "length", "embed")
        h = Mlp(cfg, name="mlp")(Norm(cfg, name="mlp_norm")(x))
        return constrain(x + h, "batch", "length", "embed"), cache


def stack_layers(block: type[nn.Module], cfg: ModelConfig, name: str = "layers",
                 decode: bool = False) -> nn.Module:
    """`cfg.num_layers` copies of `block`, scanned and/or rematerialised as the config says.

    With `decode`, the stack also takes a per-layer KV cache (leading `layers` axis, scanned like
    the params) plus the broadcast cache index and kv segments, and returns the updated cache.
    Remat is a training-memory trade, so decoding never uses it.
    """
    if cfg.remat != "none" and not decode:
        block = nn.remat(block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
    if cfg.scan_layers:
        in_axes = (nn.broadcast, nn.broadcast) + ((0, nn.broadcast, nn.broadcast) if decode else ())
        scanned = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=in_axes, length=cfg.num_layers,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        return scanned(cfg, name=name)
    return _Unrolled(block, cfg, name=name)


class _Unrolled(nn.Module):
    block: type[nn.Module]
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, positions: Array, segment_ids: Array, cache=None,
                 *decode_args: Array) -> tuple[Array, dict | None]:
        caches = []
        for i in range(self.config.num_layers):
            layer_cache = None if cache is None else jax.tree.map(lambda c, i=i: c[i], cache)
            x, layer_cache = self.block(self.config, name=f"layer_{i}")(
                x, positions, segment_ids, layer_cache, *decode_args)
            caches.append(layer_cache)
        if cache is None:
            return x, None
        return x, jax.tree.map(lambda *c: jnp.stack(c), *caches)


class Decoder(nn.Module):
    """Decoder-only LM: int32 tokens [batch, length] -> float32 logits [batch, length, vocab].

    `positions` and `segment_ids` describe packed rows (several documents per row): positions
    restart per document and attention never crosses a segment boundary.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens: Array, positions: Array | None = None,
                 segment_ids: Array | None = None, cache: dict | None = None,
                 cache_index: Array | None = None,
                 kv_segments: Array | None = None) -> Array | tuple[Array, dict]:
        """With `cache` (see `infer/cache.py`) returns (logits, updated cache)."""
        cfg = self.config
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        embed = Embed(cfg, name="embed")
        x = embed(tokens)
        if cfg.positions == "learned":
            x = x + PositionEmbed(cfg, name="position_embed")(positions)
        decode_args = () if cache is None else (cache, cache_index, kv_segments)
        x, cache = stack_layers(DecoderBlock, cfg, decode=bool(decode_args))(
            x, positions, segment_ids, *decode_args)
        x = Norm(cfg, name="final_norm")(x)
        if cfg.tie_embeddings:
            logits = embed.attend(x)
        else:
            kernel = self.param("lm_head", nn.with_logical_partitioning(default_init,
                                                                        ("embed", "vocab")),
                                (cfg.d_model, cfg.vocab_size), dtype_of(cfg.param_dtype))
            logits = jnp.einsum("ble,ev->blv", x, kernel.astype(x.dtype))
        logits = constrain(logits.astype(jnp.float32), "batch", "length", "vocab")
        return logits if cache is None else (logits, cache)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network for a config's family (encoder and encoder-decoder slot in here)."""
    return {"decoder": Decoder}[cfg.family](cfg)
