"""Encoder and encoder-decoder models give the same logits on one device and sharded 2x4, with
their new params (relative bias, cross-attention, pooler, token types) split as the table says."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from model import sharding
from model.family import init_inputs

# Param -> its spec on data=2,tensor=4 (fsdp has size 1 there but stays named in the spec).
# tiny_* have 4 heads, d_model 64, vocab 512: every tensor-split dimension divides by 4.
EXPECTED = {
    "tiny_bert": {
        "encoder/type_embed/embedding": P(None, "fsdp"),
        "pooler/kernel": P("fsdp", "tensor"),
        "mlm_dense/kernel": P("fsdp", "tensor"),
        "mlm_bias": P("tensor"),
        "classifier/kernel": P("fsdp", None),
    },
    "tiny_t5": {
        "encoder/relpos_bias/embedding": P(None, "tensor"),
        "decoder/relpos_bias/embedding": P(None, "tensor"),
        "decoder/layers/cross_attention/key_kernel": P(None, "fsdp", "tensor", None),
        "decoder/layers/cross_attention/out_kernel": P(None, "tensor", None, "fsdp"),
        "lm_head": P("fsdp", "tensor"),
    },
    "tiny_transformer": {
        "decoder/layers/cross_attention/query_bias": P(None, "tensor", None),
        "decoder/layers/cross_attention_norm/scale": P(None, "fsdp"),
        "embed/embedding": P("tensor", "fsdp"),
    },
}


def _paths(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_same_logits_on_one_device_and_a_2x4_mesh(tiny, preset):
    cfg, model, params = tiny(preset)
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 512, (4, 12)).astype(np.int32)
    inputs = (tokens, tokens[:, :8]) if cfg.family == "encoder_decoder" else (tokens,)
    alone = jax.jit(model.apply)(params, *inputs)

    mesh = sharding.make_mesh("data=2,tensor=4")
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        boxed = jax.eval_shape(model.init, jax.random.key(6), *init_inputs(cfg))
        placed = jax.device_put(params, sharding.state_shardings(boxed, mesh))
        batch = sharding.named(mesh, "batch", "length")
        sharded = jax.jit(model.apply)(placed, *[jax.device_put(x, batch) for x in inputs])

    specs = {k: v.sharding.spec for k, v in _paths(placed["params"]).items()}
    for name, spec in EXPECTED[preset].items():
        assert specs[name] == spec, name
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    logits = sharded["logits"] if isinstance(sharded, dict) else sharded
    assert logits.sharding.spec == P("data", None, "tensor")  # really split, not replicated
