"""Tests for data/corpus.py: the stdlib corpus, file formats, the held-out split, user errors.

Every bad input must raise UserError with a message naming the problem.
"""

import json
import os
import platform
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.corpus import load_corpus, sample
from runtime.errors import UserError


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def _docs(corpus) -> list[str]:
    return sorted(corpus.train + corpus.eval)


def test_stdlib_loads_and_splits_deterministically():
    a, b = load_corpus("stdlib"), load_corpus("stdlib")
    assert len(a.train) + len(a.eval) > 100
    assert a.train == b.train and a.eval == b.eval
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint["source"] == "stdlib"
    assert a.fingerprint["python"] == platform.python_version()
    assert a.fingerprint["num_documents"] == len(a.train) + len(a.eval)
    assert len(a.fingerprint["sha256"]) == 64
    json.dumps(a.fingerprint)
    assert not set(a.train) & set(a.eval)
    assert 0 < len(a.eval) < 0.1 * len(a.train)


def test_stdlib_skips_tests_and_site_packages():
    root = os.path.dirname(os.__file__)
    with open(os.path.join(root, "os.py"), encoding="utf-8") as f:
        os_source = f.read()
    docs = load_corpus("stdlib")
    assert os_source in docs.train + docs.eval
    with open(os.path.join(root, "test", "test_os.py"), encoding="utf-8") as f:
        assert f.read() not in docs.train + docs.eval


def test_eval_fraction_changes_split_size():
    small, large = load_corpus("stdlib", 0.02), load_corpus("stdlib", 0.3)
    assert len(large.eval) > 5 * len(small.eval)
    assert set(small.eval) <= set(large.eval)  # hash buckets nest as the fraction grows


def test_txt_jsonl_parquet_glob_and_dir(tmp_path: Path):
    _write(tmp_path / "a.txt", "alpha doc\nline two\n")
    _write(tmp_path / "sub" / "b.txt", "beta doc")
    jsonl = "\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["j1", "", "j2"]))
    _write(tmp_path / "c.jsonl", jsonl + "\n\n")
    pq.write_table(pa.table({"text": ["p1", None, "p2"]}), tmp_path / "d.parquet")
    _write(tmp_path / "notes.md", "ignored inside directories")

    assert _docs(load_corpus(str(tmp_path / "c.jsonl"))) == ["j1", "j2"]
    assert _docs(load_corpus(str(tmp_path / "d.parquet"))) == ["p1", "p2"]
    assert _docs(load_corpus(f"{tmp_path}/**/*.txt")) == ["alpha doc\nline two\n", "beta doc"]
    everything = ["alpha doc\nline two\n", "beta doc", "j1", "j2", "p1", "p2"]
    assert _docs(load_corpus(str(tmp_path))) == everything
    listed = ",".join(str(tmp_path / n) for n in ["a.txt", "c.jsonl", "d.parquet", "sub/b.txt"])
    corpus = load_corpus(listed)
    assert _docs(corpus) == everything
    assert corpus.fingerprint["num_documents"] == 6
    assert corpus.train and corpus.eval and not set(corpus.train) & set(corpus.eval)


def test_one_document_holds_out_its_last_lines(tmp_path: Path):
    lines = [f"line {i}\n" for i in range(200)]
    corpus = load_corpus(_write(tmp_path / "one.txt", "".join(lines)), eval_fraction=0.02)
    assert corpus.train == ["".join(lines[:196])]
    assert corpus.eval == ["".join(lines[196:])]
    tiny = load_corpus(_write(tmp_path / "two.txt", "first\nsecond"))
    assert (tiny.train, tiny.eval) == (["first\n"], ["second"])


def test_two_documents_give_one_each(tmp_path: Path):
    _write(tmp_path / "a.txt", "doc a")
    _write(tmp_path / "b.txt", "doc b")
    corpus = load_corpus(str(tmp_path))
    assert len(corpus.train) == 1 and len(corpus.eval) == 1
    assert sorted(corpus.train + corpus.eval) == ["doc a", "doc b"]


def test_fingerprint_tracks_content(tmp_path: Path):
    path = _write(tmp_path / "a.txt", "one\ntwo\n")
    before = load_corpus(path).fingerprint
    assert load_corpus(path).fingerprint == before
    _write(tmp_path / "a.txt", "one\ntwo!\n")
    assert load_corpus(path).fingerprint["sha256"] != before["sha256"]


def test_sample_is_deterministic_and_bounded():
    texts = [f"document number {i} " * (i % 7 + 1) for i in range(100)]
    picked = sample(texts, 500)
    assert picked == sample(list(reversed(texts)), 500)  # order-independent: by content hash
    assert sum(map(len, picked)) == 500
    assert sample(texts, 10**9) == texts


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.txt", b"", "no non-empty documents"),
        ("blank.txt", b"  \n\n", "no non-empty documents"),
        ("latin1.txt", "caf\xe9".encode("latin-1"), "not valid UTF-8"),
        ("binary.txt", b"\x00\x01\x02abc", "looks binary"),
        ("notes.md", b"# hi", "unsupported data file"),
        ("bad.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', 'bad.jsonl:2 has no string field "text"'),
        ("bad2.jsonl", b'{"text": "ok"}\n\n{not json\n', "bad2.jsonl:3 is not valid JSON"),
        ("num.jsonl", b'{"text": 3}\n', 'num.jsonl:1 has no string field "text"'),
        ("bad.parquet", b"not parquet at all", "parquet file"),
    ],
)
def test_bad_files_raise_user_error(tmp_path: Path, name: str, content: bytes, message: str):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        load_corpus(str(path))


def test_bad_paths_raise_user_error(tmp_path: Path):
    with pytest.raises(UserError, match="does not exist"):
        load_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(UserError, match="matches no files"):
        load_corpus(str(tmp_path / "*.jsonl"))
    with pytest.raises(UserError, match="names no"):
        load_corpus(str(tmp_path))  # an empty directory
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(UserError, match='column "text"'):
        load_corpus(str(tmp_path / "nocol.parquet"))
    with pytest.raises(UserError, match="at least two lines"):
        load_corpus(_write(tmp_path / "x.txt", "single line"))
    with pytest.raises(UserError, match="eval_fraction"):
        load_corpus("stdlib", eval_fraction=0.0)
