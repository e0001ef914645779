"""Generation for encoder-decoder models (T5, Vaswani): each source is encoded once, then the
decoder runs on device in a `lax.while_loop`, greedy / sampled or as a beam search.

Sources of different lengths share a batch by right padding: padding has segment 0, so neither
the encoder nor cross-attention lets a real token see it. Every target starts from BOS at
position 0, so the decoder side needs no padding and cache slot i holds target position i. The
first decoder step projects the encoder output to each layer's cross keys/values once; the loop
then carries only the self-attention cache (each step writes its slot in place, see
`model/blocks.py` CarriedCacheBlock) and reads the cross keys/values as a loop constant.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from data.sentencepiece_tokenizer import BOS_ID
from infer.engine import beam
from infer.engine.engine import STREAM_CHUNK, chunked, streamed
from infer.engine.sampling import Sampling, sample
from model import sharding
from model.encoder_decoder import init_cache
from runtime.errors import UserError


def right_pad(sources: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32[batch, longest], segments int32[batch, longest]: 1 real, 0 padding)."""
    if not sources or any(len(s) == 0 for s in sources):
        raise UserError("every source needs at least one token")
    longest = max(len(s) for s in sources)
    tokens = np.full((len(sources), longest), pad_id, np.int32)
    segments = np.zeros_like(tokens)
    for row, source in enumerate(sources):
        tokens[row, :len(source)] = source
        segments[row, :len(source)] = 1
    return tokens, segments


def start_id_of(loaded) -> int:
    """The decoder's start token: an imported model's decoder_start_token_id (T5: its pad id),
    else the tokenizer's BOS, else our tokenizers' id 2."""
    if loaded.token_ids.get("decoder_start_token_id") is not None:
        return loaded.token_ids["decoder_start_token_id"]
    if loaded.tokenizer is not None and loaded.tokenizer.bos_id >= 0:
        return loaded.tokenizer.bos_id
    return BOS_ID


def _start(model, params, sources, segments, *, length: int, bos_id: int):
    """Encodes and runs the decoder on BOS: (logits float32[batch, vocab] for target position
    0, a `length`-slot self-attention cache holding BOS's keys/values, the cross keys/values)."""
    encoded = model.apply(params, sources, segments, method="encode")
    cache = init_cache(model.config, sources.shape[0], length)
    bos = jnp.full((sources.shape[0], 1), bos_id, jnp.int32)
    logits, cache = model.apply(params, bos, encoded, segments, cache=cache, cache_index=0,
                                method="decode")
    return logits[:, -1], cache["self"], cache["cross"]


def _step(model, params, tokens, segments, self_cache, cross, index):
    """Feeds tokens int32[rows] at cache slot `index`: (logits float32[rows, vocab], the self
    cache). `cross` is only read: it stays out of the loop's carry, so no step copies it."""
    logits, cache = model.apply(params, tokens[:, None], None, segments,
                                cache={"self": self_cache, "cross": cross}, cache_index=index,
                                method="decode")
    return logits[:, -1], cache["self"]


def _prefill(model, params, sources, segments, rng, max_new_tokens: int, sampling: Sampling,
             eos_id: int, bos_id: int) -> tuple[tuple, dict]:
    """Encode + the BOS step: (the decode loop's first carry (step 1, the first token, the output
    buffer holding it, done flags, self cache, rng), the cross keys/values)."""
    batch = sources.shape[0]
    logits, cache, cross = _start(model, params, sources, segments, length=max_new_tokens,
                                  bos_id=bos_id)
    rng, step_rng = jax.random.split(rng)
    token = sample(logits, step_rng, sampling)
    out = jnp.full((batch, max_new_tokens), eos_id, jnp.int32).at[:, 0].set(token)
    return (1, token, out, token == eos_id, cache, rng), cross


def _decode(model, params, carry: tuple, cross: dict, segments, stop, sampling: Sampling,
            eos_id: int) -> tuple:
    """Decode steps from the carry's step until `stop` (or every row's EOS): step i feeds the
    last token through the self cache and records the token it chooses at out[:, i]."""

    def cond(carry):
        i, _, _, done, *_ = carry
        return (i < stop) & ~jnp.all(done)

    def body(carry):
        i, token, out, done, cache, rng = carry
        logits, cache = _step(model, params, token, segments, cache, cross, i)
        rng, step_rng = jax.random.split(rng)
        token = sample(logits, step_rng, sampling)
        out = out.at[:, i].set(jnp.where(done, eos_id, token))
        done = done | (token == eos_id)
        return i + 1, token, out, done, cache, rng

    return jax.lax.while_loop(cond, body, carry)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "eos_id",
                                             "bos_id"))
def _sample_loop(model, params, sources, segments, rng, *, max_new_tokens: int,
                 sampling: Sampling, eos_id: int, bos_id: int):
    carry, cross = _prefill(model, params, sources, segments, rng, max_new_tokens, sampling,
                            eos_id, bos_id)
    _, _, out, *_ = _decode(model, params, carry, cross, segments, max_new_tokens, sampling,
                            eos_id)
    return out


_begin = jax.jit(_prefill, static_argnames=("model", "max_new_tokens", "sampling", "eos_id",
                                            "bos_id"))
# The carry (the self cache above all) is donated: each chunk updates it in place.
_advance = jax.jit(_decode, static_argnames=("model", "sampling", "eos_id"),
                   donate_argnames=("carry",))


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "num_beams", "eos_id",
                                             "bos_id", "alpha"))
def _beam_search(model, params, sources, segments, *, max_new_tokens: int, num_beams: int,
                 eos_id: int, bos_id: int, alpha: float) -> beam.Beams:
    # Encoder and BOS step once per source; then each row is repeated per beam. The cross
    # keys/values are the same for every beam of a source: they are a constant, only the self
    # cache is reordered when beams change parents.
    logits, cache, cross = _start(model, params, sources, segments, length=max_new_tokens,
                                  bos_id=bos_id)
    cache, cross = jax.tree.map(lambda x: jnp.repeat(x, num_beams, axis=1), (cache, cross))
    segments = jnp.repeat(segments, num_beams, axis=0)

    def step(tokens, cache, index):
        return _step(model, params, tokens, segments, cache, cross, index)

    def gather(cache, rows):
        return jax.tree.map(lambda x: jnp.take(x, rows, axis=1), cache)

    return beam.search(logits, cache, step, gather, num_beams=num_beams,
                       max_len=max_new_tokens, eos_id=eos_id, alpha=alpha)


def check_lengths(loaded, sources: list[list[int]], max_new_tokens: int) -> None:
    cfg = loaded.config
    if max_new_tokens <= 0:
        raise UserError(f"--max_new_tokens must be positive, got {max_new_tokens}")
    if max_new_tokens > cfg.max_len:
        raise UserError(f"--max_new_tokens={max_new_tokens} exceeds the model's target length of "
                        f"{cfg.max_len}; lower it")
    longest = max((len(s) for s in sources), default=0)
    if longest > cfg.max_len:
        raise UserError(f"a source of {longest} tokens exceeds the model's context of "
                        f"{cfg.max_len}; shorten it")


def _rows(out: jax.Array, eos_id: int) -> list[list[int]]:
    rows = []
    for row in np.asarray(jax.device_get(out)).tolist():
        rows.append(row[:row.index(eos_id)] if eos_id in row else row)
    return rows


def generate(loaded, sources: list[list[int]], max_new_tokens: int,
             sampling: Sampling | None = None, seed: int = 0, eos_id: int = -1,
             bos_id: int | None = None, on_token=None) -> list[list[int]]:
    """Generated target ids per source (EOS and anything after it excluded), greedy or sampled.
    Sources are used as given (training appends EOS to each; see `data/seq2seq.py`).
    `on_token(step, tokens, done)` is called on the host for every step in order, the first
    after the BOS step, then after each STREAM_CHUNK decode steps."""
    check_lengths(loaded, sources, max_new_tokens)
    tokens, segments = right_pad(sources)
    bos_id = start_id_of(loaded) if bos_id is None else bos_id
    rng, sampling = jax.random.PRNGKey(seed), (sampling or Sampling()).validated()
    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        if on_token is None:
            out = _sample_loop(loaded.model, loaded.params, tokens, segments, rng,
                               max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id,
                               bos_id=bos_id)
        else:
            # The prefill and 8-step decode programs stream as the decoder engine's do; the
            # cross keys/values stay a constant outside the donated carry.
            model, params = loaded.model, loaded.params
            first, cross = _begin(model, params, tokens, segments, rng, max_new_tokens,
                                  sampling, eos_id, bos_id)
            chunks = chunked(lambda: first, lambda carry, stop: _advance(
                model, params, carry, cross, segments, stop, sampling, eos_id),
                max_new_tokens, eos_id, STREAM_CHUNK)
            out = streamed(chunks, len(sources), max_new_tokens, eos_id, on_token)
    return _rows(out, eos_id)


def beam_search(loaded, sources: list[list[int]], max_new_tokens: int, num_beams: int,
                length_penalty: float = 1.0, eos_id: int = -1,
                bos_id: int | None = None) -> beam.Beams:
    """All `num_beams` final hypotheses per source, best first (see `infer/engine/beam.py`);
    `beam.best_rows` turns them into the best ids per source."""
    check_lengths(loaded, sources, max_new_tokens)
    if num_beams < 1:
        raise UserError(f"--num_beams must be >= 1, got {num_beams}")
    if not np.isfinite(length_penalty):
        raise UserError(f"--length_penalty must be a finite number, got {length_penalty}")
    tokens, segments = right_pad(sources)
    bos_id = start_id_of(loaded) if bos_id is None else bos_id
    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        return _beam_search(loaded.model, loaded.params, tokens, segments,
                            max_new_tokens=max_new_tokens, num_beams=num_beams, eos_id=eos_id,
                            bos_id=bos_id, alpha=float(length_penalty))
