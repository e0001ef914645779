"""Int8 weights and the int8 KV cache (model/quant.py): logits near the float model's, a quarter
of its memory, decode over an int8 cache near the float cache's, and a saved quantized model
that loads as it is."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.engine.engine import generate, init_cache
from infer.engine.load import load, quantized, with_quant
from infer.quantize import quantize_dir
from infer.score import score
from model import quant, sharding
from model.convert import export_hf
from runtime.errors import UserError

TOKENS = np.random.default_rng(0).integers(1, 512, size=(3, 24)).astype(np.int32)
# |int8 logits - float logits| <= TOLERANCE * max |float logits| (docs/inference.md): per-channel
# weights alone (weight-only, GPU) and with the rows quantized too (CPU), on a 2-layer model.
TOLERANCE = {"weight_only": 0.02, "dynamic_rows": 0.03}


@pytest.fixture(scope="module")
def models(workdir):
    return {"float": load(workdir), "int8": load(workdir, quant="int8")}


def _relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(params=["dynamic_rows", "weight_only"])
def mode(request, monkeypatch):
    """The CPU path, or the GPU/TPU one (weights converted inside the matmul) forced on CPU. The
    path is chosen while tracing, so cached traces are dropped before and after."""
    if request.param == "weight_only":
        monkeypatch.setattr(quant, "DYNAMIC_ROWS_BACKENDS", ())
    jax.clear_caches()
    yield request.param
    monkeypatch.undo()
    jax.clear_caches()


def test_int8_logits_are_near_the_float_logits(models, mode):
    reference = score(models["float"], TOKENS)
    logits = score(models["int8"], TOKENS)
    error = _relative_error(logits, reference)
    assert 0 < error <= TOLERANCE[mode], error
    # The model still ranks tokens as the float one does, almost everywhere.
    agree = np.mean(np.argmax(logits, -1) == np.argmax(reference, -1))
    assert agree >= 0.9, agree


def test_int8_params_take_a_quarter_of_the_memory(models):
    before = quant.param_bytes(models["float"].params)
    after = quant.param_bytes(models["int8"].params)
    leaves = jax.tree.leaves(models["int8"].params)
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.int8), jnp.dtype(jnp.float32)}
    # int8 kernels + one float32 scale per output channel (and the float norms): a tiny model's
    # scales weigh a little more than a large one's.
    assert 0.25 <= after / before <= 0.30, after / before


def test_quantize_params_is_per_channel_absmax():
    w = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 8)), jnp.float32)
    q, scale = quant.quantize(w, (1,))
    assert q.dtype == jnp.int8 and scale.shape == (2, 1, 8)
    np.testing.assert_allclose(scale, np.max(np.abs(w), axis=1, keepdims=True) / 127, rtol=1e-6)
    assert np.max(np.abs(q)) == 127
    np.testing.assert_allclose(q * scale, w, atol=float(np.max(scale)) / 2 + 1e-7)


def _decode_logits(loaded, steps: int = 6) -> np.ndarray:
    """Logits of a prefill over TOKENS[:1] and `steps` greedy decode steps through the cache."""
    cfg, model = loaded.config, loaded.model
    tokens = jnp.asarray(TOKENS[:1, :12])
    total = tokens.shape[1] + steps
    cache = init_cache(cfg, 1, total)
    kv_segments = jnp.zeros((1, total), jnp.int32).at[:, :12].set(1)
    positions = jnp.arange(12)[None]
    out = []
    apply = jax.jit(model.apply, static_argnames="last_only")
    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        logits, cache = apply(loaded.params, tokens, positions, jnp.ones_like(tokens),
                                    cache, 0, kv_segments, last_only=True)
        for i in range(steps):
            out.append(np.asarray(logits[:, -1]))
            token = jnp.argmax(logits[:, -1], -1)[:, None].astype(jnp.int32)
            slot = 12 + i
            kv_segments = kv_segments.at[:, slot].set(1)
            logits, cache = apply(loaded.params, token, jnp.full((1, 1), slot),
                                        jnp.ones_like(token), cache, slot, kv_segments)
    return np.stack(out)


def test_int8_kv_cache_decodes_near_the_float_cache(models):
    reference = _decode_logits(models["float"])
    int8_kv = quantized(models["float"], with_quant(models["float"].config, "int8_kv"))
    cache = init_cache(int8_kv.config, 1, 8)
    assert cache["k"].dtype == jnp.int8 and cache["k_scale"].shape == (2, 1, 2, 8, 1)
    error = _relative_error(_decode_logits(int8_kv), reference)
    assert 0 < error <= 0.01, error
    both = quantized(models["int8"], with_quant(models["int8"].config, "int8_kv"))
    assert _relative_error(_decode_logits(both), reference) <= TOLERANCE["dynamic_rows"]


def test_saved_quantized_model_loads_as_it_is(models, workdir, tmp_path):
    out = tmp_path / "int8"
    summary = quantize_dir(workdir, str(out))
    assert summary["params_bytes_after"] / summary["params_bytes_before"] <= 0.30
    with open(out / "config.json") as f:
        assert json.load(f)["model"]["quant"] == "int8"
    saved = load(str(out))
    assert saved.config.int8_weights
    np.testing.assert_array_equal(score(saved, TOKENS), score(models["int8"], TOKENS))
    prompt = [list(TOKENS[0, :8])]
    assert generate(saved, prompt, 5) == generate(models["int8"], prompt, 5)
    with pytest.raises(UserError, match="int8 weights already"):
        quantize_dir(str(out), str(tmp_path / "again"))
    with pytest.raises(UserError, match="holds int8 weights"):  # HF has no such tensors
        export_hf(str(out), str(tmp_path / "hf"))
    assert not (tmp_path / "again").exists() and not (tmp_path / "hf").exists()


def test_quant_cli(workdir, tmp_path):
    tokens = tmp_path / "t.npy"
    np.save(tokens, TOKENS)
    command = [sys.executable, "-m", "infer.score", f"--checkpoint={workdir}",
               f"--tokens={tokens}", f"--out={tmp_path / 'l.npy'}"]
    ok = subprocess.run(command + ["--quant=int8"], capture_output=True, text=True, timeout=300,
                        check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert np.load(tmp_path / "l.npy").shape == (3, 24, 512)
    bad = subprocess.run(command + ["--quant=int4"], capture_output=True, text=True, timeout=300,
                         check=False)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert bad.returncode == 2 and len(lines) == 1 and "--quant=int4" in lines[0], bad.stderr
    missing = subprocess.run([sys.executable, "-m", "infer.quantize", f"--checkpoint={workdir}"],
                             capture_output=True, text=True, timeout=300, check=False)
    assert missing.returncode == 2 and "--out is required" in missing.stderr
    assert not os.path.exists(tmp_path / "l2.npy")
