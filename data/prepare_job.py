"""The restartable, parallel job behind `python -m data.prepare`: plan the corpus into fixed
shards, get the tokenizer (given, or trained on a bounded sample as training does), tokenize each
shard in a worker process and record it as done only once its files carry their final names.

Rerun after a kill, it keeps the shards recorded in progress.json and builds the rest; a shard's
bytes depend only on its input units, so the result equals an uninterrupted run's.
"""

import hashlib
import heapq
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
from tqdm import tqdm

from data import prepare_sources, token_shards
from data.sentencepiece_tokenizer import MAX_TRAIN_CHARS, Tokenizer, load_tokenizer, train_tokenizer
from runtime.errors import UserError
from runtime.files import atomic_write


class OneSidedSplit(UserError):
    """The split by document hash left the train or the eval split empty (a tiny corpus)."""


def prepare_corpus(spec: str, out: str, *, tokenizer: str = "", vocab_size: int = 4096,
                   eval_fraction: float = 0.02, num_workers: int = 1,
                   shard_mb: float = 64.0, extra_symbols: tuple[str, ...] = (),
                   show_progress: bool | None = True) -> dict:
    """Prepares `spec` into the directory `out` and returns its manifest (see token_shards).
    `extra_symbols`: pieces a trained tokenizer gets (BERT's, T5's sentinels). `show_progress`:
    the bar on stderr (None: only when stderr is a terminal)."""
    if not 0.0 < eval_fraction < 1.0:
        raise UserError(f"--eval_fraction must be in (0, 1), got {eval_fraction}; pass e.g. 0.02")
    if num_workers < 1 or shard_mb <= 0:
        raise UserError(f"--num_workers must be >= 1 and --shard_mb > 0, got {num_workers} and "
                        f"{shard_mb}")
    shard_bytes = max(1, int(shard_mb * (1 << 20)))
    units = prepare_sources.split_one_document(prepare_sources.plan_units(spec, shard_bytes),
                                               eval_fraction)
    given_sha = token_shards.file_sha256(load_tokenizer(tokenizer).path) if tokenizer else None
    settings = {"data": spec, "eval_fraction": eval_fraction, "shard_bytes": shard_bytes,
                "tokenizer_sha256": given_sha, "vocab_size": None if tokenizer else vocab_size,
                "inputs": [[u["path"], u["kind"], u["start"], u["stop"],
                            *([u["train_lines"]] if "train_lines" in u else [])] for u in units]}
    if extra_symbols and not tokenizer:  # absent otherwise: directories made before still match
        settings["extra_symbols"] = list(extra_symbols)
    if token_shards.is_finished(out):
        manifest = token_shards.read_manifest(out, checksums=False)
        if manifest["settings"] != settings:
            raise UserError(f"--out={out} holds data prepared from other inputs or settings; "
                            f"use a new --out")
        return manifest
    if not token_shards.owns(out):
        raise UserError(f"--out={out} holds files that are not prepared data; pass an empty or "
                        f"new directory")
    progress_path = os.path.join(out, token_shards.PROGRESS)
    fresh = not os.path.exists(progress_path)
    if not fresh:
        progress = token_shards.read_json(progress_path)
        if progress.get("settings") != settings:
            raise UserError(f"--out={out} holds an unfinished preparation with other inputs or "
                            f"settings; rerun that command or use a new --out")
    else:
        progress = {"settings": settings, "tokenizer_sha256": None, "done": {}}
    existed = os.path.exists(out)
    try:
        os.makedirs(out, exist_ok=True)
        token_shards.remove_temporaries(out)
        token_shards.write_progress(out, progress)
        tok = _tokenizer(out, tokenizer, units, settings, progress)
        return _build(out, tok, units, settings, progress, num_workers, show_progress)
    except UserError:
        if fresh:  # a refused first run leaves nothing behind
            if existed:
                for name in os.listdir(out):
                    os.remove(os.path.join(out, name))
            else:
                shutil.rmtree(out, ignore_errors=True)
        raise


def _tokenizer(out: str, given: str, units: list[dict], settings: dict,
               progress: dict) -> Tokenizer:
    """out/tokenizer.model: a copy of `given`, the one an interrupted run trained, or a new one."""
    path = os.path.join(out, token_shards.TOKENIZER)
    recorded = progress["tokenizer_sha256"]
    if recorded and os.path.exists(path) and token_shards.file_sha256(path) == recorded:
        return load_tokenizer(path)
    if given:
        with open(given, "rb") as f, atomic_write(path, "wb") as g:
            g.write(f.read())
        tokenizer = load_tokenizer(path)
    else:
        tokenizer = train_tokenizer(tokenizer_sample(units, settings["eval_fraction"])[0],
                                    settings["vocab_size"], path,
                                    extra_symbols=tuple(settings.get("extra_symbols", ())))
    progress["tokenizer_sha256"] = token_shards.file_sha256(path)
    token_shards.write_progress(out, progress)
    return tokenizer


def tokenizer_sample(units: list[dict], eval_fraction: float) -> tuple[list[str], dict]:
    """The training documents `sample(corpus.train, MAX_TRAIN_CHARS)` would pick, kept while
    streaming: those of smallest hash worth the budget, in corpus order (as sample wants); and
    how many non-blank documents each split has."""
    heap: list[tuple[bytes, int, str]] = []  # (inverted hash: a max-heap, index, text)
    total, index, counts = 0, 0, dict.fromkeys(token_shards.SPLITS, 0)
    for unit in units:
        for ordinal, pieces in enumerate(prepare_sources.documents(unit)):
            text = "".join(pieces)
            digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()
            split = prepare_sources.split_of(unit, ordinal, digest, eval_fraction)
            if not text.strip():
                continue
            counts[split] += 1
            if split == "eval":
                continue
            heapq.heappush(heap, (bytes(255 - b for b in digest), index, text))
            total += len(text)
            index += 1
            while heap and total - len(heap[0][2]) >= MAX_TRAIN_CHARS:
                total -= len(heapq.heappop(heap)[2])
    return [text for _, _, text in sorted(heap, key=lambda item: item[1])], counts


def _build(out: str, tokenizer: Tokenizer, units: list[dict], settings: dict, progress: dict,
           num_workers: int, show_progress: bool | None) -> dict:
    shards = prepare_sources.group_units(units, settings["shard_bytes"])
    done: dict = progress["done"]
    for key in list(done):  # a recorded shard whose files are gone is built again
        try:
            token_shards.check_shard(out, done[key], checksums=False)
        except UserError:
            del done[key]
    todo = [i for i in range(len(shards)) if str(i) not in done]
    total_bytes = sum(u["bytes"] for u in units)
    jobs = [(i, shards[i], out, tokenizer.path, settings["eval_fraction"]) for i in todo]
    start, tokens = time.monotonic(), [0]
    with tqdm(total=total_bytes, initial=sum(done[k]["input_bytes"] for k in done), unit="B",
              unit_scale=True, desc="prepare", mininterval=1.0,
              disable=None if show_progress is None else not show_progress) as bar:

        def report(input_bytes: int, unit_tokens: int) -> None:  # after every unit
            tokens[0] += unit_tokens
            bar.update(input_bytes)
            bar.set_postfix(tokens_per_s=f"{tokens[0] / max(time.monotonic() - start, 1e-9):.0f}",
                            refresh=False)

        for entry in _run_jobs(jobs, num_workers, report):
            done[str(entry["index"])] = entry
            token_shards.write_progress(out, progress)  # after the shard's rename
    return _finish(out, tokenizer, settings, [done[str(i)] for i in range(len(shards))])


def _run_jobs(jobs: list[tuple], num_workers: int,
              report: Callable[[int, int], None]) -> Iterator[dict]:
    """The shards' manifest entries as they finish; `report(input bytes, tokens)` is called
    after every unit, in this process (a thread relays the workers' reports)."""
    global _REPORT
    if num_workers == 1 or len(jobs) <= 1:
        _REPORT = report
        try:
            yield from map(_build_shard, jobs)
        finally:
            _REPORT = None
        return
    # spawn: the parent may hold threads (jax, grain) that a fork would copy half-way.
    context = multiprocessing.get_context("spawn")
    reports = context.Queue()
    relay = threading.Thread(target=_relay, args=(reports, report), daemon=True)
    relay.start()
    try:
        with context.Pool(min(num_workers, len(jobs)), initializer=_init_worker,
                          initargs=(reports,)) as pool:
            yield from pool.imap_unordered(_build_shard, jobs)
    finally:
        reports.put(None)
        relay.join()


def _relay(reports: "multiprocessing.Queue", report: Callable[[int, int], None]) -> None:
    while (item := reports.get()) is not None:
        report(*item)


def _init_worker(reports: "multiprocessing.Queue") -> None:
    global _REPORT
    _REPORT = lambda input_bytes, tokens: reports.put((input_bytes, tokens))


_TOKENIZERS: dict[str, Tokenizer] = {}  # one per worker process
_REPORT: Callable[[int, int], None] | None = None  # where a unit's (bytes, tokens) go


def _build_shard(job: tuple) -> dict:
    """Tokenizes the units of one shard into its train and eval files (final names last)."""
    index, units, out, tokenizer_path, eval_fraction = job
    if tokenizer_path not in _TOKENIZERS:
        _TOKENIZERS[tokenizer_path] = load_tokenizer(tokenizer_path)
    tokenizer = _TOKENIZERS[tokenizer_path]
    dtype = token_shards.token_dtype(tokenizer.vocab_size)
    eos = np.asarray([tokenizer.eos_id], dtype=np.int32)
    writers = {s: token_shards.SplitWriter(out, s, index, dtype) for s in token_shards.SPLITS}
    source = hashlib.sha256()
    try:
        for unit in units:
            before = sum(w.num_tokens for w in writers.values())
            for ordinal, pieces in enumerate(prepare_sources.documents(unit)):
                digest, parts, blank = hashlib.sha1(), [], True
                for piece in pieces:
                    digest.update(piece.encode("utf-8", "surrogatepass"))
                    blank = blank and not piece.strip()
                    parts.append(tokenizer.encode(piece))
                if blank:
                    continue  # as load_corpus drops blank documents
                digest = digest.digest()
                source.update(digest)
                split = prepare_sources.split_of(unit, ordinal, digest, eval_fraction)
                writers[split].add(np.concatenate([*parts, eos]))
            if _REPORT is not None:
                _REPORT(unit["bytes"], sum(w.num_tokens for w in writers.values()) - before)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    entry = {s: w.finish() for s, w in writers.items()}
    return {"index": index, **entry, "source_sha256": source.hexdigest(),
            "input_bytes": sum(u["bytes"] for u in units)}


def _finish(out: str, tokenizer: Tokenizer, settings: dict, shards: list[dict]) -> dict:
    counts = {s: sum(e[s]["num_documents"] for e in shards) for s in token_shards.SPLITS}
    if not counts["train"] + counts["eval"]:
        raise UserError(f"corpus {settings['data']!r} has no non-empty documents; point it at "
                        f"files with text")
    if counts["train"] + counts["eval"] == 1:
        raise OneSidedSplit(f"corpus {settings['data']!r} has one document, too short to "
                            f"split: a one-document corpus (one .txt file) needs at least two "
                            f"lines to hold some out for eval; add text or documents")
    if not counts["train"] or not counts["eval"]:
        raise OneSidedSplit(f"--eval_fraction={settings['eval_fraction']} puts {counts['eval']} "
                            f"of {counts['train'] + counts['eval']} documents in the held-out "
                            f"split; both splits need some: change --eval_fraction or add "
                            f"documents")
    source = hashlib.sha256(b"".join(bytes.fromhex(e["source_sha256"]) for e in shards))
    manifest = {
        "format": token_shards.FORMAT, "version": token_shards.VERSION,
        "dtype": token_shards.token_dtype(tokenizer.vocab_size).name,
        "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
        "tokenizer_file": token_shards.TOKENIZER,
        "tokenizer_sha256": token_shards.file_sha256(tokenizer.path),
        "source": {"source": settings["data"], "sha256": source.hexdigest(),
                   "num_documents": counts["train"] + counts["eval"]},
        "num_documents": counts,
        "num_tokens": {s: sum(e[s]["num_tokens"] for e in shards) for s in token_shards.SPLITS},
        "settings": settings, "shards": shards,
    }
    token_shards.write_manifest(out, manifest)
    return manifest
