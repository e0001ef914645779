"""The KV-cache engine: cached decode equals full recomputation, batching prompts of different
lengths equals running each alone, sampling respects top-k / top-p."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer.engine.engine import generate
from infer.engine.load import Loaded
from infer.engine.sampling import Sampling, sample
from model import sharding
from model.config import get_preset
from model.family import build_model

PROMPTS = [[5, 17, 99, 3, 250], [42], [7, 8, 9, 10, 11, 12, 13, 14, 15]]


def _loaded(preset, mesh_spec=""):
    cfg = get_preset(preset)
    model = build_model(cfg)
    params = sharding.unbox(model.init(jax.random.key(3), jnp.zeros((1, 2), jnp.int32)))
    return Loaded(cfg, model, params, sharding.make_mesh(mesh_spec), None)


def _greedy_without_cache(loaded, prompt, n):
    tokens = list(prompt)
    apply = jax.jit(loaded.model.apply)
    for _ in range(n):
        logits = apply(loaded.params, np.asarray([tokens], np.int32))
        tokens.append(int(jnp.argmax(logits[0, -1])))
    return tokens[len(prompt):]


@pytest.mark.parametrize("preset", ["tiny_gpt", "tiny_llama"])
def test_cached_greedy_equals_recomputation_and_batching(preset):
    loaded = _loaded(preset)
    batched = generate(loaded, PROMPTS, max_new_tokens=12)
    for prompt, got in zip(PROMPTS, batched, strict=True):
        assert got == _greedy_without_cache(loaded, prompt, 12)
        assert generate(loaded, [prompt], max_new_tokens=12)[0] == got


def test_tensor_parallel_decode_matches_single_layout():
    a = generate(_loaded("tiny_llama", "data=2,tensor=4"), PROMPTS[:2], max_new_tokens=8)
    b = generate(_loaded("tiny_llama", "data=8"), PROMPTS[:2], max_new_tokens=8)
    assert a == b


def test_eos_stops_and_is_excluded():
    loaded = _loaded("tiny_gpt")
    free = generate(loaded, [PROMPTS[0]], max_new_tokens=10)[0]
    stop = free[4]
    cut = generate(loaded, [PROMPTS[0]], max_new_tokens=10, eos_id=stop)[0]
    assert cut == free[:free.index(stop)]


def test_sampling_is_seeded_and_respects_top_k_and_top_p():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
    keys = jax.random.split(jax.random.key(0), 3)
    top2 = sample(logits, keys[0], Sampling(temperature=1.0, top_k=2))
    assert set(np.unique(top2)) == {0, 1}
    nucleus = sample(logits, keys[1], Sampling(temperature=1.0, top_p=0.7))
    assert set(np.unique(nucleus)) == {0, 1}  # 0.5 < 0.7 <= 0.8
    full = sample(logits, keys[2], Sampling(temperature=1.0))
    np.testing.assert_allclose(np.bincount(full, minlength=4) / 2000, [0.5, 0.3, 0.15, 0.05],
                               atol=0.04)
    loaded = _loaded("tiny_gpt")
    hot = Sampling(temperature=1.0)
    first = generate(loaded, PROMPTS[:1], 8, hot, seed=1)
    assert first == generate(loaded, PROMPTS[:1], 8, hot, seed=1)
    assert first != generate(loaded, PROMPTS[:1], 8, hot, seed=2)


@pytest.mark.parametrize("preset", ["tiny_gpt", "tiny_llama"])
def test_cached_logits_equal_full_forward(preset):
    """Prefill a left-padded batch, then feed the rest one token at a time through the cache: every
    step's logits equal the uncached forward of the whole sequence (fp32, 1e-5)."""
    from infer.engine.engine import init_cache, left_pad

    loaded = _loaded(preset)
    model, params = loaded.model, loaded.params
    full = [[5, 17, 99, 3, 250, 8, 9, 10], [42, 43, 44, 45, 46, 47]]
    prefix = 3
    tokens, segments = left_pad([row[:-prefix] for row in full])
    width = tokens.shape[1]
    total = width + prefix
    positions = np.maximum(np.cumsum(segments, 1) - 1, 0)
    kv_segments = np.zeros((2, total), np.int32)
    kv_segments[:, :width] = segments
    logits, cache = model.apply(params, tokens, positions, segments,
                                init_cache(loaded.config, 2, total), 0, kv_segments)
    steps = [logits[:, -1]]
    for j in range(prefix - 1):
        kv_segments[:, width + j] = 1
        token = np.asarray([[row[len(row) - prefix + j]] for row in full], np.int32)
        logits, cache = model.apply(params, token, positions[:, -1:] + 1 + j,
                                    np.ones((2, 1), np.int32), cache, width + j, kv_segments)
        steps.append(logits[:, -1])
    for row, seq in enumerate(full):
        reference = model.apply(params, np.asarray([seq], np.int32))[0]
        for j, step_logits in enumerate(steps):
            np.testing.assert_allclose(step_logits[row], reference[len(seq) - prefix - 1 + j],
                                       atol=1e-5)
