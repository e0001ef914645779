"""Train and load the SentencePiece BPE tokenizer (byte fallback, exact round trip of code), and
find the tokenizer of a model directory: ours, or a Hugging Face tokenizer.json of an import.

The command that trains one is `python -m data.tokenizer` (data/tokenizer.py, a thin shell).
"""

import io
import os
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm
from absl import logging

from data.corpus import sample
from data.hf_tokenizer import HFTokenizer, load_hf_tokenizer
from runtime.errors import UserError
from runtime.files import atomic_write

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
# Pieces the BERT formats need (data/mlm.py, data/nsp.py, data/classify.py). Trained in with
# `extra_symbols=BERT_SYMBOLS` they take the ids right after "\n" and "\t": 6, 7, 8.
BERT_SYMBOLS = ("[MASK]", "[CLS]", "[SEP]")
# 4 special ids + 256 byte-fallback pieces + the user symbols must fit, plus room for merges.
MIN_VOCAB_SIZE = 300
# Enough text for stable BPE merges at small vocab sizes while keeping training to seconds.
MAX_TRAIN_CHARS = 4_000_000
# The tokenizer files a workdir or converted model may hold, in order of preference: ours (what
# training writes) first, so every existing workdir loads as before; then an import's.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")


class Tokenizer:
    """Thin wrapper over a SentencePieceProcessor; ids are int32, no BOS/EOS added by encode."""

    # Trained without SentencePiece's dummy prefix (exact round trip of code), so a text's first
    # word is split unlike the same word after a space; data/seq2seq.py `encode_text` adds one.
    dummy_prefix = False

    def __init__(self, processor: spm.SentencePieceProcessor, path: str):
        self._sp = processor
        self.path = path
        self.vocab_size: int = processor.vocab_size()
        self.pad_id: int = processor.pad_id()
        self.unk_id: int = processor.unk_id()
        self.bos_id: int = processor.bos_id()
        self.eos_id: int = processor.eos_id()

    def encode(self, text: str) -> np.ndarray:
        """int32[num_tokens] for `text`."""
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return self._sp.decode([int(i) for i in np.asarray(ids).reshape(-1)])

    def piece_id(self, piece: str) -> int | None:
        """The id of the vocabulary piece `piece` (e.g. "[MASK]"), or None if it has none."""
        piece_id = self._sp.piece_to_id(piece)
        return piece_id if self._sp.id_to_piece(piece_id) == piece else None

    @property
    def files(self) -> dict[str, str]:
        """Name in a model directory -> path: what a workdir must hold to load this again."""
        return {"tokenizer.model": self.path}

    def __repr__(self) -> str:
        return f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size})"


def train_tokenizer(
    texts: Sequence[str],
    vocab_size: int,
    model_path: str,
    *,
    extra_symbols: Sequence[str] = (),
) -> Tokenizer:
    """Trains BPE on a deterministic <= 4M-character sample of `texts`; writes `model_path`.

    `extra_symbols` (e.g. BERT_SYMBOLS) become single pieces with the ids after the newline and
    tab pieces, in the order given; the text "[MASK]" then encodes to that one id.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise UserError(
            f"vocab_size={vocab_size} is too small; use at least {MIN_VOCAB_SIZE} "
            "(256 byte pieces + specials need room)."
        )
    texts = [t for t in sample(texts, MAX_TRAIN_CHARS) if t]
    if not texts:
        raise UserError("cannot train a tokenizer on an empty corpus; pass documents with text.")
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            # A ceiling, not a demand: a user's small .jsonl (dates, names) supports fewer pieces
            # than the quickstart's --vocab_size, and refusing to train would stop them at step 0.
            # Where the text supports vocab_size pieces the result is the same model either way.
            hard_vocab_limit=False,
            byte_fallback=True,  # any byte sequence encodes; nothing maps to <unk>
            split_digits=True,
            # Identity normalisation and no dummy prefix make decode(encode(x)) == x for code.
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,  # indentation runs become single tokens
            character_coverage=1.0,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            user_defined_symbols=["\n", "\t", *extra_symbols],
            num_threads=os.cpu_count() or 1,
            max_sentence_length=1 << 30,  # whole documents are the "sentences"
            minloglevel=2,
        )
    except RuntimeError as e:  # e.g. vocab_size larger than the text supports
        if "required_chars" in str(e):  # every character + bytes + symbols must have a piece
            raise UserError(
                f"vocab_size={vocab_size} cannot hold every character of the data plus 256 byte "
                f"pieces and {len(extra_symbols)} extra symbols; try a larger --vocab_size."
            )
        raise UserError(f"tokenizer training failed ({e}); try a smaller --vocab_size.")
    # Atomic, so an interrupted run never leaves a truncated model behind.
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    with atomic_write(model_path, "wb") as f:
        f.write(model.getvalue())
    tokenizer = load_tokenizer(model_path)
    if tokenizer.vocab_size < vocab_size:
        logging.warning("the text supports %d tokenizer pieces, fewer than the %d asked for; "
                        "trained %d (the model's extra vocabulary rows go unused)",
                        tokenizer.vocab_size, vocab_size, tokenizer.vocab_size)
    return tokenizer


def load_tokenizer(path: str) -> Tokenizer | HFTokenizer:
    """Loads a SentencePiece model file written by `train_tokenizer`, or a Hugging Face
    tokenizer.json (any path ending in .json)."""
    if path.endswith(".json"):
        return load_hf_tokenizer(path)
    try:
        with open(path, "rb") as f:
            proto = f.read()
    except OSError as e:
        raise UserError(
            f"cannot read tokenizer {path!r} ({e.strerror}); train one with "
            "`python -m data.tokenizer --out=PATH`."
        )
    try:
        processor = spm.SentencePieceProcessor(model_proto=proto)
    except RuntimeError:
        raise UserError(f"tokenizer file {path!r} is not a SentencePiece model; retrain it.")
    if processor.pad_id() != PAD_ID or processor.eos_id() < 0:
        raise UserError(
            f"tokenizer {path!r} lacks pad id {PAD_ID} or an EOS id; retrain with data.tokenizer."
        )
    return Tokenizer(processor, path)


def find_tokenizer(directory: str) -> Tokenizer | HFTokenizer | None:
    """The tokenizer of a workdir or converted model (the first of TOKENIZER_FILES it holds), or
    None if it holds neither."""
    for name in TOKENIZER_FILES:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return load_tokenizer(path)
    return None


def bytes_per_token(tokenizer: Tokenizer, texts: Sequence[str]) -> float:
    """UTF-8 bytes per token of `texts`: how well the tokenizer compresses them."""
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    num_tokens = sum(len(tokenizer.encode(t)) for t in texts)
    return num_bytes / max(num_tokens, 1)
