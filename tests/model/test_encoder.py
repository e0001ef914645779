"""Encoders (BERT's, and the encoder half of T5 / Vaswani): bidirectional, blind to padding,
packed documents isolated, heads computed as documented."""

import jax
import numpy as np
import pytest

from model.encoder_decoder import EncoderDecoder

PRESETS = ["tiny_bert", "tiny_t5", "tiny_transformer"]  # learned / relative / sinusoidal


def _encoder(cfg, model, params):
    """encode(tokens, segment_ids, positions) -> hidden [batch, length, embed], jitted."""
    if cfg.family == "encoder":
        def encode(tokens, segments=None, positions=None):
            return model.apply(params, tokens, positions, segments)["hidden"]
    else:
        def encode(tokens, segments=None, positions=None):
            return model.apply(params, tokens, segments, positions, method=EncoderDecoder.encode)
    return jax.jit(encode)


@pytest.mark.parametrize("preset", PRESETS)
def test_padding_content_does_not_reach_real_positions(tiny, preset):
    encode = _encoder(*tiny(preset))
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 512, (2, 12)).astype(np.int32)
    segments = np.ones_like(tokens)
    segments[0, 7:] = 0  # row 0: 7 real tokens, then padding
    segments[1, 10:] = 0
    base = np.asarray(encode(tokens, segments))
    other = tokens.copy()
    other[0, 7:] = rng.integers(1, 512, 5)
    other[1, 10:] = 0
    changed = np.asarray(encode(other, segments))
    np.testing.assert_allclose(changed[0, :7], base[0, :7], atol=1e-6)
    np.testing.assert_allclose(changed[1, :10], base[1, :10], atol=1e-6)
    # Bidirectional: a change at the last real token reaches the first one.
    other[0, 6] = (tokens[0, 6] + 1) % 512
    assert np.abs(np.asarray(encode(other, segments))[0, 0] - base[0, 0]).max() > 1e-4


@pytest.mark.parametrize("preset", ["tiny_bert", "tiny_t5"])
def test_packed_row_equals_documents_run_alone(tiny, preset):
    encode = _encoder(*tiny(preset))
    rng = np.random.default_rng(1)
    lengths = [5, 7, 4]
    docs = [rng.integers(1, 512, n).astype(np.int32) for n in lengths]
    tokens = np.concatenate(docs)[None]
    segments = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)])[None]
    positions = np.concatenate([np.arange(n) for n in lengths])[None]
    packed = np.asarray(encode(tokens, segments, positions))
    # Each document alone in its own row (padded to one length: padding is tested above).
    alone_tokens = np.zeros((len(docs), max(lengths)), np.int32)
    alone_segments = np.zeros_like(alone_tokens)
    for row, doc in enumerate(docs):
        alone_tokens[row, :len(doc)], alone_segments[row, :len(doc)] = doc, 1
    alone = np.asarray(encode(alone_tokens, alone_segments))
    start = 0
    for row, doc in enumerate(docs):
        np.testing.assert_allclose(packed[0, start:start + len(doc)], alone[row, :len(doc)],
                                   atol=1e-5)
        start += len(doc)


def test_bert_heads_are_the_documented_functions(tiny):
    """pooled = tanh(hidden[:, 0] @ W + b); class_logits = pooled @ Wc + bc; MLM logits use
    the tied token table plus a bias; token types change the result."""
    _, model, params = tiny("tiny_bert")
    params = jax.tree.map(lambda x: x + 0.01, params)  # zero-initialised biases would hide bugs
    p = params["params"]
    apply = jax.jit(model.apply)
    tokens = np.random.default_rng(2).integers(1, 512, (3, 9)).astype(np.int32)
    out = apply(params, tokens)
    assert set(out) == {"hidden", "logits", "pooled", "class_logits"}
    assert out["logits"].shape == (3, 9, 512) and out["class_logits"].shape == (3, 2)
    first = np.asarray(out["hidden"])[:, 0]
    pooled = np.tanh(first @ np.asarray(p["pooler"]["kernel"]) + np.asarray(p["pooler"]["bias"]))
    np.testing.assert_allclose(out["pooled"], pooled, atol=1e-5)
    labels = pooled @ np.asarray(p["classifier"]["kernel"]) + np.asarray(p["classifier"]["bias"])
    np.testing.assert_allclose(out["class_logits"], labels, atol=1e-5)
    # MLM: changing only the output bias of token 7 moves only column 7 of the logits.
    bumped = {"params": dict(p)}
    bumped["params"]["mlm_bias"] = p["mlm_bias"] + (np.arange(512) == 7)
    delta = np.asarray(apply(bumped, tokens)["logits"] - out["logits"])
    np.testing.assert_allclose(delta[..., 7], 1.0, atol=1e-5)
    np.testing.assert_allclose(np.delete(delta, 7, axis=-1), 0.0, atol=1e-6)
    typed = apply(params, tokens, None, None, np.ones_like(tokens))
    assert np.abs(np.asarray(typed["hidden"] - out["hidden"])).max() > 1e-3
