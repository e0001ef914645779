"""The encoder-decoder engine (self cache carried and written in place, cross K/V a loop
constant) equals plain recomputation, token for token: at every step the whole model (encoder
and decoder over the prefix, no cache) is run again, for greedy decoding and for beam search."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.engine import beam, seq2seq
from tests.infer.seq2seq_models import BOS, SOURCES, random_loaded

NEW = 8


def _sources(batch: int) -> list[list[int]]:
    rng = np.random.default_rng(batch)
    return (SOURCES * batch)[:batch] if batch <= len(SOURCES) else [
        rng.integers(3, 500, rng.integers(1, 10)).tolist() for _ in range(batch)]


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, sources, segments, decoder):
    """Full forward: logits [rows, NEW, vocab] of decoder inputs [rows, NEW] (causal, so the
    zeros after the prefix change nothing before them)."""
    return model.apply(params, sources, decoder, segments)


def _greedy_recomputed(loaded, sources: list[list[int]]) -> list[list[int]]:
    tokens, segments = seq2seq.right_pad(sources)
    decoder = np.zeros((len(sources), NEW), np.int32)
    decoder[:, 0] = BOS
    out = np.zeros((len(sources), NEW), np.int32)
    for i in range(NEW):
        logits = _forward(loaded.model, loaded.params, tokens, segments, decoder)
        out[:, i] = np.argmax(np.asarray(logits[:, i]), axis=-1)
        if i + 1 < NEW:
            decoder[:, i + 1] = out[:, i]
    return out.tolist()


@functools.partial(jax.jit, static_argnums=0, static_argnames=("num_beams", "eos_id"))
def _beam_recomputed(model, params, sources, segments, *, num_beams, eos_id):
    """`beam.search` whose "cache" is each beam's decoder inputs: every step reruns the full
    model on them instead of reading a KV cache."""
    rows = sources.shape[0] * num_beams
    sources, segments = (jnp.repeat(x, num_beams, axis=0) for x in (sources, segments))
    decoder = jnp.zeros((rows, NEW), jnp.int32).at[:, 0].set(BOS)
    first = model.apply(params, sources[::num_beams], decoder[::num_beams, :],
                        segments[::num_beams])[:, 0]

    def step(tokens, decoder, index):
        decoder = decoder.at[:, index].set(tokens)
        logits = model.apply(params, sources, decoder, segments)
        return jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False), decoder

    def gather(decoder, rows):
        return jnp.take(decoder, rows, axis=0)

    return beam.search(first, decoder, step, gather, num_beams=num_beams, max_len=NEW,
                       eos_id=eos_id, alpha=0.6)


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("preset", ["tiny_t5", "tiny_transformer"])
def test_greedy_equals_recomputation(preset, batch):
    loaded = random_loaded(preset)
    sources = _sources(batch)
    assert seq2seq.generate(loaded, sources, NEW) == _greedy_recomputed(loaded, sources)


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("preset", ["tiny_t5", "tiny_transformer"])
def test_beam_equals_recomputation(preset, batch):
    loaded = random_loaded(preset)
    sources = _sources(batch)
    eos = seq2seq.generate(loaded, sources, NEW)[0][2]  # some hypotheses finish early
    got = seq2seq.beam_search(loaded, sources, NEW, num_beams=4, length_penalty=0.6,
                              eos_id=eos)
    tokens, segments = seq2seq.right_pad(sources)
    want = _beam_recomputed(loaded.model, loaded.params, tokens, segments, num_beams=4,
                            eos_id=eos)
    got, want = jax.device_get((got, want))
    for name in ("tokens", "lengths", "alive_tokens", "done"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4)
    assert np.isfinite(got.scores[:, 0]).all()
