"""Tests for data/sentencepiece_tokenizer.py and its command `python -m data.tokenizer`: exact
round trip of code, special ids, load errors, and the CLI.

The CLI runs in a subprocess so its exit code and files written are what a user would see.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data.sentencepiece_tokenizer import Tokenizer, load_tokenizer, train_tokenizer
from runtime.errors import UserError

REPO = Path(__file__).resolve().parents[2]
CODE = (
    "class Foo(Base):\n"
    '    """Doc string with  two spaces."""\n'
    "\n"
    "    def bar(self, x: int = 12345) -> str:\n"
    "\tif x:\n"
    "\t\treturn f'{x!r}'  # trailing   \n"
    '        return "caf\u00e9 \u2603 \U0001f600"\n'
    "\n\n"
)


@pytest.mark.parametrize("text", [CODE, " leading space", "trailing  ", "\n\n\t\n", "x", ""])
def test_round_trip_is_exact(small_tokenizer: Tokenizer, text: str):
    ids = small_tokenizer.encode(text)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert small_tokenizer.decode(ids) == text
    assert small_tokenizer.decode(ids.tolist()) == text


def test_special_ids_and_no_bos_eos(small_tokenizer: Tokenizer):
    tok = small_tokenizer
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 400
    ids = tok.encode("def f():\n\treturn 1\n")
    assert not set(ids.tolist()) & {tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id}
    assert int(ids.max()) < tok.vocab_size
    # Newline and tab are single pieces, not byte-fallback sequences.
    assert tok.encode("\n").tolist() == [4] and tok.encode("\t").tolist() == [5]
    # Digits are split, so numbers never become opaque tokens.
    assert len(tok.encode("2024")) == 4


def test_load_round_trips_and_training_is_deterministic(small_tokenizer: Tokenizer, tmp_path):
    loaded = load_tokenizer(small_tokenizer.path)
    assert loaded.encode(CODE).tolist() == small_tokenizer.encode(CODE).tolist()
    texts = ["def f(x):\n    return x + 1\n" * 50, "class A:\n\tpass\n" * 50]
    a = train_tokenizer(texts, 300, str(tmp_path / "a.model"))
    b = train_tokenizer(texts, 300, str(tmp_path / "b.model"))
    assert Path(a.path).read_bytes() == Path(b.path).read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.model", "b.model"]  # no temp files left


def test_bad_tokenizer_inputs_raise_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="cannot read tokenizer"):
        load_tokenizer(str(tmp_path / "missing.model"))
    garbage = tmp_path / "garbage.model"
    garbage.write_bytes(b"\x00this is not a sentencepiece model\xff" * 10)
    with pytest.raises(UserError, match="not a SentencePiece model"):
        load_tokenizer(str(garbage))
    with pytest.raises(UserError, match="too small"):
        train_tokenizer(["some text"], 100, str(tmp_path / "small.model"))
    with pytest.raises(UserError, match="empty corpus"):
        train_tokenizer(["", ""], 400, str(tmp_path / "empty.model"))
    assert sorted(os.listdir(tmp_path)) == ["garbage.model"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data.tokenizer", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_writes_model_and_rejects_bad_data(tmp_path: Path):
    data = tmp_path / "code.txt"
    data.write_text("".join(f"def f{i}(x):\n    return x * {i}\n\n" for i in range(400)))
    out = tmp_path / "models" / "tok.model"
    result = _cli(f"--data={data}", "--vocab_size=300", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert "vocab_size=300" in result.stdout and "bytes/token" in result.stdout
    assert load_tokenizer(str(out)).vocab_size == 300

    bad_out = tmp_path / "bad.model"
    result = _cli(f"--data={tmp_path / 'missing.txt'}", f"--out={bad_out}")
    assert result.returncode == 2
    assert result.stderr.startswith("error: data path") and "Traceback" not in result.stderr
    result = _cli(f"--data={data}", "--vocab_size=10", f"--out={bad_out}")
    assert result.returncode == 2 and "too small" in result.stderr
    assert not bad_out.exists()
