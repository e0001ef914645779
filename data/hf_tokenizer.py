"""Loads a Hugging Face tokenizer.json (a model imported from the Hub) behind the interface of
data/sentencepiece_tokenizer.py's `Tokenizer`, so generation, scoring and training use it as is."""

import json
import os
from collections.abc import Iterable

import numpy as np
import tokenizers

from runtime.errors import UserError

# Files beside tokenizer.json that name the special tokens. Later files win, as in transformers,
# where tokenizer_config.json overrides the older special_tokens_map.json.
SPECIAL_FILES = ("special_tokens_map.json", "tokenizer_config.json")
# Names the common families give their special tokens, tried in order when the files name none
# that is in the vocabulary: Llama/T5 exports, GPT-2 (one token for every role), then BERT, whose
# [CLS] opens and [SEP] closes a sequence but which has no BOS/EOS of its own.
FALLBACKS = {
    "bos": ("<s>", "<|endoftext|>", "[CLS]"),
    "eos": ("</s>", "<|endoftext|>", "[SEP]"),
    "pad": ("<pad>", "[PAD]"),
    "unk": ("<unk>", "[UNK]"),
}


class HFTokenizer:
    """A tokenizers.Tokenizer with the attributes and methods of
    data.sentencepiece_tokenizer.Tokenizer: ids are int32, encode adds no special tokens (the
    engine adds BOS itself), a missing special id is -1."""

    dummy_prefix = True  # the imports' own pre-tokenizers handle a text's first word

    def __init__(self, tokenizer: tokenizers.Tokenizer, path: str, special: dict[str, str]):
        self._tk = tokenizer
        self.path = path
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        ids = {role: self._special_id(special.get(role), names) for role, names in FALLBACKS.items()}
        self.pad_id: int = ids["pad"]
        self.unk_id: int = ids["unk"]
        self.bos_id: int = ids["bos"]
        self.eos_id: int = ids["eos"]

    def _special_id(self, named: str | None, fallbacks: tuple[str, ...]) -> int:
        candidates = (named, *fallbacks) if named else fallbacks
        for token in candidates:
            token_id = self._tk.token_to_id(token)
            if token_id is not None:
                return token_id
        return -1  # what SentencePiece reports for a special piece it lacks

    @property
    def files(self) -> dict[str, str]:
        """Name in a model directory -> path, for tokenizer.json (first) and the special-token
        files beside it: what a workdir must hold to load this tokenizer again."""
        directory = os.path.dirname(self.path)
        found = {name: os.path.join(directory, name) for name in SPECIAL_FILES}
        return {"tokenizer.json": self.path,
                **{name: p for name, p in found.items() if os.path.isfile(p)}}

    def encode(self, text: str) -> np.ndarray:
        """int32[num_tokens] for `text`."""
        return np.asarray(self._tk.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        # SentencePiece drops control pieces (BOS, EOS, PAD) when decoding; do the same.
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        return self._tk.decode(ids, skip_special_tokens=True)

    def piece_id(self, piece: str) -> int | None:
        """The id of the vocabulary token `piece` (e.g. "[MASK]"), or None if it has none."""
        return self._tk.token_to_id(piece)

    def __repr__(self) -> str:
        return f"HFTokenizer(path={self.path!r}, vocab_size={self.vocab_size})"


def load_hf_tokenizer(path: str) -> HFTokenizer:
    """Loads `path`, a tokenizer.json, with the special tokens named by the files beside it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise UserError(f"cannot read tokenizer {path!r} ({e.strerror}); copy the model's "
                        "tokenizer.json there") from None
    except UnicodeDecodeError:
        text = ""  # binary: refused below like any other text that is not a tokenizer.json
    try:
        tokenizer = tokenizers.Tokenizer.from_str(text)
    except Exception as e:  # noqa: BLE001 (tokenizers raises a bare Exception on any bad file)
        reason = str(e).splitlines()[0] if str(e) else "empty"
        raise UserError(f"tokenizer file {path!r} is not a Hugging Face tokenizer.json "
                        f"({reason}); copy it again from the model") from None
    special: dict[str, str] = {}
    for name in SPECIAL_FILES:
        special.update(_named_tokens(os.path.join(os.path.dirname(path), name)))
    return HFTokenizer(tokenizer, path, special)


def _named_tokens(path: str) -> dict[str, str]:
    """Role ("bos", ...) -> token string named in `path`; {} if there is no such file."""
    if not os.path.isfile(path):
        return {}
    fix = "copy it again from the model or delete it"
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({str(e).splitlines()[0]}); {fix}") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} is unreadable (not a JSON object); {fix}")
    named = {}
    for role in FALLBACKS:
        value = config.get(f"{role}_token")
        if isinstance(value, dict):  # an AddedToken: {"content": "<s>", "lstrip": false, ...}
            value = value.get("content")
        if isinstance(value, str) and value:
            named[role] = value
    return named
