"""Atomic file writes: a file is written beside its final name and renamed over it, so a reader
(or a crash) sees the old file or the new one, never half of one."""

import contextlib
import json
import os
from collections.abc import Iterator
from typing import IO, Any


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w") -> Iterator[IO]:
    """`with atomic_write(path) as f: ...` writes `path` whole or not at all. The temporary file
    sits in the same directory (a rename never crosses file systems) and is removed on failure."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, value: Any) -> None:
    """`value` as indented JSON with a trailing newline, atomically."""
    with atomic_write(path) as f:
        json.dump(value, f, indent=2)
        f.write("\n")
