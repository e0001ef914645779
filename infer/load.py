"""Loads a model for inference from a training workdir or a converted model directory:
config.json -> ModelConfig, the latest checkpoint's params placed on a mesh, the tokenizer."""

import dataclasses
import json
import os

import flax.linen as nn
import jax
from jax.sharding import Mesh

from data.hf_tokenizer import HFTokenizer
from data.tokenizer import Tokenizer, find_tokenizer
from model import sharding
from model.config import ModelConfig
from model.errors import UserError
from model.transformer import build_model, init_inputs
from train.checkpoint import restore_params


@dataclasses.dataclass
class Loaded:
    config: ModelConfig
    model: nn.Module
    params: dict  # {"params": ...} ready for model.apply
    mesh: Mesh
    tokenizer: Tokenizer | HFTokenizer | None  # None when the directory has no tokenizer files
    # Token ids an imported model's config named (bos/eos/pad/decoder_start_token_id): T5, for
    # one, starts decoding from its pad id, which its tokenizer does not call BOS.
    token_ids: dict = dataclasses.field(default_factory=dict)


def read_config(path: str) -> ModelConfig:
    return _read(path)[0]


def _read(path: str) -> tuple[ModelConfig, dict]:
    """(the model config, the token ids an imported model recorded) from config.json."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"--checkpoint={path} has no config.json; point it at a training "
                        f"workdir or a converted model")
    try:
        with open(config_path, encoding="utf-8") as f:
            recorded = json.load(f)
        ids = {k: v for k, v in recorded.get("hf", {}).items() if k.endswith("token_id")}
        return ModelConfig.from_dict(recorded["model"]), ids
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{config_path} is unreadable ({e}); restore it or retrain") from None


def load(path: str, mesh_spec: str = "") -> Loaded:
    """Params are restored straight into their shardings on the mesh (the same rules table as
    training), so a model larger than one device loads tensor- or fsdp-parallel."""
    config, token_ids = _read(path)
    model = build_model(config)
    mesh = sharding.make_mesh(mesh_spec)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        boxed = jax.eval_shape(model.init, jax.random.key(0), *init_inputs(config))
    shardings = sharding.state_shardings(boxed["params"], mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            sharding.unbox(boxed["params"]), shardings)
    params = restore_params(path, abstract)
    return Loaded(config, model, {"params": params}, mesh, find_tokenizer(path), token_ids)
