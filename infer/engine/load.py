"""Loads a model for inference from a training workdir or a converted model directory: its
config.json read once (model/store.py), the latest checkpoint's params placed on a mesh, the
tokenizer."""

import dataclasses

import flax.linen as nn
from jax.sharding import Mesh

from data.hf_tokenizer import HFTokenizer
from data.sentencepiece_tokenizer import Tokenizer, load_tokenizer
from model import quant, sharding, store
from model.abstract import abstract_params
from model.config import QUANT_MODES, ModelConfig
from model.family import build_model
from runtime.errors import UserError


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
    return store.read_recorded(path, "checkpoint")[0]


def load(path: str, mesh_spec: str = "", quant: str = "none") -> Loaded:
    """Params are restored straight into their shardings on the mesh (the same rules table as
    training), so a model larger than one device loads tensor- or fsdp-parallel. `quant`
    (model/quant.py) quantizes a float model's weights after loading and/or gives it an int8 KV
    cache; a saved quantized model loads as it is."""
    config, recorded = store.read_recorded(path, "checkpoint")
    target = with_quant(config, quant, path)
    stored = config.replace(quant="int8" if config.int8_weights else "none")
    mesh = sharding.make_mesh(mesh_spec)
    params = store.restore_params(path, abstract_params(stored, mesh))
    tokenizer = store.tokenizer_file(path)
    loaded = Loaded(stored, build_model(stored), {"params": params}, mesh,
                    load_tokenizer(tokenizer) if tokenizer else None, store.token_ids(recorded))
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


def quantized(loaded: Loaded, config: ModelConfig) -> Loaded:
    """`loaded` run as `config` says: weights quantized if it asks for int8 weights that
    `loaded` does not have yet (the float params are dropped), the KV cache as it says."""
    params = loaded.params
    if config.int8_weights and not loaded.config.int8_weights:
        params = {"params": quant.quantize_params(params["params"],
                                                  abstract_params(config, loaded.mesh))}
    return dataclasses.replace(loaded, config=config, model=build_model(config), params=params)
