"""Encoder-only network (BERT): bidirectional layers over token + position + token-type
embeddings, an MLM head tied to the token table, an optional pooler and classification head.

`EncoderStack` (embedded inputs -> bidirectional layers -> final norm) is also the encoder half
of `EncoderDecoder`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.attention import RelativeBias
from model.blocks import BLOCK_IN_AXES, Block, stack_layers
from model.config import ModelConfig
from model.layers import (
    Dense,
    Embed,
    Norm,
    activation,
    constrain,
    dtype_of,
    embed_inputs,
    lm_head,
    to_logits,
)

Array = jax.Array


def default_positions(tokens: Array, positions: Array | None, segment_ids: Array | None,
                      start: Array | int = 0) -> tuple[Array, Array]:
    """Positions `start, start+1, ...` and one segment when a caller gives neither."""
    if positions is None:
        positions = jnp.broadcast_to(start + jnp.arange(tokens.shape[1]), tokens.shape)
    if segment_ids is None:
        segment_ids = jnp.ones_like(tokens)
    return positions, segment_ids


class EncoderStack(nn.Module):
    """tokens -> embedded inputs -> bidirectional layers -> final norm (pre-norm configs).

    `embed` is the token table, owned by the parent: it is tied to BERT's MLM output, or shared
    with the decoder of an encoder-decoder. Position/type tables, the embedding norm and the
    relative bias (computed once here, used by every layer) belong to this stack.
    """

    config: ModelConfig
    embed: Embed

    @nn.compact
    def __call__(self, tokens: Array, positions: Array, segment_ids: Array,
                 token_types: Array | None = None) -> Array:
        """tokens, positions, segment_ids, token_types: int32[batch, length] -> float
        [batch, length, embed]. Segment 0 is padding: no real token attends to it."""
        cfg = self.config
        x = embed_inputs(cfg, self.embed, tokens, positions, token_types)
        bias = None
        if cfg.positions == "relative":
            bias = RelativeBias(cfg, bidirectional=True, name="relpos_bias")(positions, positions)
        # Arguments after x: positions, segment_ids, (no cache, index, kv segments), bias.
        x, _ = stack_layers(Block, cfg, in_axes=BLOCK_IN_AXES[:6], causal=False)(
            x, positions, segment_ids, None, None, None, bias)
        if not cfg.post_norm:  # a post-norm stack already ends in a norm
            x = Norm(cfg, name="final_norm")(x)
        return x


class Encoder(nn.Module):
    """BERT. `__call__(tokens, positions=None, segment_ids=None, token_types=None)` -> dict:

    - "hidden": [batch, length, embed], the last layer's states;
    - "logits": float32 [batch, length, vocab], the MLM head (dense + GELU + norm, then the tied
      token table or `lm_head`, plus a per-token bias) at every position, with `mlm_head`;
    - "pooled": [batch, embed], tanh(dense(first token)), with `pooler`;
    - "class_logits": float32 [batch, num_labels], a dense layer over the pooled first token
      (its raw state without `pooler`), with `num_labels` (2 gives BERT's NSP head).

    All inputs are int32 [batch, length]; `segment_ids` 0 marks padding (packed rows use 1, 2,
    ...), `token_types` are BERT's sentence A/B ids (default 0). Every head's params are created
    by `init`, so one params tree serves pretraining and fine-tuning.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens: Array, positions: Array | None = None,
                 segment_ids: Array | None = None,
                 token_types: Array | None = None) -> dict[str, Array]:
        cfg = self.config
        positions, segment_ids = default_positions(tokens, positions, segment_ids)
        embed = Embed(cfg, name="embed")
        x = EncoderStack(cfg, embed, name="encoder")(tokens, positions, segment_ids, token_types)
        out = {"hidden": x}

        if cfg.mlm_head:
            out["logits"] = self._mlm_logits(cfg, embed, x)

        first = x[:, 0]  # BERT's [CLS]
        if cfg.pooler:
            first = jnp.tanh(Dense(cfg.d_model, ("embed", "pooler"), cfg, name="pooler")(first))
            out["pooled"] = constrain(first, "batch", "embed")
        if cfg.num_labels:
            labels = Dense(cfg.num_labels, ("embed", "labels"), cfg, name="classifier")(first)
            out["class_logits"] = labels.astype(jnp.float32)
        return out

    def _mlm_logits(self, cfg: ModelConfig, embed: Embed, x: Array) -> Array:
        h = activation(cfg)(Dense(cfg.d_model, ("embed", "mlm"), cfg, name="mlm_dense")(x))
        logits = to_logits(embed, Norm(cfg, name="mlm_norm")(h), lm_head(self, cfg))
        if cfg.use_bias:
            bias = self.param("mlm_bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                       ("vocab",)),
                              (cfg.vocab_size,), dtype_of(cfg.param_dtype))
            logits = logits + bias.astype(jnp.float32)
        return logits
