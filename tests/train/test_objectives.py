"""The encoder and encoder-decoder objectives: the same step on one device and on a 2x4 mesh,
MLM scoring only the masked positions, MLM+NSP adding up as documented, greedy decoding equal to
a step-by-step argmax of the full model."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from model import sharding
from model.config import get_preset
from model.family import build_model
from train import objectives
from train.bleu import greedy_decode
from train.flags import TrainConfig
from train.optimizer import make_optimizer
from train.state import abstract_state, create_state
from train.step import batch_shardings, jit_train_step, make_train_step

VOCAB, B, L, T = 512, 8, 16, 8
# SGD: updates proportional to the gradient, so params compare tightly across meshes.
TX, SCHEDULE = make_optimizer(TrainConfig(optimizer="sgd", learning_rate=0.1, warmup_steps=0,
                                          steps=10))


def _rows(rng, length):
    """Two packed segments and trailing padding in every row, so masks must agree too."""
    segments = np.where(np.arange(length) < length // 2, 1, 2)
    segments[-3:] = 0
    positions = np.where(segments == 1, np.arange(length), np.arange(length) - length // 2)
    tokens = rng.integers(9, VOCAB, (B, length)) * (segments > 0)
    return (tokens.astype(np.int32), np.tile(segments, (B, 1)).astype(np.int32),
            np.tile(positions * (segments > 0), (B, 1)).astype(np.int32))


def _encoder_batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens, segments, positions = _rows(rng, L)
    weights = ((rng.random((B, L)) < 0.3) & (segments > 0)).astype(np.int32)
    return {"tokens": tokens, "segment_ids": segments, "positions": positions,
            "token_types": (positions > 3).astype(np.int32) * (segments > 0),
            "targets": rng.integers(9, VOCAB, (B, L)).astype(np.int32) * weights,
            "weights": weights,
            "labels": rng.integers(0, 3, B).astype(np.int32),
            "label_weights": np.array([1] * (B - 1) + [0], np.int32)}


def _seq2seq_batch(seed=0):
    rng = np.random.default_rng(seed)
    enc, enc_seg, enc_pos = _rows(rng, L)
    dec, dec_seg, dec_pos = _rows(rng, T)
    return {"encoder_tokens": enc, "encoder_segment_ids": enc_seg, "encoder_positions": enc_pos,
            "decoder_inputs": dec, "decoder_segment_ids": dec_seg, "decoder_positions": dec_pos,
            "decoder_targets": rng.integers(4, VOCAB, (B, T)).astype(np.int32) * (dec_seg > 0),
            "decoder_weights": (dec_seg > 0).astype(np.int32)}


FAMILIES = {
    "mlm": ("tiny_bert", {}, objectives.mlm, _encoder_batch),
    "classify": ("tiny_bert", {"num_labels": 3}, objectives.classify, _encoder_batch),
    "seq2seq": ("tiny_t5", {}, objectives.seq2seq, _seq2seq_batch),
}


def _one_step(name, mesh, initial=None):
    """(loss, tokens, params after one step, initial state on the host)."""
    preset, changes, objective, make_batch = FAMILIES[name]
    model = build_model(get_preset(preset).replace(vocab_size=VOCAB, **changes))
    if initial is None:
        state, shardings = create_state(model, TX, 0, mesh)
        initial = jax.device_get(state)
    else:  # the same initial values placed on this mesh (saves compiling init again)
        _, shardings = abstract_state(model, TX, 0, mesh)
        state = jax.device_put(initial, shardings)
    batch = make_batch()
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        step = jit_train_step(make_train_step(model, objective, TX, SCHEDULE), shardings, mesh,
                              batch_shardings(mesh, batch))
        state, metrics = step(state, batch)
    return (float(metrics["loss"]), float(metrics["tokens"]), jax.device_get(state["params"]),
            initial)


@pytest.mark.parametrize("name", FAMILIES)
def test_same_step_on_one_device_and_a_2x4_mesh(name):
    loss_1, tokens_1, params_1, initial = _one_step(name, sharding.make_mesh("", jax.devices()[:1]))
    loss_8, tokens_8, params_8, _ = _one_step(name, sharding.make_mesh("data=2,tensor=4"), initial)
    assert np.isfinite(loss_1) and loss_1 > 0.5
    expected_tokens = {"mlm": _encoder_batch()["weights"].sum(), "classify": B - 1,
                       "seq2seq": _seq2seq_batch()["decoder_weights"].sum()}[name]
    assert tokens_1 == tokens_8 == expected_tokens
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params_8), jax.tree.leaves(params_1), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _init(model, *inputs):
    return jax.jit(model.init)(jax.random.PRNGKey(0), *inputs)["params"]


def test_mlm_loss_counts_only_masked_positions():
    model = build_model(get_preset("tiny_bert").replace(vocab_size=VOCAB))
    params = _init(model, np.zeros((1, 2), np.int32))
    batch = _encoder_batch()
    out = jax.jit(model.apply)({"params": params}, batch["tokens"], batch["positions"],
                               batch["segment_ids"], batch["token_types"])
    log_probs = _log_softmax(np.asarray(out["logits"], np.float64))
    rows, cols = np.nonzero(batch["weights"])
    expected = -log_probs[rows, cols, batch["targets"][rows, cols]].sum()
    mlm = jax.jit(lambda b: objectives.mlm(model, params, b, None))

    loss_sum, count = mlm(batch)
    assert float(count) == len(rows) > 10
    np.testing.assert_allclose(float(loss_sum), expected, rtol=1e-5)

    # Targets where weights are 0 are never read; a masked target is.
    unmasked = dict(batch, targets=np.where(batch["weights"] > 0, batch["targets"], 7))
    np.testing.assert_allclose(float(mlm(unmasked)[0]), float(loss_sum), rtol=1e-6)
    changed = dict(batch, targets=batch["targets"].copy())
    changed["targets"][rows[0], cols[0]] += 1
    assert abs(float(mlm(changed)[0]) - float(loss_sum)) > 1e-4

    # MLM + NSP: the next-sentence loss of each row counts nsp_weight times against the tokens.
    nsp = dict(batch, nsp_labels=batch["labels"] % 2, nsp_weights=batch["label_weights"])
    class_log_probs = _log_softmax(np.asarray(out["class_logits"], np.float64))
    nsp_sum = -(class_log_probs[np.arange(B), nsp["nsp_labels"]] * nsp["nsp_weights"]).sum()
    total, weight = jax.jit(lambda b: objectives.mlm_nsp(model, params, b, None, 5.0))(nsp)
    assert float(weight) == len(rows)
    np.testing.assert_allclose(float(total), expected + 5.0 * nsp_sum, rtol=1e-5)


def test_label_smoothing_mixes_in_the_uniform_distribution():
    model = build_model(get_preset("tiny_t5").replace(vocab_size=VOCAB))
    batch = _seq2seq_batch()
    params = _init(model, np.zeros((1, 2), np.int32), np.zeros((1, 2), np.int32))
    logits = jax.jit(model.apply)(
        {"params": params}, batch["encoder_tokens"], batch["decoder_inputs"],
        batch["encoder_segment_ids"], batch["decoder_segment_ids"], batch["encoder_positions"],
        batch["decoder_positions"])
    log_probs = _log_softmax(np.asarray(logits, np.float64))
    w = batch["decoder_weights"]
    nll = -np.take_along_axis(log_probs, batch["decoder_targets"][..., None], -1)[..., 0]
    uniform = -log_probs.mean(-1)
    losses = jax.jit(lambda b: (objectives.seq2seq(model, params, b, None),
                                objectives.seq2seq(model, params, b, None, 0.1)))
    (plain, count), (smoothed, _) = losses(batch)
    assert float(count) == w.sum()
    np.testing.assert_allclose(float(plain), (nll * w).sum(), rtol=1e-5)
    np.testing.assert_allclose(float(smoothed), ((0.9 * nll + 0.1 * uniform) * w).sum(), rtol=1e-5)


def test_greedy_decode_is_the_argmax_of_the_full_model_step_by_step():
    model = build_model(get_preset("tiny_t5").replace(vocab_size=VOCAB))
    params = _init(model, np.zeros((1, 2), np.int32), np.zeros((1, 2), np.int32))
    batch = _seq2seq_batch()
    enc = (batch["encoder_tokens"], batch["encoder_segment_ids"], batch["encoder_positions"])
    out = np.asarray(jax.jit(lambda p: greedy_decode(model, p, *enc, 6, 2))(params))
    # The reference writes one argmax at a time and reruns the whole model on the buffer (the
    # decoder is causal, so the zeros after position t do not change the logits at t).
    apply = jax.jit(lambda tokens: model.apply({"params": params}, enc[0], tokens, enc[1], None,
                                               enc[2]))
    tokens = np.zeros((B, 7), np.int32)
    tokens[:, 0] = 2
    for t in range(6):
        tokens[:, t + 1] = np.argmax(apply(tokens[:, :6])[:, t], -1)
    np.testing.assert_array_equal(out, tokens[:, 1:])
    assert len(np.unique(out)) > 3  # random params decode varied tokens, not one constant


def test_shuffled_source_loss_scores_each_target_with_the_next_rows_source():
    """The metric equals the loss of a batch whose sources were rolled by one row (computed here
    by hand), leaves out targets whose borrowed source is padding, and is the plain loss for a
    model that ignores its encoder."""
    model = build_model(get_preset("tiny_t5").replace(vocab_size=VOCAB))
    params = _init(model, np.zeros((1, 2), np.int32), np.zeros((1, 2), np.int32))
    batch = _seq2seq_batch()
    batch["encoder_segment_ids"][3] = 0  # a padding row: the targets of row 4 borrow nothing
    stats = jax.jit(lambda b: objectives.seq2seq_stats(model, params, b))(batch)
    rolled = {**batch, **{k: np.roll(batch[k], 1, axis=0) for k in
                          ("encoder_tokens", "encoder_segment_ids", "encoder_positions")}}
    rolled["decoder_weights"] = batch["decoder_weights"] * (np.arange(B) != 4)[:, None]
    expected = jax.jit(lambda b: objectives.seq2seq_stats(model, params, b))(rolled)["loss"]
    np.testing.assert_allclose(np.asarray(stats["shuffled_source_loss"]), np.asarray(expected),
                               rtol=1e-6)
    assert abs(float(stats["shuffled_source_loss"][0] / stats["shuffled_source_loss"][1])
               - float(stats["loss"][0] / stats["loss"][1])) > 1e-4

    class SourceBlind:  # the decoder's own logits whatever the source says
        def apply(self, variables, enc, dec, enc_seg, dec_seg, enc_pos, dec_pos):
            return model.apply(variables, np.ones_like(enc), dec, np.ones_like(enc_seg), dec_seg,
                               enc_pos, dec_pos)

    blind = objectives.seq2seq_stats(SourceBlind(), params, _seq2seq_batch())
    np.testing.assert_allclose(np.asarray(blind["shuffled_source_loss"]),
                               np.asarray(blind["loss"]), rtol=1e-6)


def test_bleu_scores_short_targets_and_matches_sacrebleu_on_text():
    import sacrebleu

    from train.bleu import _scores
    # Three-word targets have no 4-grams: plain corpus BLEU is 0 even for 3 of 4 exact answers.
    hyps, refs = ["9 March 1987", "1 May 2000", "3 June 1999", "7 July 1901"], \
        ["9 March 1987", "1 May 2000", "3 June 1999", "8 July 1901"]
    assert sacrebleu.corpus_bleu(hyps, [refs]).score == 0.0
    bleu, exact = _scores(hyps, refs)
    assert exact == 0.75 and 70.0 < bleu < 100.0
    # Where every order occurs it is sacrebleu's default score exactly.
    hyps = ["def split(self, sep, maxsplit) returns parts", "the quick brown fox jumps"]
    refs = ["def split(self, sep, maxsplit) returns pieces", "the quick brown fox leaps"]
    assert _scores(hyps, refs)[0] == sacrebleu.corpus_bleu(hyps, [refs]).score
