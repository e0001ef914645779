"""Serving speed of one batch through the KV-cache engine: TTFT, TPOT and inter-token p50/p99,
tokens/s, MBU, prefill MFU and peak memory (`infer.bench`, `infer.compare` and the benchmarks)."""

import statistics
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from infer.engine.engine import STREAM_CHUNK, decode_chunks, generate_padded, init_cache
from infer.engine.load import Loaded
from infer.engine.sampling import Sampling, sample
from infer.timing.roofline import component_work, device_peaks
from model import sharding
from model.config import ModelConfig
from runtime.errors import UserError


def parse_batch_sizes(text: str, flag: str = "batch_sizes") -> list[int]:
    """`--{flag}=1,16` as [1, 16]; anything but positive integers is refused."""
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0:
        raise UserError(f"--{flag}={text} must be a comma-separated list of positive integers")
    return sizes


def prefill_flops(cfg: ModelConfig, batch: int, prompt_len: int) -> float:
    """2N per prompt token (N: the layers' params), the output projection once per row (only the
    last position's logits are computed), and causal attention scores and values,
    4 * layers * heads * head_dim * prompt_len^2 / 2 per row."""
    n = cfg.num_params(include_embeddings=False)
    attention = 4 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * prompt_len ** 2 / 2
    return (2 * n * prompt_len + 2 * cfg.d_model * cfg.vocab_size + attention) * batch


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of `fn` (which returns arrays to wait on); one untimed call first compiles."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _once(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def bench_batch(loaded: Loaded, batch: int, prompt_len: int, new_tokens: int, repeats: int,
                seed: int) -> dict:
    """The latency record of `batch` rows of random prompt ids, greedy, never stopping early.
    TPOT and tokens/s come from the engine's on-device loop (n-token run less 1-token run);
    inter-token p50/p99 from the streaming loop's chunks; `host_step_s` is one decode step
    launched from the host, dispatch included (for comparison only)."""
    if new_tokens < 2:
        raise UserError(f"--new_tokens must be >= 2 (TPOT is (n tokens - 1 token) / (n - 1)), "
                        f"got {new_tokens}")
    cfg, model, params = loaded.config, loaded.model, loaded.params
    total = prompt_len + new_tokens
    greedy = Sampling()
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, prompt_len),
                                                  dtype=np.int32)
    segments = np.ones_like(tokens)
    positions = np.broadcast_to(np.arange(prompt_len, dtype=np.int32), tokens.shape)
    kv_segments = np.zeros((batch, total), np.int32)
    kv_segments[:, :prompt_len] = 1

    @jax.jit
    def prefill(params, tokens, positions, segments, kv_segments):
        # The cache is allocated inside, as the engine does, so TTFT includes it.
        cache = init_cache(cfg, batch, total)
        logits, cache = model.apply(params, tokens, positions, segments, cache, 0, kv_segments,
                                    last_only=True)
        return sample(logits[:, -1], jax.random.key(0), greedy), cache

    def step(params, token, position, cache, slot, kv_segments):
        # Position and slot advance on device so the timed host loop launches nothing else.
        kv_segments = kv_segments.at[:, slot].set(1)
        logits, cache = model.apply(params, token[:, None], position[:, None],
                                    jnp.ones((batch, 1), jnp.int32), cache, slot, kv_segments)
        token = sample(logits[:, -1], jax.random.key(0), greedy)
        return token, position + 1, cache, slot + 1, kv_segments

    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        prefill_args = (params, tokens, positions, segments, kv_segments)
        ttft = _median_time(lambda: prefill(*prefill_args), repeats)
        token, cache = prefill(*prefill_args)
        position = jnp.full((batch,), prompt_len, jnp.int32)
        state = (token, position, cache, jnp.int32(prompt_len), jnp.asarray(kv_segments))
        compiled = jax.jit(step, donate_argnums=(3, 5)).lower(params, *state).compile()
        # One untimed step: the first call of a compiled program still pays one-off setup. It
        # writes slot prompt_len, which the timed loop then overwrites (same shapes, same work).
        warm = jax.block_until_ready(compiled(params, *state))
        state = (token, position, warm[2], jnp.int32(prompt_len), warm[4])
        host_steps = []
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            state = jax.block_until_ready(compiled(params, *state))
            host_steps.append(time.perf_counter() - t0)
        rng = jax.random.key(seed)

        def loop(n):  # the engine's one program: prefill, then n decode steps on device
            return lambda: generate_padded(model, params, tokens, segments, rng,
                                           max_new_tokens=n, sampling=greedy, eos_id=-1)[0]

        end_to_end = _median_time(loop(new_tokens), repeats)
        # TPOT from the on-device loop: (n tokens - 1 token) / (n - 1), per repeat, median.
        jax.block_until_ready(loop(1)())
        per_token = []
        for _ in range(repeats):
            t1, tn = (_once(loop(n)) for n in (1, new_tokens))
            per_token.append(max(tn - t1, 1e-9) / (new_tokens - 1))
        # Inter-token latency as a stream sees it: infer.generate's loop hands tokens over
        # every STREAM_CHUNK on-device steps; each chunk's time / its tokens is one sample.
        latencies = []
        for rep in range(repeats + 1):  # pass 0 compiles the chunk programs; it is not kept
            t0 = time.perf_counter()
            for first, ids, _ in decode_chunks(loaded, tokens, segments, rng,
                                               max_new_tokens=new_tokens, sampling=greedy,
                                               eos_id=-1, chunk=STREAM_CHUNK):
                now = time.perf_counter()
                if first > 0 and rep > 0:
                    latencies += [(now - t0) / ids.shape[1]] * ids.shape[1]
                t0 = now

    tpot = statistics.median(per_token)
    # Bytes a decode step must move at the mean context: each weight once (of the embedding
    # table only the rows looked up), the KV cache, activations (infer/timing/roofline.py formulas).
    mean_context = round(prompt_len + (new_tokens - 1) / 2)
    work = component_work(cfg, batch, 1, mean_context)
    step_bytes = sum(w.bytes for w in work.values())
    kv_bytes = 2 * cfg.num_layers * batch * mean_context * cfg.num_kv_heads * \
        cfg.resolved_head_dim * (1 if cfg.int8_kv else jnp.dtype(cfg.dtype).itemsize)
    device = jax.devices()[0]
    peaks = device_peaks(cfg.dtype)
    memory_stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in memory_stats:
        memory = {"peak_bytes": memory_stats["peak_bytes_in_use"], "source": "device peak_bytes_in_use"}
    else:
        analysis = compiled.memory_analysis()
        memory = {"peak_bytes": analysis.argument_size_in_bytes + analysis.temp_size_in_bytes,
                  "source": "decode step memory_analysis (argument + temp)"}
    return {
        "batch_size": batch, "ttft_s": ttft, "tpot_s": tpot,
        "itl_p50_s": float(np.percentile(latencies, 50)),
        "itl_p99_s": float(np.percentile(latencies, 99)),
        "itl_source": f"on-device loop, {STREAM_CHUNK} steps per call (as infer.generate streams)",
        "end_to_end_s": end_to_end,
        "tokens_per_s": batch / tpot,
        "overall_tokens_per_s": batch * new_tokens / end_to_end,
        "host_step_s": statistics.fmean(host_steps),
        "step_tokens_per_s": batch / statistics.fmean(host_steps),
        "mbu": step_bytes / tpot / peaks.bandwidth,
        "bytes_per_step": {"total": int(step_bytes), "kv_cache_at_mean_context": int(kv_bytes)},
        "prefill_mfu": prefill_flops(cfg, batch, prompt_len) / ttft / peaks.flops,
        "memory": memory,
    }


def table(results: list[dict], title: str) -> str:
    """`bench_batch` records as the console table, one row per batch size under `title`."""
    header = (f"{'batch':>5} {'TTFT ms':>9} {'TPOT ms':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'tok/s':>10} {'all tok/s':>10} {'MBU':>7} {'MFU':>7} {'mem MiB':>8}")
    lines = [title, header]
    for r in results:
        lines.append(f"{r['batch_size']:>5} {1e3 * r['ttft_s']:>9.2f} {1e3 * r['tpot_s']:>9.2f} "
                     f"{1e3 * r['itl_p50_s']:>8.2f} {1e3 * r['itl_p99_s']:>8.2f} "
                     f"{r['tokens_per_s']:>10,.1f} {r['overall_tokens_per_s']:>10,.1f} "
                     f"{100 * r['mbu']:>6.2f}% {100 * r['prefill_mfu']:>6.2f}% "
                     f"{r['memory']['peak_bytes'] / 2**20:>8.1f}")
    return "\n".join(lines)
