"""Training objectives: what the model is asked to predict from a batch, and the loss.

An objective returns the *sum* of per-token losses and the number of tokens it covers, so that
gradient accumulation and data parallelism average over tokens exactly as one big batch would.
The loop never knows the model family; it only calls `objective(model, params, batch, rng)`.

Each objective also has a `*_stats(model, params, batch)` for evaluation: a dict of
(sum, count) pairs that the loop adds up over the held-out batches and divides; "loss" is the one
reported as eval_loss (always unsmoothed cross-entropy in nats per predicted token).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

Array = jax.Array
Batch = dict[str, Array]
Objective = Callable[..., tuple[Array, Array]]
Stats = dict[str, tuple[Array, Array]]


def _weighted(values: Array, weights: Array) -> tuple[Array, Array]:
    weights = weights.astype(jnp.float32)
    return jnp.sum(values * weights), jnp.sum(weights)


def _cross_entropy(logits: Array, targets: Array, smoothing: float = 0.0) -> Array:
    """Per-position cross-entropy; with `smoothing` the target puts 1 - smoothing on the label
    and spreads `smoothing` uniformly over the vocabulary (Szegedy et al. 2016)."""
    if not smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), smoothing)
    return optax.softmax_cross_entropy(logits, labels)


def _accuracy(logits: Array, targets: Array) -> Array:
    return (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)


# Causal LM (decoder).

def clm_predictions(model, params, batch: Batch) -> tuple[Array, Array, Array]:
    """(logits float[batch, seq_len, vocab], targets, weights) of packed rows of length
    seq_len + 1: predict token t+1 from tokens <= t.

    Targets that start a new document (or fall in padding) weigh 0, so packing several
    documents in a row never asks the model to guess one document's start from another.
    """
    tokens, segments = batch["tokens"], batch["segment_ids"]
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    in_seg, out_seg = segments[:, :-1], segments[:, 1:]
    logits = model.apply({"params": params}, inputs, batch["positions"][:, :-1], in_seg)
    return logits, targets, (in_seg == out_seg) & (out_seg != 0)


def clm_stats(model, params, batch: Batch) -> Stats:
    logits, targets, weights = clm_predictions(model, params, batch)
    return {"loss": _weighted(_cross_entropy(logits, targets), weights)}


def clm(model, params, batch: Batch, rng: Array) -> tuple[Array, Array]:
    del rng
    return clm_stats(model, params, batch)["loss"]


# BERT (encoder): data/mlm.py and data/nsp.py batches.

def _encode(model, params, batch: Batch) -> dict[str, Array]:
    return model.apply({"params": params}, batch["tokens"], batch["positions"],
                       batch["segment_ids"], batch["token_types"])


def _mlm_terms(out: dict[str, Array], batch: Batch) -> Stats:
    logits, targets, weights = out["logits"], batch["targets"], batch["weights"]
    return {"loss": _weighted(_cross_entropy(logits, targets), weights),
            "mlm_accuracy": _weighted(_accuracy(logits, targets), weights)}


def mlm_predictions(model, params, batch: Batch) -> tuple[Array, Array, Array]:
    """(logits float[batch, seq_len, vocab], targets, weights): the masked positions weigh 1."""
    return _encode(model, params, batch)["logits"], batch["targets"], batch["weights"]


def mlm_stats(model, params, batch: Batch) -> Stats:
    """Masked LM: cross-entropy at the chosen positions only (`weights` 1); every other position's
    logits are ignored, whatever they predict."""
    return _mlm_terms(_encode(model, params, batch), batch)


def mlm(model, params, batch: Batch, rng: Array) -> tuple[Array, Array]:
    del rng
    return mlm_stats(model, params, batch)["loss"]


def mlm_nsp_stats(model, params, batch: Batch) -> Stats:
    """MLM as above ("loss") plus next-sentence prediction on `class_logits`."""
    out = _encode(model, params, batch)
    logits, labels, weights = out["class_logits"], batch["nsp_labels"], batch["nsp_weights"]
    return {**_mlm_terms(out, batch),
            "nsp_loss": _weighted(_cross_entropy(logits, labels), weights),
            "nsp_accuracy": _weighted(_accuracy(logits, labels), weights)}


def mlm_nsp(model, params, batch: Batch, rng: Array, nsp_weight: float = 1.0
            ) -> tuple[Array, Array]:
    """MLM + NSP as one (sum, count): each row's NSP loss counts `nsp_weight` times against the
    masked tokens. With nsp_weight = masked tokens per full row (what `make_objective` passes) the
    loss is ~ mean MLM + mean NSP, as in BERT, while staying a plain sum over rows, so gradient
    accumulation and data parallelism stay exact."""
    del rng
    stats = mlm_nsp_stats(model, params, batch)
    (mlm_sum, mlm_count), (nsp_sum, _) = stats["loss"], stats["nsp_loss"]
    return mlm_sum + nsp_weight * nsp_sum, mlm_count


# Sequence classification (encoder): data/classify.py batches.

def classify_stats(model, params, batch: Batch) -> Stats:
    """Cross-entropy of `class_logits` (the head over the [CLS] position) against `labels`."""
    logits = _encode(model, params, batch)["class_logits"]
    labels, weights = batch["labels"], batch["label_weights"]
    return {"loss": _weighted(_cross_entropy(logits, labels), weights),
            "accuracy": _weighted(_accuracy(logits, labels), weights)}


def classify(model, params, batch: Batch, rng: Array) -> tuple[Array, Array]:
    del rng
    return classify_stats(model, params, batch)["loss"]


# Encoder-decoder: data/seq2seq.py and data/span.py batches.

def _seq2seq_logits(model, params, batch: Batch) -> Array:
    return model.apply({"params": params}, batch["encoder_tokens"], batch["decoder_inputs"],
                       batch["encoder_segment_ids"], batch["decoder_segment_ids"],
                       batch["encoder_positions"], batch["decoder_positions"])


def seq2seq_stats(model, params, batch: Batch) -> Stats:
    """Teacher forcing: the decoder reads BOS + target[:-1] and predicts the target (+ EOS) at
    every position where `decoder_weights` is 1."""
    logits = _seq2seq_logits(model, params, batch)
    targets, weights = batch["decoder_targets"], batch["decoder_weights"]
    return {"loss": _weighted(_cross_entropy(logits, targets), weights),
            "token_accuracy": _weighted(_accuracy(logits, targets), weights),
            "shuffled_source_loss": _shuffled_source_loss(model, params, batch)}


def _shuffled_source_loss(model, params, batch: Batch) -> tuple[Array, Array]:
    """The loss of every target given the next row's source instead of its own: a model that
    reads its encoder does worse here than on eval_loss, one that ignores it the same. Targets
    whose borrowed source is a padding row (the last eval batch) are left out."""
    source_keys = ("encoder_tokens", "encoder_segment_ids", "encoder_positions")
    shuffled = {**batch, **{k: jnp.roll(batch[k], 1, axis=0) for k in source_keys}}
    has_source = jnp.any(shuffled["encoder_segment_ids"] > 0, axis=1)
    weights = batch["decoder_weights"] * has_source[:, None]
    losses = _cross_entropy(_seq2seq_logits(model, params, shuffled), batch["decoder_targets"])
    return _weighted(jnp.where(weights > 0, losses, 0.0), weights)


def seq2seq(model, params, batch: Batch, rng: Array, label_smoothing: float = 0.0
            ) -> tuple[Array, Array]:
    del rng
    logits = _seq2seq_logits(model, params, batch)
    losses = _cross_entropy(logits, batch["decoder_targets"], label_smoothing)
    return _weighted(losses, batch["decoder_weights"])


# Knowledge distillation (Hinton et al. 2015): clm or mlm batches that also carry the teacher's
# logits at the student's positions, float32[batch, seq_len, vocab] "teacher_logits" (added by
# train/distill.py). `predict` is clm_predictions or mlm_predictions, so both models are scored
# at the same positions.

Predict = Callable[..., tuple[Array, Array, Array]]


def _kl(teacher_logits: Array, student_logits: Array, temperature: float = 1.0) -> Array:
    """Per-position KL(softmax(teacher / T) || softmax(student / T)) in nats."""
    teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
    student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
    return jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)


def distill(model, params, batch: Batch, rng: Array, predict: Predict, temperature: float = 2.0,
            alpha: float = 0.5) -> tuple[Array, Array]:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels), summed over
    the predicted positions. The T^2 keeps the soft term's gradients the size of the hard term's
    whatever T is (their scale falls as 1/T^2)."""
    del rng
    logits, targets, weights = predict(model, params, batch)
    soft = _kl(batch["teacher_logits"], logits, temperature)
    hard = _cross_entropy(logits, targets)
    return _weighted(alpha * temperature**2 * soft + (1.0 - alpha) * hard, weights)


def distill_stats(model, params, batch: Batch, predict: Predict, accuracy: str = "") -> Stats:
    """The student's plain cross-entropy as "loss" (so eval_loss compares with a clm or mlm run),
    its KL to the teacher at T = 1 as "distill_kl", and its token accuracy under the name the
    base objective reports it by (`accuracy`; "" for none)."""
    logits, targets, weights = predict(model, params, batch)
    stats = {"loss": _weighted(_cross_entropy(logits, targets), weights),
             "distill_kl": _weighted(_kl(batch["teacher_logits"], logits), weights)}
    if accuracy:
        stats[accuracy] = _weighted(_accuracy(logits, targets), weights)
    return stats


# The base objective whose batches and positions a distilled family reads.
PREDICTIONS: dict[str, Predict] = {"clm": clm_predictions, "mlm": mlm_predictions}
