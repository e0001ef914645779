"""model/blockwise.py against jax.nn.dot_product_attention: outputs and every gradient (q, k, v,
bias), over causal self-attention, packed segments, grouped KV heads, T5-style biases, cross-attention
lengths, lengths that are not a multiple of the block, and bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import blockwise
from model.attention import attention_mask


def _case(b, t, s, heads, kv_heads, hd, packed, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((b, t, heads, hd)), dtype)
    k, v = (jnp.asarray(rng.standard_normal((b, s, kv_heads, hd)), dtype) for _ in range(2))
    q_seg = np.ones((b, t), np.int32)
    kv_seg = np.ones((b, s), np.int32)
    if packed:  # two documents and trailing padding in row 0
        q_seg[0, t // 3:] = 2
        q_seg[0, t - 5:] = 0
        kv_seg = q_seg if s == t else kv_seg
    return q, k, v, jnp.asarray(q_seg), jnp.asarray(kv_seg)


def _both(q, k, v, mask, bias, causal, scale):
    def loss(fn):
        # A random cotangent, so every output element's gradient path is exercised.
        w = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32)
        return lambda q, k, v, bias: jnp.sum(fn(q, k, v, bias).astype(jnp.float32) * w)

    ours = lambda q, k, v, bias: blockwise.attention(q, k, v, mask, bias, scale, causal)
    ref = lambda q, k, v, bias: jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask,
                                                              scale=scale, implementation="xla")
    argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
    results = []
    for fn in (ours, ref):
        out = jax.jit(fn)(q, k, v, bias)
        grads = jax.jit(jax.grad(loss(fn), argnums=argnums))(q, k, v, bias)
        results.append((out, grads))
    return results


@pytest.mark.parametrize("b,t,s,heads,kv_heads,causal,packed,bias", [
    (2, 200, 200, 4, 2, True, True, None),      # GQA, packed, 200 = 3 blocks + 8
    (2, 64, 64, 4, 4, True, False, None),       # exactly one block
    (1, 130, 130, 2, 1, False, True, "batch"),  # bidirectional (BERT/T5 encoder), bias per row
    (2, 150, 150, 4, 4, True, False, "shared"),  # T5 decoder: causal + shared relative bias
    (2, 90, 37, 4, 2, False, False, None),      # cross-attention: queries over encoder keys
])
def test_matches_dot_product_attention(b, t, s, heads, kv_heads, causal, packed, bias):
    q, k, v, q_seg, kv_seg = _case(b, t, s, heads, kv_heads, 16, packed)
    mask = attention_mask(q_seg, kv_seg, causal)
    bias_arr = None
    if bias is not None:
        rows = b if bias == "batch" else 1
        bias_arr = jnp.asarray(np.random.default_rng(2).standard_normal((rows, heads, t, s)),
                               jnp.float32)
    (out, grads), (ref_out, ref_grads) = _both(q, k, v, mask, bias_arr, causal, 16 ** -0.5)
    np.testing.assert_allclose(out, ref_out, atol=2e-5, rtol=1e-5)
    for name, g, r in zip("qkvb", grads, ref_grads):
        assert g.shape == r.shape, name
        np.testing.assert_allclose(g, r, atol=5e-5, rtol=1e-4, err_msg=f"d{name}")


def test_bf16_close_to_float32_reference():
    q, k, v, q_seg, kv_seg = _case(2, 128, 128, 4, 2, 32, True, dtype=jnp.bfloat16)
    mask = attention_mask(q_seg, kv_seg, True)
    (out, grads), _ = _both(q, k, v, mask, None, True, 32 ** -0.5)
    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    (ref_out, ref_grads), _ = _both(*f32, mask, None, True, 32 ** -0.5)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    np.testing.assert_allclose(out.astype(jnp.float32), ref_out, atol=3e-2)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g.astype(jnp.float32), r, atol=6e-2 * float(jnp.abs(r).max()))


def test_causal_blocks_skip_later_keys():
    """A causal query block must not read keys after its last row: poisoning those keys with NaN
    changes nothing in the first block's output."""
    q, k, v, q_seg, _ = _case(1, 2 * blockwise.BLOCK, 2 * blockwise.BLOCK, 2, 2, 8, False)
    mask = attention_mask(q_seg, q_seg, True)
    poisoned = v.at[:, blockwise.BLOCK:].set(jnp.nan)
    out = blockwise.attention(q, k, poisoned, mask, None, 1.0, True)
    assert np.isfinite(np.asarray(out[:, :blockwise.BLOCK])).all()
