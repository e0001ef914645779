"""The one held-out evaluator: the objective's eval statistics of some params over the first
--eval_batches batches of a run's eval split (the same batches in the same order every time; more
where the task asks for a minimum of rows, as mlm_nsp does), with 95% intervals of accuracies.
The training loop, infer.prune and infer.compare all score a model through it."""

import math
from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from train.metrics import INTERVAL_METRICS, wilson_interval
from train.prepare import Run
from train.step import batch_shardings, jit_eval_step, make_eval_step


def global_batch(local: dict[str, np.ndarray], shardings) -> dict[str, jax.Array]:
    """Assembles each host's rows into one global array laid out as the batch sharding says."""
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in local.items()}


def step_batch(run: Run, local: dict[str, np.ndarray], shardings) -> dict[str, jax.Array]:
    """The global batch a step reads: the data's arrays and what `run.annotate` adds to them."""
    batch = global_batch(local, shardings)
    return run.annotate(batch) if run.annotate is not None else batch


def batch_layout(run: Run) -> tuple[dict, dict]:
    """(shardings, abstract global arrays) of a batch, by key; shapes are read off the first
    held-out batch (every batch of a stream has the same shapes), with the arrays
    `run.annotate` adds."""
    example = next(iter(run.eval_data))
    shapes = {k: jax.ShapeDtypeStruct((run.cfg.batch_size, *v.shape[1:]), v.dtype)
              for k, v in example.items()}
    if run.annotate is not None:
        shapes = jax.eval_shape(run.annotate, shapes)
    shardings = batch_shardings(run.mesh, shapes)
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shardings[k])
                for k, v in shapes.items()}
    return shardings, abstract


class HeldOut:
    """`HeldOut(run, model, param_shardings)(params)` -> eval_loss / eval_ppl / eval_tokens from
    the objective's "loss" sums, each other statistic (accuracy, ...) as its sum over its count,
    and BLEU / exact match when a `bleu` scorer is given (train/bleu.py). The eval step is compiled once, on first use."""

    def __init__(self, run: Run, model, param_shardings, layout: dict | None = None,
                 bleu: Callable | None = None):
        self.run = run
        self.layout = layout if layout is not None else batch_layout(run)[0]
        self.bleu = bleu
        self.eval_fn = jit_eval_step(make_eval_step(model, run.task.stats), param_shardings,
                                     run.mesh, self.layout)

    def __call__(self, params) -> dict[str, float]:
        sums: dict[str, list[float]] = {}
        for batch in self._batches():
            stats = jax.device_get(self.eval_fn(params, step_batch(self.run, batch, self.layout)))
            for name, (total, count) in stats.items():
                sums.setdefault(name, [0.0, 0.0])
                sums[name][0] += float(total)
                sums[name][1] += float(count)
        total, count = sums.pop("loss")
        loss = total / max(count, 1.0)
        out = {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0)), "eval_tokens": count}
        out.update({name: total / max(count, 1.0) for name, (total, count) in sums.items()})
        for name in INTERVAL_METRICS:  # one example a trial: its Wilson 95% interval and n
            if name in sums:
                total, count = sums[name]
                out[f"{name}_low"], out[f"{name}_high"] = wilson_interval(total, count)
                out[f"{name}_n"] = count
        if self.bleu is not None:
            out.update(self.bleu(params))
        return out

    def _batches(self):
        """This host's first --eval_batches held-out batches. Hosts hold different numbers of
        them (each has its own shard), but every eval step needs all hosts: a host that has run
        out feeds all-padding rows (weight 0) until every host has."""
        stream, last = iter(self.run.eval_data), None
        for _ in range(self.run.task.eval_batches(self.run.cfg)):
            batch = next(stream, None)
            if jax.process_count() > 1:
                if not multihost_utils.process_allgather(np.int32(batch is not None)).any():
                    return
                if batch is None:
                    batch = {k: np.zeros_like(v) for k, v in last.items()}
            elif batch is None:
                return
            last = batch
            yield batch
