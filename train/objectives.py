"""Training objectives: what the model is asked to predict from a batch, and the loss.

An objective returns the *sum* of per-token losses and the number of tokens it covers, so that
gradient accumulation and data parallelism average over tokens exactly as one big batch would.
The loop never knows the model family; it only calls `objective(model, params, batch, rng)`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from model.errors import UserError

Array = jax.Array
Objective = Callable[..., tuple[Array, Array]]


def clm(model, params, batch: dict[str, Array], rng: Array) -> tuple[Array, Array]:
    """Causal LM on packed rows of length seq_len + 1: predict token t+1 from tokens <= t.

    Targets that start a new document (or fall in padding) are not scored, so packing several
    documents in a row never asks the model to guess one document's start from another.
    """
    del rng
    tokens, segments = batch["tokens"], batch["segment_ids"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    in_seg, out_seg = segments[:, :-1], segments[:, 1:]
    logits = model.apply({"params": params}, inputs, batch["positions"][:, :-1], in_seg)
    weights = ((in_seg == out_seg) & (out_seg != 0)).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(losses * weights), jnp.sum(weights)


OBJECTIVES: dict[str, Objective] = {"clm": clm}

# Extra tokens a row needs beyond --seq_len for the objective (clm shifts by one).
EXTRA_TOKENS = {"clm": 1}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise UserError(f"unknown --objective={name!r}; choose one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
