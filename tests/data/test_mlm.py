"""Tests for data/mlm.py: the BERT special ids, the 15% / 80-10-10 masking rule, and the packed MLM
stream against the causal-LM rows it masks."""

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.corpus import load_corpus, sample
from data.mlm import mask_tokens, mlm_dataset, ordinary_ids, special_ids
from data.options import StreamOptions
from data.pipeline import packed_dataset
from data.sentencepiece_tokenizer import Tokenizer, load_tokenizer
from runtime.errors import UserError

REPO = Path(__file__).resolve().parents[2]

LENGTH, BATCH = 64, 8


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return sample(load_corpus("stdlib").train, 200_000)


def test_special_ids_come_from_trained_pieces(bert_tokenizer: Tokenizer, small_tokenizer):
    ids = special_ids(bert_tokenizer)
    assert (ids.pad, ids.unk, ids.bos, ids.eos) == (0, 1, 2, 3)
    assert (ids.mask, ids.cls, ids.sep) == (6, 7, 8)
    assert bert_tokenizer.encode("x[MASK]\n").tolist()[1:] == [6, 4]
    assert bert_tokenizer.decode([7, 6, 8]) == "[CLS][MASK][SEP]"
    # The default tokenizer is unchanged and has no BERT pieces, so BERT data refuses it.
    assert small_tokenizer.piece_id("[MASK]") is None
    assert small_tokenizer.encode("\n\t").tolist() == [4, 5]
    with pytest.raises(UserError, match=r"no \[MASK\]/\[CLS\]/\[SEP\] pieces.*--bert_symbols"):
        special_ids(small_tokenizer)
    random_ids = ordinary_ids(bert_tokenizer.vocab_size, ids)
    assert len(random_ids) == bert_tokenizer.vocab_size - 7 and random_ids.min() == 4


def test_tokenizer_cli_adds_bert_symbols(tmp_path: Path):
    data = tmp_path / "code.txt"
    data.write_text("".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(400)))
    out = tmp_path / "bert.model"
    result = subprocess.run(
        [sys.executable, "-m", "data.tokenizer", f"--data={data}", "--vocab_size=300",
         "--bert_symbols", f"--out={out}"],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ids = special_ids(load_tokenizer(str(out)))
    assert (ids.mask, ids.cls, ids.sep) == (6, 7, 8)


def test_masking_rule_statistics():
    rng = np.random.default_rng(0)
    rows, length, mask_id = 4000, 128, 6
    random_ids = np.arange(9, 400, dtype=np.int32)
    tokens = rng.integers(9, 400, size=(rows, length)).astype(np.int32)
    maskable = rng.random((rows, length)) < 0.9
    maskable[0] = False  # a row with nothing to mask
    maskable[1] = False
    maskable[1, 5] = True  # one maskable token: exactly one is chosen
    out = mask_tokens(tokens, maskable, np.random.default_rng(1), mask_id=mask_id,
                      random_ids=random_ids)
    chosen = out["weights"] == 1
    counts = maskable.sum(axis=1)
    expected = np.where(counts > 0, np.maximum(1, np.round(0.15 * counts)), 0)
    np.testing.assert_array_equal(chosen.sum(axis=1), expected)
    assert chosen[1, 5] and chosen[1].sum() == 1
    assert not np.any(chosen & ~maskable)
    assert abs(chosen.sum() / maskable.sum() - 0.15) < 0.002
    # Targets and weights only at chosen positions; elsewhere the input is the original token.
    np.testing.assert_array_equal(out["targets"], np.where(chosen, tokens, 0))
    np.testing.assert_array_equal(out["tokens"][~chosen], tokens[~chosen])
    inputs, n = out["tokens"][chosen], chosen.sum()
    masked = np.mean(inputs == mask_id)
    kept = np.mean(inputs == tokens[chosen])
    replaced = np.mean((inputs != mask_id) & (inputs != tokens[chosen]))
    assert n > 60_000
    assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01 and abs(replaced - 0.1) < 0.01
    assert np.all(np.isin(inputs[inputs != mask_id], random_ids))
    # Random replacements spread over the whole ordinary vocabulary.
    draws = inputs[(inputs != mask_id) & (inputs != tokens[chosen])]
    assert len(np.unique(draws)) > 0.9 * len(random_ids)
    for value in out.values():
        assert value.dtype == np.int32 and value.shape == (rows, length)


def test_mlm_stream_masks_the_packed_rows(bert_tokenizer: Tokenizer, texts: list[str]):
    tok, ids = bert_tokenizer, special_ids(bert_tokenizer)
    options = StreamOptions(batch_size=BATCH, seed=3)
    masked = list(itertools.islice(iter(mlm_dataset(texts, tok, options, length=LENGTH)), 40))
    packed = list(itertools.islice(iter(packed_dataset(texts, tok, options, length=LENGTH)), 40))
    chosen_total = maskable_total = 0
    actions = np.zeros(3)
    for m, p in zip(masked, packed):
        assert set(m) == {"tokens", "targets", "weights", "segment_ids", "positions",
                          "token_types"}
        for value in m.values():
            assert value.shape == (BATCH, LENGTH) and value.dtype == np.int32
        np.testing.assert_array_equal(m["segment_ids"], p["segment_ids"])
        np.testing.assert_array_equal(m["positions"], p["positions"])
        assert not m["token_types"].any()
        chosen = m["weights"] == 1
        maskable = (p["segment_ids"] > 0) & ~np.isin(p["tokens"], ids.all())
        assert not np.any(chosen & ~maskable)  # never EOS, padding or a special piece
        np.testing.assert_array_equal(m["targets"], np.where(chosen, p["tokens"], 0))
        np.testing.assert_array_equal(m["tokens"][~chosen], p["tokens"][~chosen])
        chosen_total += chosen.sum()
        maskable_total += maskable.sum()
        inputs, original = m["tokens"][chosen], p["tokens"][chosen]
        actions += [np.sum(inputs == ids.mask), np.sum(inputs == original),
                    np.sum((inputs != ids.mask) & (inputs != original))]
    assert abs(chosen_total / maskable_total - 0.15) < 0.01
    fractions = actions / actions.sum()
    assert chosen_total > 3000
    np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.03)


def test_masks_differ_between_batches_and_seeds(bert_tokenizer: Tokenizer, texts: list[str]):
    def weights(seed: int) -> list[np.ndarray]:
        ds = mlm_dataset(texts, bert_tokenizer,
                         StreamOptions(batch_size=2, seed=seed, shuffle=False), length=LENGTH)
        return [b["weights"] for b in itertools.islice(iter(ds), 4)]

    first, again, other = weights(0), weights(0), weights(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other))
    assert not np.array_equal(first[0], first[1])


def test_eval_stream_never_masks_padding(bert_tokenizer: Tokenizer):
    docs = [f"def f{i}(x):\n    return x * {i}\n" for i in range(30)]
    batches = list(mlm_dataset(docs, bert_tokenizer,
                               StreamOptions(batch_size=4, seed=0, shuffle=False, repeat=False),
                               length=32))
    padding = np.concatenate([b["segment_ids"] == 0 for b in batches])
    weights = np.concatenate([b["weights"] for b in batches])
    assert padding.sum() > 0 and weights.sum() > 0
    assert not weights[padding].any()
    with pytest.raises(UserError, match="mask_rate"):
        mlm_dataset(docs, bert_tokenizer, StreamOptions(batch_size=4, seed=0), length=32,
                    mask_rate=1.5)
