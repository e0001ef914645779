"""The unigram baseline: eval cross-entropy under add-one-smoothed train token frequencies.

A trained LM's eval loss (nats/token) must beat this number to have learned anything beyond counts.
"""

from collections.abc import Sequence

import numpy as np

from data.corpus import sample
from data.sentencepiece_tokenizer import Tokenizer


def unigram_loss(
    tokenizer: Tokenizer,
    train_texts: Sequence[str],
    eval_texts: Sequence[str],
    max_chars: int = 2_000_000,
) -> float:
    """Cross-entropy in nats/token of eval tokens under p(t) = (count(t) + 1) / (N + V).

    Each document is EOS-terminated, as in `packed_dataset`, so the number compares directly with
    the LM loss. Both sides use a deterministic sample of at most `max_chars` characters.
    """
    vocab = tokenizer.vocab_size
    counts = np.bincount(_tokens(tokenizer, sample(train_texts, max_chars)), minlength=vocab)
    log_probs = np.log(counts + 1.0) - np.log(counts.sum() + vocab)
    eval_tokens = _tokens(tokenizer, sample(eval_texts, max_chars))
    if eval_tokens.size == 0:
        raise ValueError("unigram_loss needs at least one eval document.")
    return float(-log_probs[eval_tokens].mean())


def _tokens(tokenizer: Tokenizer, texts: Sequence[str]) -> np.ndarray:
    """int32[num_tokens]: all documents, each followed by EOS."""
    eos = np.asarray([tokenizer.eos_id], dtype=np.int32)
    pieces = [piece for text in texts for piece in (tokenizer.encode(text), eos)]
    return np.concatenate(pieces) if pieces else eos[:0]
