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


def test_prompt_lengths_share_a_bucket_and_its_compiled_program():
    from infer.engine.engine import generate_padded, left_pad, prompt_bucket

    assert [prompt_bucket(n, 8, 128) for n in (1, 16, 17, 33, 100, 120)] == [16, 16, 32, 64,
                                                                             120, 120]
    assert prompt_bucket(70, 20, 128) == 108  # capped by the context, never below the prompt
    loaded = _loaded("tiny_llama")
    generate(loaded, [PROMPTS[0]], max_new_tokens=6)  # length 5: bucket 16
    for prompt in ([1, 2, 3], PROMPTS[2], list(range(3, 17))):  # lengths 3, 9, 14
        compiled = generate_padded._cache_size()
        got = generate(loaded, [prompt], max_new_tokens=6)[0]
        assert generate_padded._cache_size() == compiled  # no new program for a new length
        tokens, segments = left_pad([prompt])  # unpadded, as before buckets
        exact, _ = generate_padded(loaded.model, loaded.params, tokens, segments,
                                   jax.random.PRNGKey(0), max_new_tokens=6,
                                   sampling=Sampling().validated(), eos_id=-1)
        assert got == np.asarray(exact)[0].tolist()


def test_streaming_reports_every_step_in_order_and_equals_one_program():
    # Sampled, with an EOS that stops some rows early: the chunked streaming loop chooses the
    # same tokens as the single prefill + decode program, and reports each step once, in order,
    # with the rows that are done.
    loaded = _loaded("tiny_gpt")
    hot = Sampling(temperature=1.5, top_k=50)
    free = generate(loaded, PROMPTS, max_new_tokens=11, sampling=hot, seed=4)
    eos = free[0][5]
    whole = generate(loaded, PROMPTS, max_new_tokens=11, sampling=hot, seed=4, eos_id=eos)
    seen = []
    streamed = generate(loaded, PROMPTS, max_new_tokens=11, sampling=hot, seed=4, eos_id=eos,
                        on_token=lambda step, tokens, done: seen.append(
                            (step, tokens.tolist(), done.tolist())), chunk=3)
    assert streamed == whole and len(whole[0]) < 11
    assert [step for step, _, _ in seen] == list(range(len(seen)))
    for row, ids in enumerate(whole):
        for step, tokens, done in seen:
            assert done[row] == (step >= len(ids))
            if step < len(ids):
                assert tokens[row] == ids[step]
