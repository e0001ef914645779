"""Load a text corpus (the embedded stdlib corpus, or .txt/.jsonl/.parquet files) as documents.

Also makes the deterministic held-out split and the fingerprint a workdir records to detect drift.
"""

import dataclasses
import glob
import hashlib
import json
import os
import platform
from collections.abc import Sequence

from runtime.errors import UserError

SUFFIXES = (".txt", ".jsonl", ".parquet")
_SKIP_DIRS = {"site-packages", "__pycache__", "test", "tests", "idle_test"}


@dataclasses.dataclass(frozen=True)
class Corpus:
    train: list[str]  # documents
    eval: list[str]  # held-out documents: deterministic, disjoint from train, non-empty
    fingerprint: dict  # JSON-able: source, python, num_documents, sha256


def load_corpus(spec: str = "stdlib", eval_fraction: float = 0.02) -> Corpus:
    """Loads `spec` ("stdlib" or comma-separated files/globs/directories) and splits it."""
    if not 0.0 < eval_fraction < 1.0:
        raise UserError(f"eval_fraction must be in (0, 1), got {eval_fraction}; pass e.g. 0.02.")
    if spec == "stdlib":
        docs = _stdlib_documents()
    else:
        docs = [doc for path in expand_spec(spec) for doc in _read_file(path)]
    docs = [doc for doc in docs if doc.strip()]
    if not docs:
        raise UserError(f"corpus {spec!r} has no non-empty documents; point it at files with text.")
    train, held_out = _split(docs, eval_fraction)
    return Corpus(train=train, eval=held_out, fingerprint=_fingerprint(spec, docs))


def sample(texts: Sequence[str], max_chars: int) -> list[str]:
    """A deterministic subset of `texts` with at most `max_chars` characters in total.

    Documents are taken in order of their content hash, so the sample spreads over the whole corpus
    (not just its first files) without any RNG state; the last one taken may be truncated.
    """
    if sum(len(t) for t in texts) <= max_chars:
        return list(texts)
    out, budget = [], max_chars
    for text in sorted(texts, key=_hash_key):
        if budget <= 0:
            break
        out.append(text[:budget])
        budget -= len(out[-1])
    return out


def _hash_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()


def _stdlib_documents() -> list[str]:
    return [text for _, text in stdlib_sources()]


def stdlib_sources() -> list[tuple[str, str]]:
    """(path relative to the stdlib root, source) of the running Python's stdlib .py files, sorted
    by path, minus tests (they dwarf the rest and are repetitive) and non-UTF-8 files."""
    root = os.path.dirname(os.__file__)
    paths = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith("test")]
        for name in files:
            if name.endswith(".py") and not name.startswith("test"):
                paths.append(os.path.relpath(os.path.join(directory, name), root))
    sources = []
    for rel in sorted(paths):
        try:
            with open(os.path.join(root, rel), encoding="utf-8") as f:
                sources.append((rel, f.read()))
        except (UnicodeDecodeError, OSError):
            continue  # a handful of stdlib files are deliberately non-UTF-8 test fixtures
    return sources


def expand_spec(spec: str, suffixes: tuple[str, ...] = SUFFIXES) -> list[str]:
    """Turns the comma-separated spec of files, globs and directories into a sorted,
    de-duplicated list of files ending in one of `suffixes`."""
    paths: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if any(c in part for c in "*?["):
            matches = sorted(glob.glob(part, recursive=True))
            if not matches:
                raise UserError(f"glob {part!r} matches no files; check the pattern and the cwd.")
        elif os.path.exists(part):
            matches = [part]
        else:
            raise UserError(f"data path {part!r} does not exist; pass a file, glob or directory.")
        for match in matches:
            if os.path.isdir(match):
                paths.extend(_walk_supported(match, suffixes))
            elif match.endswith(suffixes):
                paths.append(match)
            else:
                raise UserError(
                    f"unsupported data file {match!r}; use one of {', '.join(suffixes)}."
                )
    if not paths:
        raise UserError(f"--data={spec!r} names no {'/'.join(suffixes)} files; check the paths.")
    return list(dict.fromkeys(paths))


def _walk_supported(root: str, suffixes: tuple[str, ...]) -> list[str]:
    found = []
    for directory, _, files in os.walk(root):
        found.extend(os.path.join(directory, n) for n in files if n.endswith(suffixes))
    return sorted(found)


def _read_file(path: str) -> list[str]:
    if path.endswith(".parquet"):
        return _read_parquet(path)
    text = read_text(path)
    if path.endswith(".txt"):
        return [text]
    return _parse_jsonl(path, text)


def read_text(path: str) -> str:
    """The text of the UTF-8 file `path`; a UserError if it is unreadable, binary or not UTF-8."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise UserError(f"cannot read data file {path!r} ({e.strerror}); check permissions.")
    if b"\0" in raw:
        raise UserError(f"data file {path!r} looks binary (has NUL bytes); pass UTF-8 text.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"data file {path!r} is not valid UTF-8 (byte {e.start}); re-encode it as UTF-8."
        )
    return text


def _parse_jsonl(path: str, text: str) -> list[str]:
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue  # blank lines (e.g. a trailing newline) are not records
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{lineno} is not valid JSON; write one JSON object per line.")
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UserError(f'{path}:{lineno} has no string field "text"; add it to every line.')
        docs.append(record["text"])
    return docs


def _read_parquet(path: str) -> list[str]:
    import pyarrow.parquet as pq  # only parquet users pay the import

    try:
        table = pq.read_table(path, columns=["text"])
    except (OSError, ValueError, KeyError) as e:  # pyarrow's errors subclass these
        raise UserError(f'cannot read column "text" of parquet file {path!r} ({e}); check it.')
    column = table.column("text").to_pylist()
    if any(v is not None and not isinstance(v, str) for v in column):
        raise UserError(f'column "text" of {path!r} is not a string column; store text there.')
    return [v for v in column if v is not None]


def _split(docs: list[str], eval_fraction: float) -> tuple[list[str], list[str]]:
    """Held-out split by content hash: stable across machines and orderings, no RNG state."""
    if len(docs) == 1:
        return _split_lines(docs[0], eval_fraction)
    threshold = eval_fraction * 2**64
    is_eval = [int.from_bytes(_hash_key(d)[:8], "big") < threshold for d in docs]
    if not any(is_eval):  # small corpora: hold out the document with the smallest hash
        is_eval[min(range(len(docs)), key=lambda i: _hash_key(docs[i]))] = True
    if all(is_eval):
        is_eval[max(range(len(docs)), key=lambda i: _hash_key(docs[i]))] = False
    train = [d for d, e in zip(docs, is_eval) if not e]
    held_out = [d for d, e in zip(docs, is_eval) if e]
    return train, held_out


def _split_lines(doc: str, eval_fraction: float) -> tuple[list[str], list[str]]:
    """One document: hold out its last ~eval_fraction of lines (at least one) as the eval doc."""
    lines = doc.splitlines(keepends=True)
    if len(lines) < 2:
        raise UserError("a one-document corpus needs at least two lines to hold some out for eval.")
    n_eval = min(len(lines) - 1, max(1, round(len(lines) * eval_fraction)))
    train, held_out = "".join(lines[:-n_eval]), "".join(lines[-n_eval:])
    if not train.strip() or not held_out.strip():
        raise UserError("a one-document corpus needs non-blank text in its first and last lines.")
    return [train], [held_out]


def _fingerprint(spec: str, docs: list[str]) -> dict:
    digest = hashlib.sha256()
    for doc in docs:  # length-prefixed so document boundaries are part of the hash
        data = doc.encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return {
        "source": spec,
        "python": platform.python_version(),
        "num_documents": len(docs),
        "sha256": digest.hexdigest(),
    }
