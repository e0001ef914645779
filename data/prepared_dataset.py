"""Causal-LM batches from a prepared directory (`python -m data.prepare`): a grain MapDataset of
batches of fixed windows over the memory-mapped token shards; memory does not grow with the corpus.

A split's shards are one flat stream of EOS-terminated documents; row i is the window of tokens
[i * length, (i + 1) * length), its segment ids and positions restarting at every document start
(and at the window's start, which may fall inside a document), as `packed_dataset` gives them.
"""

import dataclasses
import platform

import grain
import numpy as np

from data.options import StreamOptions
from data.token_shards import TOKENIZER, SplitReader, read_manifest
from runtime.errors import UserError

Batch = dict[str, np.ndarray]  # tokens, segment_ids, positions: int32[batch, length]
# Tokens per split read for the unigram baseline, spread over the shards (a bounded cost).
BASELINE_TOKENS = 1 << 21


@dataclasses.dataclass(frozen=True)
class PreparedCorpus:
    """A prepared directory, its manifest checked (sizes and checksums of every shard)."""

    directory: str
    manifest: dict
    fingerprint: dict  # what a workdir records: source, python, num_documents, sha256

    @property
    def tokenizer_path(self) -> str:
        return f"{self.directory}/{TOKENIZER}"

    def reader(self, split: str) -> SplitReader:
        return SplitReader(self.directory, self.manifest, split)


def load_prepared(directory: str, checksums: bool = True) -> PreparedCorpus:
    """The prepared `directory`; a UserError if a shard is missing, truncated or (with
    `checksums`) damaged: every file's sha256 is checked, one pass over the data."""
    manifest = read_manifest(directory, checksums=checksums)
    fingerprint = {**manifest["source"], "python": platform.python_version(),
                   "prepared": directory}
    return PreparedCorpus(directory=directory, manifest=manifest, fingerprint=fingerprint)


def prepared_dataset(corpus: PreparedCorpus, split: str, options: StreamOptions, *,
                     length: int) -> grain.IterDataset:
    """Batches of int32[batch_size, length] tokens, segment_ids, positions of data shard
    `options.shard_index`: it reads windows [shard_index::shard_count] of the split, shuffled by
    the seed (a new order every epoch) when `options.shuffle`. repeat=False: one pass in order,
    the last window and batch padded with zeros (segment_ids 0). The iterator's JSON state is the
    number of batches read."""
    reader = corpus.reader(split)
    if options.repeat:
        windows = reader.num_tokens // length
    else:
        windows = -(-reader.num_tokens // length)
    ds = grain.MapDataset.range(windows)[options.shard_index::options.shard_count]
    if len(ds) == 0:
        raise UserError(f"data shard {options.shard_index} of {options.shard_count} gets no "
                        f"rows of {length} tokens from the {reader.num_tokens} {split} tokens of "
                        f"{corpus.directory}; use more data, a shorter --seq_len or fewer shards")
    if options.shuffle:
        ds = ds.shuffle(seed=options.seed)
    if options.repeat:
        ds = ds.repeat(None)
    # grain batches the window indices and maps whole batches: its cost per element (several
    # layers of Python per index, a future per item) is paid once per row only in the indices.
    ds = ds.batch(options.batch_size, drop_remainder=options.repeat)
    ds = ds.map(lambda windows: read_batch(reader, windows, length, options.batch_size))
    # Each reader thread a batch in hand and one ahead; more buys nothing (tokens are read, not
    # computed) and holds memory.
    return ds.to_iter_dataset(grain.ReadOptions(
        num_threads=options.num_threads, prefetch_buffer_size=max(2, 2 * options.num_threads)))


def read_batch(reader: SplitReader, windows: np.ndarray, length: int, batch_size: int) -> Batch:
    """Rows `windows` (int[rows], rows <= batch_size) of the split, zero rows after them: one
    read of every window and one pass over the 2-D arrays for segments and positions."""
    starts = np.full(batch_size, reader.num_tokens, dtype=np.int64)  # the end: reads nothing
    starts[:len(windows)] = np.asarray(windows, dtype=np.int64) * length
    tokens, doc_starts = reader.windows(starts, length)
    doc_starts[:, 0] = True  # a window inside a document starts a new segment there
    segment_ids = np.cumsum(doc_starts, axis=1, dtype=np.int32)
    column = np.arange(length, dtype=np.int32)
    positions = column - np.maximum.accumulate(np.where(doc_starts, column, 0), axis=1)
    sizes = np.minimum(reader.num_tokens - starts, length)
    if sizes.min() < length:  # the last window of one pass, or padding rows
        padding = column >= sizes[:, None]
        segment_ids[padding] = 0
        positions[padding] = 0
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


def prepared_unigram_loss(corpus: PreparedCorpus) -> float:
    """data/unigram.py's baseline (eval cross-entropy under add-one-smoothed train counts) on
    up to BASELINE_TOKENS tokens of each split, taken from the start of every shard."""
    vocab = int(corpus.manifest["vocab_size"])
    train, held_out = _sample_tokens(corpus.reader("train")), _sample_tokens(corpus.reader("eval"))
    counts = np.bincount(train, minlength=vocab)
    log_probs = np.log(counts + 1.0) - np.log(counts.sum() + vocab)
    return float(-log_probs[held_out].mean())


def _sample_tokens(reader: SplitReader) -> np.ndarray:
    per_shard = max(1, BASELINE_TOKENS // max(len(reader.parts), 1))
    pieces = [reader.window(int(s), int(min(per_shard, e - s)))[0]
              for s, e in zip(reader.starts[:-1], reader.starts[1:], strict=True)]
    return np.concatenate(pieces)
