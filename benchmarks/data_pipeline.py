"""The prepared-data path's benchmark (issue 19): peak RSS of `python -m train` on prepared corpora
of two sizes (and on raw jsonl), the prepared loader's tokens/s per core, and `data.prepare`'s
tokens/s per worker against the tokenizer's own encode speed; merged into benchmarks/results.

The prepared corpora are synthetic: random token ids and document lengths written through
data/token_shards.py's SplitWriter (tokenizing GBs of text would not fit the time), with a real
SentencePiece tokenizer trained on generated text so train accepts them. The text is generated too.
"""

import cProfile
import dataclasses
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import flags

from benchmarks.record import results_path, save_run
from data import token_shards
from data.options import StreamOptions
from data.prepared_dataset import load_prepared, prepared_dataset, read_batch
from data.sentencepiece_tokenizer import load_tokenizer, train_tokenizer
from runtime.command import run_command
from runtime.errors import UserError
from runtime.hardware import measured_cpu_bandwidth

FLAGS = flags.FLAGS
TARGET_RSS_DIFF_MB, TARGET_LOADER_TOKENS_PER_S, TARGET_PREPARE_RATIO = 100, 5e6, 0.8


def define_flags() -> None:
    flags.DEFINE_bool("smoke", False, "Tiny sizes everywhere (seconds), for the test.")
    flags.DEFINE_float("small_mtokens", 50, "Millions of tokens of the small prepared corpus.")
    flags.DEFINE_float("large_mtokens", 500, "Millions of tokens of the large prepared corpus.")
    flags.DEFINE_float("raw_small_mb", 25, "MB of the small raw jsonl corpus (0: skip raw runs).")
    flags.DEFINE_float("raw_large_mb", 250, "MB of the large raw jsonl corpus.")
    flags.DEFINE_integer("train_steps", 20, "Steps of each `python -m train` memory run.")
    flags.DEFINE_integer("seq_len", 256, "Tokens per training row (train and loader).")
    flags.DEFINE_integer("batch_size", 16, "Rows per batch (train and loader).")
    flags.DEFINE_integer("loader_batches", 2000, "Timed loader batches per repeat.")
    flags.DEFINE_integer("repeats", 3, "Repeats of each timing; the median is reported.")
    flags.DEFINE_float("prepare_mb", 120, "MB of generated jsonl text for the prepare timing "
                      "(big enough that process start is a small part of the wall time).")
    flags.DEFINE_integer("vocab_size", 512, "Pieces of the SentencePiece tokenizer (tiny: 512).")
    flags.DEFINE_string("tmp", "", "Scratch directory (default: a new one under /tmp, removed "
                        "at the end).")
    flags.DEFINE_string("out", "", "JSON file to merge this run into (default: "
                        "benchmarks/results/<YYYY-MM-DD>-<device>.json).")


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "all": [round(v, 4) for v in values]}


def generated_text(mb: float, path: str, seed: int) -> tuple[int, int]:
    """A jsonl file of ~`mb` MB of documents of pseudo-words (Zipf-ish); (bytes, documents)."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(2, 9))) for _ in range(4000)]
    probs = 1.0 / np.arange(1, len(words) + 1)
    probs /= probs.sum()
    target, written, docs = int(mb * 1e6), 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            ids = rng.choice(len(words), size=200_000, p=probs)
            lengths = rng.integers(20, 2000, size=400)
            start = 0
            for n in lengths:
                line = json.dumps({"text": " ".join(words[i] for i in ids[start:start + n])})
                f.write(line + "\n")
                written, docs, start = written + len(line) + 1, docs + 1, start + n
                if written >= target or start >= len(ids):
                    break
    return written, docs


def synthetic_prepared(directory: str, tokenizer_path: str, mtokens: float, seed: int) -> dict:
    """A prepared dir of ~mtokens million random tokens, random document lengths, through
    token_shards' SplitWriter; the manifest as data.prepare writes it (source: synthetic)."""
    tok = load_tokenizer(tokenizer_path)
    os.makedirs(directory)
    shutil.copyfile(tokenizer_path, os.path.join(directory, token_shards.TOKENIZER))
    dtype, rng = token_shards.token_dtype(tok.vocab_size), np.random.default_rng(seed)
    total, per_shard, shards = int(mtokens * 1e6), 32 << 20, []
    for index in range(-(-total // per_shard)):
        entry = {"index": index, "source_sha256": "0" * 64, "input_bytes": 0}
        for split, n in (("train", min(per_shard, total - index * per_shard)), ("eval", 4096)):
            writer = token_shards.SplitWriter(directory, split, index, dtype)
            tokens = rng.integers(3, tok.vocab_size, size=n, dtype=np.int32).astype(dtype)
            ends = np.cumsum(rng.integers(50, 4000, size=n // 50 + 2))
            ends = np.append(ends[ends < n], n)
            tokens[ends - 1] = tok.eos_id
            for lo, hi in zip(np.concatenate([[0], ends[:-1]]), ends, strict=True):
                writer.add(tokens[lo:hi])
            entry[split] = writer.finish()
        shards.append(entry)
    counts = {s: sum(e[s]["num_documents"] for e in shards) for s in token_shards.SPLITS}
    manifest = {
        "format": token_shards.FORMAT, "version": token_shards.VERSION, "dtype": dtype.name,
        "vocab_size": tok.vocab_size, "eos_id": tok.eos_id, "tokenizer_file": token_shards.TOKENIZER,
        "tokenizer_sha256": token_shards.file_sha256(tokenizer_path),
        "source": {"source": f"synthetic:{mtokens}M", "sha256": "0" * 64,
                   "num_documents": sum(counts.values())},
        "num_documents": counts,
        "num_tokens": {s: sum(e[s]["num_tokens"] for e in shards) for s in token_shards.SPLITS},
        "settings": {"synthetic": True}, "shards": shards}
    token_shards.write_manifest(directory, manifest)
    return manifest


# Peak RSS through a small wrapper: Linux keeps the exec'ing process's old memory high-water
# mark in ru_maxrss, and Python spawns with vfork, so a direct child would report at least this
# process's own peak. The wrapper's children are measured from the wrapper's (small) footprint.
_WRAPPER = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
            "open(sys.argv[1], 'w').write(str(resource.getrusage("
            "resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(code)")


def run_child(args: list[str]) -> dict:
    """Runs `python -m ...args` alone; its wall time, CPU time and peak RSS (ru_maxrss)."""
    with tempfile.NamedTemporaryFile(suffix=".maxrss") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, f.name, sys.executable, "-m",
                                 *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        stderr = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise UserError(f"python -m {' '.join(args)} failed: {stderr.strip()[-800:]}")
        maxrss_kib = int(f.read())
    return {"wall_s": wall, "peak_rss_mb": maxrss_kib / 1024,
            "cpu_s": usage.ru_utime + usage.ru_stime}


def train_memory(data: str, work: str, tokenizer: str = "") -> dict:
    args = ["train", f"--data={data}", f"--workdir={work}", "--preset=tiny",
            f"--seq_len={FLAGS.seq_len}", f"--batch_size={FLAGS.batch_size}",
            f"--steps={FLAGS.train_steps}", "--eval_every=0", "--save_every=100000",
            f"--log_every={FLAGS.train_steps}"]
    if tokenizer:
        args.append(f"--tokenizer={tokenizer}")
    result = run_child(args)
    shutil.rmtree(work, ignore_errors=True)
    return result


def loader_speed(directory: str) -> dict:
    """Packed, shuffled train batches from the prepared shards, one reader thread, after warm-up;
    tokens/s of wall time and of this process's CPU time; plus the stages alone (reading random
    batches of windows, and that plus segments and positions) and two profiles."""
    corpus, length = load_prepared(directory), FLAGS.seq_len + 1
    options = StreamOptions(batch_size=FLAGS.batch_size, seed=0, num_threads=1)
    it = iter(prepared_dataset(corpus, "train", options, length=length))
    for _ in range(50):
        next(it)
    walls, cpus, checked = [], [], 0
    for _ in range(FLAGS.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(FLAGS.loader_batches):
            batch = next(it)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        checked += int(batch["tokens"].shape == (FLAGS.batch_size, length))
    tokens = FLAGS.loader_batches * FLAGS.batch_size * length
    reader = corpus.reader("train")
    windows = np.random.default_rng(0).integers(0, reader.num_tokens // length,
                                                (FLAGS.loader_batches, FLAGS.batch_size))
    t0 = time.perf_counter()
    for w in windows:
        reader.windows(w * length, length)
    window_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for w in windows:
        read_batch(reader, w, length, FLAGS.batch_size)
    batch_s = time.perf_counter() - t0
    # cProfile sees only its own thread: the whole pipeline is profiled with no reader thread.
    unthreaded = iter(prepared_dataset(corpus, "train", dataclasses.replace(options, num_threads=0),
                                       length=length))
    profiled = min(FLAGS.loader_batches, 500)
    return {"tokens_per_batch": FLAGS.batch_size * length, "batches": FLAGS.loader_batches,
            "batch_shape_ok": checked == FLAGS.repeats,
            "wall_tokens_per_s": _spread([tokens / w for w in walls]),
            "cpu_tokens_per_s": _spread([tokens / c for c in cpus]),
            "tokens_per_s_per_core": tokens / statistics.median(cpus),
            "window_only_tokens_per_s": tokens / window_s,
            "batch_only_tokens_per_s": tokens / batch_s,
            "bytes_per_token_delivered": 12,
            "batch_profile": _profile(lambda: [read_batch(reader, w, length, FLAGS.batch_size)
                                               for w in windows[:profiled]]),
            "pipeline_profile": _profile(lambda: [next(unthreaded) for _ in range(profiled)])}


def _profile(work) -> list[str]:
    """The top functions by own time of `work()`: where its time goes."""
    profiler = cProfile.Profile()
    profiler.runcall(work)
    stats = pstats.Stats(profiler)
    total = sum(v[2] for v in stats.stats.values()) or 1.0
    top = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:8]
    return [f"{100 * v[2] / total:.0f}% {os.path.basename(k[0])}:{k[1]} {k[2]}" for k, v in top]


def _machine_busy_s() -> float:
    """CPU-seconds every process of this machine has run since boot (/proc/stat: all but idle
    and iowait; steal counts, the hypervisor gave that time to someone else)."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def prepare_speed(text_path: str, tokenizer_path: str, tmp: str) -> dict:
    """data.prepare with 1 and 2 workers against sentencepiece encode of the same documents;
    for each run the cores its process tree used and those the rest of the machine kept busy
    (on a shared host another tenant's load caps what 2 workers can gain)."""
    tok = load_tokenizer(tokenizer_path)
    with open(text_path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    encode_s, expected = [], 0
    for _ in range(FLAGS.repeats):
        t0 = time.perf_counter()
        expected = sum(len(tok.encode(t)) + 1 for t in texts if t.strip())
        encode_s.append(time.perf_counter() - t0)
    encode_rate = expected / statistics.median(encode_s)
    shard_mb = max(0.05, FLAGS.prepare_mb / 8)  # several shards, so 2 workers have work each
    result = {"text_mb": os.path.getsize(text_path) / 1e6, "documents": len(texts),
              "encoded_tokens": expected, "encode_tokens_per_s": _spread(
                  [expected / s for s in encode_s]), "shard_mb": shard_mb, "workers": {}}
    for workers in (1, 2):
        runs, cores, others, counts = [], [], [], set()
        for r in range(FLAGS.repeats):
            out = os.path.join(tmp, f"prepared-w{workers}-{r}")
            busy = _machine_busy_s()
            run = run_child(["data.prepare", f"--data={text_path}", f"--out={out}",
                             f"--tokenizer={tokenizer_path}", f"--num_workers={workers}",
                             f"--shard_mb={shard_mb}"])
            busy = _machine_busy_s() - busy
            manifest = token_shards.read_manifest(out, checksums=False)
            counts.add(sum(manifest["num_tokens"].values()))
            shutil.rmtree(out)
            runs.append(run["wall_s"])
            cores.append(run["cpu_s"] / run["wall_s"])
            others.append((busy - run["cpu_s"]) / run["wall_s"])
        rate = expected / statistics.median(runs)
        result["workers"][str(workers)] = {
            "wall_s": _spread(runs), "cores_used": _spread(cores),
            "other_load_cores": _spread(others), "tokens": sorted(counts), "tokens_per_s": rate,
            "tokens_per_s_per_worker": rate / workers,
            "ratio_to_encode": rate / workers / encode_rate,
            "tokens_equal_encoded": counts == {expected}}
    result["scaling_1_to_2"] = (result["workers"]["2"]["tokens_per_s"]
                                / result["workers"]["1"]["tokens_per_s"])
    return result


def sizes() -> dict:
    if FLAGS.smoke:
        return {"small_mtokens": 0.3, "large_mtokens": 3.0, "raw_small_mb": 0.3,
                "raw_large_mb": 1.0, "prepare_mb": 0.4, "train_steps": 2, "loader_batches": 20,
                "repeats": 2}
    return {k: FLAGS[k].value for k in ("small_mtokens", "large_mtokens", "raw_small_mb",
                                        "raw_large_mb", "prepare_mb", "train_steps",
                                        "loader_batches", "repeats")}


def main(argv: list[str]) -> None:
    del argv  # run_command refuses positional arguments
    out = results_path(FLAGS.out)
    config = sizes()
    for key, value in config.items():
        FLAGS[key].value = value
    if FLAGS.repeats < 1 or FLAGS.loader_batches < 1 or FLAGS.train_steps < 1:
        raise UserError("need --repeats, --loader_batches and --train_steps >= 1")
    tmp = FLAGS.tmp or tempfile.mkdtemp(prefix="meshlm-databench-")
    os.makedirs(tmp, exist_ok=True)
    try:
        run = measure(tmp)
    finally:
        if not FLAGS.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    run["config"] = {**config, "seq_len": FLAGS.seq_len, "batch_size": FLAGS.batch_size,
                     "vocab_size": FLAGS.vocab_size, "smoke": FLAGS.smoke, "preset": "tiny"}
    print(json.dumps({k: v for k, v in run.items() if k != "notes"}, indent=1))
    save_run("data_pipeline", run, out)
    print(f"wrote {out}")


def measure(tmp: str) -> dict:
    text = os.path.join(tmp, "prepare.jsonl")
    generated_text(FLAGS.prepare_mb, text, seed=1)
    with open(text, encoding="utf-8") as f:
        sample = [json.loads(line)["text"] for line in f][:2000]
    tokenizer = train_tokenizer(sample, FLAGS.vocab_size, os.path.join(tmp, "tok.model")).path
    memory: dict = {"prepared": {}, "raw": {}}
    for name in ("small", "large"):
        mtokens = FLAGS[f"{name}_mtokens"].value
        directory = os.path.join(tmp, f"prepared-{name}")
        t0 = time.perf_counter()
        manifest = synthetic_prepared(directory, tokenizer, mtokens, seed=2)
        build_s = time.perf_counter() - t0
        memory["prepared"][name] = {"tokens": sum(manifest["num_tokens"].values()),
                                    "disk_mb": sum(s["train"]["tokens_bytes"]
                                                   for s in manifest["shards"]) / 1e6,
                                    "build_s": build_s,
                                    **train_memory(directory, os.path.join(tmp, "work"))}
        if name == "large":
            loader = loader_speed(directory)
        shutil.rmtree(directory)
    if FLAGS.raw_small_mb > 0:
        for name in ("small", "large"):
            path = os.path.join(tmp, f"raw-{name}.jsonl")
            size, docs = generated_text(FLAGS[f"raw_{name}_mb"].value, path, seed=3)
            memory["raw"][name] = {"mb": size / 1e6, "documents": docs,
                                   **train_memory(path, os.path.join(tmp, "work"), tokenizer)}
            os.remove(path)
    p = memory["prepared"]
    memory["prepared_rss_diff_mb"] = p["large"]["peak_rss_mb"] - p["small"]["peak_rss_mb"]
    if memory["raw"]:
        memory["raw_rss_diff_mb"] = (memory["raw"]["large"]["peak_rss_mb"]
                                     - memory["raw"]["small"]["peak_rss_mb"])
    bandwidth = measured_cpu_bandwidth()
    loader["cpu_bandwidth_bytes_per_s"] = bandwidth
    loader["fraction_of_bandwidth"] = (loader["tokens_per_s_per_core"]
                                       * loader["bytes_per_token_delivered"] / bandwidth)
    prepare = prepare_speed(text, tokenizer, tmp)
    return {"memory": memory, "loader": loader, "prepare": prepare,
            "targets": {"prepared_rss_diff_mb_below": TARGET_RSS_DIFF_MB,
                        "loader_tokens_per_s_per_core_at_least": TARGET_LOADER_TOKENS_PER_S,
                        "prepare_ratio_at_least": TARGET_PREPARE_RATIO},
            "met": {"memory": abs(memory["prepared_rss_diff_mb"]) < TARGET_RSS_DIFF_MB,
                    "loader": loader["tokens_per_s_per_core"] >= TARGET_LOADER_TOKENS_PER_S,
                    "prepare": prepare["workers"]["1"]["ratio_to_encode"] >= TARGET_PREPARE_RATIO},
            "notes": "prepared corpora: synthetic random token ids and document lengths (50-4000 "
                     "tokens) written through data/token_shards.SplitWriter, not tokenized text; "
                     "raw and prepare corpora: generated pseudo-word jsonl; tokenizer: "
                     "SentencePiece trained on that text. Peak RSS: ru_maxrss of each child run "
                     "alone, measured by a wrapper process. Loader: one grain reader thread, "
                     "tokens per CPU-second of the process as tokens/s per core; window_only and "
                     "batch_only: SplitReader.windows and read_batch alone on random batches; "
                     "pipeline_profile: the loader with no reader thread (cProfile sees one "
                     "thread); prepare wall times include process start; cores_used: the "
                     "data.prepare process tree's CPU-seconds per wall second, other_load_cores: "
                     "the rest of the machine's busy CPU (/proc/stat) per wall second."}


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.data_pipeline")
