"""`python -m infer.prune --checkpoint=PATH --heads=0.25 --mlp=0.5 --out=DIR`: structured pruning
of attention heads and MLP channels into a smaller dense model, optionally healed by fine-tuning.

OUT is a model directory (config.json with a "pruned" record, checkpoints/0, the tokenizer) that
`--checkpoint` and `python -m train --init_from` accept; OUT/prune.json holds the numbers. Held-out
loss is measured on the source run's eval split, from the flags its config.json recorded. With
--finetune_steps=N the training loop continues from OUT in the workdir OUT/finetune (its own run:
config, flags.txt, checkpoints), and that workdir is the pruned + fine-tuned model.
"""

import dataclasses
import os

import flax.linen as nn
import jax
import numpy as np
from absl import flags
from flax import traverse_util

from infer.compress.prune_params import SCORES, count, prune, targets
from model import sharding, store
from model.abstract import abstract_params, shardings_of
from model.config import ModelConfig
from model.transformer import build_model
from runtime.command import run_command
from runtime.errors import UserError
from runtime.files import write_json

FLAGS = flags.FLAGS
# Size flags a run records; they restate the unpruned shapes, which --init_from of the pruned
# model would refuse, so the fine-tune takes every size from the pruned config.json instead.
_SIZE_FLAGS = ("num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_dim", "vocab_size")


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "Training workdir or converted model to prune.")
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


@dataclasses.dataclass(frozen=True)
class Request:
    checkpoint: str
    out: str
    heads: float = 0.0
    mlp: float = 0.0
    score: str = "magnitude"
    finetune_steps: int = 0
    finetune_learning_rate: float = 0.0  # 0: the source run's
    eval: bool = True
    eval_batches: int = 0  # 0: the source run's


def _check(request: Request) -> None:
    """The checks that need no model (`targets` checks the fractions against it)."""
    if request.heads == 0.0 and request.mlp == 0.0:
        raise UserError("nothing to prune: pass --heads and/or --mlp, fractions in (0, 1)")
    if request.score not in SCORES:
        raise UserError(f"--score={request.score!r} is not one of {', '.join(SCORES)}")
    if request.finetune_steps < 0 or request.eval_batches < 0:
        raise UserError("--finetune_steps and --eval_batches must not be negative")
    if request.finetune_learning_rate < 0:
        raise UserError("--finetune_learning_rate must not be negative")


def source_flags(checkpoint: str, recorded: dict, init_from: str, workdir: str):
    """The source run's TrainConfig, continuing from `init_from` in `workdir`; None for a model
    that recorded no training flags (a converted one)."""
    # train/ sits above infer/'s model code in the import graph; only this path needs it.
    from train.flags import TrainConfig

    if not isinstance(recorded.get("flags"), dict):
        return None
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig(**{k: v for k, v in recorded["flags"].items() if k in known})
    except TypeError as e:
        raise UserError(f"{checkpoint}/config.json: its flags are unreadable ({e})") from None
    # --tokenizer may name a file since moved; the run copied it into the workdir anyway.
    return cfg.replace(init_from=init_from, workdir=workdir, overwrite=False, tokenizer="",
                       **dict.fromkeys(_SIZE_FLAGS))


def _eval_run(request: Request, recorded: dict):
    """The source run resolved (data, tokenizer, mesh, eval split) without writing anything, or
    None when there is nothing to evaluate on."""
    from train.prepare import prepare

    cfg = source_flags(request.checkpoint, recorded, os.path.abspath(request.checkpoint),
                        os.path.join(os.path.abspath(request.out), "finetune"))
    if cfg is None:
        if request.finetune_steps:
            raise UserError(f"--finetune_steps needs the training flags a workdir records in "
                            f"config.json, and {request.checkpoint} has none; prune without it, "
                            f"then train with python -m train --init_from={request.out}")
        return None
    if not request.eval and not request.finetune_steps:
        return None
    # Also when only fine-tuning: its data and tokenizer are then checked before OUT is written.
    return prepare(cfg.replace(eval_batches=request.eval_batches or cfg.eval_batches))


def eval_metrics(run, cfg: ModelConfig, params: dict[str, np.ndarray]) -> dict[str, float]:
    """Held-out metrics of `params` (flat) over the first --eval_batches batches of the run's
    eval split, by the training loop's own `evaluate`."""
    from train.loop import evaluate
    from train.step import batch_shardings, jit_eval_step, make_eval_step

    model = build_model(cfg)
    shardings = shardings_of(abstract_params(cfg, run.mesh))
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.RULES):
        placed = jax.device_put(traverse_util.unflatten_dict(params, sep="/"), shardings)
        layout = batch_shardings(run.mesh, next(iter(run.eval_data)))
        eval_fn = jit_eval_step(make_eval_step(model, run.task.stats), shardings, run.mesh, layout)
        return evaluate(run, eval_fn, placed, layout)


def _finetune(request: Request, recorded: dict, evaluate: bool) -> dict[str, float]:
    """Continues training from the pruned model in OUT/finetune; the last logged metrics."""
    from train.loop import train

    out = os.path.abspath(request.out)
    cfg = source_flags(request.checkpoint, recorded, out, os.path.join(out, "finetune"))
    steps = request.finetune_steps
    cfg = cfg.replace(steps=steps, warmup_steps=steps // 10,
                      learning_rate=request.finetune_learning_rate or cfg.learning_rate,
                      eval_every=steps if evaluate else 0, log_every=min(cfg.log_every, steps),
                      save_every=steps, keep_checkpoints=1, keep_period=0,
                      eval_batches=request.eval_batches or cfg.eval_batches)
    return train(cfg)


def prune_checkpoint(request: Request) -> dict:
    """Prunes, writes OUT (all or nothing), evaluates and fine-tunes as asked; returns the record
    written to OUT/prune.json."""
    _check(request)
    cfg, recorded = store.read_recorded(request.checkpoint, "checkpoint")
    if cfg.int8_weights:  # int8 kernels with per-channel scales beside them: not sliced here
        raise UserError(f"--checkpoint={request.checkpoint} holds int8 weights ({cfg.quant}); "
                        f"prune the float model it was quantized from, then quantize the result")
    targets(cfg, request.heads, request.mlp)
    store.check_out(request.out, overwrite=False)
    run = _eval_run(request, recorded)  # refuses missing data etc. before anything is written
    params = {path: np.asarray(array) for path, array in
              store.restore_flat(request.checkpoint, cfg).items()}
    pruned, goal = prune(cfg, params, request.heads, request.mlp, request.score)
    before, after = count(params), count(pruned.params)
    evaluate = run is not None and request.eval
    record = {
        "checkpoint": os.path.abspath(request.checkpoint), "score": request.score,
        "heads_fraction": request.heads, "mlp_fraction": request.mlp,
        "params": {"before": before, "after": after},
        "num_heads": {"before": cfg.num_heads, "after": goal.heads},
        "num_kv_heads": {"before": cfg.num_kv_heads, "after": goal.kv_heads},
        "mlp_dim": {"before": cfg.mlp_dim, "after": goal.mlp}, "notes": list(goal.notes),
        "kept_heads": {module: kept.tolist() for module, kept in pruned.heads.items()},
        "eval": {},
    }
    if evaluate:
        record["eval"]["unpruned"] = eval_metrics(run, cfg, params)
        record["eval"]["pruned"] = eval_metrics(run, pruned.config, pruned.params)
    with store.staged(request.out) as tmp:
        pruned_record = {key: record[key] for key in ("checkpoint", "score", "heads_fraction",
                                                      "mlp_fraction", "params")}
        store.write_model_dir(tmp, pruned.config, pruned.params, recorded.get("hf", {}),
                              {"pruned": pruned_record})
        store.copy_tokenizer(request.checkpoint, tmp)
        write_json(os.path.join(tmp, "prune.json"), record)
    if request.finetune_steps:
        metrics = _finetune(request, recorded, evaluate)
        record["finetune"] = {"steps": request.finetune_steps,
                              "workdir": os.path.join(os.path.abspath(request.out), "finetune"),
                              "loss": metrics.get("loss")}
        if evaluate:  # the last metrics line of the fine-tune: training's and held-out ones
            record["eval"]["finetuned"] = {k: metrics[k] for k in record["eval"]["pruned"]
                                           if k in metrics}
        write_json(os.path.join(request.out, "prune.json"), record)
    return record


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
