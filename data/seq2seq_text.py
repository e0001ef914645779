"""How a seq2seq source or target is spelled in ids, shared by training, BLEU and generation. Kept
apart from data/seq2seq.py (the pipeline, which imports grain) so that `infer.generate` starts
without importing the input pipeline (about 0.6 s of its time to first token)."""

import numpy as np

from data.sentencepiece_tokenizer import Tokenizer


def encode_text(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """The ids of a source or target. Without a dummy prefix (our tokenizers) a text's first word
    is split unlike the same word inside a text ("clear" -> "clear" but "def clear" -> "def",
    "▁c", "le", "ar"), so a target that copies a word of its source would have to learn a second
    spelling of every word; one leading space, as SentencePiece's dummy prefix adds, makes
    both the same. Training, BLEU and infer.generate all encode through here."""
    return tokenizer.encode(text if tokenizer.dummy_prefix else " " + text)


def decode_text(tokenizer: Tokenizer, ids) -> str:
    """The text of ids from `encode_text` (or generated after them): without its leading space."""
    text = tokenizer.decode(ids)
    return text[1:] if not tokenizer.dummy_prefix and text.startswith(" ") else text
