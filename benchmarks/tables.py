"""`python -m benchmarks.tables [--check]`: renders the measured tables of README.md and docs/*.md
from the records in benchmarks/results/*.json, so that a table can only say what a record says.

A rendered table sits in the markdown between `<!-- table: NAME -->` and `<!-- end table -->`;
NAME is one of TABLES below, each naming the records it reads (file, benchmark, time: a new run
never changes a table until its spec points at it). Without --check every block is rewritten in
place; with --check nothing is written and a block that differs from its rendering is an error
(exit 1), which tests/benchmarks/test_tables.py runs. Ratios are computed here from the medians
the table shows (docs/benchmarks.md).
"""

import json
import os
import re
import sys

from absl import flags

from benchmarks.record import RESULTS
from runtime.command import run_command
from runtime.errors import UserError
from runtime.files import atomic_write

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- end table -->)",
                   re.DOTALL)


def define_flags() -> None:
    flags.DEFINE_bool("check", False, "Only compare: exit 1 if a table in the docs differs from "
                                      "what its records render (nothing is written).")


def find_record(file: str, benchmark: str, time: str) -> dict:
    """The run of `benchmark` recorded at `time` in benchmarks/results/`file`."""
    path = os.path.join(RESULTS, file)
    with open(path, encoding="utf-8") as f:
        runs = json.load(f)["runs"]
    found = [r for r in runs if r["benchmark"] == benchmark and r["time"] == time]
    if len(found) != 1:
        raise UserError(f"{file} has {len(found)} {benchmark} runs at {time}; a table spec "
                        f"must name exactly one")
    return found[0]


def _head(*columns: str) -> list[str]:
    """A markdown table's header and separator lines."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _label(file: str, time: str) -> str:
    """The record a row comes from: its results file and the run's time of day."""
    return f"{file} {time[11:19]}"


def _range(spread: dict, digits: int = 1) -> str:
    return f"{spread['min']:.{digits}f}-{spread['max']:.{digits}f}"


def seq2seq_decode(specs: list[tuple[str, str]]) -> list[str]:
    """Old vs new encoder-decoder greedy decode, one row per run and batch size."""
    lines = _head("run (record)", "batch", "old loop tok/s (min-max)", "new loop tok/s (min-max)",
                  "new / old (per round)")
    for file, time in specs:
        run = find_record(file, "seq2seq_decode", time)
        for batch, result in run["results"].items():
            if result.get("outputs_equal") is not True:
                raise UserError(f"{file} {time}: batch {batch} has no equal outputs; no ratio")
            old, new = (result[p]["decode_tokens_per_s"] for p in ("old", "new"))
            per_round = result["ratio_new_to_old"]["decode"]
            lines.append(f"| {_label(file, time)} | {batch} | {old['median']:.1f} "
                         f"({_range(old)}) | {new['median']:.1f} ({_range(new)}) | "
                         f"**{new['median'] / old['median']:.2f}×** "
                         f"({_range(per_round, 2)}) |")
    return lines


def generate_startup(specs: list[tuple[str, str]]) -> list[str]:
    """Cold vs warm time to first token (and to exit) of `python -m infer.generate`."""
    lines = _head("run (record)", "cold: empty cache, TTFT s (min-max)",
                  "warm: filled cache, TTFT s (min-max)", "cold / warm", "exit s, cold / warm")
    for file, time in specs:
        run = find_record(file, "generate_startup", time)
        cold, warm = run["cold"], run["warm"]
        lines.append(f"| {_label(file, time)} | {cold['ttft_s']['median']:.2f} "
                     f"({_range(cold['ttft_s'], 2)}) | {warm['ttft_s']['median']:.2f} "
                     f"({_range(warm['ttft_s'], 2)}) | "
                     f"**{cold['ttft_s']['median'] / warm['ttft_s']['median']:.2f}×** | "
                     f"{cold['total_s']['median']:.2f} / {warm['total_s']['median']:.2f} |")
    return lines


def _cell(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def training_evals(specs: list[tuple[str, str, str]]) -> list[str]:
    """Every evaluation of `benchmarks.training_run` records (label, file, time): held-out loss,
    the same with shuffled sources, BLEU and exact match beside their source-blind baselines."""
    lines = _head("run (record)", "step", "held-out loss", "shuffled-source loss",
                  "BLEU (source-blind)", "exact match (source-blind)", "wall s")
    for label, file, time in specs:
        run = find_record(file, "training_run", time)
        for i, e in enumerate(run["evals"]):
            bleu = (f"{e['bleu']:.1f} ({e['blind_bleu']:.1f})" if "bleu" in e else "")
            exact = (f"{100 * e['exact_match']:.1f}% ({100 * e['blind_exact_match']:.1f}%)"
                     if "exact_match" in e else "")
            wall = f"{run['wall_s']:.0f}" if i == len(run["evals"]) - 1 else ""
            lines.append(f"| {label} ({run['name']}, {_label(file, time)}) | {e['step']} | "
                         f"{e['eval_loss']:.3f} | {_cell(e.get('shuffled_source_loss'), '.3f')} | "
                         f"{bleu} | {exact} | {wall} |")
    return lines


def _shape(config: dict) -> str:
    m = config["model"]
    return (f"{m['num_layers']}L d{m['d_model']} vocab {m['vocab_size']} "
            f"{config.get('dtype', m['dtype'])}")


def generate_vs_hf(specs: list[tuple[str, str]]) -> list[str]:
    """Our engine against HF `generate` (static cache): decode and whole-request tokens/s."""
    lines = _head("run (record)", "shape, batch, prompt + new", "ours decode tok/s",
                  "HF decode tok/s", "ours / HF decode (per round)", "ours / HF whole request")
    for file, time in specs:
        run = find_record(file, "generate_throughput", time)
        c, ours, hf, ratio = run["config"], run["ours"], run["peer"], run["ratio"]
        pairs = ratio.get("decode_per_pair") or [float("nan")]
        per_round = {"min": min(pairs), "max": max(pairs)}
        lines.append(f"| {_label(file, time)} | {_shape(c)}, {c['batch_size']}, "
                     f"{c['prompt_len']} + {c['new_tokens']} | {ours['tokens_per_s']:.1f} | "
                     f"{hf['tokens_per_s']:.1f} | "
                     f"**{ours['tokens_per_s'] / hf['tokens_per_s']:.2f}×** "
                     f"({_range(per_round, 2)}) | "
                     f"{ours['overall_tokens_per_s'] / hf['overall_tokens_per_s']:.2f}× |")
    return lines


def train_vs_hf(specs: list[tuple[str, str]]) -> list[str]:
    """Our training step against HF GPT-2 + torch AdamW: tokens/s and MFU."""
    lines = _head("run (record)", "shape, batch x seq", "ours tok/s (MFU)",
                  "HF + torch tok/s (MFU)", "ours / HF")
    for file, time in specs:
        run = find_record(file, "train_throughput", time)
        c, ours, peer = run["config"], run["ours"], run["peer"]
        lines.append(f"| {_label(file, time)} | {_shape(c)}, {c['batch_size']} x {c['seq_len']} "
                     f"| {ours['tokens_per_s']:,.0f} ({100 * ours['mfu']:.1f}%) | "
                     f"{peer['tokens_per_s']:,.0f} ({100 * peer['mfu']:.1f}%) | "
                     f"**{ours['tokens_per_s'] / peer['tokens_per_s']:.2f}×** |")
    return lines


# NAME -> (renderer, the records it reads).
def quant_decode(specs: list[tuple[str, str]]) -> list[str]:
    """Decode tok/s of our float32, int8 and int8-KV models and HF's fp32 and dynamic int8, one
    row per run, batch and side; ratios are of the medians (older records lack min-max)."""
    lines = _head("run (record)", "batch", "side", "decode tok/s (min-max)", "vs our fp32",
                  "vs HF fp32", "param MiB")
    for file, time in specs:
        run = find_record(file, "quant_decode", time)
        mib = {f"ours {m}": b / 2**20 for m, b in run["param_bytes"].items()}
        for batch, sides in run["results"].items():
            base = sides["ours none"]["decode_tokens_per_s"]
            hf = sides.get("hf fp32", {}).get("decode_tokens_per_s")
            for name, r in sides.items():
                rate = r["decode_tokens_per_s"]
                spread = (f" ({r['decode_tokens_per_s_min']:,.1f}-{r['decode_tokens_per_s_max']:,.1f})"
                          if "decode_tokens_per_s_min" in r else "")
                lines.append(f"| {_label(file, time)} | {batch} | {name} | {rate:,.1f}{spread} | "
                             f"{rate / base:.2f}× | {f'{rate / hf:.2f}×' if hf else '-'} | "
                             f"{f'{mib[name]:.1f}' if name in mib else ''} |")
    return lines


TABLES = {
    "seq2seq-decode": (seq2seq_decode, [("2026-12-07-cpu-2core.json", "2026-12-07T20:46:36"),
                                        ("2026-12-08-cpu-2core.json", "2026-12-08T00:26:25")]),
    "generate-startup": (generate_startup, [("2026-12-08-cpu-2core.json",
                                              "2026-12-08T00:38:09")]),
    "generate-vs-hf": (generate_vs_hf, [("2026-11-23-cpu-2core.json", "2026-11-23T13:09:36"),
                                        ("2026-11-23-cpu-2core.json", "2026-11-23T13:16:12"),
                                        ("2026-12-08-cpu-2core.json", "2026-12-08T01:28:07"),
                                        ("2026-12-08-cpu-2core.json", "2026-12-08T04:09:57")]),
    "quant-decode": (quant_decode, [("2026-11-23-cpu-2core.json", "2026-11-23T19:10:09"),
                                    ("2026-12-08-cpu-2core.json", "2026-12-08T04:10:51")]),
    "train-vs-hf": (train_vs_hf, [
        ("2026-11-23-cpu-2core.json", t) for t in (
            "2026-11-23T09:38:18", "2026-11-23T09:39:09", "2026-11-23T09:39:45",
            "2026-11-23T09:40:18", "2026-11-23T10:54:22", "2026-11-23T10:55:11")] + [*[
        ("2026-12-08-cpu-2core.json", t) for t in (
            "2026-12-08T01:28:53", "2026-12-08T01:29:26", "2026-12-08T04:03:41",
            "2026-12-08T04:02:56")]]),
    "t5-pretraining": (training_evals, [
        ("span-pretrained", "2026-12-08-cpu-2core.json", "2026-12-08T00:18:27"),
        ("from scratch", "2026-12-08-cpu-2core.json", "2026-12-08T00:20:48")]),
    "own-task": (training_evals, [
        ("dates", "2026-12-07-cpu-2core.json", "2026-12-07T21:05:46"),
        ("reorder", "2026-12-07-cpu-2core.json", "2026-12-07T21:08:56")]),
}


def render(name: str) -> str:
    if name not in TABLES:
        raise UserError(f"a docs table names unknown table {name!r}; known: {sorted(TABLES)}")
    renderer, specs = TABLES[name]
    return "\n".join(renderer(specs)) + "\n"


def documents() -> list[str]:
    docs = os.path.join(ROOT, "docs")
    return [os.path.join(ROOT, "README.md"),
            *sorted(os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md"))]


def stale_blocks(path: str) -> tuple[str, list[str]]:
    """(the document with every table block re-rendered, the names of blocks that changed)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    changed = []

    def replace(match: re.Match) -> str:
        fresh = render(match["name"])
        if fresh != match["body"]:
            changed.append(match["name"])
        return match.group(1) + fresh + match.group(4)

    return BLOCK.sub(replace, text), changed


def main(argv: list[str]) -> None:
    del argv
    stale = []
    for path in documents():
        text, changed = stale_blocks(path)
        rel = os.path.relpath(path, ROOT)
        stale += [f"{rel}: {name}" for name in changed]
        if changed and not FLAGS.check:
            with atomic_write(path) as f:
                f.write(text)
            print(f"rewrote {rel}: {', '.join(changed)}")
    if FLAGS.check and stale:
        print("error: tables differ from their records (run python -m benchmarks.tables): "
              + "; ".join(stale), file=sys.stderr)
        sys.exit(1)
    if not stale:
        print("every table matches its records")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.tables")
