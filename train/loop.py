"""The training loop, the same for every family and objective (train/tasks.py says what differs):
restore or init the sharded state, compile the step ahead of time, then step / log / evaluate /
checkpoint until --steps.

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

from data.token_cache import release
from model import sharding
from model.family import build_model, family_of
from runtime.hardware import peak_flops
from train import distributed
from train.bleu import Bleu, most_frequent_target
from train.checkpoint import Checkpointer, match_pretrained, restore_pretrained
from train.evaluate import HeldOut, batch_layout, step_batch
from train.flags import TrainConfig
from train.metrics import MetricsWriter, format_line, plot_curves
from train.optimizer import make_optimizer
from train.preemption import Preemption
from train.prepare import Run, prepare
from train.state import abstract_state, create_state
from train.step import jit_train_step, make_train_step
from train.tasks import data_shards, spread


def _say(message: str) -> None:
    if distributed.is_primary():  # one console for the run, not one line per host
        tqdm.write(message, file=sys.stdout)


def _memory_report(compiled) -> str:
    stats = compiled.memory_analysis()
    if stats is None:
        return "per-device memory: not reported by this backend"
    gib = 2.0**30
    return (f"per-device memory: arguments {stats.argument_size_in_bytes / gib:.3f} GiB, "
            f"outputs {stats.output_size_in_bytes / gib:.3f} GiB, temporaries "
            f"{stats.temp_size_in_bytes / gib:.3f} GiB (donated, aliased "
            f"{stats.alias_size_in_bytes / gib:.3f} GiB)")


def _baseline_line(extra: dict) -> str:
    if "majority_accuracy" in extra:
        return (f"majority-class accuracy {extra['majority_accuracy']:.3f} "
                f"({len(extra['label_names'])} classes)")
    return f"unigram baseline loss {extra['unigram_loss']:.3f}"


class NonFiniteLoss(FloatingPointError):
    """--max_nonfinite consecutive steps had a non-finite loss or gradient; `python -m train`
    prints the message as one line and exits with code 1."""


class _Counters:
    """Per-step bookkeeping that must survive a resume for the resumed run to log exactly what
    an uninterrupted one logs; it travels in each checkpoint's `meta` item."""

    def __init__(self, meta: dict):
        self.skipped = int(meta.get("skipped_steps", 0))
        self.streak = int(meta.get("nonfinite_streak", 0))  # consecutive non-finite steps
        # Host copies of the metrics of the steps since the last metrics line: a checkpoint
        # between two lines carries them, so the next line averages over the same steps.
        self.interval: list[dict[str, float]] = list(meta.get("interval", []))

    def add(self, fetched: list[dict]) -> None:
        for m in fetched:
            # Python floats, as they come back from a checkpoint's JSON after a resume.
            m = {k: float(m[k]) for k in ("loss", "grad_norm", "learning_rate", "nonfinite")}
            self.interval.append(m)
            self.streak = self.streak + 1 if m["nonfinite"] else 0
            self.skipped += int(m["nonfinite"])

    def meta(self, step: int) -> dict:
        # A copy: the async save may serialise it after the loop has appended the next steps.
        return {"step": step, "skipped_steps": self.skipped, "nonfinite_streak": self.streak,
                "interval": list(self.interval)}


def _warn(message: str) -> None:
    if distributed.is_primary():
        tqdm.write(f"warning: {message}", file=sys.stderr)


def _nonfinite_message(step: int, streak: int, cfg: TrainConfig, kept: int | None) -> str:
    where = (f"the last checkpoint (step {kept}) is intact; lower --learning_rate or check the "
             f"data, then rerun the same command to resume from it" if kept is not None else
             "no checkpoint was written; lower --learning_rate or check the data")
    return (f"stopped at step {step}: the last {streak} steps (from step {step - streak + 1}) had "
            f"a non-finite loss or gradient and were skipped (--max_nonfinite="
            f"{cfg.max_nonfinite}); {where}")


def train(cfg: TrainConfig) -> dict[str, float]:
    """Runs (or resumes) training; returns the last logged metrics. SIGTERM or SIGINT ends it
    early with a checkpoint at the current step; --max_nonfinite consecutive non-finite steps
    raise NonFiniteLoss without checkpointing the state they left."""
    run = prepare(cfg)
    mesh, task = run.mesh, run.task
    model = build_model(run.model)
    tx, schedule = make_optimizer(cfg)
    abstract, shardings = abstract_state(model, tx, cfg.seed, mesh)
    if cfg.init_from and run.previous is None:
        match_pretrained(cfg.init_from, abstract["params"])  # refuse before writing anything
    checkpointer = Checkpointer(run.workdir, cfg.keep_checkpoints, cfg.keep_period)
    try:
        # Before commit(): a checkpoint that does not match these flags is refused with the
        # workdir's config.json still describing the run that wrote it.
        resumed = checkpointer.restore_latest(abstract, warn=_warn)
        extra = {k: v for k, v in (run.previous or {}).items()
                 if k in ("unigram_loss", "majority_accuracy", "label_names")}
        if not extra:
            extra = task.baseline(run.tokenizer, run.data)
        run.commit(extra)
        return _train(run, model, tx, schedule, abstract, shardings, checkpointer, resumed, extra)
    finally:
        checkpointer.close()  # waits for an async save in flight: the last checkpoint is whole
        release(run.data)  # raw files' temporary token shards


def _train(run: Run, model, tx, schedule, abstract, shardings, checkpointer: Checkpointer,
           resumed, extra: dict) -> dict[str, float]:
    cfg, mesh, task = run.cfg, run.mesh, run.task
    data_iter = iter(run.train_data)
    if resumed is not None:
        latest, state, data_state, meta = resumed
        shards = data_shards(cfg, jax.process_count())
        local = distributed.local_data_state(data_state, shards)
        if local is not None:
            data_iter.set_state(local)  # the batches after that step, even after a fallback
        else:
            written = len(distributed.saved_shards(data_state))
            _warn(f"checkpoint {latest} was written with {written} data shard(s) and this run "
                  f"reads {shards} (--data_shards, default one per process): the params, "
                  f"optimizer state and step carry over exactly, but a place in one split of "
                  f"the data does not carry over to another, so the data stream starts over"
                  + (f"; --data_shards={written} would continue it"
                     if written % jax.process_count() == 0 else ""))
        _say(f"resumed from {checkpointer.directory}/{latest}")
    else:
        meta = {}
        state, _ = create_state(model, tx, cfg.seed, mesh)
        if cfg.init_from:
            state["params"], loaded, fresh = restore_pretrained(
                cfg.init_from, abstract["params"], state["params"])
            _say(f"init from {cfg.init_from}: loaded {loaded} param arrays; freshly initialised "
                 f"{', '.join(fresh) or 'none'}")
    start = int(jax.device_get(state["step"]))
    counters = _Counters(meta)

    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract["params"]))
    flops_per_token = family_of(run.model).train_flops_per_token(run.model, cfg.seq_len,
                                                                 run.target_len, task.lm_head)
    tokens_per_step = cfg.batch_size * task.tokens_per_row(cfg)
    peak = peak_flops()
    _say(f"model {cfg.preset} ({run.model.family}, --objective={cfg.objective}): "
         f"{n_params / 1e6:.2f}M params, {flops_per_token / 1e6:.1f} MFLOP per token; mesh "
         f"{dict(mesh.shape)} on {jax.device_count()} {jax.devices()[0].platform} device(s); "
         f"{_baseline_line(extra)}")

    layout, abstract_batch = batch_layout(run)
    bleu = None
    if cfg.objective == "seq2seq" and cfg.bleu_examples and cfg.eval_every:
        bleu = Bleu(model, run.tokenizer, spread(run.data.eval, cfg.bleu_examples),
                    source_length=cfg.seq_len, target_length=run.target_len,
                    batch_size=cfg.batch_size, mesh=mesh, param_shardings=shardings["params"],
                    blind=most_frequent_target(run.data.train))
    metrics = MetricsWriter(run.workdir, resume_step=start)
    last: dict[str, float] = {}
    preempted = None
    with (jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES), Preemption() as preemption,
          tqdm(total=cfg.steps, initial=start, unit="step",
               disable=None if distributed.is_primary() else True, dynamic_ncols=True) as bar):
        step_fn = jit_train_step(
            make_train_step(model, task.objective(cfg), tx, schedule, cfg.grad_accum),
            shardings, mesh, layout)
        evaluate = HeldOut(run, model, shardings["params"], layout, bleu)
        t0 = time.perf_counter()
        compiled = step_fn.lower(abstract, abstract_batch).compile()
        _say(f"compiled train step in {time.perf_counter() - t0:.1f} s; {_memory_report(compiled)}")
        if start >= cfg.steps:
            _say(f"already trained to step {start} (--steps={cfg.steps}); nothing to do")

        pending, timed, save_deferred = [], 0, False
        interval_start = time.perf_counter()
        for step in range(start + 1, cfg.steps + 1):
            state, step_metrics = compiled(state, step_batch(run, next(data_iter), layout))
            pending.append(step_metrics)
            timed += 1
            bar.update(1)
            stop = preemption.requested()
            log = step % cfg.log_every == 0 or step == cfg.steps
            save = save_deferred or step % cfg.save_every == 0 or step == cfg.steps or stop
            if not (log or save):
                continue
            counters.add(jax.device_get(pending))  # blocks on the last step: honest timing
            pending = []
            if log:
                elapsed = time.perf_counter() - interval_start
                interval = counters.interval
                finite = [m["loss"] for m in interval if not m["nonfinite"]] or [float("nan")]
                tokens_per_s = timed * tokens_per_step / elapsed
                last = {"loss": float(np.mean(finite)),
                        "learning_rate": interval[-1]["learning_rate"],
                        "grad_norm": float(np.mean([m["grad_norm"] for m in interval])),
                        "tokens_per_s": tokens_per_s,
                        "mfu": tokens_per_s * flops_per_token / peak,
                        "step_time_s": elapsed / timed,
                        "tokens_seen": step * tokens_per_step, "skipped_steps": counters.skipped}
                counters.interval = []
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                    last.update(evaluate(state["params"]))
                metrics.write(step, last)
                _say(format_line(step, cfg.steps, last))
                bar.set_postfix(loss=f"{last['loss']:.3f}", refresh=False)
            if counters.streak >= cfg.max_nonfinite:
                checkpointer.wait()
                metrics.close()
                raise NonFiniteLoss(_nonfinite_message(step, counters.streak, cfg,
                                                       checkpointer.latest_step()))
            # A step that was skipped leaves the params as they were, but a checkpoint taken in
            # the middle of a run of them would be resumed into the same trouble: the periodic
            # save waits for the first finite step (the last and a preemption save do not).
            save_deferred = save and bool(counters.streak) and not (stop or step == cfg.steps)
            if save and not save_deferred:
                checkpointer.save(step, state,
                                  distributed.gather_data_state(data_iter.get_state()),
                                  counters.meta(step))
            if log:
                interval_start, timed = time.perf_counter(), 0
            if stop:
                preempted = (step, preemption.name)
                break
    metrics.close()
    if preempted:
        checkpointer.wait()
        _say(f"preempted ({preempted[1]}) at step {preempted[0]}: checkpoint saved; rerun the "
             f"same command to continue")
        return last
    if last and distributed.is_primary():
        _say(f"loss curve: {plot_curves(run.workdir, extra.get('unigram_loss'))}")
    logging.info("done: %s", last)
    return last
