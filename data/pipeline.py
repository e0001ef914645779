"""The causal-LM input pipeline on grain: shard → shuffle → repeat → tokenize → pack → batch.

Deterministic under a seed and checkpointable: `iter(ds).get_state()` is JSON and restores exactly.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from data.options import StreamOptions
from data.prepared_dataset import PreparedCorpus, prepared_dataset
from data.sentencepiece_tokenizer import Tokenizer
from runtime.errors import UserError

Batch = dict[str, np.ndarray]  # tokens, segment_ids, positions: int32[batch, length]


@dataclasses.dataclass(frozen=True)
class PreparedSplit:
    """One split ("train" or "eval") of a prepared directory: text already tokenized."""

    corpus: PreparedCorpus
    split: str


# What packed rows are made from: documents to tokenize here, or a prepared split.
TextSource = Sequence[str] | PreparedSplit


def packed_rows(source: TextSource, tokenizer: Tokenizer, options: StreamOptions, *,
                length: int) -> grain.IterDataset:
    """The packed batches of `packed_dataset` from documents, or of `prepared_dataset` from a
    prepared split (the same keys and segment/position rules): what mlm and span corrupt."""
    if isinstance(source, PreparedSplit):
        return prepared_dataset(source.corpus, source.split, options, length=length)
    return packed_dataset(source, tokenizer, options, length=length)


def packed_dataset(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    options: StreamOptions,
    *,
    length: int,
) -> grain.IterDataset:
    """Packed batches of data shard's share of `texts` (see `StreamOptions`).

    Each document is cut at line boundaries into pieces of about one row, the pieces are shuffled
    and tokenized (the last piece of a document ends with EOS), then concatenated and split into
    rows of `length` tokens; a piece longer than the room left in a row continues in the next
    row. Every piece is its own segment (nothing is dropped). Each element is a dict of
    int32[batch_size, length] arrays:
      tokens: token ids, 0 (pad) after the last segment of a row.
      segment_ids: 1, 2, 3, ... per document piece in the row; 0 on padding.
      positions: 0, 1, 2, ... restarting at every segment start (so always < length); 0 on padding.

    `options.batch_size` is the per-shard batch; shard `shard_index` reads documents
    `[shard_index::shard_count]`. With repeat=True the stream is infinite, reshuffled every
    epoch, and every batch is full. With repeat=False the stream is one pass over the documents;
    its last partial batch is kept and padded with all-zero rows (segment_ids 0) so shapes stay
    static, so eval code must weight tokens by `segment_ids != 0`.
    """
    batch_size, repeat = options.batch_size, options.repeat
    shard_index, shard_count = options.shard_index, options.shard_count
    if length < 2 or batch_size < 1:
        raise UserError(f"need length >= 2 and batch_size >= 1, got {length} and {batch_size}.")
    if not 0 <= shard_index < shard_count:
        raise UserError(f"shard_index={shard_index} must be in [0, {shard_count}).")
    shard_texts = list(texts)[shard_index::shard_count]
    if not shard_texts:
        raise UserError(
            f"data shard {shard_index} of {shard_count} gets no documents from a corpus "
            f"of {len(texts)}; use a larger corpus or fewer shards (--data_shards, or hosts)."
        )
    eos = np.asarray([tokenizer.eos_id], dtype=np.int32)

    def tokenize(chunk: tuple[str, bool]) -> dict[str, np.ndarray]:
        text, ends_document = chunk
        tokens = tokenizer.encode(text)
        return {"tokens": np.concatenate([tokens, eos]) if ends_document else tokens}

    # Shuffle row-sized pieces, not whole documents: a 5,000-token source file would otherwise
    # fill dozens of consecutive batches and the model would see one file at a time.
    chunks = [c for text in shard_texts for c in split_document(text, CHARS_PER_TOKEN * length)]
    ds = grain.MapDataset.source(chunks)
    if options.shuffle:
        ds = ds.shuffle(seed=options.seed)
    if repeat:
        # grain folds the epoch number into the shuffle seed, so every epoch has a new order.
        ds = ds.repeat(None)
    ds = ds.map(tokenize)
    # Threads only help the tokenizer (SentencePiece releases the GIL); reading is in-memory.
    ds = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=options.num_threads, prefetch_buffer_size=max(128, 4 * batch_size)
        )
    )
    ds = grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": length})
    ds = ds.map(_rename)
    ds = ds.batch(batch_size, drop_remainder=repeat)
    if not repeat:
        ds = ds.map(lambda batch: _pad_batch(batch, batch_size))
    return _JsonStateIterDataset(ds)


# Rough characters per token of a code-trained BPE (3.05 measured on the stdlib): sizes text chunks
# to about one row.
CHARS_PER_TOKEN = 3


def split_document(text: str, max_chars: int) -> list[tuple[str, bool]]:
    """Splits a document at line boundaries into pieces of about `max_chars` (a longer line stays
    whole); the flag marks the piece that ends the document, which alone gets an EOS."""
    pieces, start = [], 0
    while len(text) - start > max_chars:
        cut = text.rfind("\n", start, start + max_chars) + 1
        if cut <= start:  # a single line longer than max_chars
            cut = text.find("\n", start + max_chars) + 1 or len(text)
        pieces.append((text[start:cut], False))
        start = cut
    if start < len(text):
        pieces.append((text[start:], True))
    elif pieces:
        pieces[-1] = (pieces[-1][0], True)
    return pieces


def _rename(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # grain already restarts positions at 0 for the continuation piece of a split document (it
    # writes arange(piece_length) per piece), so only the names change here.
    return {
        "tokens": row["tokens"],
        "segment_ids": row["tokens_segment_ids"],
        "positions": row["tokens_positions"],
    }


def _pad_batch(batch: Batch, batch_size: int) -> Batch:
    missing = batch_size - batch["tokens"].shape[0]
    if missing == 0:
        return batch
    return {k: np.pad(v, ((0, missing), (0, 0))) for k, v in batch.items()}


class _JsonStateIterDataset(grain.IterDataset):
    """Makes the iterator state survive a JSON round trip.

    ConcatThenSplit stores `remainder_slices` as tuples and compares them with a tuple sentinel,
    so the lists JSON gives back would read as "has a remainder" and corrupt the resume.
    """

    def __init__(self, parent: grain.IterDataset):
        super().__init__(parent)

    def __iter__(self) -> grain.DatasetIterator:
        return _JsonStateIterator(self._parent.__iter__())


class _JsonStateIterator(grain.DatasetIterator):
    def __next__(self) -> Batch:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return self._parent.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(_tuple_slices(state))


def _tuple_slices(state: Any) -> Any:
    if isinstance(state, dict):
        return {
            k: (
                {f: tuple(s) for f, s in v.items()} if k == "remainder_slices" else _tuple_slices(v)
            )
            for k, v in state.items()
        }
    if isinstance(state, list):
        return [_tuple_slices(v) for v in state]
    return state
