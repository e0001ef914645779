"""A training run recorded: `python -m benchmarks.training_run -- TRAIN FLAGS...` runs
`python -m train TRAIN FLAGS...` (in a fresh temporary workdir unless the flags name one), times
it, and merges its evaluations (every metrics.jsonl line with an eval_loss), its final line and the
model it trained into benchmarks/results/<date>-<device>.json. The quickstart and paper-tiny
figures of the README come from such records, so each can be rerun by the command beside it.

The run is a child process, as a user runs it: the wall time includes start-up, tokenizer training
and compilation, which is what "it takes N minutes" means to a newcomer.
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from absl import flags

from benchmarks.record import results_path, save_run
from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("name", "", "Name of the record (default: the stem of the last "
                        "--flagfile given to train).")
    flags.DEFINE_string("note", "", "A remark stored with the record (e.g. what else shared the "
                        "CPU).")
    flags.DEFINE_string("out", "", "JSON file to merge this run into (default: "
                        "benchmarks/results/<YYYY-MM-DD>-<device>.json).")


def _flag_value(args: list[str], name: str) -> str | None:
    """The last `--name=value` among `args` (None if absent)."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return values[-1] if values else None


def _read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize(workdir: str) -> dict:
    """The record body of a finished workdir: evaluations, final line, model and data."""
    metrics = _read_metrics(workdir)
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    flags_used = config["flags"]
    return {"evals": [m for m in metrics if "eval_loss" in m],
            "final": metrics[-1] if metrics else {},
            "model": config["model"],
            "objective": flags_used.get("objective"), "data": flags_used.get("data"),
            "steps": flags_used.get("steps"), "batch_size": flags_used.get("batch_size"),
            "unigram_loss": config.get("unigram_loss")}


def main(argv: list[str]) -> None:
    train_args = argv[1:]
    if train_args[:1] == ["--"]:
        train_args = train_args[1:]
    if train_args and "--" not in sys.argv:
        # absl drops the `--` itself; without it these are stray words, not train's flags.
        raise UserError(f"unexpected arguments {train_args}; give train's flags after --, e.g. "
                        "python -m benchmarks.training_run -- --flagfile=experiments/quickstart.flags")
    if not train_args:
        raise UserError("give train's flags after --, e.g. python -m benchmarks.training_run -- "
                        "--flagfile=experiments/quickstart.flags")
    out = results_path(FLAGS.out)
    flagfile = _flag_value(train_args, "flagfile")
    name = FLAGS.name or (os.path.splitext(os.path.basename(flagfile))[0] if flagfile else "")
    if not name:
        raise UserError("name the record with --name (train got no --flagfile to name it by)")
    command = shlex.join(["python", "-m", "train", *train_args])
    scratch = None
    if _flag_value(train_args, "workdir") is None or "--overwrite" not in train_args:
        # A fresh workdir, so the record is of one run from step 0 and not a resumed one.
        scratch = tempfile.mkdtemp(prefix="meshlm-record-")
        train_args = [*train_args, f"--workdir={scratch}", "--overwrite"]
    workdir = _flag_value(train_args, "workdir")
    try:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "train", *train_args], check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise UserError(f"python -m train exited with {done.returncode}; nothing recorded")
        body = {"name": name, "train_command": command,
                "wall_s": wall, "note": FLAGS.note, **summarize(workdir)}
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    save_run("training_run", body, out)
    evals = body["evals"]
    last = evals[-1] if evals else body["final"]
    shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items()
                      if isinstance(v, float) and k not in ("learning_rate", "mfu"))
    print(f"{name}: {wall:.0f} s; step {last.get('step')}: {shown}; recorded in {out}")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.training_run", positional=None)
