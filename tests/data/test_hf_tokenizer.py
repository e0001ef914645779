"""Tests for data/hf_tokenizer.py and the tokenizer lookup of data/sentencepiece_tokenizer.py: ids
and special ids equal to transformers', exact round trip, load_tokenizer/find_tokenizer, load
errors.

Tokenizers are trained here with the `tokenizers` library, so nothing needs the network.
"""

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from data.hf_tokenizer import HFTokenizer, load_hf_tokenizer
from data.sentencepiece_tokenizer import Tokenizer, find_tokenizer, load_tokenizer, train_tokenizer
from runtime.errors import UserError

TEXT = inspect.getsource(json)  # a few hundred lines of code and prose
SAMPLES = [
    "def foo(x: int = 12345) -> str:\n\treturn f'{x!r}'  # trailing   \n",
    ' leading space and "caf\u00e9 \u2603 \U0001f600"',
    "\n\n\t\n",
    "x",
    "",
]
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value), encoding="utf-8")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A GPT-2 style byte-level BPE whose tokenizer_config.json names <|endoftext|> as BOS/EOS
    (EOS in the AddedToken form that older Hub configs use)."""
    directory = tmp_path_factory.mktemp("gpt2")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXT.splitlines(keepends=True), vocab_size=500, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    bpe.save(str(directory / "tokenizer.json"))
    eos = {"__type": "AddedToken", "content": "<|endoftext|>", "lstrip": False,
           "rstrip": False, "normalized": True, "single_word": False}
    _write_json(directory / "tokenizer_config.json", {"bos_token": "<|endoftext|>",
                                                      "eos_token": eos})
    return directory


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BERT WordPiece (lower case) whose config names its five special tokens, no BOS/EOS."""
    directory = tmp_path_factory.mktemp("bert")
    wordpiece = tokenizers.BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(TEXT.splitlines(keepends=True), vocab_size=400,
                                  special_tokens=BERT_SPECIALS, show_progress=False)
    wordpiece.save(str(directory / "tokenizer.json"))
    _write_json(directory / "tokenizer_config.json", {
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]"})
    return directory


def _copy_tokenizer_json(source: Path, directory: Path) -> Path:
    """tokenizer.json alone (no special-token files) in `directory`."""
    shutil.copy(source / "tokenizer.json", directory / "tokenizer.json")
    return directory / "tokenizer.json"


@pytest.mark.parametrize("text", [TEXT, *SAMPLES])
def test_byte_level_round_trip_is_exact(gpt2_dir: Path, text: str):
    tok = load_hf_tokenizer(str(gpt2_dir / "tokenizer.json"))
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text


@pytest.mark.parametrize("name", ["gpt2_dir", "bert_dir"])
def test_ids_and_text_equal_transformers(name: str, request: pytest.FixtureRequest):
    directory = request.getfixturevalue(name)
    tok = load_hf_tokenizer(str(directory / "tokenizer.json"))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"))
    for text in [TEXT[:2000], *SAMPLES, "Hello [MASK] world <|endoftext|>"]:
        expected = hf.encode(text, add_special_tokens=False)
        assert tok.encode(text).tolist() == expected
        assert tok.decode(expected) == hf.decode(expected, skip_special_tokens=True)
    assert tok.vocab_size == len(hf) == tok._tk.get_vocab_size(with_added_tokens=True)


def test_gpt2_special_ids_equal_transformers(gpt2_dir: Path):
    tok = load_hf_tokenizer(str(gpt2_dir / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(gpt2_dir))
    assert (tok.bos_id, tok.eos_id) == (hf.bos_token_id, hf.eos_token_id) == (0, 0)
    # Named by neither the config nor a common name: missing, as SentencePiece reports it.
    assert hf.pad_token_id is None and hf.unk_token_id is None
    assert (tok.pad_id, tok.unk_id) == (-1, -1)


def test_bert_uses_cls_and_sep_for_bos_and_eos(bert_dir: Path):
    tok = load_hf_tokenizer(str(bert_dir / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(str(bert_dir))
    assert (tok.pad_id, tok.unk_id) == (hf.pad_token_id, hf.unk_token_id) == (0, 1)
    assert (tok.bos_id, tok.eos_id) == (hf.cls_token_id, hf.sep_token_id) == (2, 3)
    assert tok.piece_id("[MASK]") == hf.mask_token_id == 4
    assert tok.piece_id("no-such-token") is None


def test_encode_adds_and_decode_drops_special_tokens(bert_dir: Path):
    tok = load_hf_tokenizer(str(bert_dir / "tokenizer.json"))
    ids = tok.encode("import json")
    assert tok.bos_id not in ids and tok.eos_id not in ids  # its post-processor would add both
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "import json"


def test_common_names_without_config(gpt2_dir: Path, bert_dir: Path, tmp_path: Path):
    gpt2 = load_hf_tokenizer(str(_copy_tokenizer_json(gpt2_dir, tmp_path)))
    assert (gpt2.bos_id, gpt2.eos_id, gpt2.pad_id, gpt2.unk_id) == (0, 0, -1, -1)
    assert list(gpt2.files) == ["tokenizer.json"]
    bert = load_hf_tokenizer(str(_copy_tokenizer_json(bert_dir, tmp_path)))
    assert (bert.pad_id, bert.unk_id, bert.bos_id, bert.eos_id) == (0, 1, 2, 3)


def test_config_overrides_special_tokens_map(bert_dir: Path, tmp_path: Path):
    path = _copy_tokenizer_json(bert_dir, tmp_path)
    _write_json(tmp_path / "special_tokens_map.json",
                {"pad_token": {"content": "[MASK]"}, "eos_token": "[MASK]"})
    _write_json(tmp_path / "tokenizer_config.json", {"eos_token": "[PAD]", "bos_token": None})
    tok = load_hf_tokenizer(str(path))
    # pad from the map, eos from the config over the map's, bos null there: the [CLS] fallback.
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (4, 0, 2)
    assert list(tok.files) == ["tokenizer.json", "special_tokens_map.json",
                               "tokenizer_config.json"]
    # A name absent from the vocabulary falls back too.
    _write_json(tmp_path / "tokenizer_config.json", {"unk_token": "<not-in-vocab>"})
    assert load_hf_tokenizer(str(path)).unk_id == 1


def test_load_tokenizer_dispatches_on_the_name(gpt2_dir: Path, tmp_path: Path):
    sentencepiece = train_tokenizer([TEXT], 400, str(tmp_path / "tokenizer.model"))
    assert isinstance(load_tokenizer(str(tmp_path / "tokenizer.model")), Tokenizer)
    hf = load_tokenizer(str(gpt2_dir / "tokenizer.json"))
    assert isinstance(hf, HFTokenizer) and hf.path == str(gpt2_dir / "tokenizer.json")
    assert sentencepiece.files == {"tokenizer.model": str(tmp_path / "tokenizer.model")}


def test_find_tokenizer_prefers_sentencepiece(gpt2_dir: Path, tmp_path: Path):
    assert find_tokenizer(str(tmp_path)) is None
    _copy_tokenizer_json(gpt2_dir, tmp_path)
    assert isinstance(find_tokenizer(str(tmp_path)), HFTokenizer)
    train_tokenizer([TEXT], 400, str(tmp_path / "tokenizer.model"))
    found = find_tokenizer(str(tmp_path))
    assert isinstance(found, Tokenizer) and found.path == str(tmp_path / "tokenizer.model")


@pytest.mark.parametrize("content", [b"garbage", b'{"version": "1.0"}', b"\xff\xfe\x00", b""])
def test_bad_tokenizer_json_is_one_line_user_error(tmp_path: Path, content: bytes):
    path = tmp_path / "tokenizer.json"
    path.write_bytes(content)
    with pytest.raises(UserError, match="is not a Hugging Face tokenizer.json") as error:
        find_tokenizer(str(tmp_path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_or_bad_files_are_user_errors(gpt2_dir: Path, tmp_path: Path):
    with pytest.raises(UserError, match="cannot read tokenizer"):
        load_tokenizer(str(tmp_path / "absent.json"))
    path = _copy_tokenizer_json(gpt2_dir, tmp_path)
    for bad in ["{not json", "[1, 2]"]:
        (tmp_path / "tokenizer_config.json").write_text(bad, encoding="utf-8")
        with pytest.raises(UserError, match="tokenizer_config.json is unreadable") as error:
            load_tokenizer(str(path))
        assert "\n" not in str(error.value)
