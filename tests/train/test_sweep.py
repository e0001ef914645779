"""train.sweep and train.results as users run them: a 2x2 grid of tiny runs gives 4 workdirs, a
4-row table and both plots; rerunning skips finished trials; a trial killed midway resumes from
its checkpoint; --slurm writes a valid job array; bad specs are one line, exit 2."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from data.corpus import load_corpus, sample
from data.sentencepiece_tokenizer import train_tokenizer
from runtime.errors import UserError
from train import sweep_spec
from train.run_summary import collect

GRID = "learning_rate=1e-3,1e-2;seed=0,1"


@pytest.fixture(scope="module")
def base_flags(tmp_path_factory):
    """A base flag file for tiny trials (a tokenizer trained once, so trials skip that)."""
    root = tmp_path_factory.mktemp("sweep_base")
    tokenizer = train_tokenizer(sample(load_corpus("stdlib").train, 200_000), 512,
                                str(root / "tok.model"))
    path = root / "base.flags"
    path.write_text("\n".join([
        "# tiny CPU trials", "--preset=tiny", "--vocab_size=512", "--seq_len=32",
        "--batch_size=8", "--steps=6", "--warmup_steps=1", "--log_every=1", "--eval_every=3",
        "--eval_batches=2", "--save_every=2", f"--tokenizer={tokenizer.path}"]) + "\n")
    return path


def _sweep(*args, **kw):
    return subprocess.run([sys.executable, "-m", "train.sweep", *args], capture_output=True,
                          text=True, timeout=900, check=False, stdin=subprocess.DEVNULL, **kw)


def _final_steps(out):
    return {name: json.loads(open(os.path.join(out, name, "metrics.jsonl")).readlines()[-1])
            ["step"] for name in sorted(os.listdir(out)) if name.startswith("trial_")}


def test_grid_runs_tabulates_skips_and_resumes_a_killed_trial(base_flags, tmp_path):
    out = tmp_path / "sweep"
    args = [f"--flagfile={base_flags}", f"--sweep={GRID}", f"--out={out}"]
    # Kill the whole sweep once the first trial has written a checkpoint, but not its last.
    process = subprocess.Popen([sys.executable, "-m", "train.sweep", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    checkpoints = out / "trial_000" / "checkpoints"
    deadline = time.time() + 600
    while not (checkpoints.is_dir() and "2" in os.listdir(checkpoints)):
        assert process.poll() is None and time.time() < deadline, "first checkpoint never came"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert "6" not in os.listdir(checkpoints)  # killed midway

    result = _sweep(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "trial_000" / "train.log").read_text()
    assert "resumed from" in log
    assert _final_steps(out) == {f"trial_{i:03d}": 6 for i in range(4)}
    plan = json.loads((out / "sweep.json").read_text())
    assert [t["overrides"] for t in plan["trials"]] == [
        {"learning_rate": lr, "seed": seed} for lr in (1e-3, 1e-2) for seed in (0, 1)]
    assert "--learning_rate=0.01" in (out / "trial_002" / "trial.flags").read_text()

    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    result = _sweep(*args)
    assert result.returncode == 0 and "4 already finished" in result.stdout, result.stderr
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())

    rows, files = collect(str(out))
    assert len(rows) == 4 and {r["run"] for r in rows} == {f"trial_{i:03d}" for i in range(4)}
    assert [r["eval_loss"] for r in rows] == sorted(r["eval_loss"] for r in rows)
    assert {r["learning_rate"] for r in rows} == {1e-3, 1e-2}
    for name in ("results.csv", "results.md", "loss_curves.png", "sweep.png"):
        assert name in files and (out / name).stat().st_size > 0
    assert len((out / "results.csv").read_text().strip().splitlines()) == 5  # header + 4

    # One workdir on its own: its training curves.
    result = subprocess.run([sys.executable, "-m", "train.results", str(out / "trial_000")],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0 and "1 run(s)" in result.stdout, result.stderr[-3000:]
    assert (out / "trial_000" / "loss_curves.png").exists()


def test_slurm_writes_a_valid_job_array_and_runs_nothing(base_flags, tmp_path):
    out = tmp_path / "slurm"
    result = _sweep(f"--flagfile={base_flags}", f"--sweep={GRID}", f"--out={out}", "--slurm",
                    "--sbatch=--gres=gpu:8,--time=01:00:00")
    assert result.returncode == 0, result.stderr[-3000:]
    script = (out / "sweep.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(out / "sweep.sbatch")], check=False).returncode == 0
    assert "#SBATCH --array=0-3" in script and "#SBATCH --gres=gpu:8" in script
    assert script.count("trial.flags") == 4 and "SLURM_ARRAY_TASK_ID" in script
    assert not any((out / f"trial_{i:03d}" / "checkpoints").exists() for i in range(4))


def test_random_search_samples_ranges_reproducibly():
    axes = sweep_spec.parse("learning_rate=log(1e-4,1e-2);warmup_steps=int(10,20);"
                            "batch_size=8,16")
    first, again = sweep_spec.trials(axes, random=50, seed=3), sweep_spec.trials(axes, 50, 3)
    assert first == again and len(first) == 50
    assert all(1e-4 <= t["learning_rate"] <= 1e-2 and 10 <= t["warmup_steps"] <= 20
               and t["batch_size"] in (8, 16) for t in first)
    assert len({t["learning_rate"] for t in first}) == 50
    assert sweep_spec.trials(axes, 50, 4) != first


@pytest.mark.parametrize("spec, message", [
    ("learnin_rate=1e-3", "is not a flag of python -m train"),
    ("learning_rate=", "empty list"),
    ("learning_rate=log(1e-3)", "needs two numbers"),
    ("learning_rate=log(0,1)", "low > 0"),
    ("learning_rate=log(1e-2,1e-4)", "low < high"),
    ("batch_size=16.5", "is not a valid int"),
    ("steps=10;steps=20", "given twice"),
    ("workdir=a,b", "set by the sweep itself"),
    ("learning_rate=uniform(0,1)", "ranges need --random"),
    ("learning_rate 1e-3", "is not NAME=VALUES"),
    ("", "--sweep is empty"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(UserError, match=None) as error:
        sweep_spec.trials(sweep_spec.parse(spec))
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("args, message", [
    (["--sweep=learnin_rate=1e-3"], "not a flag of python -m train"),
    (["--sweep=batch_size=,"], "empty list"),
    (["--sweep=learning_rate=log(a,b)", "--random=2"], "needs two numbers"),
])
def test_cli_bad_spec_is_one_line_exit_2_and_writes_nothing(base_flags, tmp_path, args, message):
    result = _sweep(f"--flagfile={base_flags}", f"--out={tmp_path}/never", *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "never").exists()
