"""Decoder numerics: packing isolates documents, causality, GQA, scan == unrolled, remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding
from model.config import get_preset
from model.family import build_model

FAMILIES = ["tiny_gpt", "tiny_llama"]  # learned positions + LayerNorm + GELU; RoPE + RMSNorm + GQA


def _init(cfg, length=16):
    model = build_model(cfg)
    params = sharding.unbox(model.init(jax.random.key(1), jnp.zeros((1, length), jnp.int32)))
    return model, params


@pytest.mark.parametrize("preset", FAMILIES)
def test_packed_row_equals_documents_run_alone(preset):
    """A token never attends across a document boundary: each document's logits inside a packed
    row equal the logits of that document alone (positions restart, segments mask)."""
    model, params = _init(get_preset(preset))
    rng = np.random.default_rng(0)
    lengths = [5, 7, 4]
    docs = [rng.integers(1, 512, n).astype(np.int32) for n in lengths]
    tokens = np.concatenate(docs)[None]
    segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])[None]
    positions = np.concatenate([np.arange(n) for n in lengths])[None]
    packed = model.apply(params, tokens, positions, segments)
    start = 0
    for doc in docs:
        alone = model.apply(params, doc[None])
        np.testing.assert_allclose(packed[0, start:start + len(doc)], alone[0], atol=1e-5)
        start += len(doc)
    # And without segment ids the same row would leak: the later documents' logits change.
    leaky = model.apply(params, tokens, positions)
    assert np.abs(leaky[0, 5:] - packed[0, 5:]).max() > 1e-3


@pytest.mark.parametrize("preset", FAMILIES)
def test_causal(preset):
    model, params = _init(get_preset(preset))
    tokens = np.arange(1, 17, dtype=np.int32)[None]
    changed = tokens.copy()
    changed[0, 10] = 99
    a, b = model.apply(params, tokens), model.apply(params, changed)
    np.testing.assert_array_equal(a[0, :10], b[0, :10])
    assert np.abs(a[0, 10:] - b[0, 10:]).max() > 1e-4


def test_gqa_equals_mha_with_repeated_kv_heads():
    """2 kv heads shared by 4 query heads == MHA whose kv heads are those 2, each repeated."""
    gqa_cfg = get_preset("tiny_llama")
    assert gqa_cfg.num_kv_heads == 2 and gqa_cfg.num_heads == 4
    gqa, params = _init(gqa_cfg)
    mha = build_model(gqa_cfg.replace(num_kv_heads=4))
    mha_params = jax.tree.map(lambda x: x, params)
    attn = mha_params["params"]["layers"]["attention"]
    for name in ("key_kernel", "value_kernel"):
        attn[name] = jnp.repeat(attn[name], 2, axis=2)  # [layers, embed, kv_heads, head_dim]
    tokens = np.arange(3, 19, dtype=np.int32)[None]
    np.testing.assert_allclose(gqa.apply(params, tokens), mha.apply(mha_params, tokens), atol=1e-5)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_scan_equals_unrolled_and_remat_keeps_gradients(remat):
    cfg = get_preset("tiny_llama").replace(remat=remat)
    scanned, params = _init(cfg)
    unrolled = build_model(cfg.replace(scan_layers=False))
    layers = params["params"]["layers"]
    unrolled_params = {"params": {k: v for k, v in params["params"].items() if k != "layers"}}
    unrolled_params["params"]["layers"] = {
        f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], layers) for i in range(cfg.num_layers)}
    tokens = np.arange(5, 21, dtype=np.int32)[None]

    def loss(model, p):
        return jnp.mean(model.apply(p, tokens) ** 2)

    np.testing.assert_allclose(scanned.apply(params, tokens),
                               unrolled.apply(unrolled_params, tokens), atol=1e-5)
    g_scan = jax.grad(lambda p: loss(scanned, p))(params)
    g_unrolled = jax.grad(lambda p: loss(unrolled, p))(unrolled_params)
    np.testing.assert_allclose(g_scan["params"]["layers"]["mlp"]["wo"]["kernel"][1],
                               g_unrolled["params"]["layers"]["layer_1"]["mlp"]["wo"]["kernel"],
                               atol=1e-6)


def test_param_count_matches_formula():
    for preset in ("tiny", "tiny_gpt", "tiny_llama"):
        cfg = get_preset(preset)
        _, params = _init(cfg)
        assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()


def test_published_sizes():
    assert round(get_preset("gpt2_124m").num_params() / 1e6) == 124
    assert round(get_preset("llama_1b").num_params() / 1e8) == 11  # TinyLlama: 1.1B
    assert round(get_preset("llama_7b").num_params() / 1e9, 1) == 6.7
