"""`python -m train.sweep --flagfile=BASE.flags --sweep="learning_rate=1e-3,3e-4;batch_size=16,32"
--out=DIR`: one training run per point of a grid (or `--random=N` samples of ranges, see
train/sweep_spec.py), each in its own workdir `DIR/trial_NNN/` with its own complete flag file.

Trials run here one after another, `--parallel=N` at a time (each process given its own GPUs), or
are handed to SLURM as a job array (`--slurm` writes `DIR/sweep.sbatch` and runs nothing). There
is no scheduler here: a trial is `python -m train --flagfile=DIR/trial_NNN/trial.flags`, which
resumes from its own checkpoints, so re-running the sweep skips finished trials and continues
unfinished ones. `python -m train.results DIR` tabulates and plots them.

Every train flag is accepted too (the base flag file is parsed by the same definitions) and
applies to every trial.
"""

import json
import os
import queue
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from absl import flags
from tqdm import tqdm

from runtime.command import run_command
from runtime.errors import UserError
from runtime.files import atomic_write
from train import sweep_spec
from train.flags import TrainConfig, config_from_flags, flagfile_text
from train.flags import define_flags as define_train_flags

FLAGS = flags.FLAGS
SWEEP_FILE = "sweep.json"
SBATCH_FILE = "sweep.sbatch"


def define_flags() -> None:
    define_train_flags()
    flags.DEFINE_string("sweep", None, "Flags to sweep: NAME=V1,V2;NAME2=V3,V4 (a grid), or with "
                                       "--random also NAME=log(LOW,HIGH) | uniform(LOW,HIGH) | "
                                       "int(LOW,HIGH).")
    flags.DEFINE_string("out", None, "Sweep directory: one workdir per trial (trial_NNN/), "
                                     "sweep.json, and the results of python -m train.results.")
    flags.DEFINE_integer("random", 0, "Random search: sample this many trials from the --sweep "
                                      "ranges and lists instead of running the grid.")
    flags.DEFINE_integer("sweep_seed", 0, "Seed of the --random samples (trials keep --seed).")
    flags.DEFINE_integer("parallel", 1, "Trials run at once on this machine; on GPUs each gets "
                                        "its share of the visible devices.")
    flags.DEFINE_bool("slurm", False, "Write DIR/sweep.sbatch (a job array, one task per trial) "
                                      "instead of running; submit it with sbatch.")
    flags.DEFINE_list("sbatch", [], "Extra #SBATCH options for --slurm, comma separated, e.g. "
                                    "--gres=gpu:8,--time=24:00:00,--partition=a100.")


def plan(base: TrainConfig, axes: list[sweep_spec.Axis], random: int, seed: int,
         out: str) -> list[TrainConfig]:
    """The trials' configs, each with its workdir under `out`."""
    overrides = sweep_spec.trials(axes, random, seed)
    return [base.replace(**o, workdir=os.path.join(out, f"trial_{i:03d}"))
            for i, o in enumerate(overrides)]


def _record(base: TrainConfig, swept: list[str], configs: list[TrainConfig]) -> dict:
    return {"sweep": FLAGS.sweep, "random": FLAGS.random, "sweep_seed": FLAGS.sweep_seed,
            "swept": swept,
            "trials": [{"name": os.path.basename(c.workdir),
                        "overrides": {k: getattr(c, k) for k in swept}} for c in configs],
            "base": {k: v for k, v in base.to_flags().items() if k != "workdir"}}


def _write_plan(out: str, record: dict, configs: list[TrainConfig]) -> None:
    """sweep.json and every trial's flag file; refuses a directory holding another sweep."""
    path = os.path.join(out, SWEEP_FILE)
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                previous = json.load(f)
        except (OSError, ValueError) as e:
            raise UserError(f"{path} is unreadable ({e}); use a new --out") from None
        if (previous.get("trials"), previous.get("base")) != (record["trials"], record["base"]):
            raise UserError(f"--out={out} holds a different sweep ({previous.get('sweep')!r}); "
                            f"use a new --out, or the same flags to continue it")
    elif os.path.isfile(out) or (os.path.isdir(out) and os.listdir(out)):
        raise UserError(f"--out={out} exists and holds no sweep; choose a new directory")
    os.makedirs(out, exist_ok=True)
    for cfg in configs:
        os.makedirs(cfg.workdir, exist_ok=True)
        _write_if_changed(os.path.join(cfg.workdir, "trial.flags"), flagfile_text(cfg))
    _write_if_changed(path, json.dumps(record, indent=2))


def _write_if_changed(path: str, text: str) -> None:
    """Atomic, and untouched when equal: a rerun leaves a finished sweep's files as they are."""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    with atomic_write(path) as f:
        f.write(text)


def finished(cfg: TrainConfig) -> bool:
    """Whether the trial's workdir holds its final checkpoint (step == --steps)."""
    directory = os.path.join(cfg.workdir, "checkpoints")
    return os.path.isdir(directory) and str(cfg.steps) in os.listdir(directory)


def sbatch_script(out: str, configs: list[TrainConfig], extra: list[str]) -> str:
    """A SLURM job array, one task per trial; each task runs the trial's own flag file (and
    resumes it, so resubmitting the array continues where it stopped)."""
    files = " ".join(shlex.quote(os.path.join(c.workdir, "trial.flags")) for c in configs)
    options = "".join(f"#SBATCH {option}\n" for option in extra)
    return (f"#!/bin/bash\n"
            f"#SBATCH --job-name=meshlm-sweep\n"
            f"#SBATCH --array=0-{len(configs) - 1}\n"
            f"#SBATCH --output={shlex.quote(out)}/slurm-%A_%a.out\n"
            f"{options}"
            f"# Written by python -m train.sweep; submit with: sbatch {SBATCH_FILE}\n"
            f"set -euo pipefail\n"
            f"TRIALS=({files})\n"
            f"cd {shlex.quote(os.getcwd())}\n"
            f"srun {shlex.quote(sys.executable)} -m train "
            f"--flagfile=\"${{TRIALS[$SLURM_ARRAY_TASK_ID]}}\"\n")


def _visible_gpus() -> list[str]:
    """GPU ids this machine lets us use, without initialising a backend in this process (which
    would claim GPU memory the trials need)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return [d for d in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if d]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return [str(i) for i, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU")]


def run_trials(configs: list[TrainConfig], parallel: int) -> dict[str, int]:
    """Runs every unfinished trial (`parallel` at a time); returns {trial: exit code}."""
    todo = [c for c in configs if not finished(c)]
    gpus = _visible_gpus()
    slots: queue.Queue = queue.Queue()
    share = max(len(gpus) // parallel, 1) if gpus else 0
    for slot in range(parallel):
        slots.put(gpus[slot * share:(slot + 1) * share] if gpus else None)
    bar = tqdm(total=len(configs), initial=len(configs) - len(todo), unit="trial", disable=None)

    def one(cfg: TrainConfig) -> tuple[str, int]:
        devices = slots.get()
        env = dict(os.environ)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        log = os.path.join(cfg.workdir, "train.log")
        try:
            with open(log, "a", encoding="utf-8") as f:
                code = subprocess.run(
                    [sys.executable, "-m", "train",
                     f"--flagfile={os.path.join(cfg.workdir, 'trial.flags')}"],
                    stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    check=False).returncode
        finally:
            slots.put(devices)
        name = os.path.basename(cfg.workdir)
        bar.write(f"{name}: " + ("done" if code == 0 else f"failed (exit {code}); see {log}"))
        bar.update(1)
        return name, code

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        codes = dict(pool.map(one, todo))
    bar.close()
    return codes


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
    if not FLAGS.out:
        raise UserError("--out=DIR is required: the directory for the trials' workdirs")
    if FLAGS.sweep is None:
        raise UserError("--sweep is required, e.g. --sweep='learning_rate=1e-3,3e-4'")
    if FLAGS.parallel < 1 or FLAGS.random < 0:
        raise UserError("--parallel must be >= 1 and --random >= 0")
    out = os.path.abspath(FLAGS.out)
    base = config_from_flags()
    axes = sweep_spec.parse(FLAGS.sweep)
    configs = plan(base, axes, FLAGS.random, FLAGS.sweep_seed, out)
    _write_plan(out, _record(base, [a.name for a in axes], configs), configs)
    if FLAGS.slurm:
        path = os.path.join(out, SBATCH_FILE)
        with open(path, "w", encoding="utf-8") as f:
            f.write(sbatch_script(out, configs, FLAGS.sbatch))
        print(f"wrote {path} ({len(configs)} array tasks); submit it with: sbatch {path}")
        return
    done = sum(finished(c) for c in configs)
    print(f"{len(configs)} trials in {out} ({done} already finished)")
    codes = run_trials(configs, FLAGS.parallel)
    failed = sorted(name for name, code in codes.items() if code)
    print(f"tabulate and plot them: python -m train.results {out}")
    if failed:
        print(f"{len(failed)} trial(s) failed: {', '.join(failed)}; rerun the same command to "
              f"retry them", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_command(main, define_flags, "train.sweep")
