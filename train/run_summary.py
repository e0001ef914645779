"""Every run under a directory (a `python -m train.sweep` directory, any directory of workdirs, or
one workdir) summarized: one row per run (best first) written to results.csv and results.md, with
loss_curves.png (one curve per run) and, for a sweep, sweep.png (final held-out loss against the
first swept flag). `python -m train.results` and experiments/scaling/run.py use it.

A run is any directory holding `metrics.jsonl`; its settings come from its `config.json`. Runs
still training are listed with the step they reached.
"""

import csv
import json
import math
import os

from runtime.errors import UserError
from train.metrics import TASK_METRICS

# Columns of every row before the swept flags and the task's metrics.
COLUMNS = ("run", "step", "steps", "tokens_seen", "loss", "eval_loss", "best_eval_loss")


def _read_jsonl(path: str) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill mid-write; the run rewrites it on resume
    return records


def find_runs(directory: str) -> list[str]:
    """Workdirs under `directory` (itself if it is one), sorted by name."""
    if not os.path.isdir(directory):
        raise UserError(f"{directory} is not a directory; give a sweep directory or a workdir")
    if os.path.isfile(os.path.join(directory, "metrics.jsonl")):
        return [directory]
    runs = sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if os.path.isfile(os.path.join(directory, name, "metrics.jsonl")))
    if not runs:
        raise UserError(f"{directory} holds no run (no metrics.jsonl in it or its "
                        f"subdirectories); train or sweep into it first")
    return runs


def summarize(workdir: str, swept: list[str]) -> tuple[dict, list[dict]]:
    """(one results row, the run's metrics records)."""
    records = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    try:
        with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
            settings = json.load(f).get("flags", {})
    except (OSError, ValueError):
        settings = {}
    last = records[-1] if records else {}
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    row = {"run": os.path.basename(os.path.normpath(workdir)), "step": last.get("step"),
           "steps": settings.get("steps"), "tokens_seen": last.get("tokens_seen"),
           "loss": last.get("loss"), "eval_loss": evals[-1] if evals else None,
           "best_eval_loss": min(evals) if evals else None}
    row.update({name: settings.get(name) for name in swept})
    for name in TASK_METRICS:
        values = [r[name] for r in records if name in r]
        if values:
            row[name] = values[-1]
    return row, records


def _sort_key(row: dict) -> tuple:
    score = row["eval_loss"] if row["eval_loss"] is not None else row["loss"]
    return (score is None or not math.isfinite(score), score or 0.0, row["run"])


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_tables(out: str, rows: list[dict], columns: list[str]) -> None:
    with open(os.path.join(out, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def plot(out: str, rows: list[dict], curves: dict[str, list[dict]], swept: list[str]) -> list[str]:
    """loss_curves.png, and sweep.png when exactly one flag was swept; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for row in rows:
        records = curves[row["run"]]
        label = row["run"] + "".join(f" {k}={_cell(row.get(k))}" for k in swept)
        x = "tokens_seen" if all("tokens_seen" in r for r in records) else "step"
        train = [(r[x], r["loss"]) for r in records if "loss" in r]
        line, = ax.plot(*zip(*train, strict=True), label=label) if train else (None,)
        evals = [(r[x], r["eval_loss"]) for r in records if "eval_loss" in r]
        if evals:
            ax.plot(*zip(*evals, strict=True), "o--", color=line.get_color() if line else None,
                    markersize=3)
    ax.set_xlabel("tokens seen (dashed with dots: held-out loss)")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    paths = [os.path.join(out, "loss_curves.png")]
    fig.savefig(paths[0], dpi=120, bbox_inches="tight")
    plt.close(fig)
    if swept:
        paths.append(_sweep_plot(out, rows, swept, plt))
    return paths


def _sweep_plot(out: str, rows: list[dict], swept: list[str], plt) -> str:
    """Final held-out loss (train loss if none) against the first swept flag; one line per
    combination of the others."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    series: dict[str, list] = {}
    for row in rows:
        y = row["eval_loss"] if row["eval_loss"] is not None else row["loss"]
        if y is not None and row.get(swept[0]) is not None:
            label = ", ".join(f"{k}={_cell(row.get(k))}" for k in swept[1:]) or None
            series.setdefault(label, []).append((row[swept[0]], y))
    numeric = all(isinstance(x, (int, float)) for points in series.values() for x, _ in points)
    for label, points in series.items():
        points = sorted(points) if numeric else points
        ax.plot([str(x) if not numeric else x for x, _ in points], [y for _, y in points], "o-",
                label=label)
    xs = [x for points in series.values() for x, _ in points]
    if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
        ax.set_xscale("log")
    ax.set_xlabel(swept[0])
    ax.set_ylabel("final held-out loss" if rows[0]["eval_loss"] is not None else "final loss")
    ax.grid(alpha=0.3)
    if any(series):
        ax.legend(fontsize=8)
    path = os.path.join(out, "sweep.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def collect(directory: str) -> tuple[list[dict], list[str]]:
    """Writes the tables and plots into `directory`; returns (rows best first, files written)."""
    directory = os.path.abspath(directory)
    swept: list[str] = []
    sweep_file = os.path.join(directory, "sweep.json")
    if os.path.isfile(sweep_file):
        try:
            with open(sweep_file, encoding="utf-8") as f:
                swept = list(json.load(f).get("swept", []))
        except (OSError, ValueError) as e:
            raise UserError(f"{sweep_file} is unreadable ({e})") from None
    runs = find_runs(directory)
    summaries = [summarize(run, swept) for run in runs]
    rows = sorted((row for row, _ in summaries), key=_sort_key)
    curves = {row["run"]: records for row, records in summaries}
    extra = [m for m in TASK_METRICS if any(m in row for row in rows)]
    columns = list(dict.fromkeys([*COLUMNS[:1], *swept, *COLUMNS[1:], *extra]))  # no repeats
    write_tables(directory, rows, columns)
    files = ["results.csv", "results.md"]
    files += [os.path.basename(p) for p in plot(directory, rows, curves, swept)]
    return rows, files
