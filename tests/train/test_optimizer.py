"""Schedules have the documented shape; every optimizer trains a small regression."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from runtime.errors import UserError
from train.flags import TrainConfig
from train.optimizer import OPTIMIZERS, SCHEDULES, make_optimizer, make_schedule

CFG = TrainConfig(learning_rate=1.0, warmup_steps=10, steps=110, min_lr_ratio=0.1,
                  decay_fraction=0.2)


@pytest.mark.parametrize("name", SCHEDULES)
def test_warmup_then_schedule(name):
    lr = make_schedule(CFG.replace(schedule=name))
    np.testing.assert_allclose([lr(0), lr(5), lr(10)], [0.0, 0.5, 1.0], atol=1e-6)
    end = float(lr(110))
    expected = {"constant": 1.0, "cosine": 0.1, "linear": 0.1, "wsd": 0.1,
                "rsqrt": 1 / np.sqrt(1 + 100 / 10)}[name]
    np.testing.assert_allclose(end, expected, rtol=1e-5)
    if name == "wsd":  # flat until the last 20% of the steps
        np.testing.assert_allclose([lr(60), lr(88)], [1.0, 1.0], atol=1e-6)
        assert float(lr(100)) < 0.6
    if name == "cosine":
        np.testing.assert_allclose(float(lr(60)), 0.1 + 0.9 * 0.5, rtol=1e-5)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_fits_a_regression(name):
    tx, _ = make_optimizer(TrainConfig(optimizer=name, learning_rate=0.05, warmup_steps=0,
                                       steps=200, schedule="constant", weight_decay=0.0))
    rng = np.random.default_rng(0)
    x, w_true = rng.normal(size=(64, 8)), rng.normal(size=(8, 4))
    params = {"dense": {"kernel": jnp.zeros((8, 4))}}

    def loss(p):
        return jnp.mean((x @ p["dense"]["kernel"] - x @ w_true) ** 2)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    start = float(loss(params))
    for _ in range(200):
        params, state = step(params, state)
    assert float(loss(params)) < 0.05 * start


def test_weight_decay_skips_norms_and_biases():
    tx, _ = make_optimizer(TrainConfig(learning_rate=0.1, warmup_steps=0, weight_decay=0.5,
                                       schedule="constant", clip_norm=0.0))
    params = {"mlp": {"kernel": jnp.ones(3), "bias": jnp.ones(3)}, "norm": {"scale": jnp.ones(3)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    np.testing.assert_allclose(updates["mlp"]["kernel"], -0.05 * np.ones(3), rtol=1e-6)
    np.testing.assert_array_equal(updates["mlp"]["bias"], np.zeros(3))
    np.testing.assert_array_equal(updates["norm"]["scale"], np.zeros(3))


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError):
        make_optimizer(TrainConfig(optimizer="lion"))
    with pytest.raises(UserError):
        make_optimizer(TrainConfig(schedule="step"))
