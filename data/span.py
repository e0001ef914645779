"""T5 span corruption (Raffel et al. 2020): random spans of packed text are each replaced by one
sentinel in the encoder input, and the decoder target lists every sentinel followed by its span.

Sentinels are the tokenizer pieces `<extra_id_0>` ... `<extra_id_99>` (T5's names), trained in with
`train_tokenizer(..., extra_symbols=SENTINELS)`: they decode to readable text, never collide with
ids past the tokenizer's end, and a span-pretrained workdir's tokenizer serves seq2seq fine-tuning
unchanged. (T5 itself puts them at the top of a vocabulary larger than its SentencePiece model.)
"""

import grain
import numpy as np

from data.examples import derived_seed, pad_row
from data.options import StreamOptions
from data.pipeline import TextSource, packed_rows
from data.sentencepiece_tokenizer import Tokenizer
from runtime.errors import UserError

NOISE_DENSITY = 0.15
MEAN_SPAN_LENGTH = 3.0
SENTINELS = tuple(f"<extra_id_{i}>" for i in range(100))


def sentinel_ids(tokenizer: Tokenizer) -> np.ndarray:
    """int32[100]: the ids of `<extra_id_0>`, `<extra_id_1>`, ... (a UserError if missing)."""
    ids = [tokenizer.piece_id(piece) for piece in SENTINELS]
    if any(i is None for i in ids):
        raise UserError(
            f"tokenizer {tokenizer.path!r} has no <extra_id_N> sentinel pieces that span "
            "corruption needs; retrain it with `python -m data.tokenizer --sentinels`."
        )
    return np.asarray(ids, np.int32)


def check_span_settings(noise_density: float, mean_span_length: float) -> None:
    if not 0.0 < noise_density < 1.0:
        raise UserError(f"noise_density must be in (0, 1), got {noise_density}; T5 uses 0.15.")
    if mean_span_length < 1.0:
        raise UserError(f"mean_span_length must be >= 1, got {mean_span_length}; T5 uses 3.")


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) of a sequence of `length` >= 2 tokens: round(density * length)
    noise tokens (at least 1, at most length - 1) in round(noise / mean) spans (at least 1, and
    no more than there are noise or kept tokens, since every span and every gap is non-empty)."""
    noise = min(max(round(length * noise_density), 1), length - 1)
    spans = max(round(noise / mean_span_length), 1)
    return noise, min(spans, noise, length - noise)


def corrupted_lengths(
    length: int, noise_density: float, mean_span_length: float
) -> tuple[int, int]:
    """(encoder input, decoder target) lengths, EOS included, for `length` raw tokens."""
    noise, spans = span_counts(length, noise_density, mean_span_length)
    return length - noise + spans + 1, noise + spans + 1


def raw_length(
    input_length: int, noise_density: float = NOISE_DENSITY, mean_span_length: float = MEAN_SPAN_LENGTH
) -> tuple[int, int]:
    """(raw tokens per row, decoder target length): the most raw tokens whose corrupted input fits
    `input_length` (T5's `random_spans_helper`); 568 and 114 for T5's 512 inputs."""
    check_span_settings(noise_density, mean_span_length)
    if input_length < 3:
        raise UserError(f"span corruption needs an encoder length >= 3, got {input_length}.")
    n = 2
    while corrupted_lengths(n + 1, noise_density, mean_span_length)[0] <= input_length:
        n += 1
    return n, corrupted_lengths(n, noise_density, mean_span_length)[1]


def noise_mask(
    length: int, rng: np.random.Generator, noise_density: float, mean_span_length: float
) -> np.ndarray:
    """bool[length]: alternating kept and noise runs, starting with a kept run, whose lengths are
    uniformly random compositions of the kept and noise counts of `span_counts`."""
    noise, spans = span_counts(length, noise_density, mean_span_length)

    def composition(total: int) -> np.ndarray:  # `spans` positive parts summing to `total`
        cuts = np.sort(rng.choice(total - 1, spans - 1, replace=False)) + 1
        return np.diff(np.concatenate([[0], cuts, [total]]))

    runs = np.stack([composition(length - noise), composition(noise)], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], spans), runs)


def corrupt(
    tokens: np.ndarray, mask: np.ndarray, sentinels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) without EOS for int32[n] `tokens` and bool[n] `mask`: span i becomes
    sentinels[i] in the inputs; targets are sentinels[i] then span i's tokens, for every i."""
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    span_of = np.cumsum(starts) - 1
    inputs = np.where(starts, sentinels[np.maximum(span_of, 0)], tokens)[~mask | starts]
    noise_positions = np.flatnonzero(mask)
    where = np.searchsorted(noise_positions, np.flatnonzero(starts))
    targets = np.insert(tokens[noise_positions], where, sentinels[: len(where)])
    return inputs.astype(np.int32), targets.astype(np.int32)


def span_dataset(
    texts: TextSource,
    tokenizer: Tokenizer,
    options: StreamOptions,
    *,
    length: int,
    target_length: int = 0,
    noise_density: float = NOISE_DENSITY,
    mean_span_length: float = MEAN_SPAN_LENGTH,
) -> grain.IterDataset:
    """Span-corruption batches of data shard's share of `texts` (documents, or a prepared
    split), in the keys of data/seq2seq.py `seq2seq_dataset` (so the seq2seq objective trains
    on them):
      encoder_tokens, encoder_segment_ids, encoder_positions: int32[batch_size, length], the kept
        tokens with a sentinel per span, then EOS; one segment per row.
      decoder_inputs, decoder_targets, decoder_segment_ids, decoder_positions, decoder_weights:
        int32[batch_size, target_length]; targets = sentinel, span, sentinel, span, ..., EOS.
    Rows are the packed rows of `packed_rows` with `raw_length(length)` tokens, corrupted as a
    whole across document boundaries (as T5 does; each document still ends in EOS).
    `target_length` 0 takes the length a full row needs. The masks depend on (seed, shard, batch
    number): deterministic, new every epoch, and `iter(ds).get_state()` (JSON) resumes exactly.
    """
    raw, needed = raw_length(length, noise_density, mean_span_length)
    target_length = target_length or needed
    if target_length < needed:
        raise UserError(
            f"span corruption of {length}-token encoder rows needs decoder rows of {needed} tokens, "
            f"got {target_length}; raise it or leave it 0."
        )
    spans = span_counts(raw, noise_density, mean_span_length)[1]
    if spans > len(SENTINELS):
        raise UserError(
            f"{length}-token rows have {spans} noise spans but there are {len(SENTINELS)} "
            "sentinels; use a shorter length or a larger mean_span_length."
        )
    sentinels = sentinel_ids(tokenizer)
    bos, eos = np.int32(tokenizer.bos_id), np.int32(tokenizer.eos_id)
    ds = packed_rows(texts, tokenizer, options, length=raw)

    def row(tokens: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        if len(tokens) < 2:  # a padding row of a last eval batch: nothing to score
            tokens = tokens[:0]
            inputs = targets = tokens
        else:
            mask = noise_mask(len(tokens), rng, noise_density, mean_span_length)
            inputs, targets = corrupt(tokens, mask, sentinels)
            inputs, targets = np.append(inputs, eos), np.append(targets, eos)
        encoder = pad_row(inputs, length)
        decoder = pad_row(np.concatenate([[bos], targets[:-1]]) if len(targets) else targets,
                          target_length)
        return {
            "encoder_tokens": encoder["tokens"],
            "encoder_segment_ids": encoder["segment_ids"],
            "encoder_positions": encoder["positions"],
            "decoder_inputs": decoder["tokens"],
            "decoder_targets": pad_row(targets, target_length)["tokens"],
            "decoder_segment_ids": decoder["segment_ids"],
            "decoder_positions": decoder["positions"],
            "decoder_weights": decoder["segment_ids"].copy(),
        }

    def corrupt_batch(batch: dict[str, np.ndarray], rng: np.random.Generator):
        rows = [row(t[s > 0], rng) for t, s in zip(batch["tokens"], batch["segment_ids"])]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    return ds.random_map(
        corrupt_batch, seed=derived_seed(options.seed, options.shard_index, "span")
    )
