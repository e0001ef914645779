"""The prepared data directory (`python -m data.prepare`): its one owner. Flat token files that
np.memmap reads, a document index per shard, the tokenizer file and manifest.json with checksums.

Layout of DIR: manifest.json (written last, when every shard is done), progress.json (the shards
done so far, while preparing), tokenizer.model, and per shard i and split s ("train", "eval"):
`s-0000i.tokens` (uint16 or uint32, every document followed by EOS) and `s-0000i.docs.npy`
(int64[num_documents + 1] offsets into the tokens file, starting at 0).
"""

import concurrent.futures
import hashlib
import json
import os
from collections.abc import Iterable

import numpy as np

from runtime.errors import UserError
from runtime.files import write_json

FORMAT = "meshlm-token-shards"
VERSION = 1
MANIFEST, PROGRESS, TOKENIZER = "manifest.json", "progress.json", "tokenizer.model"
SPLITS = ("train", "eval")
_TMP = ".tmp"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id fits, else uint32."""
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def shard_names(split: str, index: int) -> tuple[str, str]:
    """(tokens file, document index file) of shard `index` of `split`."""
    return f"{split}-{index:05d}.tokens", f"{split}-{index:05d}.docs.npy"


def _durable_replace(tmp: str, path: str) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SplitWriter:
    """Appends documents' tokens to one split of one shard under temporary names; `finish()`
    fsyncs and renames them to their final names and returns their manifest entry."""

    def __init__(self, directory: str, split: str, index: int, dtype: np.dtype):
        self.directory, self.dtype = directory, dtype
        self.names = shard_names(split, index)
        self._tmp_tokens = os.path.join(directory, self.names[0] + _TMP)
        self._file = open(self._tmp_tokens, "wb")  # noqa: SIM115 (closed in finish)
        self._offsets = [0]

    def add(self, tokens: np.ndarray) -> None:
        """One whole document (its EOS included)."""
        self._file.write(np.asarray(tokens, dtype=self.dtype).tobytes())
        self._offsets.append(self._offsets[-1] + len(tokens))

    @property
    def num_tokens(self) -> int:
        return self._offsets[-1]

    def finish(self) -> dict:
        self._file.close()
        tmp_docs = os.path.join(self.directory, self.names[1] + _TMP)
        with open(tmp_docs, "wb") as f:
            np.save(f, np.asarray(self._offsets, dtype=np.int64), allow_pickle=False)
        entry = {"tokens_file": self.names[0], "docs_file": self.names[1],
                 "num_tokens": self._offsets[-1], "num_documents": len(self._offsets) - 1}
        for tmp, name, key in ((self._tmp_tokens, self.names[0], "tokens"),
                               (tmp_docs, self.names[1], "docs")):
            entry[f"{key}_sha256"] = file_sha256(tmp)
            entry[f"{key}_bytes"] = os.path.getsize(tmp)
            _durable_replace(tmp, os.path.join(self.directory, name))
        return entry

    def abort(self) -> None:
        self._file.close()


def remove_temporaries(directory: str) -> None:
    """Half-written shards of an interrupted run (they never carry a final name)."""
    for name in os.listdir(directory):
        if _TMP in name:
            os.remove(os.path.join(directory, name))


def is_prepared(path: str) -> bool:
    """Whether `path` is a prepared directory, finished (it has a manifest.json) or not (a
    progress.json)."""
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, name))
                                       for name in (MANIFEST, PROGRESS))


def is_finished(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MANIFEST))


def owns(path: str) -> bool:
    """Whether `path` is empty, absent, or a prepared directory (finished or not)."""
    if not os.path.exists(path):
        return True
    if not os.path.isdir(path):
        return False
    names = os.listdir(path)
    return not names or MANIFEST in names or PROGRESS in names


def read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read {path} ({e}); prepare the directory again.")
    if not isinstance(value, dict):
        raise UserError(f"{path} is not a JSON object; prepare the directory again.")
    return value


def write_progress(directory: str, progress: dict) -> None:
    write_json(os.path.join(directory, PROGRESS), progress)


def write_manifest(directory: str, manifest: dict) -> None:
    write_json(os.path.join(directory, MANIFEST), manifest)
    if os.path.exists(os.path.join(directory, PROGRESS)):
        os.remove(os.path.join(directory, PROGRESS))


def shard_files(entry: dict) -> Iterable[tuple[str, str, int]]:
    """(file name, sha256, bytes) of every file of one shard's manifest entry."""
    for split in SPLITS:
        part = entry[split]
        yield part["tokens_file"], part["tokens_sha256"], part["tokens_bytes"]
        yield part["docs_file"], part["docs_sha256"], part["docs_bytes"]


def check_shard(directory: str, entry: dict, checksums: bool) -> None:
    """A UserError if a file of the shard is missing, has the wrong size or (with `checksums`)
    the wrong sha256."""
    for name, sha256, size in shard_files(entry):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise UserError(f"prepared data {directory} lacks its shard file {name}; run "
                            f"python -m data.prepare again to rebuild it.")
        if os.path.getsize(path) != size:
            raise UserError(f"shard file {path} has {os.path.getsize(path)} bytes, not the "
                            f"{size} of the manifest (truncated?); prepare the data again.")
        if checksums and file_sha256(path) != sha256:
            raise UserError(f"shard file {path} does not match its checksum in the manifest "
                            f"(damaged); prepare the data again.")


def read_manifest(directory: str, checksums: bool = True) -> dict:
    """The manifest of the prepared `directory`, every shard and the tokenizer checked (sizes
    always, sha256 with `checksums`)."""
    if not is_finished(directory):
        raise UserError(f"{directory} is an unfinished preparation (it has no {MANIFEST} yet); "
                        f"rerun the python -m data.prepare command that made it to finish it.")
    manifest = read_json(os.path.join(directory, MANIFEST))
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise UserError(f"{directory} holds no meshlm prepared data of version {VERSION}; "
                        f"prepare it again with python -m data.prepare.")
    tokenizer = os.path.join(directory, TOKENIZER)
    if not os.path.isfile(tokenizer) or file_sha256(tokenizer) != manifest["tokenizer_sha256"]:
        raise UserError(f"the tokenizer file {tokenizer} is missing or not the one the shards "
                        f"were made with; prepare the data again.")
    for entry in manifest["shards"]:  # every file's presence and size first: they are cheap
        check_shard(directory, entry, checksums=False)
    if checksums:  # hashlib releases the GIL: threads read and hash several shards at once
        with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            list(pool.map(lambda entry: check_shard(directory, entry, checksums=True),
                          manifest["shards"]))
    return manifest


class SplitReader:
    """One split of a prepared dir as one flat token stream: its shards' tokens, memory-mapped,
    one after the other. Memory: the per-shard sizes only; pages are read on demand."""

    def __init__(self, directory: str, manifest: dict, split: str):
        self.directory = directory
        self.dtype = np.dtype(manifest["dtype"])
        parts = [entry[split] for entry in manifest["shards"]]
        self.parts = [p for p in parts if p["num_tokens"]]
        self.starts = np.cumsum([0] + [p["num_tokens"] for p in self.parts])
        self.num_tokens = int(self.starts[-1])
        self.num_documents = sum(p["num_documents"] for p in self.parts)
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _open(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._maps:
            part = self.parts[i]
            tokens = np.memmap(os.path.join(self.directory, part["tokens_file"]),
                               dtype=self.dtype, mode="r", shape=(part["num_tokens"],))
            offsets = np.load(os.path.join(self.directory, part["docs_file"]), mmap_mode="r",
                              allow_pickle=False)
            # Plain ndarray views of the maps (they keep them open): a slice of an np.memmap
            # pays for a subclass finalize, a fifth of a short window's read.
            self._maps[i] = (np.asarray(tokens), np.asarray(offsets))
        return self._maps[i]

    def window(self, start: int, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32[length], document starts: bool[length]) of the stream from `start`
        (the window within the split)."""
        tokens, starts = self.windows(np.asarray([start]), length)
        return tokens[0], starts[0]

    def windows(self, starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32[n, length], document starts bool[n, length]) of the stream from each of
        `starts` (int[n]), a window over several shards read from each; past the split's end,
        tokens 0 and no document starts."""
        tokens = np.zeros((len(starts), length), dtype=np.int32)
        doc_starts = np.zeros((len(starts), length), dtype=bool)
        stops = np.minimum(starts + length, self.num_tokens).tolist()
        shards = (np.searchsorted(self.starts, starts, side="right") - 1).tolist()
        bounds = self.starts.tolist()
        for row, (begin, stop, i) in enumerate(zip(starts.tolist(), stops, shards, strict=True)):
            start = begin
            while start < stop:  # one pass per shard the window touches
                shard_tokens, offsets = self._open(i)
                lo, hi = start - bounds[i], min(stop, bounds[i + 1]) - bounds[i]
                column = start - begin
                tokens[row, column:column + hi - lo] = shard_tokens[lo:hi]
                first, last = offsets.searchsorted((lo, hi))
                doc_starts[row, offsets[first:last] + (column - lo)] = True
                start, i = start + hi - lo, i + 1
        return tokens, doc_starts

    def document(self, index: int) -> np.ndarray:
        """int32 tokens of document `index` of the split (its EOS included), for tests."""
        for i, part in enumerate(self.parts):
            if index < part["num_documents"]:
                tokens, offsets = self._open(i)
                return np.asarray(tokens[offsets[index]:offsets[index + 1]], dtype=np.int32)
            index -= part["num_documents"]
        raise IndexError(index)
