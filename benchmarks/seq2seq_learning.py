"""Does an encoder-decoder learn a task that depends on its source? Small encoder-decoders (and
a decoder-only model of about their size, on the same pairs) train on a synthetic reverse-and-
rename task (benchmarks/reverse_task.py) within a CPU budget; per variant: held-out loss with
true and shuffled sources, greedy exact match and BLEU, attention-logit scales and per-layer
gradient norms at a few steps. Merged into benchmarks/results/<date>-<device>.json."""

from absl import flags

from benchmarks import learning_run as lr
from benchmarks import reverse_task as rt
from benchmarks.record import results_path, save_run
from model.flags import define_model_flags
from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS
SIZES = ("num_layers", "d_model", "num_heads", "mlp_dim")
# Both inits at two learning rates for both encoder-decoder presets, then decoder-only Llama
# models of about the same parameter count (7 layers ~ 3 encoder + 3 decoder layers at the
# default sizes; 5 layers ~ 2 + 2 at --num_layers=2 --d_model=64 --mlp_dim=256).
DEFAULT_VARIANTS = [
    "tiny_t5@3e-3+param_init=normal", "tiny_t5@1e-3+param_init=normal",
    "tiny_t5@3e-3+param_init=fan_in", "tiny_t5@1e-3+param_init=fan_in",
    "tiny_transformer@3e-3+param_init=normal", "tiny_transformer@1e-3+param_init=normal",
    "tiny_transformer@3e-3+param_init=fan_in", "tiny_transformer@1e-3+param_init=fan_in",
    "tiny_llama@3e-3+num_layers=7+num_kv_heads=4", "tiny_llama@1e-3+num_layers=7+num_kv_heads=4",
]


def define_flags() -> None:
    define_model_flags(*SIZES, num_layers={"default": 3, "help": "Layers per stack (an "
                                           "encoder-decoder has this many in each), unless a "
                                           "variant sets num_layers."},
                       d_model={"default": 128}, num_heads={"default": 4}, mlp_dim={"default": 384})
    flags.DEFINE_list("variants", DEFAULT_VARIANTS, "Models to train, each "
                      "preset@learning_rate[+field=value...] (ModelConfig fields, e.g. "
                      "+param_init=normal or +post_norm=false).")
    flags.DEFINE_integer("steps", 1000, "Optimizer steps per variant.")
    flags.DEFINE_integer("batch_size", 32, "Pairs per step.")
    flags.DEFINE_integer("warmup_steps", 60, "Linear warmup steps before the cosine decay.")
    flags.DEFINE_integer("num_pairs", 8000, "Distinct pairs made, held-out ones included.")
    flags.DEFINE_integer("eval_pairs", 256, "Pairs held out for evaluation and greedy decoding.")
    flags.DEFINE_integer("symbols", 32, "Alphabet size of the sources and targets.")
    flags.DEFINE_integer("min_len", 4, "Shortest source, in symbols.")
    flags.DEFINE_integer("max_len", 12, "Longest source, in symbols.")
    flags.DEFINE_list("probe_steps", ["0", "50", "300"], "Steps at which attention-logit "
                      "scales and per-layer gradient norms are measured (on one fixed batch).")
    flags.DEFINE_integer("seed", 0, "Seed of the pairs, the init and the batch order.")
    flags.DEFINE_string("out", "", "JSON file to merge this run into (default: "
                        "benchmarks/results/<YYYY-MM-DD>-<device>.json).")


def table(runs: list[dict], baseline: dict) -> str:
    header = (f"{'variant':<46} {'params':>8} {'loss':>6} {'shuf':>6} {'gap':>6} "
              f"{'exact':>6} {'bleu':>6} {'s':>5}")
    lines = [header]
    for r in runs:
        lines.append(f"{r['variant']:<46} {r['params'] / 1e6:>7.2f}M {r['eval_loss']:>6.3f} "
                     f"{r['shuffled_source_loss']:>6.3f} {r['source_gap']:>6.3f} "
                     f"{r['exact_match']:>6.3f} {r['bleu']:>6.1f} {r['train_s']:>5.0f}")
    lines.append(f"source-blind: {baseline['uniform_symbol_loss']:.3f} nats/symbol; constant "
                 f"answer exact {baseline['constant_exact_match']:.3f}, BLEU "
                 f"{baseline['constant_bleu']:.1f}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    out = results_path(FLAGS.out)
    if not 1 <= FLAGS.min_len <= FLAGS.max_len or FLAGS.symbols < 2:
        raise UserError("need 1 <= --min_len <= --max_len and --symbols >= 2")
    if not 0 < FLAGS.eval_pairs < FLAGS.num_pairs or FLAGS.num_pairs > FLAGS.symbols ** FLAGS.max_len:
        raise UserError("need 0 < --eval_pairs < --num_pairs <= the number of distinct sources")
    variants = [lr.parse_variant(v) for v in FLAGS.variants]
    sizes = {name: FLAGS[name].value for name in SIZES}
    task = rt.reverse_task(FLAGS.num_pairs, FLAGS.eval_pairs, FLAGS.symbols, FLAGS.min_len,
                           FLAGS.max_len, FLAGS.seed)
    probe_steps = tuple(int(s) for s in FLAGS.probe_steps)
    baseline = lr.source_blind_baseline(task)
    runs = []
    for variant in variants:
        cfg = lr.model_config(variant, sizes, task)
        run = lr.train_variant(variant, cfg, task, steps=FLAGS.steps, batch_size=FLAGS.batch_size,
                               warmup_steps=FLAGS.warmup_steps, seed=FLAGS.seed,
                               probe_steps=probe_steps)
        runs.append(run)
        print(table([run], baseline).splitlines()[1], flush=True)
    print(table(runs, baseline))
    config = {"sizes": sizes, "steps": FLAGS.steps, "batch_size": FLAGS.batch_size,
              "warmup_steps": FLAGS.warmup_steps, "schedule": "cosine",
              "task": {"kind": "reverse and rename", "num_pairs": FLAGS.num_pairs,
                       "eval_pairs": FLAGS.eval_pairs, "symbols": FLAGS.symbols,
                       "min_len": FLAGS.min_len, "max_len": FLAGS.max_len},
              "probe_steps": list(probe_steps), "seed": FLAGS.seed}
    save_run("seq2seq_learning", {"config": config, "source_blind": baseline, "runs": runs}, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.seq2seq_learning")
