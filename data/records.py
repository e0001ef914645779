"""Examples read from .jsonl files, and the deterministic held-out split the example tasks share.

Used by data/seq2seq.py (fields source/target) and data/classify.py (fields text/label).
"""

import hashlib
import json
import platform
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from data.corpus import expand_spec, read_text
from runtime.errors import UserError

T = TypeVar("T")


def read_records(spec: str, fields: dict[str, tuple[type, ...]]) -> list[dict[str, Any]]:
    """The JSON objects of the .jsonl files in `spec` (comma-separated files, globs, directories),
    in order, reduced to `fields`: each must be present with a value of one of its types.

    Blank lines are skipped; a bad line, a missing or mistyped field, or a file without records is
    a one-line UserError naming the file and line.
    """
    names = " and ".join(f'"{name}"' for name in fields)
    records = []
    for path in expand_spec(spec, (".jsonl",)):
        count = 0
        for lineno, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{path}:{lineno} is not valid JSON; write one JSON object a line.")
            if not isinstance(record, dict):
                raise UserError(f"{path}:{lineno} is not a JSON object; give it fields {names}.")
            for name, types in fields.items():
                if name not in record:
                    raise UserError(
                        f'{path}:{lineno} has no field "{name}"; every line needs {names}.'
                    )
                value = record[name]
                if isinstance(value, bool) or not isinstance(value, types):
                    kinds = " or ".join(_JSON_NAMES[t] for t in types)
                    raise UserError(
                        f'{path}:{lineno} field "{name}" is {type(value).__name__}, not {kinds}; '
                        "fix that line."
                    )
            records.append({name: record[name] for name in fields})
            count += 1
        if count == 0:
            raise UserError(f"{path} has no records; write one JSON object with {names} a line.")
    return records


_JSON_NAMES = {str: "a string", int: "an integer"}


def is_held_out(key: str, fraction: float) -> bool:
    """Whether the example named `key` is held out: the first 8 bytes of sha1(key) fall in the
    lowest `fraction` of their range. Stable across machines, orderings and Python versions."""
    return int.from_bytes(_sha1(key)[:8], "big") < fraction * 2**64


def _sha1(key: str) -> bytes:
    return hashlib.sha1(key.encode("utf-8", "surrogatepass")).digest()


def split(items: Sequence[T], key: Callable[[T], str], fraction: float) -> tuple[list[T], list[T]]:
    """(train, eval) by `is_held_out(key(item))`, both non-empty: with too few items the one with
    the smallest hash is held out (or, if all are, the largest goes back to train)."""
    if not 0.0 < fraction < 1.0:
        raise UserError(f"eval_fraction must be in (0, 1), got {fraction}; pass e.g. 0.05.")
    if len(items) < 2:
        raise UserError(f"need at least 2 examples to hold some out for eval, got {len(items)}.")
    held = [is_held_out(key(item), fraction) for item in items]
    if not any(held) or all(held):
        order = sorted(range(len(items)), key=lambda i: _sha1(key(items[i])))
        held[order[0]], held[order[-1]] = True, False
    train = [item for item, h in zip(items, held) if not h]
    return train, [item for item, h in zip(items, held) if h]


def fingerprint(source: str, items: Sequence[Sequence[Any]]) -> dict:
    """JSON-able identity of a task's examples: source, Python version, count and content hash."""
    digest = hashlib.sha256()
    for item in items:
        data = json.dumps(list(item), ensure_ascii=False).encode("utf-8", "surrogatepass")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return {
        "source": source,
        "python": platform.python_version(),
        "num_examples": len(items),
        "sha256": digest.hexdigest(),
    }
