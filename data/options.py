"""How one data shard's batches are drawn, the options every dataset builder in data/ shares: rows
a batch, seed, shuffling, one pass or endless, which shard, reader threads."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """The stream of batches of data shard `shard_index` of `shard_count`.

    batch_size: rows a batch of this shard (the global batch is shard_count times this).
    seed: the shuffle seed, and the root of the shard's other random stages (data/examples.py
      `derived_seed`).
    shuffle: a new order every epoch when repeating; False keeps the items' order.
    repeat: True for an endless stream of full batches (training), False for one pass whose last
      batch is padded with zero rows (eval).
    shard_index, shard_count: the shard reads items `[shard_index::shard_count]` (data/shards.py).
    num_threads: grain reader threads; they only speed up tokenizing, never change a batch.
    """

    batch_size: int
    seed: int
    shuffle: bool = True
    repeat: bool = True
    shard_index: int = 0
    shard_count: int = 1
    num_threads: int = 2
