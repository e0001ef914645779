"""Encoder-decoder network (T5, Vaswani 2017): an encoder stack, a decoder stack whose layers add
cross-attention over the encoder output, one token table shared by both, tied or untied output.

Decoding: `encode` once, then `decode` step by step with a self-attention KV cache; the first
`decode` call is given `encoded` and projects it to each layer's cross keys/values, which later
steps read from the cache instead of recomputing.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.attention import RelativeBias
from model.blocks import BLOCK_IN_AXES, Block, stack_layers
from model.config import ModelConfig
from model.encoder import EncoderStack, default_positions
from model.layers import Embed, Norm, dtype_of, embed_inputs, lm_head, to_logits

Array = jax.Array
Cache = dict[str, dict[str, Array]]


def init_cache(cfg: ModelConfig, batch: int, length: int) -> Cache:
    """An empty decoder self-attention cache: {"self": {"k", "v"}: [decoder_layers, batch,
    kv_heads, length, head_dim]}. The first `decode` call adds {"cross": {"k", "v"}:
    [decoder_layers, batch, kv_heads, encoder_length, head_dim]}."""
    shape = (cfg.decoder_layers, batch, cfg.num_kv_heads, length, cfg.resolved_head_dim)
    zeros = jnp.zeros(shape, dtype_of(cfg.dtype))
    return {"self": {"k": zeros, "v": zeros}}


class DecoderStack(nn.Module):
    """Target tokens -> embedded -> causal self-attention + cross-attention + MLP layers -> final
    norm (pre-norm configs). `embed` is the token table shared with the encoder."""

    config: ModelConfig
    embed: Embed

    @nn.compact
    def __call__(self, tokens: Array, positions: Array, segment_ids: Array,
                 encoded: Array | None, encoder_segment_ids: Array, cache: Cache | None = None,
                 cache_index: Array | None = None,
                 kv_segments: Array | None = None) -> tuple[Array, Cache | None]:
        cfg = self.config
        x = embed_inputs(cfg, self.embed, tokens, positions)
        bias = None
        if cfg.positions == "relative":
            # Decoding writes target position p at cache slot p, so slots are key positions.
            kv_positions = positions if cache is None else jnp.arange(cache["self"]["k"].shape[3])
            bias = RelativeBias(cfg, bidirectional=False, name="relpos_bias")(
                positions, jnp.atleast_2d(kv_positions))
        x, cache = stack_layers(Block, cfg, decode=cache is not None,
                                num_layers=cfg.decoder_layers, in_axes=BLOCK_IN_AXES,
                                causal=True, cross=True)(
            x, positions, segment_ids, cache, cache_index, kv_segments, bias, encoded,
            encoder_segment_ids)
        if not cfg.post_norm:  # a post-norm stack already ends in a norm
            x = Norm(cfg, name="final_norm")(x)
        return x, cache


class EncoderDecoder(nn.Module):
    """T5 / Vaswani. All token inputs are int32 [batch, length]; segment ids 0 mark padding and
    packed rows number their pairs 1, 2, ... on both sides (a target attends only to the source
    with its segment id); positions restart per pair.

    - `__call__(encoder_tokens, decoder_tokens, encoder_segment_ids=None,
      decoder_segment_ids=None, encoder_positions=None, decoder_positions=None)` -> float32
      logits [batch, decoder_length, vocab] (teacher forcing: decoder_tokens are the shifted
      targets).
    - `encode(encoder_tokens, encoder_segment_ids=None, encoder_positions=None)` -> encoded
      [batch, encoder_length, embed].
    - `decode(decoder_tokens, encoded=None, encoder_segment_ids=None, decoder_positions=None,
      decoder_segment_ids=None, cache=None, cache_index=None, kv_segments=None)` -> logits, or
      (logits, cache) with a cache from `init_cache`. With a cache, decoder_tokens are written at
      slots `cache_index`, ... (positions default to those slots) and attend to the filled
      slots whose `kv_segments` ([batch, cache_length], default all 1) match their segment.
      Pass `encoded` on the first call; later calls omit it and use the cached cross K/V.
    """

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embed = Embed(cfg)
        self.encoder = EncoderStack(cfg, self.embed)
        self.decoder = DecoderStack(cfg, self.embed)
        self.lm_head = lm_head(self, cfg)

    def __call__(self, encoder_tokens: Array, decoder_tokens: Array,
                 encoder_segment_ids: Array | None = None,
                 decoder_segment_ids: Array | None = None,
                 encoder_positions: Array | None = None,
                 decoder_positions: Array | None = None) -> Array:
        encoder_positions, encoder_segment_ids = default_positions(
            encoder_tokens, encoder_positions, encoder_segment_ids)
        encoded = self.encode(encoder_tokens, encoder_segment_ids, encoder_positions)
        return self.decode(decoder_tokens, encoded, encoder_segment_ids, decoder_positions,
                           decoder_segment_ids)

    def encode(self, encoder_tokens: Array, encoder_segment_ids: Array | None = None,
               encoder_positions: Array | None = None) -> Array:
        positions, segment_ids = default_positions(encoder_tokens, encoder_positions,
                                                   encoder_segment_ids)
        return self.encoder(encoder_tokens, positions, segment_ids)

    def decode(self, decoder_tokens: Array, encoded: Array | None = None,
               encoder_segment_ids: Array | None = None,
               decoder_positions: Array | None = None,
               decoder_segment_ids: Array | None = None, cache: Cache | None = None,
               cache_index: Array | int | None = None,
               kv_segments: Array | None = None) -> Array | tuple[Array, Cache]:
        batch = decoder_tokens.shape[0]
        if encoded is None and (cache is None or "cross" not in cache):
            raise ValueError("decode needs `encoded`, or a cache whose cross keys/values a "
                             "first decode call with `encoded` filled")
        if cache is not None and cache_index is None:
            raise ValueError("decode with a cache needs `cache_index`, the first slot to write")
        positions, segment_ids = default_positions(
            decoder_tokens, decoder_positions, decoder_segment_ids,
            start=0 if cache is None else cache_index)
        if encoder_segment_ids is None:
            length = encoded.shape[1] if encoded is not None else cache["cross"]["k"].shape[3]
            encoder_segment_ids = jnp.ones((batch, length), jnp.int32)
        if cache is not None and kv_segments is None:
            kv_segments = jnp.ones((batch, cache["self"]["k"].shape[3]), jnp.int32)
        x, cache = self.decoder(decoder_tokens, positions, segment_ids, encoded,
                                encoder_segment_ids, cache, cache_index, kv_segments)
        logits = to_logits(self.embed, x, self.lm_head)
        return logits if cache is None else (logits, cache)
