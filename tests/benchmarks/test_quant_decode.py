"""benchmarks/quant_decode's arithmetic on sides with known times (real timings are the
benchmark's job): decode tokens/s is (n-token run - 1-token run) per token, ratios are to our
unquantized model and named by its dtype."""

import pytest

from benchmarks.quant_decode import measure


def test_decode_rate_and_ratio_from_known_times():
    # A run of n tokens takes prefill + n * per-token seconds.
    sides = {"ours none": lambda n: 0.1 + 0.01 * n, "ours int8": lambda n: 0.1 + 0.005 * n,
             "hf fp32": lambda n: 0.2 + 0.02 * n, "hf int8": lambda n: 0.2 + 0.01 * n}
    out = measure(sides, batch=2, new_tokens=9, repeats=3, base="bf16")
    assert out["ours none"]["decode_tokens_per_s"] == pytest.approx(2 / 0.01)
    assert out["ours int8"]["decode_tokens_per_s"] == pytest.approx(2 / 0.005)
    assert out["ours int8"]["ratio_to_ours_bf16"] == pytest.approx(2.0)
    assert out["hf fp32"]["ratio_to_ours_bf16"] == pytest.approx(0.5)
    assert out["hf int8"]["ratio_to_hf_fp32"] == pytest.approx(2.0)
    assert out["ours none"]["ratio_per_round"] == [1.0, 1.0, 1.0]
