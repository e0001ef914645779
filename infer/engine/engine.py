"""KV-cache generation for decoder-only models: one prefill over the (left-padded) prompts, then
the whole decode loop on device in a `lax.while_loop`, stopping at EOS or max_new_tokens.

Prompts of different lengths share one batch by left padding: padding has segment 0, so real
tokens never attend to it, and positions count from each row's first real token. The cache is
preallocated ([layers, batch, kv_heads, prompt + new, head_dim]: the layout a decode step
reads without transposing) and updated in place.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from infer.engine.sampling import Sampling, sample
from model import sharding
from model.config import ModelConfig
from model.layers import dtype_of
from runtime.errors import UserError


def init_cache(cfg: ModelConfig, batch: int, length: int) -> dict[str, jax.Array]:
    """The empty cache; with an int8 KV cache (--quant=int8_kv) int8 keys and values plus one
    float32 scale per token and head (model/attention.py write_cache)."""
    shape = (cfg.num_layers, batch, cfg.num_kv_heads, length, cfg.resolved_head_dim)
    if not cfg.int8_kv:
        zeros = jnp.zeros(shape, dtype_of(cfg.dtype))
        return {"k": zeros, "v": zeros}
    zeros, ones = jnp.zeros(shape, jnp.int8), jnp.ones(shape[:-1] + (1,), jnp.float32)
    return {"k": zeros, "v": zeros, "k_scale": ones, "v_scale": ones}


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32[batch, longest], segments int32[batch, longest]: 1 real, 0 padding)."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), longest), pad_id, np.int32)
    segments = np.zeros_like(tokens)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt):] = prompt
        segments[row, longest - len(prompt):] = 1
    return tokens, segments


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "eos_id",
                                             "on_token"))
def generate_padded(model, params, tokens, segments, rng, *, max_new_tokens: int,
                    sampling: Sampling, eos_id: int, on_token=None):
    """The whole prefill + decode of left-padded `tokens` [batch, prompt_len] (`segments` 0 on
    padding) as one compiled program; `generate` left-pads the prompts and calls it, the timing code
    calls it on arrays it made."""
    batch, prompt_len = tokens.shape
    total = prompt_len + max_new_tokens
    positions = jnp.maximum(jnp.cumsum(segments, axis=1) - 1, 0)
    kv_segments = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(segments)
    cache = init_cache(model.config, batch, total)
    logits, cache = model.apply(params, tokens, positions, segments, cache, 0, kv_segments,
                                last_only=True)
    rng, step_rng = jax.random.split(rng)
    first = sample(logits[:, -1], step_rng, sampling)
    out = jnp.full((batch, max_new_tokens), eos_id, jnp.int32)

    def cond(carry):
        i, _, _, done, *_ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, token, out, done, cache, kv_segments, position, rng = carry
        out = out.at[:, i].set(jnp.where(done, eos_id, token))
        done = done | (token == eos_id)
        if on_token is not None:
            # Unordered (ordered effects are single-device only): the callee orders by step.
            jax.debug.callback(on_token, i, token, done)
        slot = prompt_len + i
        kv_segments = kv_segments.at[:, slot].set(1)
        ones = jnp.ones((batch, 1), jnp.int32)
        logits, cache = model.apply(params, token[:, None], position[:, None], ones, cache, slot,
                                    kv_segments)
        rng, step_rng = jax.random.split(rng)
        token = sample(logits[:, -1], step_rng, sampling)
        return i + 1, token, out, done, cache, kv_segments, position + 1, rng

    done = jnp.zeros((batch,), bool)
    carry = (0, first, out, done, cache, kv_segments, positions[:, -1] + 1, rng)
    i, _, out, done, *_ = jax.lax.while_loop(cond, body, carry)
    return out, i


def check_lengths(cfg, prompt_len: int, max_new_tokens: int, role: str = "model's") -> None:
    """Refuses a generation that does not fit the context; commands call it before printing
    anything, so the refusal is the only output."""
    if max_new_tokens <= 0:
        raise UserError(f"--max_new_tokens must be positive, got {max_new_tokens}")
    if prompt_len + max_new_tokens > cfg.max_len:
        raise UserError(f"prompt ({prompt_len} tokens) + --max_new_tokens={max_new_tokens} "
                        f"exceeds the {role} context of {cfg.max_len}; shorten one of them")


def generate(loaded, prompts: list[list[int]], max_new_tokens: int,
             sampling: Sampling | None = None, seed: int = 0, eos_id: int = -1,
             on_token=None) -> list[list[int]]:
    """Generated ids per prompt (EOS and anything after it excluded). `on_token(step, tokens,
    done)` is called on the host as each step's tokens are chosen (for streaming)."""
    cfg = loaded.config
    sampling = sampling or Sampling()
    tokens, segments = left_pad(prompts)
    check_lengths(cfg, tokens.shape[1], max_new_tokens)
    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        out, _ = generate_padded(loaded.model, loaded.params, tokens, segments, jax.random.PRNGKey(seed),
                           max_new_tokens=max_new_tokens, sampling=sampling.validated(),
                           eos_id=eos_id, on_token=on_token)
    rows = []
    for row in np.asarray(jax.device_get(out)).tolist():
        rows.append(row[:row.index(eos_id)] if eos_id in row else row)
    return rows
