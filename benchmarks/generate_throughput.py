"""Greedy generation speed of meshlm's KV-cache engine against HF transformers LlamaForCausalLM
(static cache) of the same random-init shape, merged into benchmarks/results/<date>-<device>.json."""

import os
import statistics
import time

import flax.linen as nn
import jax
import numpy as np
from absl import flags

from benchmarks.record import device_info, results_path, save_run
from infer.bench import SIZE_FLAGS, bench_batch, random_loaded
from infer.engine.engine import _generate
from infer.engine.sampling import Sampling
from model import sharding
from model.config import ModelConfig, get_preset
from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Registered by the entry point only, so importing this module (tests) defines nothing."""
    flags.DEFINE_string("preset", "llama_1b", "Llama-shaped model preset; size flags override it.")
    for name in SIZE_FLAGS:
        flags.DEFINE_integer(name, None, f"Override the preset's {name} (default: the preset's).")
    flags.DEFINE_integer("batch_size", 1, "Rows generated together.")
    flags.DEFINE_integer("prompt_len", 128, "Prompt tokens per row (random ids).")
    flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row (never stopping early).")
    flags.DEFINE_integer("repeats", 3, "Timed repeats per side (median).")
    flags.DEFINE_integer("seed", 0, "Seed of the weights and prompt tokens.")
    flags.DEFINE_string("out", "", "JSON file to merge this run into (default: "
                        "benchmarks/results/<YYYY-MM-DD>-<device>.json).")


def llama_mismatch(cfg: ModelConfig) -> str:
    """Why HF Llama cannot have this config's shape ('' when it can)."""
    wanted = {"norm": "rmsnorm", "activation": "swiglu", "positions": "rope", "use_bias": False,
              "tie_embeddings": False}
    return ", ".join(f"{k}={getattr(cfg, k)}" for k, v in wanted.items() if getattr(cfg, k) != v)


def hf_generate(cfg: ModelConfig, tokens: np.ndarray, int8: bool = False):
    """(generate(n) -> seconds of LlamaForCausalLM.generate, greedy, static cache, fp32, all
    cores; a description) or (None, why it was skipped). `int8`: torch's dynamic int8
    quantization of every Linear (int8 weights, activations quantized per call)."""
    if why := llama_mismatch(cfg):
        return None, f"HF Llama peer needs a Llama-shaped config; this one has {why}"
    try:
        import torch
        import transformers
    except ImportError as e:
        return None, f"torch/transformers not importable ({e})"
    torch.manual_seed(FLAGS.seed)
    torch.set_num_threads(os.cpu_count() or 1)
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.resolved_head_dim,
        max_position_embeddings=cfg.max_len, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        bos_token_id=0, eos_token_id=None, pad_token_id=0)
    model = transformers.LlamaForCausalLM(hf_cfg).eval()
    if int8:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    inputs = torch.from_numpy(tokens.astype(np.int64))
    mask = torch.ones_like(inputs)

    def generate(n: int) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=inputs, attention_mask=mask, max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False,
                                 cache_implementation="static")
        elapsed = time.perf_counter() - t0
        assert out.shape[1] == tokens.shape[1] + n, "HF generate stopped early"
        return elapsed

    return generate, (f"transformers LlamaForCausalLM.generate (static cache, "
                      f"{hf_cfg._attn_implementation} attention), greedy, torch "
                      f"{'dynamic int8 Linear' if int8 else 'fp32'} on cpu, "
                      f"{torch.get_num_threads()} threads")


def ours_generate(loaded, tokens: np.ndarray):
    """generate(n) -> seconds of the engine's compiled prefill + on-device decode loop."""
    segments = np.ones_like(tokens)

    def generate(n: int) -> float:
        t0 = time.perf_counter()
        with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
            out, _ = _generate(loaded.model, loaded.params, tokens, segments, jax.random.key(0),
                               max_new_tokens=n, sampling=Sampling(), eos_id=-1)
        jax.block_until_ready(out)
        return time.perf_counter() - t0

    return generate


def paired(ours, hf, batch: int, new_tokens: int, repeats: int) -> dict:
    """Each repeat times ours then HF back to back, so load that comes and goes on a shared
    machine hits both sides of a pair alike; the ratios are the medians over pairs."""
    for fn in (ours, hf):  # warm-up: compiles ours, allocates HF's static cache
        fn(1), fn(new_tokens)
    pairs = [(ours(1), hf(1), ours(new_tokens), hf(new_tokens)) for _ in range(repeats)]
    sides = {}
    for name, (ttft, total) in (("ours", (0, 2)), ("hf", (1, 3))):
        t1 = statistics.median(p[ttft] for p in pairs)
        tn = statistics.median(p[total] for p in pairs)
        sides[name] = {"ttft_s": t1, "end_to_end_s": tn,
                       "tokens_per_s": batch * (new_tokens - 1) / max(tn - t1, 1e-9),
                       "overall_tokens_per_s": batch * new_tokens / tn}
    decode = [(p[3] - p[1]) / max(p[2] - p[0], 1e-9) for p in pairs]
    overall = [p[3] / p[2] for p in pairs]
    sides["ratio"] = {"decode_tokens_per_s": statistics.median(decode),
                      "overall_tokens_per_s": statistics.median(overall),
                      "decode_per_pair": decode, "overall_per_pair": overall}
    return sides


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; flags are written --name=value")
    out = results_path(FLAGS.out)
    for name in ("batch_size", "prompt_len", "new_tokens", "repeats"):
        if FLAGS[name].value <= 0:
            raise UserError(f"--{name} must be a positive integer, got {FLAGS[name].value}")
    sizes = {n: FLAGS[n].value for n in SIZE_FLAGS if FLAGS[n].value is not None}
    total = FLAGS.prompt_len + FLAGS.new_tokens
    cfg = get_preset(FLAGS.preset).replace(dtype="float32", **sizes)
    cfg = cfg.replace(max_len=max(cfg.max_len, total))
    if jax.device_count() != 1:
        raise UserError("this benchmark compares one device with one torch process; run it "
                        "without forced host device counts")
    loaded = random_loaded(cfg, "", FLAGS.seed)
    # Our latency profile (TPOT, p50/p99, MBU...) first, then the paired end-to-end race.
    detail = bench_batch(loaded, FLAGS.batch_size, FLAGS.prompt_len, FLAGS.new_tokens,
                         FLAGS.repeats, FLAGS.seed)
    tokens = np.random.default_rng(FLAGS.seed).integers(
        0, cfg.vocab_size, (FLAGS.batch_size, FLAGS.prompt_len), dtype=np.int32)
    hf, about = hf_generate(cfg, tokens)
    if hf is None:
        ours, peer, ratios = detail, {"skipped": about}, {}
    else:
        sides = paired(ours_generate(loaded, tokens), hf, FLAGS.batch_size, FLAGS.new_tokens,
                       FLAGS.repeats)
        ours, peer, ratios = {**detail, **sides["ours"]}, {**sides["hf"], "framework": about}, \
            sides["ratio"]
    info = device_info()
    run = {"config": {"preset": FLAGS.preset, "overrides": sizes, "batch_size": FLAGS.batch_size,
                      "prompt_len": FLAGS.prompt_len, "new_tokens": FLAGS.new_tokens,
                      "repeats": FLAGS.repeats, "sampling": "greedy", "model": cfg.to_dict()},
           "ours": ours, "peer": peer, "ratio": ratios}
    print(f"{FLAGS.preset} {sizes}, batch {FLAGS.batch_size}, prompt {FLAGS.prompt_len} + "
          f"{FLAGS.new_tokens} new, greedy fp32, {info.get('cpu_model', info['device_kind'])}")
    print(f"{'':<5} {'TTFT ms':>9} {'e2e s':>8} {'decode tok/s':>13} {'overall tok/s':>14}")
    for name, r in (("ours", ours), ("hf", peer)):
        if "skipped" in r:
            print(f"{name:<5} skipped: {r['skipped']}")
            continue
        print(f"{name:<5} {1e3 * r['ttft_s']:>9.2f} {r['end_to_end_s']:>8.3f} "
              f"{r['tokens_per_s']:>13,.1f} {r['overall_tokens_per_s']:>14,.1f}")
    print(f"ours per-step (TPOT {1e3 * ours['tpot_s']:.2f} ms, host loop): "
          f"{ours['step_tokens_per_s']:,.1f} tok/s")
    for name in ("decode_tokens_per_s", "overall_tokens_per_s"):
        if name in ratios:
            pairs = ", ".join(f"{r:.2f}" for r in ratios[name.split("_")[0] + "_per_pair"])
            print(f"ratio ours/hf {name}: {ratios[name]:.2f}x (median of pairs {pairs})")
    save_run("generate_throughput", run, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.generate_throughput")
