"""Train state created sharded from the start: shapes -> logical specs -> NamedShardings ->
`jax.jit(init, out_shardings=...)`, so no device ever holds the whole model unsharded."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from model import sharding
from model.family import init_inputs

State = dict[str, Any]  # {"step": int32[], "params", "opt_state", "rng": uint32[2]}


def make_init(model: nn.Module, tx: optax.GradientTransformation, seed: int):
    """init() -> boxed state; the boxes carry each param's logical axis names (and optax's
    moments inherit them, so optimizer state is sharded like its param)."""
    def init():
        init_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
        params = model.init(init_key, *init_inputs(model.config))["params"]
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
                "rng": train_key}
    return init


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, seed: int, mesh: Mesh):
    """(shapes of the unboxed state, its shardings on `mesh`) without allocating anything."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        boxed = jax.eval_shape(make_init(model, tx, seed))
    shardings = sharding.state_shardings(boxed, mesh)
    shapes = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          sharding.unbox(boxed), shardings)
    return shapes, shardings


def create_state(model: nn.Module, tx: optax.GradientTransformation, seed: int,
                 mesh: Mesh) -> tuple[State, Any]:
    """Initialises the state directly into its shardings; returns (state, shardings)."""
    _, shardings = abstract_state(model, tx, seed, mesh)
    init = make_init(model, tx, seed)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        state = jax.jit(lambda: sharding.unbox(init()), out_shardings=shardings)()
    return state, shardings
