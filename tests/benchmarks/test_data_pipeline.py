"""Smoke run of benchmarks/data_pipeline.py at tiny sizes: every measurement is recorded, finite
and positive, and the prepared shards hold exactly the tokens the tokenizer encodes."""

import json
import math
import subprocess
import sys


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_smoke_run_records_every_measurement(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.data_pipeline", "--smoke",
                           f"--out={out}", f"--tmp={tmp_path / 'scratch'}"],
                          capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert {"device", "versions"} <= set(results)
    run = results["runs"][-1]
    assert run["benchmark"] == "data_pipeline" and run["config"]["smoke"]
    assert "git_revision" in run and "--smoke" in run["command"]
    memory = run["memory"]
    for kind in ("prepared", "raw"):
        for size in ("small", "large"):
            assert _positive(memory[kind][size]["peak_rss_mb"])
            assert _positive(memory[kind][size]["wall_s"])
    small, large = memory["prepared"]["small"], memory["prepared"]["large"]
    assert large["tokens"] > 5 * small["tokens"] > 0
    assert math.isfinite(memory["prepared_rss_diff_mb"])
    loader = run["loader"]
    assert loader["batch_shape_ok"]
    for key in ("tokens_per_s_per_core", "window_only_tokens_per_s", "batch_only_tokens_per_s",
                "cpu_bandwidth_bytes_per_s", "fraction_of_bandwidth"):
        assert _positive(loader[key]), key
    assert loader["batch_profile"] and loader["pipeline_profile"]
    prepare = run["prepare"]
    assert _positive(prepare["encode_tokens_per_s"]["median"])
    for workers in ("1", "2"):
        w = prepare["workers"][workers]
        assert w["tokens_equal_encoded"] and w["tokens"] == [prepare["encoded_tokens"]]
        assert _positive(w["tokens_per_s_per_worker"]) and _positive(w["ratio_to_encode"])
        assert _positive(w["cores_used"]["median"])
        assert math.isfinite(w["other_load_cores"]["median"])
    assert _positive(prepare["scaling_1_to_2"])
    assert set(run["met"]) == {"memory", "loader", "prepare"}
    assert not (tmp_path / "scratch" / "prepared-large").exists()  # big dirs removed as it goes
