"""`python -m infer.prune --checkpoint=PATH --heads=0.25 --mlp=0.5 --out=DIR`: structured pruning
of attention heads and MLP channels into a smaller dense model, optionally healed by fine-tuning.

OUT is a model directory (config.json with a "pruned" record, checkpoints/0, the tokenizer) that
`--checkpoint` and `python -m train --init_from` accept; OUT/prune.json holds the numbers. Held-out
loss is measured on the source run's eval split, from the flags its config.json recorded. With
--finetune_steps=N the training loop continues from OUT in the workdir OUT/finetune (its own run:
config, flags.txt, checkpoints), and that workdir is the pruned + fine-tuned model.
"""

import os

from absl import flags

from infer.compress.prune_checkpoint import Request, prune_checkpoint
from infer.compress.prune_params import SCORES
from model.flags import define_model_flags
from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
    define_model_flags("checkpoint", checkpoint={
        "help": "Training workdir or converted model to prune."})
    flags.DEFINE_string("out", None, "Model directory to create for the pruned model (must not "
                                     "exist or be empty).")
    flags.DEFINE_float("heads", 0.0, "Fraction in [0, 1) of query heads to remove from every "
                                     "layer (rounded to what GQA groups allow).")
    flags.DEFINE_float("mlp", 0.0, "Fraction in [0, 1) of MLP channels to remove from every "
                                   "layer.")
    flags.DEFINE_string("score", "magnitude", f"Importance of a head or channel, one of "
                        f"{', '.join(SCORES)} (product of the L2 norms of its weight slices).")
    flags.DEFINE_integer("finetune_steps", 0, "Optimizer steps of fine-tuning after pruning, in "
                                              "the workdir OUT/finetune, with the source run's "
                                              "flags; 0: none.")
    flags.DEFINE_float("finetune_learning_rate", 0.0, "Peak learning rate of the fine-tune "
                                                      "(warmup over its first 10% of steps, then "
                                                      "the source's schedule); 0: the source "
                                                      "run's --learning_rate.")
    flags.DEFINE_bool("eval", True, "Measure held-out loss before and after pruning (and after "
                                    "the fine-tune) on the source run's eval split; needs its "
                                    "recorded flags and data.")
    flags.DEFINE_integer("eval_batches", 0, "Held-out batches per evaluation; 0: the source "
                                            "run's --eval_batches.")


def summary(record: dict, out: str) -> str:
    """The lines printed at the end of a prune."""
    def change(name: str) -> str:
        return f"{record[name]['before']:,} -> {record[name]['after']:,}"

    kept = record["params"]["after"] / record["params"]["before"]
    lines = [(f"pruned {record['checkpoint']} ({record['score']}): per layer query heads "
              f"{change('num_heads')}, kv heads {change('num_kv_heads')}, MLP channels "
              f"{change('mlp_dim')}"),
             f"params {change('params')} ({kept:.1%})"]
    lines += [f"note: {note}" for note in record["notes"]]
    evals = record["eval"]
    if evals:
        names = {"unpruned": "unpruned", "pruned": "pruned",
                 "finetuned": f"pruned + {record.get('finetune', {}).get('steps')} fine-tune steps"}
        lines.append("held-out loss: " + ", ".join(f"{names[key]} {evals[key]['eval_loss']:.4f}"
                                                   for key in names if "eval_loss" in evals.get(key, {})))
    else:
        lines.append("held-out loss: not measured (--noeval, or no training flags recorded)")
    lines.append(f"wrote {out} (model) and {os.path.join(out, 'prune.json')}")
    if "finetune" in record:
        lines.append(f"fine-tuned model: {record['finetune']['workdir']}")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments {argv[1:]}; see python -m infer.prune --help")
    if not FLAGS.checkpoint:
        raise UserError("--checkpoint=PATH is required: the workdir or model to prune")
    if not FLAGS.out:
        raise UserError("--out=DIR is required: the directory to create for the pruned model")
    request = Request(FLAGS.checkpoint, FLAGS.out, FLAGS.heads, FLAGS.mlp, FLAGS.score,
                      FLAGS.finetune_steps, FLAGS.finetune_learning_rate, FLAGS.eval,
                      FLAGS.eval_batches)
    print(summary(prune_checkpoint(request), FLAGS.out))


if __name__ == "__main__":
    run_command(main, define_flags, "infer.prune")
