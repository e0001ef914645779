"""The jitted train and eval steps: explicit in/out shardings and a donated state.

Pure functions: (state, batch) -> (new state, metrics). Gradient accumulation scans over
micro-batches inside the one program, so a step is one optimizer update whatever --grad_accum is.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from model import sharding
from train.objectives import Objective
from train.state import State

Batch = dict[str, jax.Array]


def _micro_batches(batch: Batch, n: int) -> Batch:
    """[batch, ...] -> [n, batch/n, ...]; micro-batch j takes rows j, j+n, ... so every micro-batch
    still spans all data shards."""
    def split(x):
        x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
        return nn.with_logical_constraint(x, (None, "batch") + (None,) * (x.ndim - 2))
    return jax.tree.map(split, batch)


def make_train_step(model: nn.Module, objective: Objective, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum: int = 1) -> Callable:
    def loss_and_grads(params, batch, rng):
        grad_fn = jax.value_and_grad(lambda p: objective(model, p, batch, rng), has_aux=True)
        (loss_sum, weight), grads = grad_fn(params)
        return loss_sum, weight, grads

    def train_step(state: State, batch: Batch) -> tuple[State, dict]:
        rng, step_rng = jax.random.split(state["rng"])
        params = state["params"]
        if grad_accum == 1:
            loss_sum, weight, grads = loss_and_grads(params, batch, step_rng)
        else:
            def body(carry, xs):
                micro, i = xs
                out = loss_and_grads(params, micro, jax.random.fold_in(step_rng, i))
                return jax.tree.map(jnp.add, carry, out), None
            zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, params))
            (loss_sum, weight, grads), _ = jax.lax.scan(
                body, zeros, (_micro_batches(batch, grad_accum), jnp.arange(grad_accum)))
        # Sum-then-divide: the mean over tokens of the whole global batch, however it was split.
        denominator = jnp.maximum(weight, 1.0)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        loss = loss_sum / denominator
        # optax.apply_if_finite (train/optimizer.py) skips an update whose gradients are not
        # finite; a non-finite loss with finite gradients must be skipped too, so poison them.
        grads = jax.tree.map(lambda g: jnp.where(jnp.isfinite(loss), g, jnp.nan), grads)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
                     "opt_state": opt_state, "rng": rng}
        metrics = {"loss": loss, "grad_norm": grad_norm, "tokens": weight,
                   "learning_rate": schedule(state["step"]),
                   "nonfinite": ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))}
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module, stats: Callable) -> Callable:
    """(params, batch) -> {name: (sum, count)} of the objective's eval statistics."""
    def eval_step(params, batch: Batch) -> dict[str, tuple[jax.Array, jax.Array]]:
        return stats(model, params, batch)
    return eval_step


def batch_shardings(mesh: Mesh, batch: dict) -> dict:
    """One NamedSharding per batch array: rows split over the batch axes, the rest whole (so
    [batch, length] token arrays and [batch] labels alike)."""
    return {k: sharding.named(mesh, "batch", *[None] * (len(v.shape) - 1))
            for k, v in batch.items()}


def jit_train_step(train_step: Callable, state_shardings, mesh: Mesh,
                   batch_shardings=None) -> Callable:
    """`batch_shardings`: one sharding for every batch array or a dict by key (default: rows
    split over the batch axes of a [batch, length] array)."""
    batch = batch_shardings or sharding.named(mesh, "batch", None)
    return jax.jit(train_step, in_shardings=(state_shardings, batch),
                   out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def jit_eval_step(eval_step: Callable, param_shardings, mesh: Mesh,
                  batch_shardings=None) -> Callable:
    batch = batch_shardings or sharding.named(mesh, "batch", None)
    return jax.jit(eval_step, in_shardings=(param_shardings, batch),
                   out_shardings=sharding.replicated(mesh))
