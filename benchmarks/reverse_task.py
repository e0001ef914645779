"""A synthetic, deterministic, source-dependent seq2seq task made offline: the target is the
source string reversed with every symbol renamed by a fixed permutation; batches for an
encoder-decoder (source -> target) and for a decoder-only model (`source SEP target EOS` rows).

Token ids: 0 padding, 1 BOS, 2 EOS, 3 SEP, then the symbols. A model that ignores the source can
do no better than guess each symbol (log(symbols) nats a token) and matches no target exactly.
"""

import dataclasses

import numpy as np

PAD, BOS, EOS, SEP = 0, 1, 2, 3
FIRST_SYMBOL = 4


@dataclasses.dataclass(frozen=True)
class ReverseTask:
    train: list[tuple[tuple[int, ...], tuple[int, ...]]]  # (source ids, target ids)
    eval: list[tuple[tuple[int, ...], tuple[int, ...]]]  # held out: sources not in train
    symbols: int
    max_len: int

    @property
    def vocab_size(self) -> int:
        return FIRST_SYMBOL + self.symbols


def reverse_task(num_pairs: int, eval_pairs: int, symbols: int, min_len: int, max_len: int,
                 seed: int) -> ReverseTask:
    """`num_pairs` distinct random sources of min_len..max_len symbols; the last `eval_pairs` are
    held out. target[i] = rename[source[-1 - i]], `rename` a permutation drawn from `seed`."""
    rng = np.random.default_rng(seed)
    rename = rng.permutation(symbols) + FIRST_SYMBOL
    seen, pairs = set(), []
    while len(pairs) < num_pairs:
        n = int(rng.integers(min_len, max_len + 1))
        source = tuple(int(s) for s in rng.integers(0, symbols, n) + FIRST_SYMBOL)
        if source in seen:
            continue
        seen.add(source)
        pairs.append((source, tuple(int(rename[s - FIRST_SYMBOL]) for s in reversed(source))))
    return ReverseTask(pairs[:-eval_pairs], pairs[-eval_pairs:], symbols, max_len)


def _pad(rows: list[list[int]], length: int) -> np.ndarray:
    out = np.zeros((len(rows), length), np.int32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


def _segments_positions(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    segments = (tokens != PAD).astype(np.int32)
    return segments, (np.cumsum(segments, axis=1) - 1).clip(0) * segments


def seq2seq_arrays(pairs, max_len: int) -> dict[str, np.ndarray]:
    """The data/seq2seq.py batch layout of all `pairs`: int32[len(pairs), max_len + 1] each."""
    length = max_len + 1
    encoder = _pad([[*s, EOS] for s, _ in pairs], length)
    targets = _pad([[*t, EOS] for _, t in pairs], length)
    inputs = _pad([[BOS, *t] for _, t in pairs], length)
    enc_segments, enc_positions = _segments_positions(encoder)
    dec_segments, dec_positions = _segments_positions(targets)
    return {"encoder_tokens": encoder, "encoder_segment_ids": enc_segments,
            "encoder_positions": enc_positions, "decoder_inputs": inputs,
            "decoder_targets": targets, "decoder_segment_ids": dec_segments,
            "decoder_positions": dec_positions, "decoder_weights": dec_segments.copy()}


def decoder_arrays(pairs, max_len: int, sources=None) -> dict[str, np.ndarray]:
    """Decoder-only rows `source SEP target EOS` (the source taken from `sources` when given,
    e.g. shuffled): tokens int32[n, 2 * max_len + 1], next-token targets, weights that score
    only the target and its EOS (as the seq2seq loss does), and prompt_len int32[n] (source +
    SEP, where greedy decoding starts)."""
    sources = [s for s, _ in pairs] if sources is None else sources
    length = 2 * max_len + 2
    rows = _pad([[*s, SEP, *t, EOS] for s, (_, t) in zip(sources, pairs, strict=True)], length)
    weights = np.zeros_like(rows)
    for i, (s, (_, t)) in enumerate(zip(sources, pairs, strict=True)):
        weights[i, len(s):len(s) + len(t) + 1] = 1  # predicting t[0] .. EOS
    # Rows start at position 0 and attention is causal, so padding after a row's EOS is never
    # read by its scored positions: default positions and one segment serve.
    return {"tokens": rows[:, :-1], "targets": rows[:, 1:], "weights": weights[:, :-1],
            "prompt_len": np.asarray([len(s) + 1 for s in sources], np.int32)}


def text(ids) -> str:
    """Symbols as space-separated words (for BLEU), up to the first EOS."""
    out = []
    for i in ids:
        if i == EOS:
            break
        out.append(str(int(i)))
    return " ".join(out)
