"""Trains one small model on a `ReverseTask` (benchmarks/reverse_task.py) and reports what it
learned: held-out loss with true and with shuffled sources, greedy exact match and BLEU, and, at
a few steps, each attention's logit scale and each layer's gradient norm.

An encoder-decoder reads (source -> target) pairs through the seq2seq objective of
train/objectives.py; a decoder-only model reads `source SEP target EOS` rows scored on the target
alone. A variant is written `preset@learning_rate[+field=value...]`, e.g.
`tiny_t5@3e-3+param_init=normal`; the fields are ModelConfig's.
"""

import dataclasses
import math
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import reverse_task as rt
from model.config import ModelConfig, get_preset
from model.family import build_model, family_of, init_inputs
from runtime.errors import UserError
from train import objectives
from train.bleu import greedy_decode
from train.flags import TrainConfig
from train.optimizer import make_optimizer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Variant:
    spec: str  # as written: preset@lr[+field=value...]
    preset: str
    learning_rate: float
    overrides: tuple[tuple[str, object], ...] = ()


def _value(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_variant(spec: str) -> Variant:
    head, *fields = spec.split("+")
    preset, _, lr = head.partition("@")
    try:
        overrides = tuple((k, _value(v)) for k, v in (f.split("=", 1) for f in fields))
        return Variant(spec, preset, float(lr), overrides)
    except ValueError:
        raise UserError(f"variant {spec!r} is not preset@learning_rate[+field=value...], e.g. "
                        "tiny_t5@3e-3+param_init=normal") from None


def model_config(variant: Variant, sizes: dict[str, int], task: rt.ReverseTask) -> ModelConfig:
    """The preset with the shared sizes, the task's vocabulary and the variant's fields; layers
    unrolled (scan_layers=False) so every layer's params and attention can be told apart."""
    cfg = get_preset(variant.preset).replace(**sizes)
    return cfg.replace(vocab_size=task.vocab_size, max_len=max(cfg.max_len, 2 * task.max_len + 2),
                       scan_layers=False, **dict(variant.overrides))


def _attention_probe(model: nn.Module, params, inputs: tuple) -> dict[str, Array]:
    """Std of every attention's content logits (q.k times its scale) on `inputs`, and of the
    position bias added to them, by module path."""
    stats = {}

    def intercept(next_fun, args, kwargs, context):
        if context.method_name == "_attend":
            q, k, _, _, bias = args
            k = jnp.repeat(k, q.shape[2] // k.shape[2], axis=2)
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * context.module.scale
            name = "/".join(context.module.path)
            stats[f"{name}/logit_std"] = jnp.std(logits)
            if bias is not None:
                stats[f"{name}/bias_std"] = jnp.std(bias)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(intercept):
        model.apply({"params": params}, *inputs)
    return stats


def _grad_groups(grads) -> dict[str, Array]:
    """Global norm of the gradients of each attention / MLP / table, by module path."""
    groups: dict[str, list[Array]] = {}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
        cut = next((i for i, k in enumerate(keys) if k in ("attention", "cross_attention", "mlp")),
                   len(keys) - 1)
        groups.setdefault("/".join(keys[:cut + 1]), []).append(g)
    return {name: optax.global_norm(gs) for name, gs in groups.items()}


class _EncoderDecoderSide:
    def __init__(self, model: nn.Module, task: rt.ReverseTask):
        self.model, self.task = model, task
        self.train = rt.seq2seq_arrays(task.train, task.max_len)
        self.eval = rt.seq2seq_arrays(task.eval, task.max_len)

    def loss(self, params, batch):
        return objectives.seq2seq(self.model, params, batch, None)

    def stats(self, params, batch) -> dict:
        return objectives.seq2seq_stats(self.model, params, batch)

    def probe_inputs(self, batch) -> tuple:
        return (batch["encoder_tokens"], batch["decoder_inputs"], batch["encoder_segment_ids"],
                batch["decoder_segment_ids"], batch["encoder_positions"],
                batch["decoder_positions"])

    def decode(self, params, batch) -> Array:
        return greedy_decode(self.model, params, batch["encoder_tokens"],
                             batch["encoder_segment_ids"], batch["encoder_positions"],
                             self.task.max_len + 1, rt.BOS)


class _DecoderSide:
    def __init__(self, model: nn.Module, task: rt.ReverseTask):
        self.model, self.task = model, task
        self.train = rt.decoder_arrays(task.train, task.max_len)
        self.eval = rt.decoder_arrays(task.eval, task.max_len)
        # The shuffled-source rows of each eval batch are built on the host (lengths differ).
        self.eval_shuffled = None

    def _loss_terms(self, params, batch):
        logits = self.model.apply({"params": params}, batch["tokens"])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        return losses, (jnp.argmax(logits, -1) == batch["targets"]), batch["weights"]

    def loss(self, params, batch):
        losses, _, weights = self._loss_terms(params, batch)
        return jnp.sum(losses * weights), jnp.sum(weights).astype(jnp.float32)

    def stats(self, params, batch) -> dict:
        losses, right, weights = self._loss_terms(params, batch)
        total = jnp.sum(weights).astype(jnp.float32)
        return {"loss": (jnp.sum(losses * weights), total),
                "token_accuracy": (jnp.sum(right * weights), total)}

    def probe_inputs(self, batch) -> tuple:
        return (batch["tokens"],)

    def decode(self, params, batch) -> Array:
        """Greedy continuation of each row's `source SEP`, recomputing the whole row a step."""
        tokens, start = batch["tokens"], batch["prompt_len"]
        rows = jnp.arange(tokens.shape[0])
        length = self.task.max_len + 1
        prompt = jnp.where(jnp.arange(tokens.shape[1])[None] < start[:, None], tokens, 0)

        def step(t, buf):
            logits = self.model.apply({"params": params}, buf)
            next_token = jnp.argmax(logits[rows, start + t - 1], -1).astype(jnp.int32)
            return buf.at[rows, start + t].set(next_token)

        buf = jax.lax.fori_loop(0, length, step, prompt)
        return jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (length,)))(buf, start)


def _rows(arrays: dict, index) -> dict:
    return {k: v[index] for k, v in arrays.items()}


def _evaluate(side, params, stats_fn, decode_fn, eval_batch: int) -> dict:
    task, sums = side.task, {}
    n = len(task.eval)
    hypotheses = []
    for start in range(0, n, eval_batch):
        index = np.arange(start, min(start + eval_batch, n))
        batch = _rows(side.eval, index)
        out = stats_fn(params, batch)
        if isinstance(side, _DecoderSide):  # each target after the previous row's source
            pairs = [task.eval[i] for i in index]
            rolled = [pairs[i - 1][0] for i in range(len(pairs))]
            shuffled = rt.decoder_arrays(pairs, task.max_len, rolled)
            out = {**out, "shuffled_source_loss": stats_fn(params, shuffled)["loss"]}
        for name, (total, count) in jax.device_get(out).items():
            s = sums.setdefault(name, [0.0, 0.0])
            s[0] += float(total)
            s[1] += float(count)
        hypotheses.extend(rt.text(row) for row in np.asarray(decode_fn(params, batch)))
    import sacrebleu  # only this benchmark pays the import

    references = [rt.text(t) for _, t in task.eval[:len(hypotheses)]]
    result = {name: total / max(count, 1.0) for name, (total, count) in sums.items()}
    result = {"eval_loss": result.pop("loss"), **result}
    result["source_gap"] = result["shuffled_source_loss"] - result["eval_loss"]
    result["exact_match"] = float(np.mean([h == r for h, r in zip(hypotheses, references,
                                                                  strict=True)]))
    result["bleu"] = float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    result["examples"] = [{"reference": r, "hypothesis": h}
                          for r, h in zip(references[:3], hypotheses[:3], strict=True)]
    return result


def source_blind_baseline(task: rt.ReverseTask) -> dict:
    """The best a model that never reads its source can do: log(symbols) nats per symbol (and
    a known EOS position only if it knew the length) and, as the constant answer, the most
    common training target scored against the held-out targets."""
    import sacrebleu

    targets = [rt.text(t) for _, t in task.train]
    values, counts = np.unique(targets, return_counts=True)
    constant = str(values[np.argmax(counts)])
    references = [rt.text(t) for _, t in task.eval]
    return {"uniform_symbol_loss": math.log(task.symbols),
            "constant_answer": constant,
            "constant_exact_match": float(np.mean([r == constant for r in references])),
            "constant_bleu": float(sacrebleu.corpus_bleu([constant] * len(references),
                                                         [references]).score)}


def train_variant(variant: Variant, cfg: ModelConfig, task: rt.ReverseTask, *, steps: int,
                  batch_size: int, warmup_steps: int, seed: int, probe_steps: tuple[int, ...],
                  log_every: int = 50, eval_batch: int = 128) -> dict:
    """Trains `cfg` from scratch with AdamW (train/optimizer.py defaults, cosine schedule) and
    returns its curve, end-of-run evaluation and probes."""
    model = build_model(cfg)
    sides = {"seq2seq": _EncoderDecoderSide, "causal": _DecoderSide}
    generates = family_of(cfg).generates  # how it writes: the side that trains and decodes it
    if generates not in sides:
        raise UserError(f"variant {variant.spec!r}: preset {variant.preset} is neither an "
                        "encoder-decoder nor a decoder")
    side = sides[generates](model, task)
    train_cfg = TrainConfig(learning_rate=variant.learning_rate, warmup_steps=warmup_steps,
                            steps=steps, schedule="cosine", seed=seed)
    tx, _ = make_optimizer(train_cfg)
    params = nn.meta.unbox(model.init(jax.random.PRNGKey(seed), *init_inputs(cfg))["params"])
    opt_state = tx.init(params)

    def mean_loss(p, batch):
        total, count = side.loss(p, batch)
        return total / jnp.maximum(count, 1.0)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(mean_loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def probe(params, batch):
        grads = jax.grad(mean_loss)(params, batch)
        return {"grad_norm": _grad_groups(grads),
                "attention": _attention_probe(model, params, side.probe_inputs(batch))}

    stats_fn, decode_fn = jax.jit(side.stats), jax.jit(side.decode)
    rng = np.random.default_rng(seed)
    n = len(task.train)
    order, cursor = rng.permutation(n), 0
    probe_batch = _rows(side.train, np.arange(batch_size))
    curve, probes = [], {}
    t0 = time.perf_counter()
    for i in range(steps + 1):
        if i in probe_steps:
            probes[str(i)] = {k: {name: round(float(v), 5) for name, v in d.items()}
                              for k, d in jax.device_get(probe(params, probe_batch)).items()}
        if i == steps:
            break
        if cursor + batch_size > n:
            order, cursor = rng.permutation(n), 0
        batch = _rows(side.train, order[cursor:cursor + batch_size])
        cursor += batch_size
        params, opt_state, loss = step(params, opt_state, batch)
        if (i + 1) % log_every == 0 or i == 0:
            curve.append({"step": i + 1, "loss": round(float(loss), 4)})
    train_s = time.perf_counter() - t0
    result = _evaluate(side, params, stats_fn, decode_fn, eval_batch)
    return {"variant": variant.spec, "family": cfg.family, "params": cfg.num_params(),
            "model": cfg.to_dict(), "train_s": round(train_s, 1), **result,
            "curve": curve, "probes": probes}
