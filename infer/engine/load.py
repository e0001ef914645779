"""Loads a model for inference from a training workdir or a converted model directory:
config.json -> ModelConfig, the latest checkpoint's params placed on a mesh, the tokenizer."""

import dataclasses

import flax.linen as nn
import jax
from jax.sharding import Mesh

from data.hf_tokenizer import HFTokenizer
from data.sentencepiece_tokenizer import Tokenizer, find_tokenizer
from model import quant, sharding
from model.config import QUANT_MODES, ModelConfig, read_recorded
from model.family import build_model, init_inputs
from runtime.errors import UserError
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
    config, recorded = read_recorded(path, "checkpoint")
    hf = recorded.get("hf", {})
    ids = {k: v for k, v in hf.items() if k.endswith("token_id")} if isinstance(hf, dict) else {}
    return config, ids


def load(path: str, mesh_spec: str = "", quant: str = "none") -> Loaded:
    """Params are restored straight into their shardings on the mesh (the same rules table as
    training), so a model larger than one device loads tensor- or fsdp-parallel. `quant`
    (model/quant.py) quantizes a float model's weights after loading and/or gives it an int8 KV
    cache; a saved quantized model loads as it is."""
    config, token_ids = _read(path)
    target = with_quant(config, quant, path)
    stored = config.replace(quant="int8" if config.int8_weights else "none")
    mesh = sharding.make_mesh(mesh_spec)
    params = restore_params(path, abstract_params(stored, mesh))
    loaded = Loaded(stored, build_model(stored), {"params": params}, mesh, find_tokenizer(path),
                    token_ids)
    return quantized(loaded, target)


def with_quant(config: ModelConfig, quant: str, path: str = "") -> ModelConfig:
    """The config to run a model of `config` with under --quant=`quant` ("none": as saved)."""
    if quant not in QUANT_MODES:
        raise UserError(f"--quant={quant} is not one of {', '.join(QUANT_MODES)}")
    if quant == "none":
        return config
    if config.int8_weights and quant == "int8_kv":
        quant = "int8+int8_kv"  # its weights are int8 already
    if config.int8_weights and quant not in ("int8", "int8+int8_kv"):
        raise UserError(f"{path or 'the model'} holds int8 weights; --quant={quant} would need "
                        f"the float weights it was quantized from")
    return config.replace(quant=quant)


def abstract_params(config: ModelConfig, mesh: Mesh):
    """The params of a `config` model as shape/dtype/sharding structs on `mesh`."""
    model = build_model(config)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        boxed = jax.eval_shape(model.init, jax.random.key(0), *init_inputs(config))
    shardings = sharding.state_shardings(boxed["params"], mesh)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        sharding.unbox(boxed["params"]), shardings)


def quantized(loaded: Loaded, config: ModelConfig) -> Loaded:
    """`loaded` run as `config` says: weights quantized if it asks for int8 weights that
    `loaded` does not have yet (the float params are dropped), the KV cache as it says."""
    params = loaded.params
    if config.int8_weights and not loaded.config.int8_weights:
        params = {"params": quant.quantize_params(params["params"],
                                                  abstract_params(config, loaded.mesh))}
    return dataclasses.replace(loaded, config=config, model=build_model(config), params=params)
