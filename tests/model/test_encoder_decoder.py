"""Encoder-decoders (T5, Vaswani): cached decode == full forward, packed pairs isolated,
causal decoder, scan == unrolled."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model.config import get_preset
from model.encoder_decoder import EncoderDecoder, init_cache
from model.family import build_model

VOCAB = 512


def _model(tiny, preset, **overrides):
    cfg, model, params = tiny(preset, **overrides)
    if cfg.positions == "relative":
        # At init (std 0.02) the bias barely moves the logits; make it matter, so a wrong
        # bucket, offset or sign in decode could not pass.
        params = {"params": dict(params["params"])}
        for stack in ("encoder", "decoder"):
            tables = {"relpos_bias": {"embedding": params["params"][stack]["relpos_bias"]
                                      ["embedding"] * 100}}
            params["params"][stack] = {**params["params"][stack], **tables}
    return cfg, model, params


def _pairs(rng, batch=2, source=9, target=7):
    encoder_tokens = rng.integers(1, VOCAB, (batch, source)).astype(np.int32)
    encoder_segments = np.ones_like(encoder_tokens)
    encoder_segments[1, 6:] = 0  # a padded source row
    decoder_tokens = rng.integers(1, VOCAB, (batch, target)).astype(np.int32)
    return encoder_tokens, encoder_segments, decoder_tokens


@pytest.mark.parametrize("preset,overrides", [
    ("tiny_t5", ()), ("tiny_transformer", ()),
    ("tiny_t5", (("num_kv_heads", 2), ("scan_layers", False))),  # GQA, unrolled layers
])
def test_cached_decode_equals_full_forward(tiny, preset, overrides):
    """encode once; decoder prefill of 2 tokens projects the cross K/V into the cache; then one
    token a step without `encoded`: every step's logits equal the full forward's."""
    cfg, model, params = _model(tiny, preset, **dict(overrides))
    encoder_tokens, encoder_segments, decoder_tokens = _pairs(np.random.default_rng(0))
    full = jax.jit(model.apply)(params, encoder_tokens, decoder_tokens, encoder_segments)

    encoded = jax.jit(functools.partial(model.apply, method=EncoderDecoder.encode))(
        params, encoder_tokens, encoder_segments)
    decode = jax.jit(functools.partial(model.apply, method=EncoderDecoder.decode))
    cache = init_cache(cfg, batch=2, length=decoder_tokens.shape[1])
    logits, cache = decode(params, decoder_tokens[:, :2], encoded, encoder_segments, cache=cache,
                           cache_index=0)
    steps = [logits]
    for t in range(2, decoder_tokens.shape[1]):
        logits, cache = decode(params, decoder_tokens[:, t:t + 1], None, encoder_segments,
                               cache=cache, cache_index=t)
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5)

    layers = cfg.decoder_layers
    assert cache["self"]["k"].shape == (layers, 2, cfg.num_kv_heads, 7, cfg.resolved_head_dim)
    assert cache["cross"]["k"].shape == (layers, 2, cfg.num_kv_heads, 9, cfg.resolved_head_dim)
    # The cached cross keys of the last layer are that layer's key projection of `encoded`.
    decoder = params["params"]["decoder"]["layers"]
    cross = decoder[f"layer_{layers - 1}"] if "layer_0" in decoder else jax.tree.map(
        lambda x: x[layers - 1], decoder)
    keys = np.einsum("ble,ehd->blhd", encoded, cross["cross_attention"]["key_kernel"])
    if cfg.use_bias:
        keys = keys + cross["cross_attention"]["key_bias"]
    keys = keys.swapaxes(1, 2)  # the cache's layout: [batch, kv_heads, length, head_dim]
    np.testing.assert_allclose(cache["cross"]["k"][layers - 1], keys, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny_t5", "tiny_transformer"])
def test_packed_pairs_equal_pairs_alone_and_decoder_is_causal(tiny, preset):
    """Two (source, target) pairs packed into one row give each target the logits it has alone:
    cross-attention keeps to its segment, positions restart. The decoder never sees ahead."""
    _, model, params = _model(tiny, preset)
    apply = jax.jit(model.apply)
    rng = np.random.default_rng(1)
    sources = [rng.integers(1, VOCAB, n).astype(np.int32) for n in (5, 6)]
    targets = [rng.integers(1, VOCAB, n).astype(np.int32) for n in (4, 3)]

    def packed(parts):
        tokens = np.concatenate(parts)[None]
        segments = np.concatenate([np.full(len(p), i + 1) for i, p in enumerate(parts)])[None]
        positions = np.concatenate([np.arange(len(p)) for p in parts])[None]
        return tokens, segments, positions

    (enc, enc_seg, enc_pos), (dec, dec_seg, dec_pos) = packed(sources), packed(targets)
    together = apply(params, enc, dec, enc_seg, dec_seg, enc_pos, dec_pos)
    start = 0
    for source, target in zip(sources, targets, strict=True):
        alone = apply(params, source[None], target[None])
        np.testing.assert_allclose(together[0, start:start + len(target)], alone[0], atol=1e-5)
        start += len(target)

    changed = dec.copy()
    changed[0, 2] = (changed[0, 2] + 1) % VOCAB
    after = apply(params, enc, changed, enc_seg, dec_seg, enc_pos, dec_pos)
    np.testing.assert_array_equal(after[0, :2], together[0, :2])
    assert np.abs(after[0, 2:4] - together[0, 2:4]).max() > 1e-4
    np.testing.assert_allclose(after[0, 4:], together[0, 4:], atol=1e-6)  # the other pair


def test_scan_equals_unrolled(tiny):
    cfg, scanned, params = _model(tiny, "tiny_t5")
    unrolled = build_model(cfg.replace(scan_layers=False))
    unrolled_params = {"params": dict(params["params"])}
    for stack in ("encoder", "decoder"):
        layers = params["params"][stack]["layers"]
        unrolled_params["params"][stack] = dict(params["params"][stack], layers={
            f"layer_{i}": jax.tree.map(lambda x, i=i: x[i], layers) for i in range(cfg.num_layers)})
    encoder_tokens, encoder_segments, decoder_tokens = _pairs(np.random.default_rng(2))
    args = (encoder_tokens, decoder_tokens, encoder_segments)
    np.testing.assert_allclose(jax.jit(scanned.apply)(params, *args),
                               jax.jit(unrolled.apply)(unrolled_params, *args), atol=1e-5)


def test_decode_without_encoder_keys_is_refused(tiny):
    cfg, model, params = _model(tiny, "tiny_transformer")
    with pytest.raises(ValueError, match="encoded"):
        model.apply(params, jnp.ones((1, 1), jnp.int32), cache=init_cache(cfg, 1, 4),
                    cache_index=0, method=EncoderDecoder.decode)


@pytest.mark.parametrize("preset", ["tiny_t5", "tiny_transformer"])
def test_decoder_logits_read_the_source_and_not_its_padding(tiny, preset):
    """Changing one real source token changes every target position's logits (cross-attention
    reads the encoder); changing a padding token of the source (segment 0) changes nothing."""
    _, model, params = _model(tiny, preset)
    apply = jax.jit(model.apply)
    enc, enc_seg, dec = _pairs(np.random.default_rng(2))
    dec_seg = np.ones_like(dec)
    base = np.asarray(apply(params, enc, dec, enc_seg, dec_seg))
    real = enc.copy()
    real[1, 2] = (real[1, 2] + 1) % VOCAB
    moved = np.asarray(apply(params, real, dec, enc_seg, dec_seg))
    assert (np.abs(moved[1] - base[1]).max(axis=-1) > 1e-5).all()  # every target position
    np.testing.assert_array_equal(moved[0], base[0])  # the other row untouched
    padding = enc.copy()
    padding[1, 7] = (padding[1, 7] + 1) % VOCAB  # row 1's source is padding from 6 on
    np.testing.assert_allclose(np.asarray(apply(params, padding, dec, enc_seg, dec_seg)), base,
                               atol=1e-6)


@pytest.mark.parametrize("preset,scaled", [("tiny_t5", True), ("tiny_t5", False),
                                           ("tiny_transformer", True)])
def test_fan_in_init_scales_every_matrix_by_its_fan_in(tiny, preset, scaled):
    """--param_init=fan_in (every encoder-decoder preset's default): each matrix N(0, 1/fan_in),
    the query also /sqrt(head_dim) where logits are unscaled (an imported T5), tables at unit RMS
    after any sqrt(d) scaling; normal is N(0, 0.02)."""
    cfg, _, params = tiny(preset, param_init="fan_in", d_model=128, mlp_dim=512,
                          scale_attention=scaled)
    layer = params["params"]["decoder"]["layers"]
    d, hd = cfg.d_model, cfg.resolved_head_dim
    q_gain = 1.0 if cfg.scale_attention else hd ** -0.5
    expected = {("cross_attention", "query_kernel"): q_gain * d ** -0.5,
                ("cross_attention", "key_kernel"): d ** -0.5,
                ("attention", "out_kernel"): (cfg.num_heads * hd) ** -0.5,
                ("mlp", "wi", "kernel"): d ** -0.5, ("mlp", "wo", "kernel"): cfg.mlp_dim ** -0.5}
    for path, std in expected.items():
        value = layer
        for key in path:
            value = value[key]
        np.testing.assert_allclose(np.std(value), std, rtol=0.05, err_msg=str(path))
    embed_std = d ** -0.5 if cfg.scale_embeddings else 1.0
    np.testing.assert_allclose(np.std(params["params"]["embed"]["embedding"]), embed_std, rtol=0.05)
    _, _, normal = tiny(preset, param_init="normal", d_model=128, mlp_dim=512)
    np.testing.assert_allclose(np.std(normal["params"]["embed"]["embedding"]), 0.02, rtol=0.05)
    assert get_preset(preset).param_init == "fan_in" and get_preset(preset).scale_attention
    assert get_preset("tiny_llama").param_init == get_preset("tiny_bert").param_init == "normal"
