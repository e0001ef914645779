"""Batches of independent fixed-shape examples: shard → shuffle → repeat → featurize → batch.

The unpacked formats (sentence pairs, seq2seq, classification) share it; its state is plain JSON.
"""

from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from data.options import StreamOptions
from runtime.errors import UserError

Batch = dict[str, np.ndarray]
# Turns one item into a dict of fixed-shape int32 arrays; the generator is seeded by (seed, shard,
# position in the stream), so features are deterministic and change from epoch to epoch.
Featurize = Callable[[Any, np.random.Generator], dict[str, np.ndarray]]


def shard_items(
    items: Sequence[Any], shard_index: int, shard_count: int, what: str = "examples"
) -> list[Any]:
    """Data shard `shard_index`'s share `items[shard_index::shard_count]`, never empty."""
    if not 0 <= shard_index < shard_count:
        raise UserError(f"shard_index={shard_index} must be in [0, {shard_count}).")
    share = list(items)[shard_index::shard_count]
    if not share:
        raise UserError(
            f"data shard {shard_index} of {shard_count} gets no {what} out of "
            f"{len(items)}; use more data or fewer shards (--data_shards, or hosts)."
        )
    return share


def example_dataset(
    items: Sequence[Any], featurize: Featurize, options: StreamOptions
) -> grain.IterDataset:
    """Batches of `featurize(item, rng)` over `items` (data shard `options.shard_index`'s share,
    see `shard_items`).

    Each element stacks the featurized dicts into arrays with a leading `batch_size` axis. With
    repeat=True the stream is infinite and reshuffled every epoch; with repeat=False it is one
    pass whose last partial batch is padded with all-zero rows so shapes stay static. The
    featurize generator depends on (seed, shard_index, position in the stream).
    `iter(ds).get_state()` is a small JSON-able dict that `set_state` restores exactly.
    """
    batch_size, repeat = options.batch_size, options.repeat
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}.")
    ds = grain.MapDataset.source(list(items))
    if options.shuffle:
        ds = ds.shuffle(seed=options.seed)
    if repeat:
        ds = ds.repeat(None)  # grain reshuffles each epoch; random_map indexes the whole stream
    ds = ds.random_map(
        featurize, seed=derived_seed(options.seed, options.shard_index, "featurize")
    )
    ds = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=options.num_threads, prefetch_buffer_size=max(128, 4 * batch_size)
        )
    )
    ds = ds.batch(batch_size, drop_remainder=repeat)
    if not repeat:
        ds = ds.map(lambda batch: pad_batch(batch, batch_size))
    return ds


def derived_seed(seed: int, shard_index: int, purpose: str) -> int:
    """A 32-bit seed for one random stage of one data shard, independent of the shuffle seed."""
    tag = int.from_bytes(purpose.encode(), "little") % 2**32
    return int(np.random.SeedSequence([seed % 2**32, shard_index, tag]).generate_state(1)[0])


def pad_batch(batch: Batch, batch_size: int) -> Batch:
    """Pads every array of a short last batch with zero rows up to `batch_size`."""
    missing = batch_size - next(iter(batch.values())).shape[0]
    if missing == 0:
        return batch
    return {k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}


def pad_row(ids: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """tokens, segment_ids (1 on ids, 0 after) and positions of one unpacked row of `length`."""
    n = len(ids)
    tokens = np.zeros(length, np.int32)
    tokens[:n] = ids
    segment_ids = (np.arange(length) < n).astype(np.int32)
    positions = np.where(segment_ids > 0, np.arange(length), 0).astype(np.int32)
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}
