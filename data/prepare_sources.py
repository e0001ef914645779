"""Streaming readers for `python -m data.prepare`: a corpus cut into fixed units of work (a txt
file, a byte range of a jsonl file, a parquet row group, an Arrow file of a `datasets`
save_to_disk directory) and the documents of one unit, read line by line, row group by row
group or record batch by record batch, never a whole file at once.

The plan depends only on the files (their sizes and parquet metadata), so the shards made from
it do not depend on the number of workers or their scheduling.
"""

import gzip
import io
import itertools
import json
import os
from collections.abc import Iterator

from data.corpus import expand_spec
from runtime.errors import UserError

COMPRESSED = (".gz", ".zst")
SUFFIXES = tuple(f"{kind}{c}" for kind in (".txt", ".jsonl") for c in ("", *COMPRESSED)) + (
    ".parquet",)
# Text is handed to the tokenizer in line-aligned pieces of about this many characters: "\n" is
# a piece of its own, so tokenizing at line ends gives the tokens of the whole text.
PIECE_CHARS = 1 << 20


def plan_units(spec: str, unit_bytes: int) -> list[dict]:
    """The units of work of `spec` (comma-separated files, globs, directories, save_to_disk
    directories), in file order: {"path", "kind": txt|jsonl|parquet|arrow, "start", "stop",
    "bytes"}; start/stop are a byte range
    of a plain jsonl file or a row group [start, start + 1) of a parquet file."""
    if spec == "stdlib":
        raise UserError("data.prepare reads files; pass --data=FILES (the stdlib corpus needs no "
                        "preparing: train on --data=stdlib directly).")
    units, seen = [], set()
    for part in (p.strip() for p in spec.split(",")):
        if part and os.path.isfile(os.path.join(part, "dataset_dict.json")):
            raise UserError(f"{part} is a saved datasets DatasetDict; pass one split's "
                            f"directory (e.g. {os.path.join(part, 'train')})")
        if part and os.path.isfile(os.path.join(part, "state.json")):
            units.extend(_saved_dataset_units(part))
        elif part:
            paths = [p for p in expand_spec(part, SUFFIXES) if p not in seen]
            seen.update(paths)
            units.extend(u for path in paths for u in _file_units(path, unit_bytes))
    return units


def split_one_document(units: list[dict], eval_fraction: float) -> list[dict]:
    """A corpus of one .txt file is one document, which a split by document cannot divide: as
    data/corpus.py does, its last ~eval_fraction of lines (at least one) are held out instead.
    The unit then carries "train_lines" and `documents` gives its two parts."""
    if len(units) != 1 or units[0]["kind"] != "txt":
        return units
    lines = _count_lines(units[0])
    if lines < 2:
        return units  # blank, or nothing to hold out: data.prepare's count checks say which
    held_out = min(lines - 1, max(1, round(lines * eval_fraction)))
    return [{**units[0], "train_lines": lines - held_out}]


def _count_lines(unit: dict) -> int:
    """Lines of the file ("\n"-terminated, and a last one without), read in blocks."""
    count, last = 0, b"\n"
    with _open(unit["path"]) as f:
        while block := f.read(1 << 22):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def split_of(unit: dict, ordinal: int, digest: bytes, eval_fraction: float) -> str:
    """"train" or "eval" for document number `ordinal` of `unit`, whose text has sha1 `digest`:
    by the hash (`is_eval`), or by position in a one-document corpus (`split_one_document`)."""
    if "train_lines" in unit:
        return "train" if ordinal == 0 else "eval"
    return "eval" if is_eval(digest, eval_fraction) else "train"


def _file_units(path: str, unit_bytes: int) -> list[dict]:
    size = os.path.getsize(path)
    if path.endswith(".parquet"):
        metadata = _parquet_file(path).metadata
        return [{"path": path, "kind": "parquet", "start": group, "stop": group + 1,
                 "bytes": metadata.row_group(group).total_byte_size}
                for group in range(metadata.num_row_groups)]
    if path.endswith(".jsonl"):  # seekable: cut into byte ranges
        return [{"path": path, "kind": "jsonl", "start": start, "stop": min(size, start + unit_bytes),
                 "bytes": min(size, start + unit_bytes) - start}
                for start in range(0, max(size, 1), unit_bytes)]
    kind = "txt" if ".txt" in os.path.basename(path) else "jsonl"
    return [{"path": path, "kind": kind, "start": 0, "stop": size, "bytes": size}]


def _saved_dataset_units(directory: str) -> list[dict]:
    """The Arrow files of a `datasets` save_to_disk directory, in the order state.json lists."""
    try:
        with open(os.path.join(directory, "state.json"), encoding="utf-8") as f:
            files = [entry["filename"] for entry in json.load(f)["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"cannot read the datasets state.json of {directory} ({e}); pass a "
                        f"directory that Dataset.save_to_disk wrote")
    units = []
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise UserError(f"{directory}/state.json lists {name}, which is missing; save the "
                            f"dataset again")
        size = os.path.getsize(path)
        units.append({"path": path, "kind": "arrow", "start": 0, "stop": size, "bytes": size})
    return units


def group_units(units: list[dict], shard_bytes: int) -> list[list[dict]]:
    """Consecutive units grouped into shards of at least `shard_bytes` (the last may be less)."""
    shards, current, size = [], [], 0
    for unit in units:
        current.append(unit)
        size += unit["bytes"]
        if size >= shard_bytes:
            shards.append(current)
            current, size = [], 0
    if current:
        shards.append(current)
    return shards


def is_eval(digest: bytes, eval_fraction: float) -> bool:
    """The held-out rule of data/corpus.py: the first 8 bytes of the text's sha1 under the
    fraction, so a document's split depends on its text alone."""
    return int.from_bytes(digest[:8], "big") < eval_fraction * 2**64


def documents(unit: dict) -> Iterator[Iterator[str]]:
    """The documents of `unit`, each as line-aligned pieces of text (consume each before the
    next): a txt file is one document (two with "train_lines"), a jsonl line or parquet row
    with a "text" field one."""
    if unit["kind"] == "arrow":
        yield from _arrow_documents(unit["path"])
    elif unit["kind"] == "parquet":
        try:
            table = _parquet_file(unit["path"]).read_row_group(unit["start"], columns=["text"])
        except (OSError, ValueError, KeyError) as e:  # pyarrow's errors subclass these
            raise UserError(f'cannot read column "text" of parquet file {unit["path"]!r} ({e}); '
                            f'check it.')
        for value in table.column("text").to_pylist():
            if value is not None and not isinstance(value, str):
                raise UserError(f'column "text" of {unit["path"]!r} is not a string column; '
                                f'store text there.')
            if value is not None:
                yield iter([value])
    elif unit["kind"] == "txt" and "train_lines" in unit:
        lines = _lines(unit)  # one reader: the held-out part continues where training's ended
        yield _pieces(itertools.islice(lines, unit["train_lines"]))
        yield _pieces(lines)
    elif unit["kind"] == "txt":
        yield _pieces(_lines(unit))
    else:
        for line in _lines(unit):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{unit['path']} has a line that is not valid JSON (in bytes "
                                f"{unit['start']}-{unit['stop']}); write one object per line.")
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise UserError(f'{unit["path"]} has a line with no string field "text" (in '
                                f'bytes {unit["start"]}-{unit["stop"]}); add it to every line.')
            yield iter([record["text"]])


def _arrow_documents(path: str) -> Iterator[Iterator[str]]:
    """The "text" column of an Arrow stream file (what save_to_disk writes), batch by batch."""
    import pyarrow as pa  # only arrow users pay the import

    try:
        with pa.memory_map(path) as source:
            reader = pa.ipc.open_stream(source)
            if "text" not in reader.schema.names:
                raise UserError(f'{path} has no column "text"; save the text in that column')
            for batch in reader:
                for value in batch.column("text").to_pylist():
                    if value is not None and not isinstance(value, str):
                        raise UserError(f'column "text" of {path} is not a string column')
                    if value is not None:
                        yield iter([value])
    except (OSError, pa.ArrowInvalid) as e:
        raise UserError(f"cannot read the Arrow file {path} ({e}); save the dataset again")


def _pieces(lines: Iterator[str]) -> Iterator[str]:
    buffer, size = [], 0
    for line in lines:
        buffer.append(line)
        size += len(line)
        if size >= PIECE_CHARS:
            yield "".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield "".join(buffer)


def _lines(unit: dict) -> Iterator[str]:
    """The decoded lines whose first byte lies in the unit's byte range (the whole file if
    compressed)."""
    path = unit["path"]
    try:
        raw = _open(path)
        with raw:
            if not path.endswith(COMPRESSED) and unit["start"] > 0:
                raw.seek(unit["start"] - 1)
                raw.readline()  # the line that began before start belongs to the previous unit
            end = None if path.endswith(COMPRESSED) else unit["stop"]
            while end is None or raw.tell() < end:
                line = raw.readline()
                if not line:
                    break
                yield _decode(path, line)
    except OSError as e:
        raise UserError(f"cannot read data file {path!r} ({e}); check it.")


def _decode(path: str, line: bytes) -> str:
    if b"\0" in line:
        raise UserError(f"data file {path!r} looks binary (has NUL bytes); pass UTF-8 text.")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"data file {path!r} is not valid UTF-8; re-encode it as UTF-8.")


def _open(path: str) -> io.BufferedIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".zst"):
        try:
            import zstandard  # only .zst users need it
        except ImportError:
            raise UserError(f"{path} is zstd-compressed; pip install zstandard to read it.")
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
    return open(path, "rb")


def _parquet_file(path: str):
    import pyarrow.parquet as pq  # only parquet users pay the import

    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read parquet file {path!r} ({e}); check it.")
