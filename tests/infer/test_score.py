"""infer.score: logits of a trained workdir, equal to the training checkpoint's model, on any
mesh; bad inputs are one line, exit 2, no output file."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from infer.engine.load import load
from infer.score import score
from model.family import build_model
from tests.infer.conftest import CFG
from train.checkpoint import Checkpointer
from train.optimizer import make_optimizer
from train.prepare import prepare
from train.state import abstract_state

TOKENS = np.random.default_rng(0).integers(0, 512, (3, 20)).astype(np.int32)


def _reference_logits(workdir):
    """Logits from the full training state restored the way training resumes it."""
    cfg = CFG.replace(workdir=workdir)
    run = prepare(cfg)
    tx, _ = make_optimizer(cfg)
    model = build_model(run.model)
    abstract, _ = abstract_state(model, tx, cfg.seed, run.mesh)
    checkpointer = Checkpointer(workdir)
    state, _, _ = checkpointer.restore(checkpointer.latest_step(), abstract)
    checkpointer.close()
    return np.asarray(jax.jit(model.apply)({"params": state["params"]}, TOKENS))


def _score_cli(*args):
    return subprocess.run([sys.executable, "-m", "infer.score", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def test_cli_logits_equal_the_trained_model(workdir, tmp_path):
    np.save(tmp_path / "tokens.npy", TOKENS)
    out = tmp_path / "logits.npy"
    result = _score_cli(f"--checkpoint={workdir}", f"--tokens={tmp_path}/tokens.npy",
                        f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    logits = np.load(out)
    assert logits.dtype == np.float32 and logits.shape == (3, 20, 512)
    np.testing.assert_allclose(logits, _reference_logits(workdir), atol=1e-5)


@pytest.mark.parametrize("mesh", ["data=2,tensor=4", "tensor=8", "fsdp=2,tensor=2,data=2"])
def test_sharded_scoring_matches_the_trained_model(workdir, mesh):
    np.testing.assert_allclose(score(load(workdir, mesh), TOKENS), _reference_logits(workdir),
                               atol=1e-5)


@pytest.mark.parametrize("name,array,message", [
    ("float ids", np.zeros((2, 4), np.float32), "integer array"),
    ("out of vocab", np.full((2, 4), 9999, np.int32), "outside"),
    ("too long", np.zeros((1, 4096), np.int32), "longer than"),
    ("pickled objects", np.array([{"a": 1}], dtype=object), "not a readable"),
])
def test_bad_tokens_exit_2_and_write_nothing(workdir, tmp_path, name, array, message):
    np.save(tmp_path / "bad.npy", array, allow_pickle=True)  # the test writes it; score must not read it
    out = tmp_path / "logits.npy"
    result = _score_cli(f"--checkpoint={workdir}", f"--tokens={tmp_path}/bad.npy", f"--out={out}")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]
    assert not out.exists()


def test_missing_checkpoint_exit_2(tmp_path):
    np.save(tmp_path / "tokens.npy", TOKENS)
    result = _score_cli(f"--checkpoint={tmp_path}/nothing", f"--tokens={tmp_path}/tokens.npy",
                        f"--out={tmp_path}/o.npy")
    assert result.returncode == 2 and "nothing does not exist" in result.stderr
    assert not os.path.exists(tmp_path / "o.npy")
