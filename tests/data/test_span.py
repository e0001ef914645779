"""Tests for data/span.py: T5's lengths, the noise statistics (15% of tokens in spans of mean 3),
inputs + targets rebuilding the text exactly, and the stream's determinism and JSON resume."""

import itertools
import json

import numpy as np
import pytest

from data.corpus import load_corpus, sample
from data.options import StreamOptions
from data.sentencepiece_tokenizer import Tokenizer, train_tokenizer
from data.span import (
    SENTINELS,
    corrupt,
    corrupted_lengths,
    noise_mask,
    raw_length,
    sentinel_ids,
    span_dataset,
)
from runtime.errors import UserError

LENGTH, BATCH = 64, 8


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sample(load_corpus("stdlib").train, 200_000)


@pytest.fixture(scope="module")
def t5_tokenizer(tmp_path_factory, texts) -> Tokenizer:
    path = tmp_path_factory.mktemp("tokenizer") / "t5.model"
    return train_tokenizer(texts, 700, str(path), extra_symbols=SENTINELS)


def test_lengths_match_t5():
    assert raw_length(512) == (568, 114)  # T5's inputs_length 512: 568 raw tokens, 114 targets
    for length in (8, 16, 64, 100, 128, 333):
        raw, targets = raw_length(length)
        # The most raw tokens whose corrupted input (kept + one sentinel a span + EOS) fits.
        assert corrupted_lengths(raw, 0.15, 3.0)[0] <= length
        assert corrupted_lengths(raw + 1, 0.15, 3.0)[0] > length
        assert targets == corrupted_lengths(raw, 0.15, 3.0)[1]


def test_noise_statistics():
    rng = np.random.default_rng(0)
    length, rows = 200, 2000
    masks = np.stack([noise_mask(length, rng, 0.15, 3.0) for _ in range(rows)])
    assert (masks.sum(1) == 30).all()  # round(0.15 * 200) in every row
    starts = masks & ~np.pad(masks, ((0, 0), (1, 0)))[:, :-1]
    assert (starts.sum(1) == 10).all()  # round(30 / 3) spans: mean length exactly 3
    assert not masks[:, 0].any() and masks[:, -1].all()  # T5: starts kept, ends in noise
    # The span lengths vary (a random composition), and noise is spread over the whole row.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], masks[0].astype(int), [0]])))
    lengths = edges[1::2] - edges[::2]
    assert lengths.sum() == 30 and len(set(lengths.tolist())) > 1
    position_rate = masks.mean(0)
    assert position_rate[20:180].min() > 0.08 and position_rate[20:180].max() < 0.25


def test_inputs_and_targets_rebuild_the_tokens():
    rng = np.random.default_rng(1)
    tokens = rng.integers(200, 700, 57).astype(np.int32)
    sentinels = np.arange(100, 200, dtype=np.int32)
    mask = noise_mask(len(tokens), rng, 0.15, 3.0)
    inputs, targets = corrupt(tokens, mask, sentinels)
    spans = int((mask & ~np.concatenate([[False], mask[:-1]])).sum())
    assert len(inputs) + 1 == corrupted_lengths(57, 0.15, 3.0)[0]
    assert len(targets) + 1 == corrupted_lengths(57, 0.15, 3.0)[1]
    # Each sentinel i in the inputs stands for the tokens after sentinel i in the targets.
    cuts = np.flatnonzero(np.isin(targets, sentinels))
    pieces = {int(targets[c]): targets[c + 1:n] for c, n in zip(cuts, [*cuts[1:], len(targets)])}
    rebuilt = np.concatenate([pieces[int(t)] if t in pieces else [t] for t in inputs])
    np.testing.assert_array_equal(rebuilt, tokens)
    assert list(targets[cuts]) == list(sentinels[:spans])  # in order: <extra_id_0>, 1, ...


def test_batches(t5_tokenizer: Tokenizer, texts):
    ds = span_dataset(texts, t5_tokenizer, StreamOptions(batch_size=BATCH, seed=0), length=LENGTH)
    raw, target_length = raw_length(LENGTH)
    sentinels = sentinel_ids(t5_tokenizer)
    assert sentinels[0] == t5_tokenizer.piece_id("<extra_id_0>")
    noise, tokens = 0, 0
    for batch in itertools.islice(iter(ds), 10):
        assert batch["encoder_tokens"].shape == (BATCH, LENGTH)
        assert batch["decoder_targets"].shape == (BATCH, target_length)
        assert all(v.dtype == np.int32 for v in batch.values())
        # Training rows are full packed rows of `raw` tokens, so every row has the same lengths.
        enc_len = batch["encoder_segment_ids"].sum(1)
        dec_len = batch["decoder_weights"].sum(1)
        assert (enc_len == corrupted_lengths(raw, 0.15, 3.0)[0]).all()
        assert (dec_len == target_length).all()
        last = batch["encoder_tokens"][np.arange(BATCH), enc_len - 1]
        assert (last == t5_tokenizer.eos_id).all()
        # Teacher forcing: the decoder reads BOS + the targets shifted right.
        np.testing.assert_array_equal(batch["decoder_inputs"][:, 0], t5_tokenizer.bos_id)
        np.testing.assert_array_equal(batch["decoder_inputs"][:, 1:],
                                      batch["decoder_targets"][:, :-1])
        spans = np.isin(batch["decoder_targets"], sentinels).sum(1)
        noise += (dec_len - spans - 1).sum()
        tokens += BATCH * raw
    assert abs(noise / tokens - 0.15) < 0.01


def test_deterministic_and_resumable(t5_tokenizer: Tokenizer, texts):
    def make(seed=0, **kw):
        options = StreamOptions(batch_size=4, seed=seed, **kw)
        return span_dataset(texts, t5_tokenizer, options, length=LENGTH)

    def take(it, n):
        return [b["encoder_tokens"].copy() for b in itertools.islice(it, n)]

    first = take(iter(make()), 3)
    assert all((a == b).all() for a, b in zip(first, take(iter(make()), 3)))
    assert not all((a == b).all() for a, b in zip(first, take(iter(make(seed=1)), 3)))
    it = iter(make())
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 3)
    resumed = iter(make())
    resumed.set_state(state)
    assert all((a == b).all() for a, b in zip(take(resumed, 3), expected))
    eval_batches = list(make(shuffle=False, repeat=False))
    assert 1 <= len(eval_batches) and eval_batches[-1]["encoder_tokens"].shape == (4, LENGTH)


def test_refusals(t5_tokenizer: Tokenizer, small_tokenizer: Tokenizer, texts):
    with pytest.raises(UserError, match="--sentinels"):
        span_dataset(texts, small_tokenizer, StreamOptions(batch_size=4, seed=0), length=LENGTH)
    with pytest.raises(UserError, match="needs decoder rows of 14 tokens, got 8"):
        span_dataset(texts, t5_tokenizer, StreamOptions(batch_size=4, seed=0), length=LENGTH,
                     target_length=8)
    with pytest.raises(UserError, match="sentinels"):
        span_dataset(texts, t5_tokenizer, StreamOptions(batch_size=4, seed=0), length=2000)
    with pytest.raises(UserError, match="noise_density"):
        raw_length(64, noise_density=1.5)
