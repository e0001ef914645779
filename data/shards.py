"""The data stream as a fixed number of shards, so that batches do not depend on the host count.

Every pipeline in data/ reads one shard (`shard_index` of `shard_count`) of the documents or
examples with its own seeds and yields `batch_size / shard_count` rows a batch. The global batch
is shard 0's rows, then shard 1's, ...; a host reads the consecutive shards whose rows it feeds.
With the shard count fixed (--data_shards), one process with 8 devices and two with 4 each
therefore train on the very same batches, and a checkpoint's place in each shard carries over
from one process count to another.
"""

from collections.abc import Sequence

import grain
import numpy as np

from runtime.errors import UserError

Batch = dict[str, np.ndarray]


def host_shards(shard_count: int, process_index: int, process_count: int) -> range:
    """The consecutive shards host `process_index` of `process_count` reads."""
    if shard_count % process_count:
        raise UserError(f"--data_shards={shard_count} must be a multiple of the number of "
                        f"processes {process_count} (each reads the same number of shards)")
    per_host = shard_count // process_count
    return range(process_index * per_host, (process_index + 1) * per_host)


class ShardedBatches:
    """Batches of several shards side by side (their rows concatenated in shard order).

    A one-pass shard that has run out gives all-padding rows (zeros: weight 0 everywhere) until
    every shard has, as a host that has run out does for the others in a multi-host eval.
    The iterator state is {"shards": [state of each shard's iterator]}.
    """

    def __init__(self, shards: Sequence[grain.IterDataset]):
        self.shards = list(shards)

    def __iter__(self) -> "_ShardedIterator":
        return _ShardedIterator([iter(s) for s in self.shards])


class _ShardedIterator:
    def __init__(self, iterators: list):
        self.iterators = iterators

    def __iter__(self) -> "_ShardedIterator":
        return self

    def __next__(self) -> Batch:
        parts = [next(it, None) for it in self.iterators]
        if all(p is None for p in parts):
            raise StopIteration
        like = next(p for p in parts if p is not None)
        parts = [p if p is not None else {k: np.zeros_like(v) for k, v in like.items()}
                 for p in parts]
        return {k: np.concatenate([p[k] for p in parts]) for k in like}

    def get_state(self) -> dict:
        return {"shards": [it.get_state() for it in self.iterators]}

    def set_state(self, state: dict) -> None:
        for it, shard_state in zip(self.iterators, state["shards"], strict=True):
            it.set_state(shard_state)


def shard_states(state: dict) -> list[dict]:
    """The per-shard states inside one host's iterator state (a single shard's state as is)."""
    return state["shards"] if set(state) == {"shards"} else [state]


def host_state(states: list[dict]) -> dict:
    """One host's iterator state from the states of the shards it reads."""
    return states[0] if len(states) == 1 else {"shards": states}
