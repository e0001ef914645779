"""`python -m infer.bench --checkpoint=PATH | --preset=NAME`: serving speed of the KV-cache engine
per batch size: TTFT, TPOT and inter-token p50/p99, tokens/s, MBU, prefill MFU and peak memory."""

import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from infer.engine.engine import _generate, init_cache
from infer.engine.load import Loaded
from infer.engine.sampling import Sampling, sample
from infer.timing.roofline import component_work, device_peaks
from model import sharding
from model.abstract import abstract_params, shardings_of
from model.config import ModelConfig, get_preset
from model.transformer import build_model, init_inputs
from runtime.command import run_command
from runtime.errors import UserError
from runtime.files import write_json
from runtime.provenance import device_info, versions

SIZE_FLAGS = ("num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_dim", "vocab_size")
FLAGS = flags.FLAGS


def define_flags() -> None:
    """Registered by the entry point only, so importing this module (tests) defines nothing."""
    flags.DEFINE_string("checkpoint", None, "Training workdir or converted model directory.")
    flags.DEFINE_string("preset", None, "Model preset with random (seeded) weights instead of a "
                                        "checkpoint; the size flags override it.")
    for name in SIZE_FLAGS:
        flags.DEFINE_integer(name, None, f"Override the preset's {name} (--preset only).")
    flags.DEFINE_string("batch_sizes", "1,16", "Comma-separated batch sizes (rows) to measure.")
    flags.DEFINE_integer("prompt_len", 128, "Prompt tokens per row (random ids).")
    flags.DEFINE_integer("new_tokens", 256, "Tokens generated per row (no EOS stop).")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the "
                      "model's own; params keep their storage dtype).")
    flags.DEFINE_string("quant", "none", "int8 (weights), int8_kv (KV cache), int8+int8_kv, or "
                                         "none (as saved); a float model is quantized after "
                                         "loading (docs/inference.md).")
    flags.DEFINE_string("mesh", "", "Device mesh, e.g. tensor=2 (default: all devices on data).")
    flags.DEFINE_integer("repeats", 3, "Timed repeats of prefill and end-to-end (median).")
    flags.DEFINE_integer("seed", 0, "Seed of the random weights and prompt tokens.")
    flags.DEFINE_string("json", None, "Also write {device, versions, command, config, results}.")


def parse_batch_sizes(text: str, flag: str = "batch_sizes") -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) <= 0:
        raise UserError(f"--{flag}={text} must be a comma-separated list of positive integers")
    return sizes


def random_loaded(cfg: ModelConfig, mesh_spec: str, seed: int, devices=None) -> Loaded:
    """Random-init params placed by the training rules, so speed can be studied without training."""
    model = build_model(cfg)
    mesh = sharding.make_mesh(mesh_spec, devices)
    dummy = init_inputs(cfg)
    shardings = {"params": shardings_of(abstract_params(cfg, mesh))}
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        params = jax.jit(model.init, out_shardings=shardings)(jax.random.key(seed), *dummy)
    return Loaded(cfg, model, sharding.unbox(params), mesh, None)


def resolve(checkpoint: str | None, preset: str | None, sizes: dict, dtype: str | None,
            total: int, mesh_spec: str, seed: int) -> tuple[Loaded, str]:
    """(the model to measure, a one-line description of where it came from)."""
    if bool(checkpoint) == bool(preset):
        raise UserError("give exactly one of --checkpoint=PATH or --preset=NAME")
    if checkpoint:
        from infer.engine.load import load, read_config

        if sizes:
            raise UserError(f"size flags {sorted(sizes)} only apply to --preset; a checkpoint's "
                            "shape is fixed")
        if total > (max_len := read_config(checkpoint).max_len):
            raise UserError(f"--prompt_len + --new_tokens = {total} exceeds the checkpoint's "
                            f"context of {max_len}; shorten one of them")
        loaded = load(checkpoint, mesh_spec)
        if dtype and dtype != loaded.config.dtype:
            cfg = loaded.config.replace(dtype=dtype)
            loaded = Loaded(cfg, build_model(cfg), loaded.params, loaded.mesh, None)
        return loaded, f"checkpoint {checkpoint}"
    cfg = get_preset(preset).replace(dtype=dtype, **sizes)
    # Random weights have no trained context length, so the position table may grow to fit.
    cfg = cfg.replace(max_len=max(cfg.max_len, total))
    return random_loaded(cfg, mesh_spec, seed), f"preset {preset}{f' {sizes}' if sizes else ''} (random init)"


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


def bench_batch(loaded: Loaded, batch: int, prompt_len: int, new_tokens: int, repeats: int,
                seed: int) -> dict:
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
        latencies = []
        for _ in range(new_tokens):
            t0 = time.perf_counter()
            state = jax.block_until_ready(compiled(params, *state))
            latencies.append(time.perf_counter() - t0)
        rng = jax.random.key(seed)
        end_to_end = _median_time(lambda: _generate(
            model, params, tokens, segments, rng, max_new_tokens=new_tokens, sampling=greedy,
            eos_id=-1)[0], repeats)

    tpot = statistics.fmean(latencies)
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
    decode_s = max(end_to_end - ttft, 1e-9)
    return {
        "batch_size": batch, "ttft_s": ttft, "tpot_s": tpot,
        "itl_p50_s": float(np.percentile(latencies, 50)),
        "itl_p99_s": float(np.percentile(latencies, 99)),
        "end_to_end_s": end_to_end,
        "tokens_per_s": batch * new_tokens / decode_s,
        "overall_tokens_per_s": batch * new_tokens / end_to_end,
        "step_tokens_per_s": batch / tpot,
        "mbu": step_bytes / tpot / peaks.bandwidth,
        "bytes_per_step": {"total": int(step_bytes), "kv_cache_at_mean_context": int(kv_bytes)},
        "prefill_mfu": prefill_flops(cfg, batch, prompt_len) / ttft / peaks.flops,
        "memory": memory,
    }


def table(results: list[dict], title: str) -> str:
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


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
    from infer.engine.load import quantized, with_quant

    with_quant(get_preset("tiny"), FLAGS.quant)  # a bad --quant is refused before any work
    for name in ("prompt_len", "new_tokens", "repeats"):
        if FLAGS[name].value <= 0:
            raise UserError(f"--{name} must be a positive integer, got {FLAGS[name].value}")
    batch_sizes = parse_batch_sizes(FLAGS.batch_sizes)
    sizes = {n: FLAGS[n].value for n in SIZE_FLAGS if FLAGS[n].value is not None}
    if FLAGS.json and not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.json))):
        raise UserError(f"--json={FLAGS.json}: its directory does not exist")
    loaded, source = resolve(FLAGS.checkpoint, FLAGS.preset, sizes, FLAGS.dtype,
                             FLAGS.prompt_len + FLAGS.new_tokens, FLAGS.mesh, FLAGS.seed)
    loaded = quantized(loaded, with_quant(loaded.config, FLAGS.quant, FLAGS.checkpoint or ""))
    for batch in batch_sizes:
        if batch % sharding.batch_shards(loaded.mesh):
            raise UserError(f"batch size {batch} must be divisible by the data-parallel size "
                            f"{sharding.batch_shards(loaded.mesh)}; set --mesh (e.g. tensor=N)")
    results = [bench_batch(loaded, b, FLAGS.prompt_len, FLAGS.new_tokens, FLAGS.repeats,
                           FLAGS.seed) for b in batch_sizes]
    device = jax.devices()[0]
    peaks = device_peaks(loaded.config.dtype)
    cfg = loaded.config
    name = device_info().get("cpu_model", device.device_kind)
    title = (f"device {name} ({device.platform} x{jax.device_count()}), {source}, "
             f"{cfg.num_params() / 1e6:.2f}M params, {cfg.dtype}, prompt {FLAGS.prompt_len} + "
             f"{FLAGS.new_tokens} new, mesh {dict(loaded.mesh.shape)}; MBU vs {peaks.bandwidth / 1e9:.0f} GB/s "
             f"({peaks.bandwidth_source}), MFU vs {peaks.flops / 1e12:.2f} TFLOP/s "
             f"({peaks.flops_source})")
    print(table(results, title))
    if FLAGS.json:
        record = {"device": {**device_info(), "bandwidth_bytes_per_s": peaks.bandwidth,
                             "bandwidth_source": peaks.bandwidth_source,
                             "peak_flops": peaks.flops, "peak_flops_source": peaks.flops_source},
                  "versions": versions(),
                  "command": shlex.join(["python", "-m", "infer.bench", *sys.argv[1:]]),
                  "config": {"source": source, "prompt_len": FLAGS.prompt_len,
                             "new_tokens": FLAGS.new_tokens, "repeats": FLAGS.repeats,
                             "quant": FLAGS.quant, "mesh": dict(loaded.mesh.shape),
                             "model": cfg.to_dict()},
                  "results": results}
        write_json(FLAGS.json, record)
        print(f"wrote {FLAGS.json}")


if __name__ == "__main__":
    run_command(main, define_flags, "infer.bench")
