"""Position encodings against hand-checked numbers: T5's relative buckets, Vaswani's sinusoids."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import sharding
from model.attention import RelativeBias, relative_bucket
from model.config import get_preset
from model.layers import sinusoidal

# offset = key position - query position -> bucket, with T5's 32 buckets and max distance 128,
# worked out by hand from the definition: exact below half the buckets (per direction), then
# max_exact + floor(log(n / max_exact) / log(128 / max_exact) * (buckets - max_exact)), capped.
BIDIRECTIONAL = {  # 16 buckets per direction, 8 exact; keys after the query add 16
    0: 0, -1: 1, -7: 7, -8: 8,
    -16: 10,  # 8 + floor(log 2 / log 16 * 8) = 8 + 2
    -64: 14,  # 8 + floor(log 8 / log 16 * 8) = 8 + 6
    -90: 14,  # 8 + floor(0.873 * 8)
    -100: 15,  # 8 + floor(0.911 * 8)
    -128: 15, -1000: 15,  # capped at the last bucket
    1: 17, 8: 24,
    20: 26,  # 16 + 8 + floor(log 2.5 / log 16 * 8) = 16 + 8 + 2
}
CAUSAL = {  # 32 buckets for the past, 16 exact; the future shares bucket 0
    5: 0, 0: 0, -3: 3, -15: 15, -16: 16,
    -32: 21,  # 16 + floor(log 2 / log 8 * 16) = 16 + 5
    -64: 26,  # 16 + floor(log 4 / log 8 * 16) = 16 + 10
    -100: 30,  # 16 + floor(log 6.25 / log 8 * 16) = 16 + 14
    -127: 31, -128: 31, -200: 31,
}


@pytest.mark.parametrize("bidirectional,table", [(True, BIDIRECTIONAL), (False, CAUSAL)])
def test_relative_bucket_matches_hand_table(bidirectional, table):
    offsets = jnp.array(list(table), jnp.int32)
    got = relative_bucket(offsets, bidirectional, num_buckets=32, max_distance=128)
    np.testing.assert_array_equal(np.asarray(got), np.array(list(table.values())))


def test_relative_bias_reads_each_heads_bucket():
    """bias[b, h, q, k] == table[bucket(k - q), h]: per-head scalars indexed by the offset."""
    cfg = get_preset("tiny_t5")
    module = RelativeBias(cfg, bidirectional=True)
    positions = jnp.array([[0, 1, 2, 40]], jnp.int32)
    params = sharding.unbox(module.init(jax.random.key(0), positions, positions))
    table = np.asarray(params["params"]["embedding"])
    bias = np.asarray(module.apply(params, positions, positions))
    assert bias.shape == (1, cfg.num_heads, 4, 4)
    # Positions 40 and 0 are 40 apart: 8 + floor(log 5 / log 16 * 8) = 12, + 16 looking ahead.
    for q, k, bucket in [(0, 1, 17), (1, 0, 1), (3, 0, 12), (0, 3, 28), (2, 2, 0)]:
        np.testing.assert_array_equal(bias[0, :, q, k], table[bucket])


def test_sinusoidal_matches_vaswani_formula():
    """PE(pos, 2i) = sin(pos / 10000^(2i / d)), PE(pos, 2i + 1) = cos(pos / 10000^(2i / d))."""
    d = 64
    positions = jnp.array([[0, 1, 7, 50]], jnp.int32)
    pe = np.asarray(sinusoidal(positions, d))[0]
    assert pe.shape == (4, d)
    for row, pos in enumerate([0, 1, 7, 50]):
        for i in (0, 1, 5, 31):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[row, 2 * i] == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[row, 2 * i + 1] == pytest.approx(math.cos(angle), abs=1e-5)
    np.testing.assert_allclose(pe[0], np.tile([0.0, 1.0], d // 2))  # position 0
