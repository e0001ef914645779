"""Measured time of each part of one inference step, from isolated compiled sub-programs.

Each component (embedding, one attention block, one MLP, one norm, the output projection,
sampling) is applied with the model's own modules and its real parameters inside an on-device
loop whose carry feeds each iteration's output into the next, so XLA can neither hoist nor drop
the work; per-layer parts step through the layers (and their slices of the KV cache) as the real
step does, and their time per iteration is multiplied by the depth. The time per
iteration is (T(n) - T(1)) / (n - 1): the launch and argument transfer paid once per program
cancel out. The whole step is timed the same way, plus once more from the host per call, and
the difference is the host/dispatch overhead that an on-device decode loop avoids.
"""

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from infer.engine.engine import init_cache
from infer.engine.sampling import Sampling, sample
from model.attention import Attention
from model.config import ModelConfig
from model.layers import Embed, Mlp, Norm, PositionEmbed, dtype_of

# Components and how many times each runs per step (per layer ones scale with depth).
COMPONENTS = ("embedding", "attention", "mlp", "norms", "output", "sampling")


def per_step_count(cfg: ModelConfig, name: str) -> int:
    return {"attention": cfg.num_layers, "mlp": cfg.num_layers,
            "norms": 2 * cfg.num_layers + 1}.get(name, 1)


@dataclasses.dataclass(frozen=True)
class Shape:
    """One measured point: `queries` new tokens per row against a cache of `context` slots."""

    phase: str  # "prefill" | "decode"
    batch: int
    context: int

    @property
    def queries(self) -> int:
        return self.context if self.phase == "prefill" else 1


def _stacked_layers(params: dict, cfg: ModelConfig) -> dict:
    """Every layer's params with a leading `layers` axis (as the scanned model stores them)."""
    layers = params["params"]["layers"]
    if cfg.scan_layers:
        return layers
    return jax.tree.map(lambda *p: jnp.stack(p), *(layers[f"layer_{i}"]
                                                    for i in range(cfg.num_layers)))


def _at(tree, index):
    return jax.tree.map(lambda p: jax.lax.dynamic_index_in_dim(p, index, keepdims=False), tree)


def _loop_time(body: Callable, args: tuple, carry, target_s: float, repeats: int) -> float:
    """Seconds per iteration of `carry = body(args, carry)` on device (see the module doc)."""

    def program(n: int):
        def run(args, carry):
            return jax.lax.fori_loop(0, n, lambda _, c: body(args, c), carry)
        return jax.jit(run).lower(args, carry).compile()

    def timed(compiled) -> float:
        jax.block_until_ready(compiled(args, carry))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(args, carry))
            times.append(time.perf_counter() - t0)
        # The minimum: other work on a shared machine only ever adds time.
        return min(times)

    t1 = timed(program(1))
    # Enough iterations that the loop dominates the fixed cost, and more while launch jitter
    # still hides it (a difference at or below zero says nothing).
    n = int(min(max(target_s / max(t1, 1e-6), 2), 256))
    for _ in range(3):
        tn = timed(program(n))
        if tn > 1.5 * t1 or n >= 4096:
            break
        n *= 4
    # Should jitter still win, tn / n is an upper bound (it includes one launch).
    return (tn - t1) / (n - 1) if tn > t1 else tn / n


def _cost(fn: Callable, *args) -> dict[str, float]:
    """XLA's own FLOP and byte count of one call of `fn` (compiled, not estimated by us)."""
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis() or {}
    return {"flops": float(analysis.get("flops", float("nan"))),
            "bytes": float(analysis.get("bytes accessed", float("nan")))}


def _inputs(cfg: ModelConfig, shape: Shape, seed: int):
    rng = np.random.default_rng(seed)
    b, q, c = shape.batch, shape.queries, shape.context
    dtype = dtype_of(cfg.dtype)
    x = jnp.asarray(rng.standard_normal((b, q, cfg.d_model)), dtype)
    tokens = jnp.asarray(rng.integers(0, cfg.vocab_size, (b, q)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(c - q, c, dtype=jnp.int32), (b, q))
    ones_q, ones_c = jnp.ones((b, q), jnp.int32), jnp.ones((b, c), jnp.int32)
    cache = jax.tree.map(jnp.copy, init_cache(cfg, b, c))  # k and v: two buffers to donate
    layer_cache = jax.tree.map(lambda t: t[0], cache)
    logits = jnp.asarray(rng.standard_normal((b, cfg.vocab_size)), jnp.float32)
    return x, tokens, positions, ones_q, ones_c, cache, layer_cache, logits


def component_programs(cfg: ModelConfig, params: dict, shape: Shape, sampling: Sampling,
                       seed: int = 0) -> dict[str, tuple[Callable, tuple, object, Callable]]:
    """name -> (body(args, carry) -> carry, args, initial carry, one_call(args, carry)[,
    one_call's args, one_call's carry when they differ from the loop's])."""
    x, tokens, positions, ones_q, ones_c, cache, layer_cache, logits = _inputs(cfg, shape, seed)
    layers = _stacked_layers(params, cfg)
    layer = _at(layers, 0)
    top = params["params"]
    count = cfg.num_layers
    slot = shape.context - shape.queries
    rng = jax.random.key(seed)

    def embedding(p, toks):
        out = Embed(cfg).apply({"params": p["embed"]}, toks)
        if cfg.positions == "learned":
            out = out + PositionEmbed(cfg).apply({"params": p["position_embed"]}, positions)
        return out

    def embedding_body(p, toks):
        # The sum keeps every gathered row alive; the next tokens depend on it.
        return (toks + (jnp.sum(embedding(p, toks)) > 0).astype(jnp.int32)) % cfg.vocab_size

    def attention_one(p, carry):
        h, cache = carry
        y, cache = Attention(cfg, causal=True).apply({"params": p}, h, positions, ones_q, cache,
                                                     slot, ones_c)
        return h + y, cache

    def mlp_one(p, h):
        return h + Mlp(cfg).apply({"params": p}, h)

    def norm_one(p, h):
        return Norm(cfg).apply({"params": p}, h)

    # The loops step through the layers (iteration i uses layer i mod depth, and its slice of
    # the whole cache) as the real step does: looping over layer 0 alone would keep its
    # weights in the CPU's caches and time a part faster than it ever runs.
    def attention_body(p, carry):
        h, full, i = carry
        (h, full) = attention_one(_at(p, i), (h, {**full, "layer": i}))
        return h, {k: v for k, v in full.items() if k != "layer"}, (i + 1) % count

    def rotating(one):
        def body(p, carry):
            h, i = carry
            return one(_at(p, i), h), (i + 1) % count
        return body

    def head(p, h):
        # The Decoder's output projection (tied embedding or lm_head), as in model/transformer.py.
        if cfg.tie_embeddings:
            table = p["embed"]["embedding"].astype(h.dtype)
            return jnp.einsum("ble,ve->blv", h, table).astype(jnp.float32)
        return jnp.einsum("ble,ev->blv", h, p["lm_head"].astype(h.dtype)).astype(jnp.float32)

    def output_body(p, h):
        out = head(p, h)
        return h.at[:, :, 0].add(jnp.max(out, axis=-1).astype(h.dtype) * 1e-3)

    def sampling_body(key, lg):
        token = sample(lg, key, sampling)
        return lg.at[:, 0].add(token.astype(jnp.float32) * 1e-9)

    embed_params = {k: top[k] for k in ("embed", "position_embed") if k in top}
    head_params = {k: top[k] for k in ("embed", "lm_head") if k in top}
    return {
        "embedding": (embedding_body, embed_params, tokens, embedding),
        "attention": (attention_body, layers["attention"], (x, cache, 0), attention_one,
                      layer["attention"], (x, layer_cache)),
        "mlp": (rotating(mlp_one), layers["mlp"], (x, 0), mlp_one, layer["mlp"], x),
        "norms": (rotating(norm_one), layers["attention_norm"], (x, 0), norm_one,
                  layer["attention_norm"], x),
        # Logits of the last position only, as the engine asks for them.
        "output": (output_body, head_params, x[:, -1:], head),
        "sampling": (sampling_body, rng, logits, lambda key, lg: sample(lg, key, sampling)),
    }


def step_program(model, cfg: ModelConfig, shape: Shape, sampling: Sampling, seed: int = 0):
    """(body(params, carry) -> carry, initial carry): one whole prefill or decode step of the
    real model, sampling included, with the next step's tokens taken from this step's choice."""
    _, tokens, positions, ones_q, ones_c, cache, _, _ = _inputs(cfg, shape, seed)
    slot = shape.context - shape.queries
    rng = jax.random.key(seed)

    def body(params, carry):
        toks, cache = carry
        logits, cache = model.apply(params, toks, positions, ones_q, cache, slot, ones_c,
                                    last_only=True)
        chosen = sample(logits[:, -1], rng, sampling)
        return toks.at[:, -1].set(chosen), cache

    return body, (tokens, cache)


def measure(model, cfg: ModelConfig, params: dict, shape: Shape, sampling: Sampling,
            target_s: float, repeats: int, seed: int = 0) -> dict:
    """Per-step seconds of each component (all its instances), of the whole step on device and
    from the host, and XLA's cost analysis of each component's single call."""
    out = {"components": {}, "xla": {}}
    for name, (body, args, carry, one_call, *single) in component_programs(
            cfg, params, shape, sampling, seed).items():
        count = per_step_count(cfg, name)
        out["components"][name] = count * _loop_time(body, args, carry, target_s, repeats)
        cost = _cost(one_call, *(single or (args, carry)))
        out["xla"][name] = {k: v * count for k, v in cost.items()}
    body, carry = step_program(model, cfg, shape, sampling, seed)
    out["step_device_s"] = _loop_time(body, params, carry, target_s, repeats)
    out["step_host_s"] = _host_step_time(body, params, carry, repeats)
    return out


def _host_step_time(body: Callable, params: dict, carry, repeats: int) -> float:
    """Median seconds of one step launched from the host per call (the cache donated and fed
    back, as a host-driven decode loop would), waiting for each result."""
    compiled = jax.jit(body, donate_argnums=1).lower(params, carry).compile()
    t0 = time.perf_counter()
    carry = jax.block_until_ready(compiled(params, carry))
    # Many calls for fast steps (launch jitter is the thing measured), few for slow ones.
    calls = int(min(max(0.05 / (time.perf_counter() - t0), repeats), 8 * repeats))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        carry = jax.block_until_ready(compiled(params, carry))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
