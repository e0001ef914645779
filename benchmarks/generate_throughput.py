"""Greedy generation speed of meshlm's KV-cache engine against HF transformers LlamaForCausalLM
(static cache) of the same random-init shape, merged into benchmarks/results/<date>-<device>.json."""

import jax
import numpy as np
from absl import flags

from benchmarks.record import results_path, save_run
from benchmarks.timed_generate import agreement, hf_generate, ours_generate, paired
from infer.timing.latency import bench_batch
from infer.timing.timed_model import random_loaded
from model.config import get_preset
from model.flags import define_model_flags, size_overrides
from runtime.command import run_command
from runtime.errors import UserError
from runtime.provenance import device_info

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Registered by the entry point only, so importing this module (tests) defines nothing."""
    define_model_flags("preset", "sizes", preset={
        "default": "llama_1b", "help": "Llama-shaped model preset; size flags override it."})
    flags.DEFINE_integer("batch_size", 1, "Rows generated together.")
    flags.DEFINE_integer("prompt_len", 128, "Prompt tokens per row (random ids).")
    flags.DEFINE_integer("new_tokens", 128, "Tokens generated per row (never stopping early).")
    flags.DEFINE_integer("repeats", 3, "Timed repeats per side (median).")
    flags.DEFINE_integer("seed", 0, "Seed of the weights and prompt tokens.")
    flags.DEFINE_string("out", "", "JSON file to merge this run into (default: "
                        "benchmarks/results/<YYYY-MM-DD>-<device>.json).")


def main(argv: list[str]) -> None:
    del argv  # run_command refuses positional arguments
    out = results_path(FLAGS.out)
    for name in ("batch_size", "prompt_len", "new_tokens", "repeats"):
        if FLAGS[name].value <= 0:
            raise UserError(f"--{name} must be a positive integer, got {FLAGS[name].value}")
    sizes = size_overrides()
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
    hf, about = hf_generate(cfg, tokens, seed=FLAGS.seed, params=loaded.params["params"])
    if hf is None:
        ours, peer, ratios = detail, {"skipped": about}, {}
    else:
        ours_side = ours_generate(loaded, tokens)
        sides = paired(ours_side, hf, FLAGS.batch_size, FLAGS.new_tokens, FLAGS.repeats)
        ours, peer, ratios = {**detail, **sides["ours"]}, {**sides["hf"], "framework": about}, \
            sides["ratio"]
        ours["outputs"] = agreement(ours_side.last, hf.last)
        first = ours["outputs"]["common_prefix_min"]
        if first < min(FLAGS.new_tokens, 8):  # not the same model: a ratio would mean nothing
            raise UserError(f"our greedy tokens and HF's differ from token {first} on, from the "
                            "same weights and prompt; no speed ratio is reported")
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
    print(f"ours TPOT {1e3 * ours['tpot_s']:.2f} ms (on-device loop); one step launched from "
          f"the host {1e3 * ours['host_step_s']:.2f} ms ({ours['step_tokens_per_s']:,.1f} tok/s)")
    agree = ours.get("outputs")
    if agree:
        print(f"greedy ids equal to HF's: {agree['equal']} (common prefix "
              f"{agree['common_prefix_min']} of {agree['tokens']} tokens, every row)")
    for name in ("decode_tokens_per_s", "overall_tokens_per_s"):
        if name in ratios:
            pairs = ", ".join(f"{r:.2f}" for r in ratios[name.split("_")[0] + "_per_pair"])
            print(f"ratio ours/hf {name}: {ratios[name]:.2f}x (of the medians; per round {pairs})")
    save_run("generate_throughput", run, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.generate_throughput")
