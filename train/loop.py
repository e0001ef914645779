"""The training loop, the same for every family: restore or init the sharded state, compile the
step ahead of time, then step / log / evaluate / checkpoint until --steps.

Side effects (I/O, logging, checkpoints) live here; the jitted functions stay pure.
"""

import math
import sys
import time

import flax.linen as nn
import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from data.pipeline import packed_dataset
from data.unigram import unigram_loss
from model import sharding
from model.transformer import build_model
from train.checkpoint import Checkpointer, restore_params
from train.flags import TrainConfig
from train.metrics import MetricsWriter, format_line, peak_flops, plot_curves, train_flops_per_token
from train.objectives import get_objective
from train.optimizer import make_optimizer
from train.prepare import Run, prepare
from train.state import abstract_state, create_state
from train.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step


def _say(message: str) -> None:
    tqdm.write(message, file=sys.stdout)


def _global_batch(local: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
    """Assembles each host's rows into one global array laid out as the batch sharding says."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}


def _memory_report(compiled) -> str:
    stats = compiled.memory_analysis()
    if stats is None:
        return "per-device memory: not reported by this backend"
    gib = 2.0**30
    return (f"per-device memory: arguments {stats.argument_size_in_bytes / gib:.3f} GiB, "
            f"outputs {stats.output_size_in_bytes / gib:.3f} GiB, temporaries "
            f"{stats.temp_size_in_bytes / gib:.3f} GiB (donated, aliased "
            f"{stats.alias_size_in_bytes / gib:.3f} GiB)")


def evaluate(run: Run, eval_fn, params, batch_sharding) -> dict[str, float]:
    """Mean token loss over the first --eval_batches batches of the held-out split (the same
    batches every time: no shuffle)."""
    cfg = run.cfg
    ds = packed_dataset(run.corpus.eval, run.tokenizer, length=run.row_length,
                        batch_size=cfg.batch_size // jax.process_count(), seed=cfg.seed,
                        shuffle=False, repeat=False, process_index=jax.process_index(),
                        process_count=jax.process_count())
    total, count = 0.0, 0.0
    for i, batch in enumerate(ds):
        if i >= cfg.eval_batches:
            break
        loss_sum, weight = jax.device_get(eval_fn(params, _global_batch(batch, batch_sharding)))
        total, count = total + float(loss_sum), count + float(weight)
    loss = total / max(count, 1.0)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": count}


def train(cfg: TrainConfig) -> dict[str, float]:
    """Runs (or resumes) training; returns the last logged metrics."""
    run = prepare(cfg)
    mesh = run.mesh
    model = build_model(run.model)
    tx, schedule = make_optimizer(cfg)
    objective = get_objective(cfg.objective)
    abstract, shardings = abstract_state(model, tx, cfg.seed, mesh)
    checkpointer = Checkpointer(run.workdir, cfg.keep_checkpoints, cfg.keep_period)
    latest = checkpointer.latest_step()
    extra = {"unigram_loss": (run.previous or {}).get("unigram_loss")}
    if extra["unigram_loss"] is None:
        extra["unigram_loss"] = unigram_loss(run.tokenizer, run.corpus.train, run.corpus.eval)
    run.commit(extra)

    train_ds = packed_dataset(run.corpus.train, run.tokenizer, length=run.row_length,
                              batch_size=cfg.batch_size // jax.process_count(), seed=cfg.seed,
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
    data_iter = iter(train_ds)
    if latest is not None:
        state, data_state, _ = checkpointer.restore(latest, abstract)
        data_iter.set_state(data_state)
        _say(f"resumed from {checkpointer.directory}/{latest}")
    else:
        state, _ = create_state(model, tx, cfg.seed, mesh)
        if cfg.init_from:
            state["params"] = restore_params(cfg.init_from, abstract["params"])
    start = int(jax.device_get(state["step"]))

    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract["params"]))
    flops_per_token = train_flops_per_token(run.model, cfg.seq_len)
    tokens_per_step = cfg.batch_size * cfg.seq_len
    peak = peak_flops()
    _say(f"model {cfg.preset}: {n_params / 1e6:.2f}M params, {flops_per_token / 1e6:.1f} MFLOP "
         f"per token; mesh {dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform}"
         f" device(s); unigram baseline loss {extra['unigram_loss']:.3f}")

    batch_sharding = sharding.named(mesh, "batch", None)
    metrics = MetricsWriter(run.workdir, resume_step=start)
    last: dict[str, float] = {}
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        step_fn = jit_train_step(make_train_step(model, objective, tx, schedule, cfg.grad_accum),
                                 shardings, mesh)
        eval_fn = jit_eval_step(make_eval_step(model, objective), shardings["params"], mesh)
        batch_shape = jax.ShapeDtypeStruct((cfg.batch_size, run.row_length), np.int32,
                                           sharding=batch_sharding)
        abstract_batch = {k: batch_shape for k in ("tokens", "segment_ids", "positions")}
        t0 = time.perf_counter()
        compiled = step_fn.lower(abstract, abstract_batch).compile()
        _say(f"compiled train step in {time.perf_counter() - t0:.1f} s; {_memory_report(compiled)}")
        if start >= cfg.steps:
            _say(f"already trained to step {start} (--steps={cfg.steps}); nothing to do")

        bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=None, dynamic_ncols=True)
        pending, consecutive_bad, skipped = [], 0, 0
        interval_start = time.perf_counter()
        for step in range(start + 1, cfg.steps + 1):
            state, step_metrics = compiled(state, _global_batch(next(data_iter), batch_sharding))
            pending.append(step_metrics)
            bar.update(1)
            if step % cfg.log_every and step != cfg.steps:
                continue
            fetched = jax.device_get(pending)  # blocks on the last step, so timing is honest
            elapsed = time.perf_counter() - interval_start
            for m in fetched:
                consecutive_bad = consecutive_bad + 1 if m["nonfinite"] else 0
                skipped += int(m["nonfinite"])
                if consecutive_bad >= cfg.max_nonfinite:
                    checkpointer.close()
                    raise FloatingPointError(
                        f"{consecutive_bad} consecutive steps had a non-finite loss or gradient "
                        f"(up to step {step}); stopped. The last good checkpoint is kept.")
            finite = [float(m["loss"]) for m in fetched if not m["nonfinite"]] or [float("nan")]
            tokens_per_s = len(fetched) * tokens_per_step / elapsed
            last = {"loss": float(np.mean(finite)),
                    "learning_rate": float(fetched[-1]["learning_rate"]),
                    "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
                    "tokens_per_s": tokens_per_s,
                    "mfu": tokens_per_s * flops_per_token / peak,
                    "step_time_s": elapsed / len(fetched),
                    "tokens_seen": step * tokens_per_step, "skipped_steps": skipped}
            pending = []
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                last.update(evaluate(run, eval_fn, state["params"], batch_sharding))
            metrics.write(step, last)
            _say(format_line(step, cfg.steps, last))
            bar.set_postfix(loss=f"{last['loss']:.3f}", refresh=False)
            if step % cfg.save_every == 0 or step == cfg.steps:
                checkpointer.save(step, state, data_iter.get_state(), {"step": step})
            interval_start = time.perf_counter()
        bar.close()
    checkpointer.close()
    metrics.close()
    if last and jax.process_index() == 0:
        _say(f"loss curve: {plot_curves(run.workdir, extra['unigram_loss'])}")
    logging.info("done: %s", last)
    return last
