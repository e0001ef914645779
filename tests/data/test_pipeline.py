"""Tests for data/pipeline.py: packing layout, determinism, exact resume from JSON state, sharding.

A small synthetic corpus with documents both shorter and longer than a row exercises splitting.
"""

import itertools
import json

import numpy as np
import pytest

from data.options import StreamOptions
from data.pipeline import packed_dataset
from data.sentencepiece_tokenizer import Tokenizer
from runtime.errors import UserError

LENGTH, BATCH = 32, 4
DOCS = [
    f"def f{i}(x):\n" + "    x = x + 1\n" * (i % 9) + f"    return x * {i}\n" for i in range(60)
]


def _dataset(tok: Tokenizer, **overrides):
    options = StreamOptions(**{"batch_size": BATCH, "seed": 0, **overrides})
    return packed_dataset(DOCS, tok, options, length=LENGTH)


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(iterator, n))


def _equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
    )


def test_shapes_dtypes_and_positions(small_tokenizer: Tokenizer):
    batches = _take(iter(_dataset(small_tokenizer)), 20)
    for batch in batches:
        assert set(batch) == {"tokens", "segment_ids", "positions"}
        for value in batch.values():
            assert value.shape == (BATCH, LENGTH) and value.dtype == np.int32
        for tokens, segs, pos in zip(batch["tokens"], batch["segment_ids"], batch["positions"]):
            assert segs[0] == 1
            assert np.all(np.diff(segs[segs > 0]) >= 0)  # segment ids never go back
            assert np.all(tokens[segs == 0] == 0) and np.all(pos[segs == 0] == 0)
            for s in range(1, segs.max() + 1):
                np.testing.assert_array_equal(pos[segs == s], np.arange(np.sum(segs == s)))
    # Training rows are full: packing wastes nothing on an infinite stream.
    assert all(np.all(b["segment_ids"] > 0) for b in batches)


def test_rows_reconstruct_documents_in_order(small_tokenizer: Tokenizer):
    tok = small_tokenizer
    expected = np.concatenate([np.append(tok.encode(d), tok.eos_id) for d in DOCS])
    rows = [row for b in _dataset(tok, shuffle=False, repeat=False) for row in b["tokens"]]
    segs = [row for b in _dataset(tok, shuffle=False, repeat=False) for row in b["segment_ids"]]
    stream = np.concatenate([r[s > 0] for r, s in zip(rows, segs)])
    np.testing.assert_array_equal(stream, expected)
    # Inside a row a new segment starts after every EOS (documents never share a segment); long
    # documents are also cut into row-sized pieces at line boundaries, each its own segment.
    for row, seg in zip(rows, segs):
        valid = seg > 0
        new_segment = (seg[1:] != seg[:-1]) & valid[1:]
        after_eos = (row[:-1] == tok.eos_id) & valid[1:]
        assert np.all(new_segment[after_eos])
    lengths = [len(tok.encode(d)) + 1 for d in DOCS]
    assert max(lengths) > LENGTH  # some documents really are split across rows
    assert tok.decode(stream[: lengths[0] - 1]) == DOCS[0]


def test_seed_determinism(small_tokenizer: Tokenizer):
    first = _take(iter(_dataset(small_tokenizer, seed=7)), 5)
    assert _equal(first, _take(iter(_dataset(small_tokenizer, seed=7)), 5))
    assert not _equal(first, _take(iter(_dataset(small_tokenizer, seed=8)), 5))
    unshuffled = _take(iter(_dataset(small_tokenizer, shuffle=False)), 5)
    assert not _equal(first, unshuffled)


def test_epochs_are_reshuffled(small_tokenizer: Tokenizer):
    tok = small_tokenizer
    one_epoch_tokens = sum(len(tok.encode(d)) + 1 for d in DOCS)
    rows_per_epoch = one_epoch_tokens // LENGTH
    batches = _take(iter(_dataset(tok, batch_size=1)), 3 * rows_per_epoch)
    stream = np.concatenate([b["tokens"][0] for b in batches])
    epoch1 = stream[:one_epoch_tokens]
    epoch2 = stream[one_epoch_tokens : 2 * one_epoch_tokens]
    assert sorted(epoch1.tolist()) == sorted(epoch2.tolist())  # same documents...
    assert not np.array_equal(epoch1, epoch2)  # ...in a new order


@pytest.mark.parametrize("consumed", [0, 1, 3, 7])
def test_resume_from_json_state(small_tokenizer: Tokenizer, consumed: int):
    uninterrupted = iter(_dataset(small_tokenizer, num_threads=2))
    _take(uninterrupted, consumed)
    state = json.loads(json.dumps(uninterrupted.get_state()))
    expected = _take(uninterrupted, 5)
    resumed = iter(_dataset(small_tokenizer, num_threads=0))  # thread count is not in the state
    resumed.set_state(state)
    assert _equal(_take(resumed, 5), expected)


def test_resume_mid_document(small_tokenizer: Tokenizer):
    # batch_size=1 makes most checkpoints fall inside a split document (a packing remainder).
    resumed_ok = []
    for consumed in range(1, 12):
        it = iter(_dataset(small_tokenizer, batch_size=1))
        _take(it, consumed)
        state = it.get_state()
        expected = _take(it, 3)
        fresh = iter(_dataset(small_tokenizer, batch_size=1))
        fresh.set_state(json.loads(json.dumps(state)))
        resumed_ok.append(_equal(_take(fresh, 3), expected))
    assert all(resumed_ok)


def test_hosts_see_disjoint_documents(small_tokenizer: Tokenizer):
    tok = small_tokenizer
    eos = tok.eos_id

    def documents(index: int) -> set[str]:
        ds = _dataset(tok, shuffle=False, repeat=False, shard_index=index, shard_count=2)
        stream = np.concatenate(
            [r[s > 0] for b in ds for r, s in zip(b["tokens"], b["segment_ids"])]
        )
        pieces = np.split(stream, np.flatnonzero(stream == eos) + 1)[:-1]
        return {tok.decode(p[:-1]) for p in pieces}

    host0, host1 = documents(0), documents(1)
    assert host0 == set(DOCS[0::2]) and host1 == set(DOCS[1::2])
    assert not host0 & host1


def test_eval_stream_is_finite_and_padded(small_tokenizer: Tokenizer):
    batches = list(_dataset(small_tokenizer, repeat=False, shuffle=False))
    total = sum(len(small_tokenizer.encode(d)) + 1 for d in DOCS)
    assert sum(int(np.sum(b["segment_ids"] > 0)) for b in batches) == total
    assert all(b["tokens"].shape == (BATCH, LENGTH) for b in batches)
    rows = -(-total // LENGTH)
    assert len(batches) == -(-rows // BATCH)
    assert _equal(batches, list(_dataset(small_tokenizer, repeat=False, shuffle=False)))


def test_bad_arguments_raise_user_error(small_tokenizer: Tokenizer):
    with pytest.raises(UserError, match="gets no documents"):
        packed_dataset(DOCS[:1], small_tokenizer,
                       StreamOptions(batch_size=1, seed=0, shard_index=1, shard_count=2), length=8)
    with pytest.raises(UserError, match="length"):
        packed_dataset(DOCS, small_tokenizer, StreamOptions(batch_size=1, seed=0), length=1)


def test_chunks_split_at_lines_and_mark_the_document_end():
    from data.pipeline import split_document

    text = "".join(f"line {i}\n" for i in range(100))
    pieces = split_document(text, 50)
    assert "".join(p for p, _ in pieces) == text
    assert all(len(p) <= 50 and p.endswith("\n") for p, _ in pieces)
    assert [last for _, last in pieces] == [False] * (len(pieces) - 1) + [True]
    assert split_document("x" * 120, 50) == [("x" * 120, True)]  # one long line stays whole
