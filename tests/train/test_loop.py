"""The loop end to end on the embedded corpus: loss goes down, resume is bit-exact."""

import json
import os

import jax
import numpy as np
import pytest

from model.family import build_model
from train.checkpoint import Checkpointer
from train.flags import TrainConfig
from train.loop import train
from train.optimizer import make_optimizer
from train.prepare import prepare
from train.state import abstract_state

# A constant schedule after warmup makes the learning rate at step t independent of --steps, so
# "train 4, then resume to 8" must reproduce "train 8" exactly.
BASE = TrainConfig(preset="tiny", vocab_size=512, seq_len=32, batch_size=8, learning_rate=3e-3,
                   warmup_steps=2, schedule="constant", log_every=1, eval_every=4, eval_batches=2,
                   save_every=4)


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _final_state(cfg):
    run = prepare(cfg)
    tx, _ = make_optimizer(cfg)
    abstract, _ = abstract_state(build_model(run.model), tx, cfg.seed, run.mesh)
    checkpointer = Checkpointer(cfg.workdir)
    state, data_state, _ = checkpointer.restore(checkpointer.latest_step(), abstract)
    checkpointer.close()
    return jax.device_get(state), data_state


@pytest.fixture(scope="module")
def learning_run(tmp_path_factory):
    cfg = BASE.replace(workdir=str(tmp_path_factory.mktemp("learn")), steps=60, seq_len=64,
                       schedule="cosine", warmup_steps=5, eval_every=60, eval_batches=4,
                       save_every=60, log_every=5)
    return cfg, train(cfg)


def test_loss_decreases_on_embedded_corpus(learning_run):
    cfg, last = learning_run
    losses = [m["loss"] for m in _metrics(cfg.workdir)]
    assert losses[0] > 5.5  # ~ln(512) at init
    assert losses[-1] < losses[0] - 1.0
    assert np.all(np.diff(losses[::3]) < 0.2)  # no blow-ups along the way
    assert last["eval_loss"] < losses[0] - 1.0


def test_workdir_contract(learning_run):
    cfg, _ = learning_run
    names = os.listdir(cfg.workdir)
    for name in ("config.json", "flags.txt", "tokenizer.model", "metrics.jsonl", "checkpoints"):
        assert name in names
    assert any(n.startswith("events.") for n in names)
    with open(os.path.join(cfg.workdir, "loss.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(os.path.join(cfg.workdir, "checkpoints")) == ["60"]
    with open(os.path.join(cfg.workdir, "config.json")) as f:
        config = json.load(f)
    assert config["model"]["vocab_size"] == 512 and config["flags"]["steps"] == 60
    assert config["corpus"]["source"] == "stdlib" and config["unigram_loss"] > 3
    for line in _metrics(cfg.workdir):
        for key in ("step", "loss", "learning_rate", "grad_norm", "tokens_per_s", "mfu",
                    "step_time_s", "tokens_seen"):
            assert np.isfinite(line[key]), key
    assert _metrics(cfg.workdir)[-1]["tokens_seen"] == 60 * 8 * 64


def test_rerun_of_a_finished_run_changes_nothing(learning_run):
    cfg, _ = learning_run
    before = _metrics(cfg.workdir)
    train(cfg)
    assert _metrics(cfg.workdir) == before


def test_resume_is_bit_exact(tmp_path):
    straight = BASE.replace(workdir=str(tmp_path / "straight"), steps=8)
    train(straight)
    halves = BASE.replace(workdir=str(tmp_path / "halves"), steps=4)
    train(halves)
    train(halves.replace(steps=8))

    losses_a = [m["loss"] for m in _metrics(straight.workdir)]
    losses_b = [m["loss"] for m in _metrics(halves.workdir)]
    assert len(losses_a) == 8 and losses_a == losses_b
    state_a, data_a = _final_state(straight)
    state_b, data_b = _final_state(halves.replace(steps=8))
    assert data_a == data_b
    leaves_a, leaves_b = jax.tree.leaves(state_a), jax.tree.leaves(state_b)
    assert len(leaves_a) == len(leaves_b)
    for a, b in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(a, b)
