"""Beam search on device: the whole search is one `lax.while_loop` over a model-agnostic step
function, with finished hypotheses kept aside and the KV cache rows reordered by beam.

Ranking (GNMT, Wu et al. 2016, as T5X and Flax's WMT example): a hypothesis of `length` tokens
(EOS included) with summed log-probability `logp` scores `logp / ((5 + length) / 6) ** alpha`.
alpha = 0 ranks by `logp` alone; alpha > 0 favours longer outputs, alpha < 0 shorter ones.

Each step takes the 2K best continuations of the K alive beams. Of the K best among them, those
ending in EOS join the finished set (as in HF: an EOS ranked below K is dropped), the best K that
do not end in EOS stay alive. A batch element stops once no alive beam can still reach its K
best finished scores (an exact bound, so stopping never changes the result); at max length the
alive beams join the finished set unfinished. With K = 1 and alpha = 0 this is greedy decoding.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
# step(tokens int32[batch * beams], cache, index) -> (logits float32[batch * beams, vocab], cache):
# feeds each row's last token at decoder slot `index`.
StepFn = Callable[[Array, Any, Array], tuple[Array, Any]]
# gather(cache, rows int32[batch * beams]) -> the cache with row r taken from row rows[r].
GatherFn = Callable[[Any, Array], Any]


class Beams(NamedTuple):
    """Search state; K = beams, L = max_len. Finished rows are sorted best first."""

    alive_tokens: Array  # int32[batch, K, L]
    alive_logp: Array  # float32[batch, K]; -inf marks an empty beam
    alive_parent: Array  # int32[batch, K]: the beam each alive beam extended in the last step
    tokens: Array  # int32[batch, K, L] finished hypotheses (EOS included)
    lengths: Array  # int32[batch, K]
    scores: Array  # float32[batch, K]: logp / length penalty; -inf marks an empty slot
    logp: Array  # float32[batch, K]: summed log-probability of each finished hypothesis
    done: Array  # bool[batch]


def length_penalty(length: Array | int, alpha: float) -> Array:
    """GNMT's ((5 + length) / 6) ** alpha; a hypothesis scores logp / this."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def init_beams(batch: int, num_beams: int, max_len: int) -> Beams:
    zeros = jnp.zeros((batch, num_beams, max_len), jnp.int32)
    empty = jnp.full((batch, num_beams), -jnp.inf, jnp.float32)
    first = empty.at[:, 0].set(0.0)  # one live beam: the others would only duplicate it
    index = jnp.zeros((batch, num_beams), jnp.int32)
    return Beams(zeros, first, index, zeros, index, empty, empty, jnp.zeros((batch,), bool))


def _take(x: Array, index: Array) -> Array:
    """x[b, index[b, j], ...] for x: [batch, n, ...], index: int32[batch, m]."""
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def _merge(beams: Beams, tokens: Array, lengths: Array, scores: Array, logp: Array) -> Beams:
    """Keeps the K best of the finished set and the new candidates."""
    k = beams.scores.shape[1]
    all_scores = jnp.concatenate([beams.scores, scores], axis=1)
    best, index = jax.lax.top_k(all_scores, k)
    return beams._replace(
        tokens=_take(jnp.concatenate([beams.tokens, tokens], axis=1), index),
        lengths=_take(jnp.concatenate([beams.lengths, lengths], axis=1), index),
        scores=best, logp=_take(jnp.concatenate([beams.logp, logp], axis=1), index))


def advance(beams: Beams, logits: Array, index: Array, *, eos_id: int, alpha: float) -> Beams:
    """One search step. logits: float[batch, K, vocab] of each alive beam's next token, which
    goes to position `index` (so a hypothesis ending there has index + 1 tokens)."""
    batch, k, vocab = logits.shape
    max_len = beams.alive_tokens.shape[2]
    candidates = beams.alive_logp[:, :, None] + jax.nn.log_softmax(
        logits.astype(jnp.float32), axis=-1)
    logp, flat = jax.lax.top_k(candidates.reshape(batch, k * vocab), min(2 * k, k * vocab))
    parent, token = flat // vocab, flat % vocab
    tokens = _take(beams.alive_tokens, parent)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, token[:, :, None], index, axis=2)
    eos = token == eos_id
    rank = jnp.arange(logp.shape[1])[None]
    # A finished element is frozen: nothing enters its finished set any more.
    finishes = eos & (rank < k) & ~beams.done[:, None]
    length = index + 1
    beams = _merge(beams, tokens, jnp.full(token.shape, length, jnp.int32),
                   jnp.where(finishes, logp / length_penalty(length, alpha), -jnp.inf),
                   jnp.where(finishes, logp, -jnp.inf))
    alive_logp, keep = jax.lax.top_k(jnp.where(eos, -jnp.inf, logp), k)
    # The best an alive beam can still score: its logp only falls, and it ends with between
    # length + 1 and max_len tokens, where the penalty is largest at one end.
    best_penalty = jnp.maximum(length_penalty(jnp.minimum(length + 1, max_len), alpha),
                               length_penalty(max_len, alpha))
    bound = alive_logp[:, 0] / best_penalty
    done = beams.done | (beams.scores[:, -1] >= bound)
    return beams._replace(alive_tokens=_take(tokens, keep), alive_logp=alive_logp,
                          alive_parent=_take(parent, keep), done=done)


def finalize(beams: Beams, length: Array, alpha: float) -> Beams:
    """Alive beams (of `length` tokens, no EOS) join the finished set of unfinished elements."""
    scores = jnp.where(beams.done[:, None], -jnp.inf,
                       beams.alive_logp / length_penalty(length, alpha))
    logp = jnp.where(jnp.isfinite(scores), beams.alive_logp, -jnp.inf)
    return _merge(beams, beams.alive_tokens, jnp.full(scores.shape, length, jnp.int32), scores,
                  logp)


def search(first_logits: Array, cache: Any, step: StepFn, gather: GatherFn, *, num_beams: int,
           max_len: int, eos_id: int, alpha: float) -> Beams:
    """Beam search of up to `max_len` tokens. first_logits: float[batch, vocab] for position 0
    (every beam starts from the same prefix); `cache` holds batch * num_beams rows, beam j of
    element b at row b * num_beams + j. Call inside `jax.jit`. Returns the final `Beams`: its
    tokens / lengths / scores / logp are the K best hypotheses per element, best first."""
    batch, vocab = first_logits.shape
    k = num_beams
    beams = advance(init_beams(batch, k, max_len),
                    jnp.broadcast_to(first_logits[:, None], (batch, k, vocab)), 0,
                    eos_id=eos_id, alpha=alpha)
    base = jnp.arange(batch)[:, None] * k

    def cond(carry):
        i, beams, _ = carry
        return (i < max_len) & ~jnp.all(beams.done)

    def body(carry):
        i, beams, cache = carry
        cache = gather(cache, (base + beams.alive_parent).reshape(-1))
        last = jax.lax.dynamic_index_in_dim(beams.alive_tokens, i - 1, axis=2, keepdims=False)
        logits, cache = step(last.reshape(-1), cache, i)
        beams = advance(beams, logits.reshape(batch, k, -1), i, eos_id=eos_id, alpha=alpha)
        return i + 1, beams, cache

    i, beams, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), beams, cache))
    return finalize(beams, i, alpha)


def best_rows(beams: Beams, eos_id: int) -> tuple[list[list[int]], list[float]]:
    """The best hypothesis per element as host ids (EOS excluded) and its score."""
    tokens, lengths, scores = jax.device_get((beams.tokens[:, 0], beams.lengths[:, 0],
                                              beams.scores[:, 0]))
    rows = []
    for row, length in zip(tokens.tolist(), lengths.tolist(), strict=True):
        row = row[:length]
        rows.append(row[:-1] if row and row[-1] == eos_id else row)
    return rows, [float(s) for s in scores]
