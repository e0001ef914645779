"""The train step: same loss on every mesh, gradient accumulation equals one big batch."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from model import sharding
from model.config import get_preset
from model.family import build_model
from train.flags import TrainConfig
from train.objectives import clm
from train.optimizer import make_optimizer
from train.state import create_state
from train.step import jit_train_step, make_train_step

# SGD for the parity tests: its update is proportional to the gradient, so params can be compared
# tightly. (Adam's first update is lr * sign(g): round-off flips the sign of near-zero gradients.)
CFG = TrainConfig(optimizer="sgd", learning_rate=0.1, warmup_steps=0, steps=10)
MODEL = build_model(get_preset("tiny"))
TX, SCHEDULE = make_optimizer(CFG)
ADAMW, ADAMW_SCHEDULE = make_optimizer(TrainConfig(learning_rate=1e-2, warmup_steps=0, steps=10))


def _batch(batch_size=8, length=17, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, 512, (batch_size, length)).astype(np.int32)
    # Two documents per row, so packing masks are part of what must agree across meshes.
    segments = np.where(np.arange(length) < 7, 1, 2).astype(np.int32)[None].repeat(batch_size, 0)
    positions = np.where(np.arange(length) < 7, np.arange(length), np.arange(length) - 7)
    return {"tokens": tokens, "segment_ids": segments,
            "positions": positions.astype(np.int32)[None].repeat(batch_size, 0)}


def _run(mesh, steps=2, grad_accum=1, tx=TX, schedule=SCHEDULE):
    state, shardings = create_state(MODEL, tx, 0, mesh)
    losses = []
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        step = jit_train_step(make_train_step(MODEL, clm, tx, schedule, grad_accum), shardings,
                              mesh)
        for i in range(steps):
            state, metrics = step(state, _batch(seed=i))
            losses.append(float(metrics["loss"]))
    return losses, jax.device_get(state["params"])


@pytest.fixture(scope="module")
def single_device():
    return _run(sharding.make_mesh("", jax.devices()[:1]))


@pytest.mark.parametrize("mesh_spec", ["data=2,tensor=4", "data=4,tensor=2", "data=8,tensor=1",
                                       "data=2,fsdp=2,tensor=2"])
def test_same_loss_on_every_mesh(single_device, mesh_spec):
    losses, params = _run(sharding.make_mesh(mesh_spec))
    np.testing.assert_allclose(losses, single_device[0], atol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single_device[1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_same_adamw_losses_on_2x4_and_one_device():
    one, _ = _run(sharding.make_mesh("", jax.devices()[:1]), steps=3, tx=ADAMW,
                  schedule=ADAMW_SCHEDULE)
    many, _ = _run(sharding.make_mesh("data=2,tensor=4"), steps=3, tx=ADAMW,
                   schedule=ADAMW_SCHEDULE)
    np.testing.assert_allclose(many, one, atol=1e-5)


def test_gradient_accumulation_equals_one_big_batch(single_device):
    losses, params = _run(sharding.make_mesh("", jax.devices()[:1]), grad_accum=4)
    np.testing.assert_allclose(losses, single_device[0], atol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(single_device[1]), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_nonfinite_step_is_skipped():
    mesh = sharding.make_mesh("", jax.devices()[:1])
    state, shardings = create_state(MODEL, TX, 0, mesh)
    before = jax.device_get(state["params"])

    def poisoned(model, params, batch, rng):
        loss_sum, weight = clm(model, params, batch, rng)
        return loss_sum * np.nan, weight

    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        step = jit_train_step(make_train_step(MODEL, poisoned, TX, SCHEDULE), shardings, mesh)
        state, metrics = step(state, _batch())
    assert bool(metrics["nonfinite"])
    for a, b in zip(jax.tree.leaves(jax.device_get(state["params"])), jax.tree.leaves(before),
                    strict=True):
        np.testing.assert_array_equal(a, b)
