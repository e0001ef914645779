"""`python -m infer.compare --checkpoint=PATH --out=DIR`: the ways to make a decoder answer faster
(int8 weights, int8 KV cache, pruning, distillation, speculative decoding) side by side with the
model as saved: held-out quality, size and serving speed, one row each (measured by
infer/compress/comparison.py; compare_report.py writes the table and the plot).
"""

import shlex
import sys

from absl import flags

from infer.compress.compare_report import write_outputs
from infer.compress.comparison import Request, compare
from infer.timing.latency import parse_batch_sizes
from model.flags import define_model_flags
from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    define_model_flags("checkpoint", "mesh", checkpoint={
        "help": "Training workdir of the decoder to compare (its config.json must record the "
                "training flags)."})
    flags.DEFINE_string("out", None, "Directory for compare.json, compare.md, compare.png (and "
                                     "the pruned model and student made here).")
    flags.DEFINE_string("pruned", None, "An existing pruned model to use; default: prune "
                                        "--checkpoint into OUT/pruned.")
    flags.DEFINE_string("student", None, "An existing distilled student to use; default: "
                                         "distill one into OUT/student.")
    flags.DEFINE_float("prune_heads", 0.5, "Fraction in [0, 1) of query heads removed when "
                                           "pruning here.")
    flags.DEFINE_float("prune_mlp", 0.5, "Fraction in [0, 1) of MLP channels removed when "
                                         "pruning here.")
    flags.DEFINE_integer("finetune_steps", 50, "Fine-tune steps after pruning here (0: none).")
    flags.DEFINE_integer("distill_steps", 200, "Training steps of the student distilled here "
                                               "(half the teacher's layers, its other flags).")
    flags.DEFINE_string("batch_sizes", "1,16", "Comma-separated batch sizes to time; must "
                                               "include 1 (speculative decoding, the plot).")
    flags.DEFINE_integer("prompt_len", 64, "Prompt tokens per row.")
    flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row (no EOS stop).")
    flags.DEFINE_integer("repeats", 3, "Timed repeats (median).")
    flags.DEFINE_integer("draft_tokens", 4, "Speculative: tokens the draft proposes per round.")
    flags.DEFINE_integer("eval_batches", 0, "Held-out batches per evaluation; 0: the source "
                                            "run's --eval_batches.")
    flags.DEFINE_integer("seed", 0, "Seed of the timing prompts.")


def main(argv: list[str]) -> None:
    del argv  # run_command refuses positional arguments
    if not FLAGS.checkpoint:
        raise UserError("--checkpoint=PATH is required: the training workdir to compare")
    if not FLAGS.out:
        raise UserError("--out=DIR is required: the directory for compare.json, .md and .png")
    sizes = sorted(set(parse_batch_sizes(FLAGS.batch_sizes)))
    request = Request(FLAGS.checkpoint, FLAGS.out, FLAGS.pruned, FLAGS.student, FLAGS.prune_heads,
                      FLAGS.prune_mlp, FLAGS.finetune_steps, FLAGS.distill_steps, tuple(sizes),
                      FLAGS.prompt_len, FLAGS.new_tokens, FLAGS.repeats, FLAGS.draft_tokens,
                      FLAGS.eval_batches, FLAGS.mesh, FLAGS.seed)
    record = compare(request)
    command = shlex.join(["python", "-m", "infer.compare", *sys.argv[1:]])
    print(write_outputs(request.out, record, command))


if __name__ == "__main__":
    run_command(main, define_flags, "infer.compare")
