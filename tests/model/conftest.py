"""Tiny models initialised once per session and shared by the model tests (each init is an XLA
compile; the suite stays fast by paying it once per configuration)."""

import functools

import jax
import numpy as np
import pytest

from model import sharding
from model.config import get_preset
from model.family import build_model, init_inputs


@functools.cache
def _tiny(preset: str, overrides: tuple = ()):
    cfg = get_preset(preset).replace(**dict(overrides))
    model = build_model(cfg)
    params = sharding.unbox(jax.jit(model.init)(jax.random.key(5), *init_inputs(cfg)))
    # numpy leaves: tests edit params without compiling one small XLA program per leaf.
    return cfg, model, jax.tree.map(np.asarray, params)


@pytest.fixture(scope="session")
def tiny():
    """tiny(preset, **overrides) -> (config, model, params as numpy); callers copy before
    editing params."""
    return lambda preset, **overrides: _tiny(preset, tuple(sorted(overrides.items())))
