"""Tiny `python -m train` runs for the fault tests: start one, watch its workdir, kill or signal it,
and read back what it left (metrics lines, the final checkpoint's state)."""

import glob
import json
import os
import subprocess
import sys
import time

import jax

from model.family import build_model
from train.checkpoint import Checkpointer
from train.flags import TrainConfig
from train.optimizer import make_optimizer
from train.prepare import prepare
from train.state import abstract_state

STEPS = 24
# Everything the runs share; the constant schedule keeps the learning rate at a step independent
# of --steps, so runs of different lengths are comparable step by step.
FLAGS = {"preset": "tiny", "vocab_size": 512, "seq_len": 32, "batch_size": 8, "steps": STEPS,
         "save_every": 4, "log_every": 1, "eval_every": 0, "warmup_steps": 2,
         "schedule": "constant", "learning_rate": 3e-3}
# Metrics that are a function of the computation alone (the rest are wall-clock timings).
EXACT = ("step", "loss", "learning_rate", "grad_norm", "tokens_seen", "skipped_steps")


def config(workdir, data: str, tokenizer: str, **changes) -> TrainConfig:
    return TrainConfig(**{**FLAGS, "workdir": str(workdir), "data": data, "tokenizer": tokenizer,
                          **changes})


def command(cfg: TrainConfig) -> list[str]:
    return [sys.executable, "-m", "train",
            *(f"--{k}={v}" for k, v in cfg.to_flags().items() if v is not None)]


def env(cache_dir: str) -> dict[str, str]:
    """The test's 8 CPU devices, plus a persistent compilation cache shared by all runs of a
    module: each run then compiles in a fraction of a second instead of ~10 s."""
    return {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1",  # lines as printed
            "JAX_COMPILATION_CACHE_DIR": cache_dir,
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


def start(cfg: TrainConfig, cache_dir: str, log) -> subprocess.Popen:
    """Starts the run with stdout and stderr appended to the open file `log`."""
    return subprocess.Popen(command(cfg), stdout=log, stderr=subprocess.STDOUT,
                            env=env(cache_dir), cwd=os.getcwd())


def run(cfg: TrainConfig, cache_dir: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(cfg), capture_output=True, text=True, check=False,
                          timeout=timeout, env=env(cache_dir))


def wait_for_line(path, text: str, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Waits until the run logging to `path` has printed `text` (False if it exited first)."""
    def printed():
        with open(path, encoding="utf-8", errors="replace") as f:
            return text in f.read()
    return wait_for(printed, proc, timeout)


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 120,
             poll: float = 0.002) -> bool:
    """Polls `predicate` until it holds (True), the process exits or time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(poll)
    return False


def metrics(workdir) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # a line being written right now
            break
    return out


def last_step(workdir) -> int:
    lines = metrics(workdir)
    return lines[-1]["step"] if lines else 0


def exact(lines: list[dict]) -> list[dict]:
    return [{k: line[k] for k in EXACT} for line in lines]


def tmp_dirs(workdir) -> list[str]:
    """Checkpoints a save has started but not finished (orbax renames them when done)."""
    return sorted(glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*")))


def steps_saved(workdir) -> list[int]:
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(name) for name in names if name.isdigit())


def abstract(cfg: TrainConfig):
    run_ = prepare(cfg)
    tx, _ = make_optimizer(cfg)
    return abstract_state(build_model(run_.model), tx, cfg.seed, run_.mesh)[0]


def restore(cfg: TrainConfig, step: int | None = None) -> tuple[dict, dict, dict]:
    """(state on the host, data-iterator state, meta) of a checkpoint of the run (the latest by
    default)."""
    checkpointer = Checkpointer(cfg.workdir)
    try:
        step = checkpointer.latest_step() if step is None else step
        state, data, meta = checkpointer.restore(step, abstract(cfg))
    finally:
        checkpointer.close()
    return jax.device_get(state), data, meta


def assert_same_leaves(a, b) -> None:
    """Every leaf of two pytrees bitwise equal (NaNs in the same places count as equal)."""
    paths_a, leaves_a = zip(*jax.tree_util.tree_leaves_with_path(a), strict=True)
    paths_b, leaves_b = zip(*jax.tree_util.tree_leaves_with_path(b), strict=True)
    assert paths_a == paths_b
    for path, x, y in zip(paths_a, leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
        assert x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)
