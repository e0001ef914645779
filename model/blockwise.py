"""Softmax attention in query blocks with a flash-style backward: `attention=xla`'s kernel.

`jax.nn.dot_product_attention(implementation="xla")` materialises the whole [q_len, kv_len] score
matrix, keeps the probabilities for the backward and lets autodiff differentiate the softmax,
which costs several full passes over that matrix. On a 2-core CPU at the quickstart shape
(batch 16 x 256, 4 heads of 32) its forward + backward took 59.3 ms a layer against torch SDPA's
19.4 ms; this kernel takes 21.7 ms (benchmarks/results/2026-12-08-cpu-2core.json,
`attention_kernel` at 2026-12-08T04:02:26). Three things make the difference, none of them specific to a CPU:
  - causal self-attention skips the key blocks after a query block (about half the work at
    length 256 with blocks of 64);
  - the backward is written out (a custom VJP): it recomputes a block's probabilities from the
    saved log-sum-exp and uses d(logits) = p * (dp - rowsum(dout * out)), so nothing of size
    [q_len, kv_len] is saved between forward and backward;
  - scores are laid out [batch, kv_heads, group, q, kv], so the softmax reduces a contiguous axis.
Grouped KV heads need no repeat; a bias (T5's relative positions) is added to the logits and gets
its gradient; masks are whatever `model/attention.py` built (segments, causality, padding).
"""

import jax
import jax.numpy as jnp

Array = jax.Array

# Query rows per block. At length 256 on CPU blocks of 32 and 64 tie and 128 is 1.5x slower
# (fewer key blocks skipped); 64 keeps the unrolled block count small at long lengths.
BLOCK = 64

_NEG = jnp.finfo(jnp.float32).min


def _rows(x: Array) -> Array:
    """[b, K, G, t, ...] -> [b, K, G * t, ...]: a group's query rows side by side, so every
    product is a plain batched matmul over (b, K) (a size-1 G axis made XLA's CPU dots 2x slower)."""
    return x.reshape(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], *x.shape[4:])


def _scores(q: Array, k: Array, mask: Array, bias: Array | None) -> Array:
    """q: [b, K, G, t, d], k: [b, K, s, d] -> float32 [b, K, G, t, s] logits, masked."""
    s = jnp.einsum("bkrd,bksd->bkrs", _rows(q), k, preferred_element_type=jnp.float32)
    s = s.reshape(*q.shape[:4], k.shape[2])
    if bias is not None:
        s += bias.astype(jnp.float32)
    return jnp.where(mask, s, _NEG)


def _forward(q, k, v, mask, bias):
    s = _scores(q, k, mask, bias)
    # A row whose keys are all masked comes out uniform (exp(0) everywhere), as in
    # jax.nn.dot_product_attention; the backward recomputes exactly these probabilities.
    top = s.max(-1, keepdims=True)
    e = jnp.exp(s - top)
    total = e.sum(-1, keepdims=True)
    out = jnp.einsum("bkrs,bksd->bkrd", _rows(e / total).astype(v.dtype), v)
    return out.reshape(q.shape), top + jnp.log(total)


@jax.custom_vjp
def _block(q: Array, k: Array, v: Array, mask: Array, bias: Array | None) -> Array:
    return _forward(q, k, v, mask, bias)[0]


def _block_fwd(q, k, v, mask, bias):
    out, lse = _forward(q, k, v, mask, bias)
    return out, (q, k, v, mask, bias, out, lse)


def _block_bwd(res, d_out):
    q, k, v, mask, bias, out, lse = res
    p = jnp.exp(_scores(q, k, mask, bias) - lse)
    f32 = jnp.float32
    dv = jnp.einsum("bkrs,bkrd->bksd", _rows(p).astype(d_out.dtype), _rows(d_out),
                    preferred_element_type=f32)
    dp = jnp.einsum("bkrd,bksd->bkrs", _rows(d_out), v, preferred_element_type=f32)
    # rowsum(dp * p) == rowsum(d_out * out): a [t, d] product instead of a [t, s] one.
    delta = jnp.sum(d_out.astype(f32) * out.astype(f32), -1, keepdims=True)
    ds = p * (dp.reshape(p.shape) - delta)
    dq = jnp.einsum("bkrs,bksd->bkrd", _rows(ds).astype(k.dtype), k, preferred_element_type=f32)
    dk = jnp.einsum("bkrs,bkrd->bksd", _rows(ds).astype(q.dtype), _rows(q),
                    preferred_element_type=f32)
    d_bias = None
    if bias is not None:  # summed over the axes the bias was broadcast along
        axes = tuple(i for i, (n, m) in enumerate(zip(bias.shape, ds.shape)) if n == 1 and m != 1)
        d_bias = ds.sum(axes, keepdims=True).astype(bias.dtype)
    return (dq.reshape(q.shape).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None,
            d_bias)


_block.defvjp(_block_fwd, _block_bwd)


def attention(q: Array, k: Array, v: Array, mask: Array, bias: Array | None, scale: float,
              causal: bool) -> Array:
    """q: [batch, q_len, heads, head_dim], k, v: [batch, kv_len, kv_heads, head_dim];
    mask: bool[batch | 1, 1, q_len, kv_len]; bias: [batch | 1, heads, q_len, kv_len] or None.
    Returns [batch, q_len, heads, head_dim], as jax.nn.dot_product_attention would.

    `causal` promises that the mask hides every key after its query (self-attention with
    q_len == kv_len), so a query block reads only the keys up to its last row."""
    b, q_len, heads, hd = q.shape
    kv_heads = k.shape[2]
    group = heads // kv_heads  # query head n uses kv head n // group, as dot_product_attention
    q = (q * jnp.asarray(scale, q.dtype)).reshape(b, q_len, kv_heads, group, hd)
    q = q.transpose(0, 2, 3, 1, 4)  # [b, K, G, t, d]
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [b, K, s, d]
    mask = mask[:, :, None]  # [b, 1, 1, t, s]
    if bias is not None:
        bias = bias.reshape(bias.shape[0], kv_heads, group, *bias.shape[2:])
    skip = causal and q_len == k.shape[2]
    outs = []
    for start in range(0, q_len, BLOCK):
        stop = min(start + BLOCK, q_len)
        keys = stop if skip else k.shape[2]
        outs.append(_block(q[:, :, :, start:stop], k[:, :, :keys], v[:, :, :keys],
                           mask[..., start:stop, :keys],
                           None if bias is None else bias[..., start:stop, :keys]))
    out = jnp.concatenate(outs, axis=3)  # [b, K, G, t, d]
    return out.transpose(0, 3, 1, 2, 4).reshape(b, q_len, heads, hd)
