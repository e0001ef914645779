"""Beam search: exact answers on hand-built Markov chains (beam beats greedy, the length penalty
moves the chosen length the expected way), and on encoder-decoder models: one beam is greedy, K
beams over two tokens are the exhaustive K best, scores are the model's own log-probabilities
and never below greedy's."""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.engine import beam, seq2seq
from tests.infer.seq2seq_models import BOS, SOURCES, decoder_logp, random_loaded, sequence_logp

A, B, EOS = 0, 1, 2


@functools.partial(jax.jit, static_argnames=("num_beams", "max_len", "eos_id", "alpha"))
def _chain_search(start, table, *, num_beams, max_len, eos_id, alpha):
    """Beam search over a Markov chain: p(first token) = start [vocab], p(next | prev) =
    table[prev] [vocab, vocab]. The "cache" is a dummy with one row per beam."""
    def step(tokens, cache, index):
        return jnp.log(table)[tokens], cache

    def gather(cache, rows):
        return jnp.take(cache, rows, axis=1)

    return beam.search(jnp.log(start)[None], jnp.zeros((1, num_beams)), step, gather,
                       num_beams=num_beams, max_len=max_len, eos_id=eos_id, alpha=alpha)


def _chain_best(start, table, max_len, alpha):
    """Exhaustive: the best (tokens, score) over every sequence ending at EOS or at max_len."""
    best = None
    for length in range(1, max_len + 1):
        for seq in itertools.product(range(len(start)), repeat=length):
            if EOS in seq[:-1] or (length < max_len and seq[-1] != EOS):
                continue
            logp = math.log(start[seq[0]]) + sum(math.log(table[p][n])
                                                 for p, n in itertools.pairwise(seq))
            score = logp / ((5 + length) / 6) ** alpha
            if best is None or score > best[1]:
                best = (list(seq[:-1] if seq[-1] == EOS else seq), score)
    return best


def _rows(beams, k):
    tokens, lengths, scores = jax.device_get((beams.tokens, beams.lengths, beams.scores))
    return [(tokens[0, j, :lengths[0, j]].tolist(), float(scores[0, j])) for j in range(k)]


def test_beam_keeps_the_hypothesis_greedy_throws_away():
    # a is likelier first, but every continuation of a is flat; b is almost surely followed by EOS.
    start = np.asarray([0.5, 0.4, 0.1])
    table = np.asarray([[0.4, 0.3, 0.3], [0.05, 0.05, 0.9], [1 / 3] * 3])
    greedy = _rows(_chain_search(start, table, num_beams=1, max_len=4, eos_id=EOS, alpha=0.0), 1)
    assert greedy == [([A, A, A, A], pytest.approx(math.log(0.5 * 0.4 ** 3)))]
    found = _rows(_chain_search(start, table, num_beams=2, max_len=4, eos_id=EOS, alpha=0.0), 2)
    assert found == [([B, EOS], pytest.approx(math.log(0.4 * 0.9))),
                     ([A, B, EOS], pytest.approx(math.log(0.5 * 0.3 * 0.9)))]
    assert found[0][1] > greedy[0][1]


def test_length_penalty_moves_the_chosen_length():
    # EOS alone has the highest log-probability, but each further a costs little: a length
    # bonus (alpha > 0) soon prefers longer hypotheses.
    start = np.asarray([0.65, 0.05, 0.3])
    table = np.asarray([[0.5, 0.05, 0.45], [0.3, 0.3, 0.4], [1 / 3] * 3])
    lengths = []
    for alpha in (-1.0, 0.0, 0.5, 1.0, 3.0):
        beams = _chain_search(start, table, num_beams=3, max_len=6, eos_id=EOS, alpha=alpha)
        (tokens, score), = _rows(beams, 1)
        expected_tokens, expected_score = _chain_best(start, table, 6, alpha)
        assert (tokens[:-1] if tokens[-1] == EOS else tokens) == expected_tokens
        assert score == pytest.approx(expected_score, abs=1e-6)
        lengths.append(len(tokens))
    assert lengths == sorted(lengths)  # larger alpha, longer output
    assert lengths == [1, 1, 2, 2, 6]  # EOS alone, a + EOS, six a's unfinished


def test_one_beam_without_penalty_is_greedy():
    loaded = random_loaded("tiny_t5")
    free = seq2seq.generate(loaded, SOURCES, max_new_tokens=8)
    eos = free[0][3]  # row 0 stops early; the others may not
    greedy = seq2seq.generate(loaded, SOURCES, max_new_tokens=8, eos_id=eos)
    beams = seq2seq.beam_search(loaded, SOURCES, 8, num_beams=1, length_penalty=0.0, eos_id=eos)
    rows, scores = beam.best_rows(beams, eos)
    assert rows == greedy
    assert len(rows[0]) == 3
    for source, row, score in zip(SOURCES, rows, scores, strict=True):
        expected = sequence_logp(loaded, source, row, eos, finished=len(row) < 8)
        assert score == pytest.approx(expected, abs=1e-4)


def test_beams_over_two_tokens_are_the_exhaustive_best():
    vocab = 16
    loaded = random_loaded("tiny_t5", vocab_size=vocab)
    source = SOURCES[0]
    beams = seq2seq.beam_search(loaded, [source], 2, num_beams=vocab, length_penalty=0.0)
    every = {}
    for first in range(vocab):
        logp = decoder_logp(loaded, source, [BOS, first])
        for second in range(vocab):
            every[first, second] = logp[0, first] + logp[1, second]
    ranked = sorted(every.items(), key=lambda item: -item[1])[:vocab]
    tokens, scores = jax.device_get((beams.tokens[0], beams.scores[0]))
    assert [tuple(t) for t in tokens.tolist()] == [seq for seq, _ in ranked]
    np.testing.assert_allclose(scores, [s for _, s in ranked], atol=1e-4)


@pytest.mark.parametrize("preset", ["tiny_t5", "tiny_transformer"])
def test_beam_scores_are_model_scores_and_beat_greedy(preset):
    loaded = random_loaded(preset)
    new = 8
    eos = seq2seq.generate(loaded, SOURCES, new)[0][3]
    greedy = seq2seq.generate(loaded, SOURCES, new, eos_id=eos)
    beams = seq2seq.beam_search(loaded, SOURCES, new, num_beams=4, length_penalty=0.0,
                                eos_id=eos)
    tokens, lengths, scores = jax.device_get((beams.tokens, beams.lengths, beams.scores))
    gains = []
    for row, source in enumerate(SOURCES):
        assert np.all(np.diff(scores[row]) <= 0)  # best first
        for j in range(4):  # every hypothesis kept is scored as the model scores it
            hyp = tokens[row, j, :lengths[row, j]].tolist()
            finished = hyp[-1] == eos
            expected = sequence_logp(loaded, source, hyp[:-1] if finished else hyp, eos,
                                     finished)
            assert scores[row, j] == pytest.approx(expected, abs=1e-4)
        greedy_score = sequence_logp(loaded, source, greedy[row], eos, len(greedy[row]) < new)
        gains.append(scores[row, 0] - greedy_score)
    assert min(gains) >= -1e-5 and max(gains) > 0.1, gains
