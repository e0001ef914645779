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



def _side(per_token_by_round):
    """A side whose run of n tokens takes 0.1 s + n * that round's per-token time (the warm-up's
    calls use the first round's)."""
    calls = iter([t for t in [per_token_by_round[0], *per_token_by_round] for _ in (1, 2)])
    return lambda n: 0.1 + next(calls) * n


def test_a_ratio_is_the_ratio_of_the_medians_shown():
    # Rounds where load hit the sides differently: ours none decodes at 100, 50, 25 tok/s,
    # ours int8 at 50, 25, 200. Medians 50 and 50: the ratio shown must be 1.0, where the median
    # of per-round ratios (0.5, 0.5, 8) would say 0.5.
    sides = {"ours none": _side([0.01, 0.02, 0.04]), "ours int8": _side([0.02, 0.04, 0.005])}
    out = measure(sides, batch=1, new_tokens=9, repeats=3)
    assert out["ours none"]["decode_tokens_per_s"] == pytest.approx(50)
    assert out["ours int8"]["decode_tokens_per_s"] == pytest.approx(50)
    assert out["ours int8"]["decode_tokens_per_s_min"] == pytest.approx(25)
    assert out["ours int8"]["decode_tokens_per_s_max"] == pytest.approx(200)
    assert out["ours int8"]["ratio_to_ours_fp32"] == pytest.approx(1.0)
    assert out["ours int8"]["ratio_per_round"] == pytest.approx([0.5, 0.5, 8.0])
