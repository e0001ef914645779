"""Decode speed of int8 weights and the int8 KV cache (--quant) against our own float engine on
the same random-init model, with HF transformers (torch fp32 and torch's dynamic int8 Linear, on
the CPU) timed in the same rounds as the peer; merged into benchmarks/results/<date>-<device>.json.

The issue-10 targets: on CPU, int8 weights >= 1.5x our fp32 decode tokens/s at batch 1 on a
llama_1b-shaped model with 4 layers (the defaults here); on a GPU, >= 1.6x bf16 on the whole
llama_1b (`--dtype=bfloat16 --peer=false --num_layers=22 --d_model=2048 --num_heads=32
--num_kv_heads=4 --mlp_dim=5632`: the preset's own sizes).
"""

import statistics

import jax
import numpy as np
from absl import flags

from benchmarks.record import results_path, save_run
from benchmarks.timed_generate import agreement, hf_generate, ours_generate
from infer.engine.load import quantized, with_quant
from infer.timing.timed_model import random_loaded
from model import quant
from model.config import get_preset
from model.flags import define_model_flags, size_overrides
from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS
MODES = ("none", "int8", "int8_kv", "int8+int8_kv")
SHORT = {"float32": "fp32", "bfloat16": "bf16"}  # names the unquantized baseline in the record


def define_flags() -> None:
    """Registered by the entry point only, so importing this module (tests) defines nothing."""
    # The issue-10 CPU target's shape: llama_1b's with 4 layers of width 512.
    sizes = {"num_layers": 4, "d_model": 512, "num_heads": 8, "num_kv_heads": 2,
             "mlp_dim": 1376, "vocab_size": 32000}
    define_model_flags(
        "preset", "sizes", "dtype", preset={"default": "llama_1b"},
        **{name: {"default": value} for name, value in sizes.items()},
        dtype={"default": "float32", "choices": tuple(SHORT),
               "help": "Dtype of the unquantized baseline's params and matmuls (and of the int8 "
                       "models' activations). XLA on CPU gains nothing from bfloat16; on a GPU it "
                       "is the baseline to beat."})
    flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes to measure.")
    flags.DEFINE_integer("prompt_len", 128, "Prompt tokens per row (random ids).")
    flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row (never stopping early).")
    flags.DEFINE_integer("repeats", 5, "Timed rounds (each times every side once; medians).")
    flags.DEFINE_bool("peer", True, "Also time HF transformers (torch fp32 and dynamic int8).")
    flags.DEFINE_integer("seed", 0, "Seed of the weights and prompt tokens.")
    flags.DEFINE_string("out", "", "JSON file to merge this run into (default: "
                        "benchmarks/results/<YYYY-MM-DD>-<device>.json).")


def decode_rate(generate, batch: int, new_tokens: int) -> float:
    """Decode tokens/s of one (prefill + n tokens) run less a (prefill + 1 token) run."""
    t1, tn = generate(1), generate(new_tokens)
    return batch * (new_tokens - 1) / max(tn - t1, 1e-9)


def measure(sides: dict, batch: int, new_tokens: int, repeats: int, base: str = "fp32") -> dict:
    """Every round times each side once, back to back, so load that comes and goes on a shared
    machine reaches all sides alike. Each side's decode tok/s is the median over rounds with its
    min and max; its ratio to our unquantized model (`base` names its dtype) is the ratio of
    those medians, so it follows from the numbers shown beside it, and the per-round ratios are
    kept as its spread."""
    for generate in sides.values():  # warm-up: compiles, allocates caches
        generate(1), generate(new_tokens)
    rounds = [{name: decode_rate(g, batch, new_tokens) for name, g in sides.items()}
              for _ in range(repeats)]
    out = {}
    for name in sides:
        rates = [r[name] for r in rounds]
        out[name] = {"decode_tokens_per_s": statistics.median(rates),
                     "decode_tokens_per_s_min": min(rates), "decode_tokens_per_s_max": max(rates)}
    for name in sides:
        out[name][f"ratio_to_ours_{base}"] = (out[name]["decode_tokens_per_s"]
                                              / out["ours none"]["decode_tokens_per_s"])
        out[name]["ratio_per_round"] = [r[name] / r["ours none"] for r in rounds]
    if "hf fp32" in sides and "hf int8" in sides:
        out["hf int8"]["ratio_to_hf_fp32"] = (out["hf int8"]["decode_tokens_per_s"]
                                              / out["hf fp32"]["decode_tokens_per_s"])
    return out


def main(argv: list[str]) -> None:
    del argv  # run_command refuses positional arguments
    out = results_path(FLAGS.out)
    if jax.device_count() != 1:
        raise UserError("this benchmark compares one device with one torch process; run it "
                        "without forced host device counts")
    sizes = size_overrides()
    baseline = SHORT[FLAGS.dtype]
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    cfg = get_preset(FLAGS.preset).replace(dtype=FLAGS.dtype, param_dtype=FLAGS.dtype, **sizes)
    cfg = cfg.replace(max_len=max(cfg.max_len, FLAGS.prompt_len + FLAGS.new_tokens))
    base = random_loaded(cfg, "", FLAGS.seed)
    models = {mode: quantized(base, with_quant(cfg, mode)) for mode in MODES}
    memory = {mode: quant.param_bytes(m.params) for mode, m in models.items()}
    results, peers = {}, {}
    for batch in batch_sizes:
        tokens = np.random.default_rng(FLAGS.seed).integers(
            0, cfg.vocab_size, (batch, FLAGS.prompt_len), dtype=np.int32)
        sides = {f"ours {mode}": ours_generate(m, tokens) for mode, m in models.items()}
        if FLAGS.peer:
            for name, int8 in (("hf fp32", False), ("hf int8", True)):
                # The peer holds our weights (a float32 baseline's; torch has no bf16 CPU path
                # here), so the fp32 sides' greedy ids can be compared.
                ours_weights = base.params["params"] if cfg.param_dtype == "float32" else None
                generate, peers[name] = hf_generate(cfg, tokens, int8=int8, seed=FLAGS.seed,
                                                    params=ours_weights)
                if generate is not None:
                    sides[name] = generate
        results[str(batch)] = measure(sides, batch, FLAGS.new_tokens, FLAGS.repeats, baseline)
        if "hf fp32" in sides and cfg.param_dtype == "float32":  # both last ran n tokens
            results[str(batch)]["hf fp32"]["outputs_vs_ours_none"] = agreement(
                sides["ours none"].last, sides["hf fp32"].last)
        print(f"batch {batch}:")
        for name, r in results[str(batch)].items():
            print(f"  {name:<18} {r['decode_tokens_per_s']:>10,.1f} tok/s "
                  f"{r[f'ratio_to_ours_{baseline}']:>6.2f}x ours {baseline}")
    run = {"config": {"preset": FLAGS.preset, "overrides": sizes, "dtype": FLAGS.dtype,
                      "prompt_len": FLAGS.prompt_len,
                      "new_tokens": FLAGS.new_tokens, "repeats": FLAGS.repeats,
                      "sampling": "greedy", "model": cfg.to_dict()},
           "param_bytes": memory, "peers": peers, "results": results}
    save_run("quant_decode", run, out)
    print("param bytes: " + ", ".join(f"{m} {b / 2**20:.1f} MiB" for m, b in memory.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.quant_decode")
