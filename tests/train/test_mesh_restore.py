"""A checkpoint written on a 2x4 mesh restores onto 8x1, 1x8 and a single device: the same params
bit for bit, the same eval loss (the restore targets carry the new mesh's shardings)."""

import dataclasses

import flax.linen as nn
import jax
import numpy as np
import pytest

from model import sharding
from model.family import build_model
from train.checkpoint import Checkpointer
from train.evaluate import HeldOut
from train.flags import TrainConfig
from train.loop import train
from train.optimizer import make_optimizer
from train.prepare import prepare
from train.state import abstract_state

CFG = TrainConfig(preset="tiny", vocab_size=512, seq_len=32, batch_size=8, steps=4,
                  warmup_steps=1, log_every=2, eval_every=0, save_every=4, eval_batches=2,
                  mesh="data=2,tensor=4")
TARGETS = {"2x4": ("data=2,tensor=4", None), "8x1": ("data=8,tensor=1", None),
           "1x8": ("data=1,tensor=8", None), "1 device": ("data=1", 1)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    cfg = CFG.replace(workdir=str(tmp_path_factory.mktemp("mesh2x4")))
    train(cfg)
    return cfg.workdir


def _restore_and_eval(workdir: str, spec: str, num_devices: int | None):
    cfg = CFG.replace(workdir=workdir)
    mesh = sharding.make_mesh(spec, jax.devices()[:num_devices] if num_devices else None)
    run = dataclasses.replace(prepare(cfg), mesh=mesh)
    model = build_model(run.model)
    tx, _ = make_optimizer(cfg)
    abstract, shardings = abstract_state(model, tx, cfg.seed, mesh)
    checkpointer = Checkpointer(workdir)
    state, _, _ = checkpointer.restore(checkpointer.latest_step(), abstract)
    checkpointer.close()
    for leaf, target in zip(jax.tree.leaves(state), jax.tree.leaves(abstract), strict=True):
        assert leaf.sharding.is_equivalent_to(target.sharding, leaf.ndim)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        loss = HeldOut(run, model, shardings["params"])(state["params"])["eval_loss"]
    return jax.device_get(state), loss


def test_restores_on_every_mesh_with_the_same_params_and_eval_loss(workdir):
    results = {name: _restore_and_eval(workdir, *target) for name, target in TARGETS.items()}
    reference_state, reference_loss = results["2x4"]
    assert np.isfinite(reference_loss)
    for name, (state, loss) in results.items():
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(reference_state), strict=True):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), name
        # Sums run in a different order on another mesh: equal to float32 round-off.
        assert loss == pytest.approx(reference_loss, rel=1e-6), name
