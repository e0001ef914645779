"""infer/timing/roofline.py: the work formulas count a gated MLP (SwiGLU and GeGLU alike) as three
matrices and a plain one as two, and the device peaks come from runtime/hardware.py."""

import pytest

from infer.timing.roofline import component_work, device_peaks
from model.config import get_preset
from runtime import hardware


@pytest.mark.parametrize("activation, matrices", [("swiglu", 3), ("geglu", 3), ("gelu", 2),
                                                  ("relu", 2)])
def test_mlp_flops_count_every_matrix(activation, matrices):
    cfg = get_preset("tiny").replace(activation=activation)
    work = component_work(cfg, batch=2, queries=3, context=8)["mlp"]
    assert work.flops == 2 * matrices * cfg.d_model * cfg.mlp_dim * 2 * 3 * cfg.num_layers


def test_cpu_peaks_are_the_hardware_tables():
    peaks = device_peaks("float32")
    assert peaks.flops == hardware.peak_flops()
    assert peaks.flops_source == hardware.CPU_FLOPS_SOURCE
    assert peaks.bandwidth > 1e8 and "measured" in peaks.bandwidth_source
