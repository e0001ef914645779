"""KV-cache generation for decoder-only models: one prefill over the (left-padded) prompts, then
the whole decode loop on device in a `lax.while_loop`, stopping at EOS or max_new_tokens.
Streaming runs the same steps as a prefill program and then a few decode steps per call.

Prompts of different lengths share one batch by left padding: padding has segment 0, so real
tokens never attend to it, and positions count from each row's first real token. The cache is
preallocated ([layers, batch, kv_heads, prompt + new, head_dim]: the layout a decode step
reads without transposing) and updated in place.
"""

import functools
from collections.abc import Iterator

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


def left_pad(prompts: list[list[int]], pad_id: int = 0,
             length: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32[batch, L], segments int32[batch, L]: 1 real, 0 padding), L the longest
    prompt or `length` if that is longer."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token")
    longest = max(length, *(len(p) for p in prompts))
    tokens = np.full((len(prompts), longest), pad_id, np.int32)
    segments = np.zeros_like(tokens)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt):] = prompt
        segments[row, longest - len(prompt):] = 1
    return tokens, segments


def _prefill(model, params, tokens, segments, rng, max_new_tokens: int, sampling: Sampling,
             eos_id: int) -> tuple:
    """Prefill of left-padded `tokens`: the decode loop's first carry (step 0, the first
    token, the output buffer, done flags, cache, cache segments, next positions, rng)."""
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
    done = jnp.zeros((batch,), bool)
    return (0, first, out, done, cache, kv_segments, positions[:, -1] + 1, rng)


def _decode(model, params, carry: tuple, stop, prompt_len: int, sampling: Sampling,
            eos_id: int) -> tuple:
    """Runs decode steps from the carry's step until `stop` (or every row's EOS): step i records
    the token chosen before it and feeds it through the cache to choose the next."""

    def cond(carry):
        i, _, _, done, *_ = carry
        return (i < stop) & ~jnp.all(done)

    def body(carry):
        i, token, out, done, cache, kv_segments, position, rng = carry
        out = out.at[:, i].set(jnp.where(done, eos_id, token))
        done = done | (token == eos_id)
        slot = prompt_len + i
        kv_segments = kv_segments.at[:, slot].set(1)
        ones = jnp.ones((token.shape[0], 1), jnp.int32)
        logits, cache = model.apply(params, token[:, None], position[:, None], ones, cache, slot,
                                    kv_segments)
        rng, step_rng = jax.random.split(rng)
        token = sample(logits[:, -1], step_rng, sampling)
        return i + 1, token, out, done, cache, kv_segments, position + 1, rng

    return jax.lax.while_loop(cond, body, carry)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "sampling", "eos_id"))
def generate_padded(model, params, tokens, segments, rng, *, max_new_tokens: int,
                    sampling: Sampling, eos_id: int):
    """The whole prefill + decode of left-padded `tokens` [batch, prompt_len] (`segments` 0 on
    padding) as one compiled program: (out int32[batch, max_new_tokens], steps run); `generate`
    left-pads the prompts and calls it, the timing code calls it on arrays it made."""
    carry = _prefill(model, params, tokens, segments, rng, max_new_tokens, sampling, eos_id)
    i, _, out, *_ = _decode(model, params, carry, max_new_tokens, tokens.shape[1], sampling,
                            eos_id)
    return out, i


STREAM_CHUNK = 8  # decode steps per call when streaming: one host sync per 8 tokens

_start = jax.jit(_prefill, static_argnames=("model", "max_new_tokens", "sampling", "eos_id"))
# The carry (its cache above all) is donated: each chunk updates it in place.
_advance = jax.jit(_decode, static_argnames=("model", "prompt_len", "sampling", "eos_id"),
                   donate_argnames=("carry",))


def chunked(start, advance, max_new_tokens: int, eos_id: int,
            chunk: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Runs a decode loop as `start()` (the prefill: a carry (step, next token, out[batch, n],
    done, ...) whose next token is step 0's) and then `advance(carry, stop)` calls of up to
    `chunk` steps, yielding each call's tokens on the host as (first step, tokens int32[batch,
    k], done bool[batch, k]: whether the row has ended by that step, its EOS included). The
    decoder and encoder-decoder engines stream through it. A host callback inside one loop
    instead would sync with the host every token and make the program uncacheable (JAX does
    not persist programs with host callbacks)."""
    carry = start()
    first = np.asarray(carry[1])[:, None]
    yield 0, first, first == eos_id
    shown = 1
    while shown < max_new_tokens:
        stop = min(shown + chunk, max_new_tokens)
        carry = advance(carry, jnp.int32(stop))
        i, out = int(carry[0]), np.asarray(carry[2])
        # out[:, step] is final for step < i; step i's token is in the carry, chosen already.
        ended = np.cumsum(out[:, :i] == eos_id, axis=1) > 0
        yield shown, out[:, shown:i], ended[:, shown:i]
        if i < stop:  # every row was done
            return
        shown = i


def streamed(chunks, batch: int, max_new_tokens: int, eos_id: int, on_token) -> np.ndarray:
    """The out[batch, max_new_tokens] ids of `chunked`'s yields, each step passed to
    on_token(step, tokens, done) in order as its chunk arrives."""
    out = np.full((batch, max_new_tokens), eos_id, np.int32)
    for first, ids, done in chunks:
        out[:, first:first + ids.shape[1]] = ids
        for j in range(ids.shape[1]):
            on_token(first + j, ids[:, j], done[:, j])
    return out


def decode_chunks(loaded, tokens, segments, rng, *, max_new_tokens: int, sampling: Sampling,
                  eos_id: int, chunk: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """`generate_padded`'s steps as a prefill program and then `chunk` decode steps per call,
    yielded as `chunked` does (infer.generate streams them; infer.bench times them)."""
    model, params, prompt_len = loaded.model, loaded.params, tokens.shape[1]
    return chunked(
        lambda: _start(model, params, tokens, segments, rng, max_new_tokens, sampling, eos_id),
        lambda carry, stop: _advance(model, params, carry, stop, prompt_len, sampling, eos_id),
        max_new_tokens, eos_id, chunk)


def prompt_bucket(prompt_len: int, max_new_tokens: int, max_len: int) -> int:
    """The padded prompt length a batch is compiled for: the next power of two from 16 up, so
    prompts of new lengths reuse a compiled program (in this process, and from the persistent
    compilation cache in the next), capped where prompt + new tokens would pass the context.
    Padding is masked (segment 0) and positions count real tokens only, so the tokens chosen
    do not depend on the bucket beyond float rounding of the longer masked reductions."""
    bucket = max(16, 1 << (prompt_len - 1).bit_length())
    return max(prompt_len, min(bucket, max_len - max_new_tokens))


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
             on_token=None, chunk: int = STREAM_CHUNK) -> list[list[int]]:
    """Generated ids per prompt (EOS and anything after it excluded). With `on_token`, it is
    called as on_token(step, tokens int32[batch], done bool[batch]) for every step in order,
    the first as soon as the prefill has chosen it, then after each `chunk` decode steps."""
    cfg = loaded.config
    sampling = sampling or Sampling()
    longest = max((len(p) for p in prompts), default=0)
    check_lengths(cfg, longest, max_new_tokens)
    tokens, segments = left_pad(prompts, length=prompt_bucket(longest, max_new_tokens,
                                                              cfg.max_len))
    rng, sampling = jax.random.PRNGKey(seed), sampling.validated()
    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        if on_token is None:
            out, _ = generate_padded(loaded.model, loaded.params, tokens, segments, rng,
                                     max_new_tokens=max_new_tokens, sampling=sampling,
                                     eos_id=eos_id)
        else:
            chunks = decode_chunks(loaded, tokens, segments, rng,
                                   max_new_tokens=max_new_tokens, sampling=sampling,
                                   eos_id=eos_id, chunk=chunk)
            out = streamed(chunks, len(prompts), max_new_tokens, eos_id, on_token)
    rows = []
    for row in np.asarray(jax.device_get(out)).tolist():
        rows.append(row[:row.index(eos_id)] if eos_id in row else row)
    return rows
