"""Every param of every preset lands where the rules table says, on 2x4 and 8x1 meshes."""

import flax.linen as nn
import jax
import pytest
from jax.sharding import PartitionSpec as P

from model import sharding
from model.config import PRESETS, get_preset
from model.family import build_model, init_inputs
from runtime.errors import UserError
from train.flags import TrainConfig
from train.optimizer import make_optimizer
from train.state import create_state

# The logical names each param must carry, written out here rather than read back from the model,
# so a renamed axis or a forgotten annotation fails this test.
LOGICAL = {
    "embed/embedding": ("vocab", "embed"),
    "position_embed/embedding": ("length", "embed"),
    "lm_head": ("embed", "vocab"),
    "final_norm/scale": ("embed",),
    "final_norm/bias": ("embed",),
    "layers/attention/query_kernel": ("layers", "embed", "heads", "head_dim"),
    "layers/attention/key_kernel": ("layers", "embed", "kv_heads", "head_dim"),
    "layers/attention/value_kernel": ("layers", "embed", "kv_heads", "head_dim"),
    "layers/attention/out_kernel": ("layers", "heads", "head_dim", "embed"),
    "layers/attention/query_bias": ("layers", "heads", "head_dim"),
    "layers/attention/key_bias": ("layers", "kv_heads", "head_dim"),
    "layers/attention/value_bias": ("layers", "kv_heads", "head_dim"),
    "layers/attention/out_bias": ("layers", "embed"),
    "layers/attention_norm/scale": ("layers", "embed"),
    "layers/attention_norm/bias": ("layers", "embed"),
    "layers/mlp_norm/scale": ("layers", "embed"),
    "layers/mlp_norm/bias": ("layers", "embed"),
    "layers/mlp/wi/kernel": ("layers", "embed", "mlp"),
    "layers/mlp/wg/kernel": ("layers", "embed", "mlp"),
    "layers/mlp/wo/kernel": ("layers", "mlp", "embed"),
    "layers/mlp/wi/bias": ("layers", "mlp"),
    "layers/mlp/wo/bias": ("layers", "embed"),
    # Encoder (BERT) and encoder-decoder (T5, Vaswani) params outside the layers.
    "encoder/position_embed/embedding": ("length", "embed"),
    "encoder/type_embed/embedding": ("token_types", "embed"),
    "encoder/embed_norm/scale": ("embed",),
    "encoder/embed_norm/bias": ("embed",),
    "encoder/final_norm/scale": ("embed",),
    "encoder/relpos_bias/embedding": ("relpos_buckets", "heads"),
    "decoder/final_norm/scale": ("embed",),
    "decoder/relpos_bias/embedding": ("relpos_buckets", "heads"),
    "mlm_dense/kernel": ("embed", "mlm"),
    "mlm_dense/bias": ("mlm",),
    "mlm_norm/scale": ("embed",),
    "mlm_norm/bias": ("embed",),
    "mlm_bias": ("vocab",),
    "pooler/kernel": ("embed", "pooler"),
    "pooler/bias": ("pooler",),
    "classifier/kernel": ("embed", "labels"),
    "classifier/bias": ("labels",),
}
# Encoder and decoder stacks hold the same layer params as above under encoder/ and decoder/;
# a decoder layer adds cross-attention, named like self-attention.
_LAYER = {k.removeprefix("layers/"): v for k, v in LOGICAL.items() if k.startswith("layers/")}
_CROSS = {k.replace("attention", "cross_attention", 1): v for k, v in _LAYER.items()
          if k.startswith("attention")}
LOGICAL.update({f"{stack}/layers/{k}": v for stack in ("encoder", "decoder")
                for k, v in (_LAYER | _CROSS).items()})

# What the table promises on each mesh, per logical name (before the divisibility fallback).
MESH_AXIS = {"batch": ("data", "fsdp"), "embed": "fsdp", "heads": "tensor", "kv_heads": "tensor",
             "mlp": "tensor", "vocab": "tensor", "layers": None, "head_dim": None, "length": None,
             "relpos_buckets": None, "token_types": None, "pooler": "tensor", "mlm": "tensor",
             "labels": None}

MESHES = {"2x4": "data=2,tensor=4", "8x1": "data=8,tensor=1"}


def _expected(names, shape, mesh):
    spec = []
    for name, size in zip(names, shape, strict=True):
        axis = MESH_AXIS[name]
        ways = mesh.shape[axis] if axis else 1
        spec.append(axis if axis and size % ways == 0 else None)
    return P(*spec)


def _param_paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat}


@pytest.mark.parametrize("mesh_name", MESHES)
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_param_of_every_preset_follows_the_table(preset, mesh_name):
    cfg = get_preset(preset)
    mesh = sharding.make_mesh(MESHES[mesh_name])
    model = build_model(cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        boxed = jax.eval_shape(model.init, jax.random.key(0), *init_inputs(cfg))
    shardings = _param_paths(sharding.state_shardings(boxed["params"], mesh))
    params = _param_paths(boxed["params"])
    assert set(params) <= set(LOGICAL), f"unexpected params {set(params) - set(LOGICAL)}"
    for name, box in params.items():
        assert isinstance(box, nn.LogicallyPartitioned), f"{name} has no logical names"
        assert tuple(box.names) == LOGICAL[name], name
        assert shardings[name].spec == _expected(box.names, box.value.shape, mesh), name


def test_concrete_state_is_placed_as_specified():
    """Real arrays (params and Adam moments) of the tiny preset on a 2x4 mesh."""
    mesh = sharding.make_mesh("data=2,tensor=4")
    model = build_model(get_preset("tiny"))
    tx, _ = make_optimizer(TrainConfig())
    state, _ = create_state(model, tx, 0, mesh)
    params = _param_paths(state["params"])
    assert params["layers/mlp/wi/kernel"].sharding.spec == P(None, "fsdp", "tensor")
    assert params["layers/attention/query_kernel"].sharding.spec == P(None, "fsdp", "tensor", None)
    # tiny has 2 kv heads: 4-way tensor parallelism cannot split them, so they are replicated.
    assert params["layers/attention/key_kernel"].sharding.spec == P(None, "fsdp", None, None)
    assert params["embed/embedding"].sharding.spec == P("tensor", "fsdp")
    mu = state["opt_state"].inner_state[1][0].mu
    assert _param_paths(mu)["layers/mlp/wo/kernel"].sharding.spec == P(None, "tensor", "fsdp")
    assert params["layers/mlp/wi/kernel"].addressable_shards[0].data.shape == (2, 64, 32)


@pytest.mark.parametrize("spec,expected", [
    ("", {"data": 8, "fsdp": 1, "tensor": 1}),
    ("data=2,fsdp=-1,tensor=2", {"data": 2, "fsdp": 2, "tensor": 2}),
    ("tensor=4,data=-1", {"data": 2, "fsdp": 1, "tensor": 4}),
    ("fsdp=8", {"data": 1, "fsdp": 8, "tensor": 1}),
])
def test_parse_mesh(spec, expected):
    assert sharding.parse_mesh(spec, 8) == expected


@pytest.mark.parametrize("spec", ["data=3", "data=-1,fsdp=-1", "model=2", "data=x", "data=0",
                                  "data=2,tensor=2", "data"])
def test_bad_mesh_is_a_user_error(spec):
    with pytest.raises(UserError):
        sharding.parse_mesh(spec, 8)
