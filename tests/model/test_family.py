"""model/family.py: each preset's family object builds its network, reads its inputs and scores
logits of the right shape; an encoder-decoder's logits depend on the source; the FLOP counts are
the documented formulas; and no product module outside model/ branches on the family name."""

import os
import re
import subprocess

import jax
import numpy as np
import pytest

from model import sharding
from model.config import get_preset
from model.family import FAMILIES, family_of

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("preset, name, inputs, generates", [
    ("tiny", "decoder", 1, "causal"),
    ("tiny_bert", "encoder", 1, ""),
    ("tiny_t5", "encoder_decoder", 2, "seq2seq"),
])
def test_each_family_builds_and_scores(preset, name, inputs, generates):
    cfg = get_preset(preset)
    family = family_of(cfg)
    assert family is FAMILIES[name] and len(family.inputs) == inputs
    assert family.generates == generates
    assert family_of(get_preset(family.example_preset)) is family
    model = family.build(cfg)
    params = sharding.unbox(model.init(jax.random.key(0), *family.init_inputs()))
    tokens = np.arange(3 * 6, dtype=np.int32).reshape(3, 6) % cfg.vocab_size
    logits = family.logits(model, params, *(tokens,) * inputs)
    assert logits.shape == (3, 6, cfg.vocab_size)
    assert np.isfinite(np.asarray(logits)).all()


def test_encoder_decoder_logits_read_the_source():
    cfg = get_preset("tiny_t5")
    family = family_of(cfg)
    model = family.build(cfg)
    params = sharding.unbox(model.init(jax.random.key(0), *family.init_inputs()))
    rng = np.random.default_rng(0)
    source = rng.integers(4, cfg.vocab_size, (2, 8)).astype(np.int32)
    target = rng.integers(4, cfg.vocab_size, (2, 5)).astype(np.int32)
    other = source.copy()
    other[:, 3] = (other[:, 3] + 1) % cfg.vocab_size
    a = np.asarray(family.logits(model, params, source, target))
    b = np.asarray(family.logits(model, params, other, target))
    assert np.abs(a - b).max() > 1e-4


def test_flop_counts_are_the_documented_formulas():
    cfg = get_preset("tiny")
    n = cfg.num_params(include_embeddings=False) + cfg.vocab_size * cfg.d_model
    attention = 12 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * 128
    assert family_of(cfg).train_flops_per_token(cfg, 128) == 6 * n + attention
    # An encoder-decoder with no target tokens costs a source token the encoder's matmuls plus the
    # decoder's cross-attention key/value projections, and attention over the source.
    t5 = get_preset("tiny_t5")
    d, h, kv, hd = t5.d_model, t5.num_heads, t5.num_kv_heads, t5.resolved_head_dim
    per_source = t5.num_layers * (2 * d * h * hd + 2 * d * kv * hd + 3 * d * t5.mlp_dim)
    per_source += t5.decoder_layers * 2 * d * kv * hd
    expected = 6 * per_source + 12 * h * hd * t5.num_layers * 64
    assert family_of(t5).train_flops_per_token(t5, 64, 0) == pytest.approx(expected)


def test_the_family_is_decided_once():
    """`cfg.family == ...` belongs to model/ (config validation, the family table, the HF
    architecture map); train/, data/, infer/ and benchmarks/ ask the family object."""
    files = subprocess.run(["git", "ls-files", "train", "data", "infer", "benchmarks", "runtime"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    branch = re.compile(r"\.family\s*(==|!=|in\b|not in\b)|family\s*(==|!=)\s*[\"']")
    found = []
    for path in files:
        if path.endswith(".py"):
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                found += [f"{path}:{i}" for i, line in enumerate(f, 1) if branch.search(line)]
    assert not found, found
