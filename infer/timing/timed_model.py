"""The model a timing command measures: a checkpoint as saved, or a preset (sizes overridden) with
random seeded weights placed by the training rules, so speed can be studied without training."""

import flax.linen as nn
import jax

from infer.engine.load import Loaded, load, read_config
from model import sharding
from model.abstract import abstract_params, shardings_of
from model.config import ModelConfig, get_preset
from model.family import build_model, init_inputs
from runtime.errors import UserError

# --preset of the commands that take one instead of --checkpoint (model/flags.py holds the rest).
RANDOM_PRESET = {"help": "Model preset with random (seeded) weights instead of a checkpoint; the "
                         "size flags override it."}


def random_loaded(cfg: ModelConfig, mesh_spec: str, seed: int, devices=None) -> Loaded:
    """Random-init params placed by the training rules, so speed can be studied without training."""
    model = build_model(cfg)
    mesh = sharding.make_mesh(mesh_spec, devices)
    dummy = init_inputs(cfg)
    shardings = {"params": shardings_of(abstract_params(cfg, mesh))}
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        params = jax.jit(model.init, out_shardings=shardings)(jax.random.key(seed), *dummy)
    return Loaded(cfg, model, sharding.unbox(params), mesh, None)


def resolve(checkpoint: str | None, preset: str | None, sizes: dict, dtype: str | None,
            total: int, mesh_spec: str, seed: int) -> tuple[Loaded, str]:
    """(the model to measure, a one-line description of where it came from)."""
    if bool(checkpoint) == bool(preset):
        raise UserError("give exactly one of --checkpoint=PATH or --preset=NAME")
    if checkpoint:
        if sizes:
            raise UserError(f"size flags {sorted(sizes)} only apply to --preset; a checkpoint's "
                            "shape is fixed")
        if total > (max_len := read_config(checkpoint).max_len):
            raise UserError(f"--prompt_len + --new_tokens = {total} exceeds the checkpoint's "
                            f"context of {max_len}; shorten one of them")
        loaded = load(checkpoint, mesh_spec)
        if dtype and dtype != loaded.config.dtype:
            cfg = loaded.config.replace(dtype=dtype)
            loaded = Loaded(cfg, build_model(cfg), loaded.params, loaded.mesh, None)
        return loaded, f"checkpoint {checkpoint}"
    cfg = get_preset(preset).replace(dtype=dtype, **sizes)
    # Random weights have no trained context length, so the position table may grow to fit.
    cfg = cfg.replace(max_len=max(cfg.max_len, total))
    source = f"preset {preset}{f' {sizes}' if sizes else ''} (random init)"
    return random_loaded(cfg, mesh_spec, seed), source
