"""MLM + next-sentence-prediction batches (BERT pretraining): rows [CLS] A [SEP] B [SEP].

B is the chunk of text that follows A in its document half of the time, else a random chunk of
another document; both are masked with the rule of data/mlm.py.
"""

from collections.abc import Sequence

import grain
import numpy as np

from data.examples import example_dataset, pad_row, shard_items
from data.mlm import MASK_RATE, check_mask_rate, mask_tokens, ordinary_ids, special_ids
from data.options import StreamOptions
from data.pipeline import CHARS_PER_TOKEN, split_document
from data.sentencepiece_tokenizer import Tokenizer
from runtime.errors import UserError

IS_NEXT, IS_RANDOM = 0, 1  # nsp_labels, as in BERT and HF transformers
MIN_LENGTH = 5  # [CLS] a [SEP] b [SEP]


class SentencePairs:
    """The documents of one data shard cut at line boundaries into chunks of about half a row.

    `firsts` are the chunks that have a next chunk in their document: each is the A of one pair.
    """

    def __init__(self, texts: Sequence[str], chars_per_chunk: int):
        self.chunks: list[str] = []
        starts, ends = [], []
        for text in texts:
            starts.append(len(self.chunks))
            self.chunks.extend(piece for piece, _ in split_document(text, chars_per_chunk))
            ends.append(len(self.chunks))
        self.doc_starts, self.doc_ends = np.asarray(starts), np.asarray(ends)
        self.chunk_doc = np.repeat(np.arange(len(texts)), self.doc_ends - self.doc_starts)
        self.firsts = [
            i for i in range(len(self.chunks) - 1) if self.chunk_doc[i] == self.chunk_doc[i + 1]
        ]

    def pair(self, first: int, rng: np.random.Generator) -> tuple[str, str, int]:
        """(A, B, nsp_label) for the pair starting at chunk `first`; B is random with p = 1/2."""
        if rng.random() >= 0.5:
            return self.chunks[first], self.chunks[first + 1], IS_NEXT
        doc = int(self.chunk_doc[first])
        other = int(rng.integers(len(self.doc_starts) - 1))
        other += other >= doc  # uniform over the other documents
        second = int(rng.integers(self.doc_starts[other], self.doc_ends[other]))
        return self.chunks[first], self.chunks[second], IS_RANDOM


def nsp_dataset(
    texts: Sequence[str],
    tokenizer: Tokenizer,
    options: StreamOptions,
    *,
    length: int,
    mask_rate: float = MASK_RATE,
) -> grain.IterDataset:
    """MLM + NSP batches of sentence pairs from data shard's share `texts[i::count]` (see
    `StreamOptions`).

    Every chunk that has a successor in its document starts one pair per epoch. A row is
    `[CLS] A [SEP] B [SEP]` then padding; when A and B do not fit, A keeps its end and B its
    start (the seam the model must judge), each keeping at least half the room if that long.
    Each element holds
      tokens, targets, weights: int32[batch_size, length], masked as in data/mlm.py `mask_tokens`
        ([CLS], [SEP] and padding are never chosen).
      segment_ids: int32[batch_size, length], 1 on the row's tokens, 0 on padding.
      positions: int32[batch_size, length], 0, 1, 2, ... on the tokens, 0 on padding.
      token_types: int32[batch_size, length], 0 on [CLS] A [SEP], 1 on B [SEP], 0 on padding.
      nsp_labels: int32[batch_size], 0 if B follows A in its document, 1 if B is random.
      nsp_weights: int32[batch_size], 1 on real rows, 0 on the padding rows of a last eval batch.
    Labels, random Bs and masks are drawn from (seed, shard, position in the stream): the stream is
    deterministic, new each epoch, and `iter(ds).get_state()` (JSON) resumes it exactly.
    """
    if length < MIN_LENGTH:
        raise UserError(f"sentence pairs need length >= {MIN_LENGTH}, got {length}.")
    check_mask_rate(mask_rate)
    shard_index, shard_count = options.shard_index, options.shard_count
    shard_texts = [t for t in shard_items(texts, shard_index, shard_count, "documents") if t]
    if len(shard_texts) < 2:
        raise UserError(
            f"data shard {shard_index} of {shard_count} gets {len(shard_texts)} documents; "
            "next-sentence pairs need at least 2 (a random B comes from another document)."
        )
    budget = length - 3
    pairs = SentencePairs(shard_texts, CHARS_PER_TOKEN * (budget // 2))
    if not pairs.firsts:
        raise UserError(
            f"no document is longer than one chunk of ~{budget // 2} tokens, so there is no "
            "next sentence; use longer documents or a larger length."
        )
    specials = special_ids(tokenizer)
    all_special, random_ids = specials.all(), ordinary_ids(tokenizer.vocab_size, specials)
    cls, sep = np.asarray([specials.cls], np.int32), np.asarray([specials.sep], np.int32)

    def featurize(first: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        text_a, text_b, label = pairs.pair(first, rng)
        a, b = fit_pair(tokenizer.encode(text_a), tokenizer.encode(text_b), budget)
        row = pad_row(np.concatenate([cls, a, sep, b, sep]), length)
        token_types = np.zeros(length, np.int32)
        token_types[len(a) + 2 : len(a) + len(b) + 3] = 1
        maskable = (row["segment_ids"] > 0) & ~np.isin(row["tokens"], all_special)
        masked = mask_tokens(
            row["tokens"][None],
            maskable[None],
            rng,
            mask_id=specials.mask,
            random_ids=random_ids,
            rate=mask_rate,
        )
        return {
            **{k: v[0] for k, v in masked.items()},
            "segment_ids": row["segment_ids"],
            "positions": row["positions"],
            "token_types": token_types,
            "nsp_labels": np.asarray(label, np.int32),
            "nsp_weights": np.asarray(1, np.int32),
        }

    return example_dataset(pairs.firsts, featurize, options)


def fit_pair(a: np.ndarray, b: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncates A from the front and B from the back so len(A) + len(B) <= budget."""
    if len(a) + len(b) <= budget:
        return a, b
    keep_a = min(len(a), max(budget // 2, budget - len(b)))
    keep_b = min(len(b), budget - keep_a)
    return a[len(a) - keep_a :], b[:keep_b]
