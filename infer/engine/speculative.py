"""Speculative decoding for decoder-only models: a cheap draft model proposes `k` tokens, the
target checks all of them in one forward pass, and the output is distributed exactly as the
target's own sampling (Leviathan et al. 2023; Chen et al. 2023).

A round, with the sequence so far of length n whose last token is not yet in either KV cache:
- the draft samples d_1..d_k from its filtered distributions q_1..q_k, one cached pass each;
- the target feeds [last, d_1..d_k] at slots n-1..n+k-1 in one pass: p_1..p_{k+1};
- d_i is accepted with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection a token
  is drawn from normalize(max(0, p_i - q_i)), after k acceptances a bonus one from p_{k+1}.
Greedy decoding is the same rule with one-hot distributions: the longest prefix where the draft
token is the target's argmax, then the target's own token. Rejected cache slots are dropped by
moving the slot pointer back: `kv_segments` is derived from it, so they read as empty (0) and
the next round's writes overwrite them. Batch size 1; after the prefills the whole decode
loop runs in one jit.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from infer.engine.engine import check_lengths, init_cache
from infer.engine.sampling import Sampling, filtered
from model import sharding
from model.family import family_of
from runtime.errors import UserError


def distribution(logits: jax.Array, sampling: Sampling) -> jax.Array:
    """float32[rows, vocab] logits -> the probabilities `infer.engine.sampling.sample` draws from
    (the softmax of its filtered logits); greedy is one-hot."""
    if sampling.temperature == 0:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(filtered(logits.astype(jnp.float32), sampling), axis=-1)


def draw(rng: jax.Array, probs: jax.Array) -> jax.Array:
    """One token (int32[]) from probabilities float32[vocab]; zero-probability tokens never."""
    return jax.random.categorical(rng, jnp.log(probs)).astype(jnp.int32)


def accept(p: jax.Array, q: jax.Array, drafted: jax.Array, rng: jax.Array
           ) -> tuple[jax.Array, jax.Array]:
    """The verification rule. p: float32[k+1, vocab] target distributions after each prefix,
    q: float32[k, vocab] the draft's, drafted: int32[k] (d_i drawn from q_i) -> (accepted count
    a: int32[], the token that follows d_1..d_a: int32[])."""
    k = drafted.shape[0]
    u_rng, rest_rng = jax.random.split(rng)
    rows = jnp.arange(k)
    p_x, q_x = p[rows, drafted], q[rows, drafted]
    # u < p/q without the division; q_x > 0 as d_i was drawn from q_i, and u < 1 accepts p = q.
    ok = jax.random.uniform(u_rng, (k,)) * q_x < p_x
    a = jnp.sum(jnp.cumprod(ok)).astype(jnp.int32)
    # A zero row for q past the last draft makes the bonus token's "residual" p_{k+1} itself.
    q = jnp.concatenate([q, jnp.zeros_like(q[:1])])
    residual = jnp.maximum(p[a] - q[a], 0.0)
    # All zero only where p_a = q_a (up to rounding), and then rejection had probability 0.
    residual = jnp.where(jnp.sum(residual) > 0, residual, p[a])
    return a, draw(rest_rng, residual)


def _filled(total: int, upto: jax.Array) -> jax.Array:
    """kv_segments int32[1, total]: slots before `upto` hold the sequence, the rest are empty.
    One prompt without padding, so this and the causal mask say everything."""
    return (jnp.arange(total) < upto).astype(jnp.int32)[None]


def _positions(slots: jax.Array, max_len: int) -> jax.Array:
    """int32[1, len] positions of cache slots (one unpadded row: a slot is its position). The
    last round may feed draft tokens past the context; their outputs are never used, but a
    learned position table would embed them as NaN (out-of-range take), and NaN values in the
    cache poison every query through its zero attention weights, so they are clamped."""
    return jnp.minimum(slots, max_len - 1)[None]


@functools.partial(jax.jit, static_argnames=("model",))
def _prefill(model, params, prompt):
    """prompt: int32[1, prompt_len] -> (last logits float32[1, vocab], cache of prompt_len
    slots). Apart from the decode loop so that it compiles once per model and prompt length,
    whatever the draft length, and once for a draft of the target's shape."""
    length = prompt.shape[1]
    ones = jnp.ones_like(prompt)
    logits, cache = model.apply(params, prompt, jnp.arange(length)[None], ones,
                                init_cache(model.config, 1, length), 0, ones, last_only=True)
    return logits[:, -1], cache


def _propose(draft, params, cache, prev, last, n, rng, *, k, sampling, total):
    """The draft's k tokens int32[k], their distributions float32[k, vocab] and its cache.

    Each pass feeds the newest token and the one before it: rewriting the earlier slot gives
    it the keys/values it already had, except after a round that accepted all k draft tokens,
    when the draft never fed d_k and this fills it. So every pass has one shape, with no
    catch-up pass of its own, at the price of a second token in a pass that is bound by
    reading the weights, not by arithmetic."""
    max_len = draft.config.max_len

    def step(carry, key):
        prev, token, cache, slot = carry  # `token` at `slot`, `prev` just before it
        logits, cache = draft.apply(params, jnp.stack([prev, token])[None],
                                    _positions(slot - 1 + jnp.arange(2), max_len),
                                    jnp.ones((1, 2), jnp.int32), cache, slot - 1,
                                    _filled(total, slot + 1), last_only=True)
        q = distribution(logits[:, -1], sampling)[0]
        proposed = draw(key, q)
        return (token, proposed, cache, slot + 1), (proposed, q)

    (*_, cache, _), (tokens, qs) = jax.lax.scan(step, (prev, last, cache, n - 1),
                                                jax.random.split(rng, k))
    return tokens, qs, cache


@functools.partial(jax.jit, static_argnames=("target", "draft", "max_new_tokens", "k",
                                             "sampling", "on_token"))
def _decode(target, draft, target_params, draft_params, logits, target_cache, draft_cache,
            prompt_end, rng, eos_id, *, max_new_tokens: int, k: int, sampling: Sampling,
            on_token=None):
    """From the prefills of both models (the target's last logits, both caches, the prompt's
    last token) -> (tokens int32[max_new_tokens + k], how many of them were generated (may
    pass max_new_tokens), rounds, accepted draft tokens)."""
    prompt_len = target_cache["k"].shape[3]
    # The last round starts below max_new_tokens generated and writes k + 1 slots from the
    # sequence's last token on.
    total = prompt_len + max_new_tokens + k - 1
    grow = ((0, 0), (0, 0), (0, 0), (0, total - prompt_len), (0, 0))
    t_cache, d_cache = ({name: jnp.pad(c, grow) for name, c in cache.items()}
                        for cache in (target_cache, draft_cache))
    rng, first_rng = jax.random.split(rng)
    first = draw(first_rng, distribution(logits, sampling)[0])
    out = jnp.zeros((max_new_tokens + k,), jnp.int32).at[0].set(first)
    if on_token is not None:
        jax.debug.callback(functools.partial(_report, on_token, max_new_tokens), 0,
                           first[None], 0, eos_id)

    def cond(carry):
        g, *_, done = carry
        return (g < max_new_tokens) & ~done

    def body(carry):
        g, out, prev, last, t_cache, d_cache, rng, rounds, accepted, _ = carry
        n = prompt_len + g  # `last` is at position n - 1, in neither cache yet
        rng, draft_rng, accept_rng = jax.random.split(rng, 3)
        drafted, q, d_cache = _propose(draft, draft_params, d_cache, prev, last, n, draft_rng,
                                       k=k, sampling=sampling, total=total)
        logits, t_cache = target.apply(
            target_params, jnp.concatenate([last[None], drafted])[None],
            _positions(n - 1 + jnp.arange(k + 1), target.config.max_len),
            jnp.ones((1, k + 1), jnp.int32), t_cache, n - 1, _filled(total, n + k))
        a, following = accept(distribution(logits[0], sampling), q, drafted, accept_rng)
        emitted = jnp.concatenate([drafted, following[None]]).at[a].set(following)
        out = jax.lax.dynamic_update_slice(out, emitted, (g,))  # past a: overwritten next round
        if on_token is not None:
            jax.debug.callback(functools.partial(_report, on_token, max_new_tokens), g,
                               emitted, a, eos_id)
        done = jnp.any((emitted == eos_id) & (jnp.arange(k + 1) <= a))
        prev = jnp.where(a > 0, drafted[jnp.maximum(a - 1, 0)], last)
        return (g + a + 1, out, prev, following, t_cache, d_cache, rng, rounds + 1,
                accepted + a, done)

    carry = (jnp.int32(1), out, prompt_end, first, t_cache, d_cache, rng, jnp.int32(0),
             jnp.int32(0), first == eos_id)
    g, out, *_, rounds, accepted, _ = jax.lax.while_loop(cond, body, carry)
    return out, g, rounds, accepted


def _report(on_token, max_new_tokens, start, emitted, a, eos_id) -> None:
    """Host side of streaming: one `on_token(step, tokens[1], done[1])` call per new token, as
    `infer.engine.engine.generate` makes, up to and including EOS and within max_new_tokens."""
    for i in range(int(a) + 1):
        step, token = int(start) + i, int(emitted[i])
        if step >= max_new_tokens:
            return
        on_token(step, np.asarray([token]), np.asarray([token == int(eos_id)]))
        if token == int(eos_id):
            return


def check_pair(target_config, draft_config) -> None:
    """Refuses a target/draft pair that cannot be decoded speculatively (configs alone, so a
    command can check before loading any params)."""
    for role, cfg in (("target", target_config), ("draft", draft_config)):
        if family_of(cfg).generates != "causal":
            raise UserError(f"speculative decoding needs decoder-only models; the {role} is "
                            f"{cfg.family}")
    if target_config.vocab_size != draft_config.vocab_size:
        raise UserError(f"the draft's vocabulary ({draft_config.vocab_size} tokens) differs from "
                        f"the target's ({target_config.vocab_size}); the draft must share the "
                        f"target's tokenizer")


def speculative_generate(target, draft, prompt: list[int], max_new_tokens: int,
                         draft_tokens: int = 4, sampling: Sampling | None = None, seed: int = 0,
                         eos_id: int = -1, on_token=None) -> tuple[list[int], dict]:
    """(generated ids of one prompt (EOS and after excluded), stats) with `target` and `draft`
    (`infer.engine.load.Loaded`). Stats: proposed and accepted draft tokens, acceptance_rate,
    target_forward_passes (prefill included), new_tokens (EOS counted) and
    tokens_per_target_pass (1.0 for plain decoding)."""
    check_pair(target.config, draft.config)
    sampling = (sampling or Sampling()).validated()
    if draft_tokens < 1:
        raise UserError(f"--draft_tokens must be >= 1, got {draft_tokens}")
    if not prompt:
        raise UserError("every prompt needs at least one token")
    for role, cfg in (("model's", target.config), ("draft's", draft.config)):
        check_lengths(cfg, len(prompt), max_new_tokens, role)
    ids = np.asarray([prompt], np.int32)
    with jax.set_mesh(target.mesh), nn.logical_axis_rules(sharding.RULES):
        logits, target_cache = _prefill(target.model, target.params, ids)
        _, draft_cache = _prefill(draft.model, draft.params, ids)
        out, generated, rounds, accepted = _decode(
            target.model, draft.model, target.params, draft.params, logits, target_cache,
            draft_cache, np.int32(prompt[-1]), jax.random.PRNGKey(seed), np.int32(eos_id),
            max_new_tokens=max_new_tokens, k=draft_tokens, sampling=sampling, on_token=on_token)
    out, generated, rounds, accepted = jax.device_get((out, generated, rounds, accepted))
    tokens = np.asarray(out)[:min(int(generated), max_new_tokens)].tolist()
    new_tokens = len(tokens)
    if eos_id in tokens:
        tokens = tokens[:tokens.index(eos_id)]
        new_tokens = len(tokens) + 1
    return tokens, summarize([{"proposed": int(rounds) * draft_tokens,
                               "accepted": int(accepted), "target_forward_passes": 1 + int(rounds),
                               "new_tokens": new_tokens}])


def summarize(stats: list[dict]) -> dict:
    """Stats of several prompts (decoded one after another) added up, rates recomputed."""
    total = {name: sum(s[name] for s in stats)
             for name in ("proposed", "accepted", "target_forward_passes", "new_tokens")}
    total["acceptance_rate"] = total["accepted"] / total["proposed"] if total["proposed"] else 0.0
    total["tokens_per_target_pass"] = total["new_tokens"] / total["target_forward_passes"]
    return total
