"""Where a run's numbers go: WORKDIR/metrics.jsonl, TensorBoard event files, and the console;
MFU divides the family's FLOP count (model/family.py) by the peak of runtime/hardware.py."""

import json
import math
import os
from typing import Any

import jax

from runtime.files import atomic_write

# Eval metrics beyond the loss that the console line shows when a task reports them.
TASK_METRICS = ("accuracy", "nsp_accuracy", "mlm_accuracy", "bleu", "exact_match", "distill_kl",
                "shuffled_source_loss")
# Accuracies over independent examples (one label a row): the evaluator adds NAME_low, NAME_high
# (the Wilson 95% interval) and NAME_n (examples scored). Token accuracies are left out: the
# tokens of a row are not independent trials.
INTERVAL_METRICS = ("accuracy", "nsp_accuracy")
Z_95 = 1.959964  # two-sided 95% quantile of the standard normal


def wilson_interval(successes: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion successes / n (Wilson 1927): unlike
    p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and is right near 0 and 1. (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


class MetricsWriter:
    """Appends one JSON object a line to metrics.jsonl and mirrors scalars to TensorBoard. On a
    multi-host run only process 0 writes (the metrics are global); elsewhere it does nothing."""

    def __init__(self, workdir: str, resume_step: int = 0):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self._drop_lines_after(resume_step)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (lives with the run)
        # Imported here: tensorboardX imports torch when it is installed, ~2 s of every start.
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(logdir=workdir)

    def _drop_lines_after(self, step: int) -> None:
        """A run killed after logging but before its next checkpoint repeats those steps when it
        resumes; drop their old lines so each step appears once (and a line cut short by the
        kill, which is no JSON)."""
        if not os.path.exists(self.path):
            return
        with open(self.path, encoding="utf-8") as f:
            kept = [line for line in f if _step_of(line) <= step]
        with atomic_write(self.path) as f:
            f.writelines(kept)

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)):
                self.tb.add_scalar(name, value, step)
        self.tb.flush()

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def _step_of(line: str) -> float:
    """The step of a metrics line; infinity (never kept) for a blank or torn one."""
    try:
        return json.loads(line).get("step", 0) if line.endswith("\n") else math.inf
    except ValueError:
        return math.inf


def format_line(step: int, total: int, values: dict[str, Any]) -> str:
    """The console line for one log interval."""
    parts = [f"step {step}/{total}"]
    if "loss" in values:
        parts.append(f"loss {values['loss']:.4f}")
    if "eval_loss" in values:
        parts.append(f"eval_loss {values['eval_loss']:.4f} (ppl {values['eval_ppl']:.1f})")
    for name in TASK_METRICS:
        if name in values:
            fmt = ".2f" if name == "bleu" else ".4f"  # BLEU is in 0..100
            parts.append(f"{name} {values[name]:{fmt}}")
            if f"blind_{name}" in values:  # seq2seq: the source-blind answer's score
                parts[-1] += f" (source-blind {values[f'blind_{name}']:{fmt}})"
            if f"{name}_low" in values:
                parts[-1] += (f" (95% {values[f'{name}_low']:.4f}-{values[f'{name}_high']:.4f}, "
                              f"n {values[f'{name}_n']:.0f})")
    if "learning_rate" in values:
        parts.append(f"lr {values['learning_rate']:.2e}")
    if "tokens_per_s" in values:
        parts.append(f"{values['tokens_per_s']:,.0f} tok/s")
    if "mfu" in values:
        parts.append(f"mfu {100 * values['mfu']:.2f}%")
    if "step_time_s" in values:
        parts.append(f"{values['step_time_s']:.3f} s/step")
    return " | ".join(parts)


def plot_curves(workdir: str, baseline: float | None = None) -> str:
    """Draws WORKDIR/loss.png: train and eval loss against tokens seen (with the unigram
    baseline, the loss a model that ignores context would reach); returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    train = [(r["tokens_seen"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["tokens_seen"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="held-out loss")
    if baseline:
        ax.axhline(baseline, color="gray", linestyle="--", label=f"unigram baseline {baseline:.2f}")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(os.path.basename(os.path.normpath(workdir)))
    ax.grid(alpha=0.3)
    ax.legend()
    path = os.path.join(workdir, "loss.png")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
