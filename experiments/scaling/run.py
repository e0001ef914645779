"""A scaling-law study that runs on a laptop CPU: 5 model sizes x 3 token budgets of a Llama-style
decoder on the standard library's source, each run with its own cosine schedule; then the
Chinchilla fit L(N, D) = E + A / N^alpha + B / D^beta (fit.py) beside the published exponents.

    python experiments/scaling/run.py [--runs=runs/scaling] [--out=experiments/scaling]

(or `python -m experiments.scaling.run` from the repository root). Each size is one
`python -m train.sweep` over --steps (so a rerun skips finished runs and resumes a killed one);
`python -m train.results` tables land in each sweep directory. Writes OUT/results.json,
OUT/results.md and OUT/scaling.png.
"""

import os
import subprocess
import sys
import time

import numpy as np
from absl import flags

HERE = os.path.dirname(os.path.abspath(__file__))
# Run as a script, Python puts only this directory on the path: fit.py sits here, meshlm two up.
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]
from fit import HOFFMANN, KAPLAN, fit, plot, predict

from model.config import get_preset
from runtime.command import run_command
from runtime.errors import UserError
from runtime.files import atomic_write, write_json
from train.run_summary import collect

FLAGS = flags.FLAGS
# (d_model, layers, heads, mlp_dim): 3K to 440K non-embedding params, ~130x. Small enough that
# the largest token budget is within ~5x of Chinchilla's 20 tokens per param for most sizes: a
# first try with 27K-1.6M params and at most 1M tokens left the larger models under-trained
# (worse than the smaller ones at every budget) and the fit degenerate.
SIZES = ((16, 1, 2, 48), (32, 2, 4, 96), (48, 2, 4, 144), (64, 3, 4, 192), (96, 4, 4, 288))
STEPS = (250, 500, 1000)  # x 2048 tokens a step: 0.51M, 1.02M, 2.05M tokens
TOKENS_PER_STEP = 16 * 128
VOCAB = 512  # a small vocabulary keeps the embedding and output layer from dominating small N


def learning_rate(d_model: int) -> float:
    """Adam's best rate shrinks with width (muP's 1/width for hidden matrices); one fixed rate
    favours some sizes over others and bends the fitted exponents."""
    return min(1e-2, 0.2 / d_model)


def non_embedding_params(d_model: int, layers: int, heads: int, mlp_dim: int) -> int:
    cfg = get_preset("tiny_llama").replace(d_model=d_model, num_layers=layers, num_heads=heads,
                                           num_kv_heads=heads, mlp_dim=mlp_dim, vocab_size=VOCAB)
    return cfg.num_params(include_embeddings=False)


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _law_row(name: str, law: dict) -> str:
    return (f"| {name} | {law['E']:.2f} | {law['A']:.4g} | {law['alpha']:.3f} | "
            f"{law['B']:.4g} | {law['beta']:.3f} |")


def define_flags() -> None:
    flags.DEFINE_string("runs", "runs/scaling", "Directory for the shared tokenizer and one "
                                                "sweep directory of workdirs per model size.")
    flags.DEFINE_string("out", HERE, "Directory for results.json, results.md and scaling.png "
                                     "(default: this study's own directory).")


def _run(args: list[str]) -> None:
    """Runs one step of the study; a failed one has said why (its own `error:` line), so this
    exits with its code and adds nothing."""
    print("$ " + " ".join(args), flush=True)
    code = subprocess.run(args, check=False).returncode
    if code:
        sys.exit(code)


def main(argv: list[str]) -> None:
    del argv  # run_command refuses positional arguments
    for name in ("runs", "out"):
        path = FLAGS[name].value
        if not path:
            raise UserError(f"--{name} must name a directory")
        if os.path.exists(path) and not os.path.isdir(path):
            raise UserError(f"--{name}={path} is a file; name a directory")
    runs, out = FLAGS.runs, FLAGS.out
    tokenizer = os.path.join(runs, "tokenizer.model")
    if not os.path.exists(tokenizer):  # one tokenizer for every run: losses stay comparable
        os.makedirs(runs, exist_ok=True)
        _run([sys.executable, "-m", "data.tokenizer", "--data=stdlib", f"--vocab_size={VOCAB}",
              f"--out={tokenizer}"])
    points = []
    for d_model, layers, heads, mlp_dim in SIZES:
        name = f"d{d_model}_l{layers}"
        sweep_dir = os.path.join(runs, name)
        start = time.time()
        _run([sys.executable, "-m", "train.sweep", f"--flagfile={HERE}/base.flags",
              f"--d_model={d_model}", f"--num_layers={layers}", f"--num_heads={heads}",
              f"--num_kv_heads={heads}", f"--mlp_dim={mlp_dim}", f"--tokenizer={tokenizer}",
              f"--vocab_size={VOCAB}", f"--learning_rate={learning_rate(d_model)}",
              f"--sweep=steps={','.join(map(str, STEPS))}", f"--out={sweep_dir}"])
        rows, _ = collect(sweep_dir)
        n = non_embedding_params(d_model, layers, heads, mlp_dim)
        for row in rows:
            points.append({"size": name, "d_model": d_model, "layers": layers, "N": n,
                           "steps": row["steps"], "D": row["steps"] * TOKENS_PER_STEP,
                           "eval_loss": row["eval_loss"]})
        print(f"{name}: N={n:,} done in {time.time() - start:.0f} s", flush=True)
    n, d, loss = (np.asarray([p[k] for p in points], float) for k in ("N", "D", "eval_loss"))
    law = fit(n, d, loss)
    residual = loss - predict(law, n, d)
    report = {"points": points, "fit": law, "rms_residual": float(np.sqrt(np.mean(residual**2))),
              "published": {"hoffmann2022": HOFFMANN, "kaplan2020": KAPLAN},
              "setup": {"sizes": SIZES, "steps": STEPS, "tokens_per_step": TOKENS_PER_STEP,
                        "vocab_size": VOCAB,
                        "learning_rates": {d: learning_rate(d) for d, *_ in SIZES}, "base_flags": _read(f"{HERE}/base.flags")}}
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "results.json"), report)
    plot(os.path.join(out, "scaling.png"), n, d, loss, law)
    lines = ["| run | N (non-embedding) | D (tokens) | held-out loss | fit |", "|---|---|---|---|---|"]
    lines += [f"| {p['size']} | {p['N']:,} | {p['D']:,} | {p['eval_loss']:.4f} | "
              f"{predict(law, p['N'], p['D']):.4f} |" for p in points]
    lines += ["", "| | E | A | alpha | B | beta |", "|---|---|---|---|---|---|",
              _law_row("this study", law), _law_row("Hoffmann et al. 2022", HOFFMANN)]
    with atomic_write(os.path.join(out, "results.md")) as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    run_command(main, define_flags, "experiments.scaling.run")
