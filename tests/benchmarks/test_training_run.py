"""benchmarks/training_run.py records what `python -m train` wrote: the run's evaluations and
final line equal its metrics.jsonl, the command beside them reruns it, and a failing run or a
missing name records nothing."""

import json
import os
import subprocess
import sys

TINY = ["--preset=tiny", "--vocab_size=512", "--seq_len=32", "--batch_size=8", "--log_every=1",
        "--eval_every=2", "--eval_batches=1", "--save_every=4", "--steps=4"]


def _record(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.training_run", *args],
                          capture_output=True, text=True, check=False, timeout=300,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_a_run_is_recorded_as_its_metrics(tmp_path):
    out, workdir = tmp_path / "r.json", tmp_path / "run"
    proc = _record("--name=tiny", "--note=test", f"--out={out}", "--",
                   *TINY, f"--workdir={workdir}", "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(out.read_text())["runs"][-1]
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
        metrics = [json.loads(line) for line in f]
    assert run["benchmark"] == "training_run" and run["name"] == "tiny" and run["note"] == "test"
    assert run["evals"] == [m for m in metrics if "eval_loss" in m]
    assert [e["step"] for e in run["evals"]] == [2, 4]
    assert run["final"] == metrics[-1] and run["steps"] == 4
    assert run["train_command"].startswith("python -m train --preset=tiny")
    assert run["wall_s"] > 0 and run["model"]["d_model"] > 0
    assert "tiny: " in proc.stdout and str(out) in proc.stdout


def test_failures_record_nothing(tmp_path):
    out = tmp_path / "r.json"
    unnamed = _record(f"--out={out}", "--", *TINY)
    assert unnamed.returncode == 2 and "--name" in unnamed.stderr
    failed = _record("--name=bad", f"--out={out}", "--", *TINY, "--preset=gpt5")
    assert failed.returncode == 2 and "exited with 2" in failed.stderr
    assert not out.exists()
