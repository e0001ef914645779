"""Structured pruning of a model directory: its params pruned (prune_params.py) into a new model
directory (config.json with a "pruned" record, checkpoints/0, the tokenizer, prune.json), held-out
loss measured on the source run's eval split, and an optional fine-tune in OUT/finetune.
`python -m infer.prune` and `infer.compare` run it."""

import dataclasses
import os

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from infer.compress.prune_params import SCORES, count, prune, targets
from model import sharding, store
from model.abstract import abstract_params, shardings_of
from model.config import ModelConfig
from model.family import build_model
from model.flags import SIZE_FLAGS
from runtime.errors import UserError
from runtime.files import write_json


@dataclasses.dataclass(frozen=True)
class Request:
    """What to prune and how (the flags of `python -m infer.prune`)."""

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
    that recorded no training flags (a converted one). Its size flags are cleared: they restate
    the unpruned shapes, which --init_from of the pruned model would refuse, so a fine-tune takes
    every size from the pruned config.json instead."""
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
                       **dict.fromkeys(SIZE_FLAGS))


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
    eval split, by the training loop's own held-out evaluator (train/evaluate.py)."""
    from train.evaluate import HeldOut

    model = build_model(cfg)
    shardings = shardings_of(abstract_params(cfg, run.mesh))
    with jax.set_mesh(run.mesh), nn.logical_axis_rules(sharding.RULES):
        placed = jax.device_put(traverse_util.unflatten_dict(params, sep="/"), shardings)
        return HeldOut(run, model, shardings)(placed)


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
