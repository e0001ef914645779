"""Faults a long run meets, each ending bitwise equal to an uninterrupted run: SIGKILL at random
moments (one in the middle of an async save), damaged checkpoints, SIGTERM / SIGINT, and
non-finite losses (skipped, counted, and stopping the run after --max_nonfinite in a row)."""

import glob
import os
import random
import re
import shutil
import signal
import time

import jax.numpy as jnp
import numpy as np
import pytest

from data.corpus import stdlib_sources
from data.sentencepiece_tokenizer import train_tokenizer
from runtime.errors import UserError
from train import __main__ as train_main
from train.checkpoint import Checkpointer, DamagedCheckpoint
from train.loop import train
from train.metrics import MetricsWriter
from train.preemption import Preemption
from train.prepare import prepare
from train.tasks import Task

from .fault_runs import (
    STEPS,
    abstract,
    assert_same_leaves,
    config,
    exact,
    last_step,
    metrics,
    restore,
    run,
    start,
    steps_saved,
    tmp_dirs,
    wait_for,
    wait_for_line,
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small text corpus and its tokenizer (no corpus scan or tokenizer training per run), and
    the compilation cache the runs share."""
    root = tmp_path_factory.mktemp("inputs")
    texts = [text for _, text in stdlib_sources()[::40][:30]]
    os.makedirs(root / "data")
    for i, text in enumerate(texts):
        (root / "data" / f"doc{i:02d}.txt").write_text(text)
    train_tokenizer(texts, 512, str(root / "tokenizer.model"))
    return {"data": str(root / "data"), "tokenizer": str(root / "tokenizer.model"),
            "cache": str(root / "jax_cache")}


def _config(inputs, workdir, **changes):
    return config(workdir, inputs["data"], inputs["tokenizer"], **changes)


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    """The uninterrupted run: (config, its metrics lines, final state, final data state)."""
    cfg = _config(inputs, tmp_path_factory.mktemp("reference") / "run")
    result = run(cfg, inputs["cache"])
    assert result.returncode == 0, result.stderr[-3000:]
    state, data, _ = restore(cfg)
    lines = metrics(cfg.workdir)
    assert [line["step"] for line in lines] == list(range(1, STEPS + 1))
    return cfg, lines, state, data


def _assert_same_as_reference(cfg, reference) -> None:
    _, ref_lines, ref_state, ref_data = reference
    lines = metrics(cfg.workdir)
    assert [line["step"] for line in lines] == list(range(1, STEPS + 1))  # each step once
    assert exact(lines) == exact(ref_lines)
    state, data, meta = restore(cfg)
    assert meta["step"] == STEPS and data == ref_data
    assert_same_leaves(state, ref_state)


def _log_text(path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _start_logged(cfg, inputs, path):
    with open(path, "w") as log:  # the child keeps its own descriptor
        return start(cfg, inputs["cache"], log)


def test_sigkill_at_random_moments_resumes_exactly(inputs, reference, tmp_path):
    rng = random.Random(7)
    cfg = _config(inputs, tmp_path / "run")
    # Kill 1: the moment a seeded step's async save has begun (its tmp directory exists).
    save_step = rng.choice([8, 12, 16])
    proc = _start_logged(cfg, inputs, tmp_path / "run0.log")
    tmp = os.path.join(cfg.workdir, "checkpoints", f"{save_step}.orbax-checkpoint-tmp*")
    assert wait_for(lambda: glob.glob(tmp), proc), _log_text(tmp_path / "run0.log")[-3000:]
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    assert glob.glob(tmp) and save_step not in steps_saved(cfg.workdir)  # the save was cut off
    # Kills 2 and 3: a seeded number of steps after each restart, plus a seeded fraction of one.
    for i in (1, 2):
        resume = max(steps_saved(cfg.workdir), default=0)
        target = min(resume + rng.randint(1, 6), STEPS - 4)
        log = tmp_path / f"run{i}.log"
        proc = _start_logged(cfg, inputs, log)
        assert wait_for_line(log, f"step {target}/{STEPS}", proc), _log_text(log)[-3000:]
        time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        assert proc.wait() == -signal.SIGKILL, _log_text(log)[-3000:]
        # The restart ignored the cut-off save and resumed from the newest complete one.
        assert f"resumed from {cfg.workdir}/checkpoints/{resume}" in _log_text(log)
    final = run(cfg, inputs["cache"])
    assert final.returncode == 0, final.stderr[-3000:]
    assert "resumed from" in final.stdout
    assert not tmp_dirs(cfg.workdir)  # leftovers of cut-off saves are cleaned on start
    _assert_same_as_reference(cfg, reference)


def test_sigterm_and_sigint_save_and_exit_then_resume_exactly(inputs, reference, tmp_path):
    rng = random.Random(3)
    cfg = _config(inputs, tmp_path / "run")
    for i, sig in enumerate((signal.SIGTERM, signal.SIGINT)):
        target = last_step(cfg.workdir) + rng.randint(2, 8)
        log = tmp_path / f"run{i}.log"
        proc = _start_logged(cfg, inputs, log)
        assert wait_for_line(log, f"step {target}/{STEPS}", proc), _log_text(log)[-3000:]
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0, _log_text(log)[-3000:]
        said = [line for line in _log_text(log).splitlines() if line.startswith("preempted")]
        assert len(said) == 1, _log_text(log)[-3000:]
        match = re.fullmatch(rf"preempted \({sig.name}\) at step (\d+): checkpoint saved; "
                             r"rerun the same command to continue", said[0])
        assert match, said
        step = int(match[1])
        assert target <= step < STEPS
        assert steps_saved(cfg.workdir)[-1] == step == last_step(cfg.workdir)
        assert not tmp_dirs(cfg.workdir)  # the save finished before the exit
    final = run(cfg, inputs["cache"])
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"resumed from {cfg.workdir}/checkpoints/{step}" in final.stdout
    _assert_same_as_reference(cfg, reference)


def test_preemption_between_metrics_lines_resumes_their_average(inputs, reference, tmp_path,
                                                                 monkeypatch):
    """With --log_every=4 a SIGTERM at step 10 saves mid-interval: the checkpoint carries steps 9
    and 10's metrics, so the line at step 12 still averages steps 9-12 as without the stop."""
    cfg = _config(inputs, tmp_path / "run", log_every=4)
    requested, calls = Preemption.requested, []

    def signal_at_step_10(self):
        calls.append(1)
        if len(calls) == 10:
            signal.raise_signal(signal.SIGTERM)  # the real handler, in this process
        return requested(self)

    monkeypatch.setattr(Preemption, "requested", signal_at_step_10)
    train(cfg)
    assert steps_saved(cfg.workdir)[-1] == 10 and last_step(cfg.workdir) == 8
    monkeypatch.setattr(Preemption, "requested", requested)
    train(cfg)
    ref_lines, ref_state = reference[1], reference[2]
    lines = metrics(cfg.workdir)
    assert [line["step"] for line in lines] == list(range(4, STEPS + 1, 4))
    for line in lines:
        steps = ref_lines[line["step"] - 4:line["step"]]
        assert line["loss"] == float(np.mean([r["loss"] for r in steps]))
        assert line["grad_norm"] == float(np.mean([r["grad_norm"] for r in steps]))
    assert_same_leaves(restore(cfg)[0], ref_state)


def _biggest_file(step_dir) -> str:
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*"))
    return max(files, key=os.path.getsize)


def _copy_reference(reference, tmp_path, inputs):
    cfg = _config(inputs, tmp_path / "run")
    shutil.copytree(reference[0].workdir, cfg.workdir)
    assert steps_saved(cfg.workdir) == [16, 20, 24]
    return cfg, os.path.join(cfg.workdir, "checkpoints")


def test_damaged_checkpoints_fall_back_to_the_newest_intact_one(inputs, reference, tmp_path):
    cfg, checkpoints = _copy_reference(reference, tmp_path, inputs)
    with open(_biggest_file(f"{checkpoints}/24"), "r+b") as f:  # truncated
        f.truncate(os.path.getsize(f.name) // 2)
    os.remove(_biggest_file(f"{checkpoints}/20"))  # a file deleted
    result = run(cfg, inputs["cache"])
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert len(warnings) == 2, result.stderr[-3000:]
    for line, step in zip(warnings, (24, 20), strict=True):
        assert line.startswith(f"warning: checkpoint {step} is damaged (") and \
            "resuming from step 16" in line, line
    assert "OUT_OF_RANGE" in warnings[0] or "truncat" in warnings[0].lower(), warnings[0]
    assert f"resumed from {checkpoints}/16" in result.stdout
    assert sorted(os.listdir(os.path.join(cfg.workdir, "damaged_checkpoints"))) == ["20", "24"]
    # Steps 17-24 were redone from step 16's params, optimizer and data-iterator state.
    assert steps_saved(cfg.workdir) == [16, 20, 24]
    _assert_same_as_reference(cfg, reference)


def test_no_intact_checkpoint_is_refused_in_one_line(inputs, reference, tmp_path):
    cfg, checkpoints = _copy_reference(reference, tmp_path, inputs)
    with open(_biggest_file(f"{checkpoints}/24"), "r+b") as f:
        f.truncate(100)
    os.remove(_biggest_file(f"{checkpoints}/20"))
    open(f"{checkpoints}/16/data/metadata", "w").close()  # the data-iterator state emptied
    result = run(cfg, inputs["cache"])
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no intact checkpoint in"), "\n".join(lines)
    assert all(f"step {s}:" in lines[0] for s in (16, 20, 24))
    assert steps_saved(cfg.workdir) == [16, 20, 24]  # refused: nothing moved or written
    assert not os.path.exists(os.path.join(cfg.workdir, "damaged_checkpoints"))


def test_other_flags_are_a_mismatch_and_a_leftover_save_is_ignored(inputs, reference, tmp_path):
    cfg, checkpoints = _copy_reference(reference, tmp_path, inputs)
    os.makedirs(f"{checkpoints}/28.orbax-checkpoint-tmp/state")  # a save cut off by a kill
    checkpointer = Checkpointer(cfg.workdir)
    assert checkpointer.latest_step() == 24
    assert wait_for(lambda: not tmp_dirs(cfg.workdir), timeout=30)  # orbax removes it in the background
    with pytest.raises(UserError, match="does not match this run's model or optimizer") as e:
        checkpointer.restore_latest(abstract(cfg.replace(optimizer="sgd")))
    assert not isinstance(e.value, DamagedCheckpoint)  # no fallback: every step would mismatch
    checkpointer.close()
    assert steps_saved(cfg.workdir) == [16, 20, 24]


def test_metrics_after_the_resumed_step_and_a_torn_line_are_dropped(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    writer = MetricsWriter(str(tmp_path), resume_step=2)
    writer.write(3, {"loss": 1.0})
    writer.close()
    assert [line["step"] for line in metrics(tmp_path)] == [1, 2, 3]
    assert metrics(tmp_path)[-1] == {"step": 3, "loss": 1.0}


def _nan_from_step(cfg, first_bad: int, monkeypatch) -> None:
    """Makes the objective's loss NaN (and so its gradients) from step `first_bad` on: the batches
    of the steps before it are recognised by their token sums."""
    batches = iter(prepare(cfg).train_data)
    good = jnp.asarray([int(next(batches)["tokens"].sum()) for _ in range(first_bad - 1)])
    original = Task.objective

    def objective(self, cfg_):
        loss_fn = original(self, cfg_)

        def poisoned(model, params, batch, rng):
            loss, weight = loss_fn(model, params, batch, rng)
            finite = jnp.isin(jnp.sum(batch["tokens"]), good)
            return loss * jnp.where(finite, 1.0, jnp.nan), weight
        return poisoned

    monkeypatch.setattr(Task, "objective", objective)


def test_nonfinite_steps_are_skipped_counted_and_stop_the_run(inputs, tmp_path, monkeypatch,
                                                              capsys):
    cfg = _config(inputs, tmp_path / "run", steps=6)
    _nan_from_step(cfg, 5, monkeypatch)
    train(cfg)  # steps 5 and 6 are skipped; the final save (step 6) still happens
    lines = metrics(cfg.workdir)
    assert [line["skipped_steps"] for line in lines] == [0, 0, 0, 0, 1, 2]
    assert np.isfinite([line["loss"] for line in lines[:4]]).all()
    assert np.isnan([line["loss"] for line in lines[4:]]).all()
    before, _, _ = restore(cfg, 4)
    after, _, meta = restore(cfg, 6)
    # A skipped step changes nothing but the step counter, the RNG and optax's skip counters.
    assert_same_leaves(before["params"], after["params"])
    assert_same_leaves(before["opt_state"].inner_state, after["opt_state"].inner_state)
    assert int(after["opt_state"].total_notfinite) == 2 and int(after["step"]) == 6
    assert meta["skipped_steps"] == 2 and meta["nonfinite_streak"] == 2

    # Resumed through the command-line entry point with --max_nonfinite=5: the streak carries
    # over the resume, step 8's periodic save is held back mid-streak, and step 9 stops the run.
    monkeypatch.setattr(train_main, "config_from_flags",
                        lambda: cfg.replace(steps=12, max_nonfinite=5))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        train_main.main(["train"])
    assert exit_.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert errors == [("error: stopped at step 9: the last 5 steps (from step 5) had a non-finite "
                       "loss or gradient and were skipped (--max_nonfinite=5); the last "
                       "checkpoint (step 6) is intact; lower --learning_rate or check the data, "
                       "then rerun the same command to resume from it")]
    assert [line["skipped_steps"] for line in metrics(cfg.workdir)] == [0, 0, 0, 0, 1, 2, 3, 4, 5]
    assert steps_saved(cfg.workdir) == [4, 6]  # nothing saved of the steps after 6
    kept, _, _ = restore(cfg, 6)
    assert_same_leaves(kept, after)
