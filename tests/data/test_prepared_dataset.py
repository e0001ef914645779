"""data/prepared_dataset.py: every batch equals rows cut one at a time from the documents as
written (segments and positions counted out token by token), for each option, and the iterator
resumes exactly from its JSON state; SplitReader.window reads that same stream.

The shards are written directly (no tokenizer): a shard smaller than a row, an empty one, and
documents of one token and of several rows, so windows cross two and three shards.
"""

import itertools
import json

import grain
import numpy as np
import pytest

from data.options import StreamOptions
from data.prepared_dataset import PreparedCorpus, prepared_dataset
from data.token_shards import SplitWriter

EOS, LENGTH, BATCH = 2, 29, 3
# Document lengths of each shard, per split: shard 1 (20 train tokens) is shorter than a row, so
# a window spans shards 0, 1 and 3; shard 2 has no train tokens; 250 tokens span several rows.
DOCS = {"train": [[40, 1, 77, 13, 96, 1, 1, 58, 120, 93], [7, 1, 12], [], [250, 3, 61, 1, 402]],
        "eval": [[40, 90], [], [71], [1]]}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[PreparedCorpus, dict]:
    """The prepared corpus, and each split's documents as one list of (token, starts a document)
    in shard order, as they were written."""
    directory = str(tmp_path_factory.mktemp("prepared"))
    rng = np.random.default_rng(0)
    shards, streams = [], {split: [] for split in DOCS}
    for index in range(len(DOCS["train"])):
        entry = {}
        for split, per_shard in DOCS.items():
            writer = SplitWriter(directory, split, index, np.dtype(np.uint16))
            for n in per_shard[index]:
                doc = rng.integers(3, 500, size=n)
                doc[-1] = EOS
                writer.add(doc)
                streams[split] += [(int(t), i == 0) for i, t in enumerate(doc)]
            entry[split] = writer.finish()
        shards.append(entry)
    corpus = PreparedCorpus(directory=directory, manifest={"dtype": "uint16", "shards": shards},
                            fingerprint={})
    return corpus, streams


@pytest.fixture(scope="module")
def corpus(written) -> PreparedCorpus:
    return written[0]


def _reference_row(stream: list[tuple[int, bool]], window: int) -> dict[str, np.ndarray]:
    """Row `window` as the loader defines it, one token at a time."""
    start = window * LENGTH
    size = min(LENGTH, len(stream) - start)
    tokens, doc_starts = zip(*stream[start:start + size], strict=True)
    segment_ids, positions, segment, position = [], [], 0, 0
    for i in range(size):
        if i == 0 or doc_starts[i]:  # the row's start begins a segment too
            segment, position = segment + 1, 0
        segment_ids.append(segment)
        positions.append(position)
        position += 1
    pad = [0] * (LENGTH - size)
    return {"tokens": np.asarray(list(tokens) + pad, dtype=np.int32),
            "segment_ids": np.asarray(segment_ids + pad, dtype=np.int32),
            "positions": np.asarray(positions + pad, dtype=np.int32)}


def _reference_batches(stream: list[tuple[int, bool]], options: StreamOptions,
                       count: int) -> list[dict]:
    """The first `count` batches (all of them for one pass): windows [shard_index::shard_count]
    in grain's shuffle order (new every epoch), the last batch of one pass padded with zeros."""
    windows = len(stream) // LENGTH if options.repeat else -(-len(stream) // LENGTH)
    order = grain.MapDataset.range(windows)[options.shard_index::options.shard_count]
    if options.shuffle:
        order = order.shuffle(seed=options.seed)
    if options.repeat:
        order = order.repeat(None)
    rows = [_reference_row(stream, int(w))
            for w in itertools.islice(order, count * options.batch_size)]
    batches = []
    for i in range(0, len(rows), options.batch_size):
        group = rows[i:i + options.batch_size]
        group += [{k: np.zeros(LENGTH, np.int32) for k in group[0]}] * (
            options.batch_size - len(group))
        batches.append({k: np.stack([row[k] for row in group]) for k in group[0]})
    return batches


def _assert_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for n, (a, b) in enumerate(zip(got, want, strict=True)):
        assert set(a) == set(b) == {"tokens", "segment_ids", "positions"}
        for key in b:
            assert a[key].dtype == np.int32 and a[key].shape == (BATCH, LENGTH), (n, key)
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"batch {n} {key}")


def test_fixture_windows_cross_shards(corpus):
    reader = corpus.reader("train")
    assert len(reader.parts) == 3  # the empty shard is skipped
    inner = reader.starts[1:-1]
    crossing = [w for w in range(reader.num_tokens // LENGTH)
                if ((w * LENGTH < inner) & (inner < (w + 1) * LENGTH)).sum() == 2]
    assert crossing  # a window over three shards
    assert corpus.reader("eval").num_tokens % LENGTH  # one pass ends in a partial window


@pytest.mark.parametrize("split", ["train", "eval"])
def test_window_reads_the_written_stream(written, split):
    corpus, streams = written
    reader = corpus.reader(split)
    tokens, doc_starts = (np.asarray(column) for column in zip(*streams[split], strict=True))
    assert reader.num_tokens == len(tokens)
    for start in range(reader.num_tokens):
        for length in (1, LENGTH, 3 * LENGTH):
            size = min(length, reader.num_tokens - start)
            got_tokens, got_starts = reader.window(start, size)
            np.testing.assert_array_equal(got_tokens, tokens[start:start + size])
            np.testing.assert_array_equal(got_starts, doc_starts[start:start + size])


@pytest.mark.parametrize("shard", [(0, 1), (0, 2), (1, 2)])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("repeat", [True, False])
def test_batches_equal_rows_cut_one_by_one(written, shard, shuffle, repeat):
    corpus, streams = written
    options = StreamOptions(batch_size=BATCH, seed=7, shuffle=shuffle, repeat=repeat,
                            shard_index=shard[0], shard_count=shard[1], num_threads=1)
    for split, stream in streams.items():
        ds = prepared_dataset(corpus, split, options, length=LENGTH)
        if repeat:  # past two epochs of every shard: the reshuffle and the wrap-around
            count = 2 * len(stream) // LENGTH // BATCH + 3
            got = list(itertools.islice(iter(ds), count))
        else:
            got = list(ds)
            count = len(got)
            assert count == -(-len(range(shard[0], -(-len(stream) // LENGTH), shard[1]))
                              // BATCH)
        _assert_equal(got, _reference_batches(stream, options, count))


@pytest.mark.parametrize("repeat", [True, False])
def test_json_state_resumes_the_same_batches(corpus, repeat):
    options = StreamOptions(batch_size=BATCH, seed=3, repeat=repeat, shard_index=1,
                            shard_count=2, num_threads=1)
    ds = prepared_dataset(corpus, "train", options, length=LENGTH)
    it = iter(ds)
    for _ in range(2):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    want = list(itertools.islice(it, 4))
    resumed = iter(prepared_dataset(corpus, "train", options, length=LENGTH))
    resumed.set_state(state)
    _assert_equal(list(itertools.islice(resumed, 4)), want)
