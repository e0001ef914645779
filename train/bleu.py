"""BLEU and exact match of an encoder-decoder on a fixed set of held-out pairs, from greedy
decodes: the seq2seq objective's task metrics (sacrebleu's corpus BLEU, default 13a tokenization,
effective n-gram order, in 0..100), each beside the score of the best-known source-blind answer,
the most frequent training target written for every example: a model that ignores its encoder
can reach that.

Decoding is short and simple on purpose: the source is encoded once, then every step reruns the
decoder over the whole (causal) target so far; the fast cached path lives in infer/.
"""

import collections
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from data.options import StreamOptions
from data.sentencepiece_tokenizer import Tokenizer
from data.seq2seq import Pair, seq2seq_dataset
from data.seq2seq_text import decode_text
from model import sharding

Array = jax.Array


def greedy_decode(model: nn.Module, params, encoder_tokens: Array, encoder_segment_ids: Array,
                  encoder_positions: Array, length: int, bos: int) -> Array:
    """int32[batch, length]: the argmax continuation of BOS, one token a step, for each source
    row (int32[batch, source_length] inputs as in data/seq2seq.py)."""
    variables = {"params": params}
    encoded = model.apply(variables, encoder_tokens, encoder_segment_ids, encoder_positions,
                          method="encode")
    batch = encoder_tokens.shape[0]
    tokens = jnp.zeros((batch, length + 1), jnp.int32).at[:, 0].set(bos)

    def step(t, tokens):
        logits = model.apply(variables, tokens[:, :length], encoded, encoder_segment_ids,
                             method="decode")
        next_token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, 1, False), axis=-1)
        return jax.lax.dynamic_update_index_in_dim(tokens, next_token.astype(jnp.int32)[:, None],
                                                   t + 1, 1)

    return jax.lax.fori_loop(0, length, step, tokens)[:, 1:]


def most_frequent_target(pairs: Sequence[Pair]) -> str:
    """The target that occurs most often in `pairs` (the first such in order on a tie)."""
    return collections.Counter(pair.target for pair in pairs).most_common(1)[0][0]


def _scores(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, float]:
    """(corpus BLEU in 0..100, fraction of hypotheses equal to their reference)."""
    from sacrebleu.metrics import BLEU  # only seq2seq runs pay the import

    # Effective order: n-gram orders no hypothesis has (targets of 3 words, e.g. "9 March 1987",
    # have no 4-grams) are left out instead of zeroing the score; where every order occurs, as
    # in longer text, the score is sacrebleu's default corpus BLEU exactly.
    bleu = float(BLEU(effective_order=True).corpus_score(list(hypotheses),
                                                         [list(references)]).score)
    exact = float(np.mean([h.strip() == r.strip() for h, r in zip(hypotheses, references)]))
    return bleu, exact


class Bleu:
    """`Bleu(...)(params)` -> {"bleu", "exact_match"} of greedy decodes of `pairs` against their
    untruncated targets, and {"blind_bleu", "blind_exact_match"}: the same scores of `blind` (the
    source-blind answer, e.g. `most_frequent_target(train pairs)`) for every pair. Every host
    builds the same global batches, so the scores are the same everywhere."""

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, pairs: Sequence[Pair], *,
                 source_length: int, target_length: int, batch_size: int, mesh: Mesh,
                 param_shardings, blind: str = ""):
        self.tokenizer, self.references = tokenizer, [pair.target for pair in pairs]
        self.blind = dict(zip(("blind_bleu", "blind_exact_match"),
                              _scores([blind] * len(pairs), self.references)))
        self.mesh, self.target_length = mesh, target_length
        rows = -(-len(pairs) // batch_size) * batch_size
        options = StreamOptions(batch_size=rows, seed=0, shuffle=False, repeat=False,
                                num_threads=0)
        ds = seq2seq_dataset(pairs, tokenizer, options, source_length=source_length,
                             target_length=target_length)
        batch = next(iter(ds))
        keys = ("encoder_tokens", "encoder_segment_ids", "encoder_positions")
        self.batches = [{k: batch[k][i:i + batch_size] for k in keys}
                        for i in range(0, rows, batch_size)]
        self.batch_sharding = sharding.named(mesh, "batch", None)

        def decode(params, b):
            return greedy_decode(model, params, b["encoder_tokens"], b["encoder_segment_ids"],
                                 b["encoder_positions"], target_length, tokenizer.bos_id)

        self.decode = jax.jit(decode, in_shardings=(param_shardings, self.batch_sharding),
                              out_shardings=sharding.replicated(mesh))

    def _global(self, x: np.ndarray) -> Array:
        return jax.make_array_from_callback(x.shape, self.batch_sharding, lambda index: x[index])

    def hypotheses(self, params) -> list[str]:
        out = []
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding.RULES):
            for batch in self.batches:
                ids = jax.device_get(self.decode(params, jax.tree.map(self._global, batch)))
                out.extend(self.text(row) for row in ids)
        return out[: len(self.references)]

    def text(self, ids: np.ndarray) -> str:
        """Decoded text up to the first EOS."""
        ends = np.flatnonzero(ids == self.tokenizer.eos_id)
        return decode_text(self.tokenizer, ids[: ends[0]] if len(ends) else ids)

    def __call__(self, params) -> dict[str, float]:
        bleu, exact = _scores(self.hypotheses(params), self.references)
        return {"bleu": bleu, "exact_match": exact, **self.blind}
