"""The three families' networks built from the shared blocks: `Decoder` (GPT-2, Llama) here,
`Encoder` (BERT) and `EncoderDecoder` (T5, Vaswani) in their own modules; model/family.py
pairs each with its family.

Layers are stacked with `nn.scan` (compile time independent of depth; params gain a leading
`layers` axis) and wrapped in `nn.remat` with a named policy to trade compute for memory
(`model/blocks.py`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.blocks import Block, stack_layers
from model.config import ModelConfig
from model.layers import Embed, Norm, embed_inputs, lm_head, to_logits

Array = jax.Array


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
                 kv_segments: Array | None = None,
                 last_only: bool = False) -> Array | tuple[Array, dict]:
        """With `cache` (see `infer/engine/engine.py`) returns (logits, updated cache). `last_only`
        computes logits at the last position alone ([batch, 1, vocab]): a prefill needs no
        more, and the output projection over a whole prompt would cost it ~vocab/d_model times
        a layer's matmuls per token."""
        cfg = self.config
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(tokens)
        embed = Embed(cfg, name="embed")
        x = embed_inputs(cfg, embed, tokens, positions)
        decode_args = () if cache is None else (cache, cache_index, kv_segments)
        x, cache = stack_layers(Block, cfg, decode=bool(decode_args))(
            x, positions, segment_ids, *decode_args)
        if last_only:
            x = x[:, -1:]
        if not cfg.post_norm:  # a post-norm stack already ends in a norm
            x = Norm(cfg, name="final_norm")(x)
        logits = to_logits(embed, x, lm_head(self, cfg))
        return logits if cache is None else (logits, cache)
