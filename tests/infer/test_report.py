"""infer.report: the sweep measures every point, the parts add up to the step, our FLOP formulas
agree with XLA's own count, prefill outruns decode per token, and bad input writes nothing."""

import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import pytest

from infer.engine.sampling import Sampling
from infer.timing.components import COMPONENTS, Shape, component_programs, per_step_count
from infer.timing.components import _cost as xla_cost
from infer.timing.roofline import component_work
from infer.timing.timed_model import random_loaded
from model import sharding
from model.config import get_preset

GRID = ["--contexts=16,32", "--batch_sizes=1,2", "--batch=1", "--context=16", "--repeats=1",
        "--target_ms=2"]


def _report(*args):
    # One device: the report studies a single device, and batch 1 cannot split over 8.
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "infer.report", *args], capture_output=True,
                          text=True, timeout=600, check=False, env=env)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    result = _report("--preset=tiny", *GRID, f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_every_point_is_measured(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    got = {(p["phase"], p["batch"], p["context"]) for p in report["points"]}
    want = {(phase, b, c) for phase in ("decode", "prefill") for b, c in ((1, 16), (1, 32), (2, 16))}
    assert got == want
    for p in report["points"]:
        assert p["step_device_s"] > 0 and p["step_host_s"] > 0
        times = [p["components"][n]["time_s"] for n in COMPONENTS]
        assert all(math.isfinite(t) and t >= 0 for t in times)
        assert sum(times) > 0
        assert math.isclose(sum(times) + p["unattributed_s"], p["step_device_s"], rel_tol=1e-9)
        assert p["tokens_per_step"] == p["batch"] * (p["context"] if p["phase"] == "prefill" else 1)
    # A CPU's FLOP/s peak is a nominal figure, its bandwidth measured (runtime/hardware.py).
    assert report["device"]["peak_flops"] > 0 and report["device"]["peak_flops_source"]
    assert report["device"]["bandwidth"] > 0 and "measured" in report["device"]["bandwidth_source"]


def test_prefill_processes_tokens_faster_than_decode(report_dir):
    points = json.loads((report_dir / "report.json").read_text())["points"]
    by = {(p["phase"], p["batch"], p["context"]): p for p in points}
    # 32 prompt tokens in one step against one token per step: prefill is the batched half.
    assert by["prefill", 1, 32]["tokens_per_s"] > by["decode", 1, 32]["tokens_per_s"]
    # Decode is memory-bound and prefill compute-bound (on our formulas) at any size.
    assert by["decode", 1, 32]["step_formula"]["intensity"] < by["prefill", 1, 32][
        "step_formula"]["intensity"]


def test_markdown_and_plots(report_dir):
    text = (report_dir / "report.md").read_text()
    for heading in ("## What the numbers say", "## Decode across context (batch 1)",
                    "## Decode across batch (context 16)", "## Prefill across context (batch 1)",
                    "## Roofline: decode, batch 1, context 16"):
        assert heading in text
    for name in ("components.png", "throughput_vs_batch.png", "latency_vs_context.png",
                 "roofline.png"):
        data = (report_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert f"]({name})" in text


@pytest.mark.parametrize("preset", ["tiny", "tiny_gpt"])
@pytest.mark.parametrize("phase, queries", [("decode", 1), ("prefill", 16)])
def test_formulas_agree_with_xla_cost_analysis(preset, phase, queries):
    cfg = get_preset(preset)
    loaded = random_loaded(cfg, "", 0, devices=jax.devices()[:1])  # XLA counts per device
    shape = Shape(phase, 2, 16)
    formula = component_work(cfg, 2, queries, 16)
    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        programs = component_programs(cfg, loaded.params, shape, Sampling())
        for name in ("attention", "mlp", "output"):
            _, args, carry, one_call, *single = programs[name]
            flops = per_step_count(cfg, name) * xla_cost(one_call, *(single or (args, carry)))[
                "flops"]
            # XLA also counts softmax, rotary and bias adds; the matmuls dominate.
            assert formula[name].flops == pytest.approx(flops, rel=0.15), name


@pytest.mark.parametrize("args, message", [
    (["--preset=tiny"], "--out"),
    (["--preset=tiny", "--checkpoint=CKPT", "--out=OUT"], "exactly one"),
    (["--preset=tiny", "--contexts=0,16", "--out=OUT"], "contexts"),
    (["--preset=tiny", "--batch_sizes=a", "--out=OUT"], "batch_sizes"),
    (["--preset=tiny", "--top_p=0", "--out=OUT"], "top_p"),
    (["--checkpoint=CKPT", "--contexts=4096", "--out=OUT"], "exceeds"),
    (["--preset=nope", "--out=OUT"], "unknown preset"),
])
def test_bad_input_is_one_line_and_writes_nothing(workdir, tmp_path, args, message):
    out = tmp_path / "out"
    args = [a.replace("CKPT", workdir).replace("OUT", str(out)) for a in args]
    result = _report(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()
