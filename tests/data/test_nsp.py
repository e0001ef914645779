"""Tests for data/nsp.py: the [CLS] A [SEP] B [SEP] layout, balanced next-sentence labels, and that
B really continues A (or comes from another document) as its label says."""

import itertools

import numpy as np
import pytest

from data.mlm import special_ids
from data.nsp import IS_NEXT, IS_RANDOM, fit_pair, nsp_dataset
from data.options import StreamOptions
from data.sentencepiece_tokenizer import Tokenizer
from runtime.errors import UserError

LENGTH = 64
# Every line names its document and line, so any piece of text tells where it came from.
DOCS = ["".join(f"<{d:02d}:{k:02d}>\n" for k in range(40)) for d in range(30)]


def _pairs(tok: Tokenizer, n: int, **overrides) -> list[dict]:
    options = StreamOptions(**{"batch_size": 16, "seed": 0, **overrides})
    return list(itertools.islice(iter(nsp_dataset(DOCS, tok, options, length=LENGTH)), n))


def _unmasked(batch: dict) -> np.ndarray:
    return np.where(batch["weights"] == 1, batch["targets"], batch["tokens"])


def test_layout_and_masking(bert_tokenizer: Tokenizer):
    ids = special_ids(bert_tokenizer)
    chosen = maskable = 0
    for batch in _pairs(bert_tokenizer, 8):
        assert batch["nsp_labels"].shape == batch["nsp_weights"].shape == (16,)
        assert np.all(batch["nsp_weights"] == 1)
        for key in ("tokens", "targets", "weights", "segment_ids", "positions", "token_types"):
            assert batch[key].shape == (16, LENGTH) and batch[key].dtype == np.int32
        for row, seg, pos, types, weights in zip(_unmasked(batch), batch["segment_ids"],
                                                 batch["positions"], batch["token_types"],
                                                 batch["weights"]):
            n = int(seg.sum())
            assert np.all(seg[:n] == 1) and not seg[n:].any() and not row[n:].any()
            np.testing.assert_array_equal(pos[:n], np.arange(n))
            assert row[0] == ids.cls and row[n - 1] == ids.sep
            seps = np.flatnonzero(row == ids.sep)
            assert len(seps) == 2 and seps[1] == n - 1 and 1 < seps[0] < n - 2
            expected_types = np.zeros(LENGTH, np.int32)
            expected_types[seps[0] + 1 : n] = 1
            np.testing.assert_array_equal(types, expected_types)
            assert not np.any(weights[[0, seps[0], n - 1]])  # [CLS] and [SEP] are never chosen
            assert not weights[n:].any()
            chosen += weights.sum()
            maskable += n - 3
    assert abs(chosen / maskable - 0.15) < 0.02


def test_labels_balanced_and_b_follows_a_when_labelled_next(bert_tokenizer: Tokenizer):
    tok, ids = bert_tokenizer, special_ids(bert_tokenizer)
    labels, checked = [], 0
    for batch in _pairs(tok, 40):
        for row, label in zip(_unmasked(batch), batch["nsp_labels"]):
            sep = np.flatnonzero(row == ids.sep)
            text_a, text_b = tok.decode(row[1 : sep[0]]), tok.decode(row[sep[0] + 1 : sep[1]])
            docs_a = {d for d, doc in enumerate(DOCS) if text_a in doc}
            docs_b = {d for d, doc in enumerate(DOCS) if text_b in doc}
            assert len(docs_a) == 1 and len(docs_b) == 1  # each side is one document's text
            if label == IS_NEXT:
                assert docs_a == docs_b and text_a + text_b in DOCS[docs_a.pop()]
            else:
                assert label == IS_RANDOM and docs_a != docs_b
            labels.append(int(label))
            checked += 1
    assert checked == 640
    assert abs(np.mean(labels) - 0.5) < 0.06


def test_pairs_cover_the_documents_and_change_each_epoch(bert_tokenizer: Tokenizer):
    # Each document is 40 lines of 8 characters; chunks of <= 90 characters (3 characters a token
    # times half of the 61 tokens of room) hold 11, 11, 11 and 7 lines: 3 pairs a document.
    epoch = _pairs(bert_tokenizer, 10, shuffle=False, repeat=False, batch_size=64)
    again = _pairs(bert_tokenizer, 10, shuffle=False, repeat=False, batch_size=64)
    assert len(epoch) == 2 and len(again) == 2
    for a, b in zip(epoch, again):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    weights = np.concatenate([b["nsp_weights"] for b in epoch])
    np.testing.assert_array_equal(weights, np.arange(128) < 90)  # last batch padded with zeros
    assert not epoch[1]["segment_ids"][26:].any()
    # With repeat=True the next epoch pairs the same As with fresh labels (and masks).
    stream = _pairs(bert_tokenizer, 3, shuffle=False, batch_size=64)
    labels = np.concatenate([b["nsp_labels"] for b in stream])
    sep = special_ids(bert_tokenizer).sep
    rows = np.concatenate([_unmasked(b) for b in stream])
    a_ends = np.stack([row[np.argmax(row == sep) - 4 : np.argmax(row == sep)] for row in rows])
    np.testing.assert_array_equal(a_ends[:90], a_ends[90:180])  # A keeps its end when cut
    np.testing.assert_array_equal(labels[:90], epoch[0]["nsp_labels"].tolist()
                                  + epoch[1]["nsp_labels"][:26].tolist())
    assert np.mean(labels[:90] != labels[90:180]) > 0.3


def test_fit_pair_keeps_the_seam():
    a, b = np.arange(10), np.arange(100, 120)
    fa, fb = fit_pair(a, b, 12)
    np.testing.assert_array_equal(fa, np.arange(4, 10))  # A keeps its end
    np.testing.assert_array_equal(fb, np.arange(100, 106))  # B keeps its start
    fa, fb = fit_pair(a[:2], b, 12)
    assert len(fa) == 2 and len(fb) == 10  # room A does not use goes to B
    fa, fb = fit_pair(a[:3], b[:4], 12)
    assert len(fa) == 3 and len(fb) == 4


def test_bad_inputs_raise_user_error(bert_tokenizer: Tokenizer, small_tokenizer: Tokenizer):
    with pytest.raises(UserError, match="at least 2"):
        nsp_dataset(DOCS[:1], bert_tokenizer, StreamOptions(batch_size=2, seed=0), length=LENGTH)
    with pytest.raises(UserError, match="length >= 5"):
        nsp_dataset(DOCS, bert_tokenizer, StreamOptions(batch_size=2, seed=0), length=4)
    with pytest.raises(UserError, match="no next sentence"):
        nsp_dataset(["a\n", "b\n"], bert_tokenizer, StreamOptions(batch_size=2, seed=0),
                    length=LENGTH)
    with pytest.raises(UserError, match="mask_rate must be in"):
        nsp_dataset(DOCS, bert_tokenizer, StreamOptions(batch_size=2, seed=0), length=LENGTH,
                    mask_rate=0.0)
    with pytest.raises(UserError, match=r"\[MASK\]"):
        nsp_dataset(DOCS, small_tokenizer, StreamOptions(batch_size=2, seed=0), length=LENGTH)
