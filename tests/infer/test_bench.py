"""infer.bench: a random-init preset and a trained checkpoint both yield finite, ordered latency
numbers per batch size; bad inputs are one line on stderr, exit 2, no JSON."""

import json
import math
import os
import subprocess
import sys

import pytest

SMALL = ["--batch_sizes=1,2", "--prompt_len=8", "--new_tokens=4", "--repeats=1"]


def _bench(*args):
    # One device: the benchmark measures a single device, and batch 1 cannot split over 8.
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "infer.bench", *args], capture_output=True,
                          text=True, timeout=300, check=False, env=env)


def _check_results(path, batch_sizes):
    record = json.loads(path.read_text())
    assert {"device", "versions", "command", "config", "results"} <= set(record)
    assert [r["batch_size"] for r in record["results"]] == batch_sizes
    for r in record["results"]:
        for key in ("ttft_s", "tpot_s", "itl_p50_s", "itl_p99_s", "tokens_per_s",
                    "overall_tokens_per_s", "mbu", "prefill_mfu"):
            assert math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert r["itl_p99_s"] >= r["itl_p50_s"]
        assert r["memory"]["peak_bytes"] > 0 and r["memory"]["source"]
    return record


def test_preset_reports_every_batch_size(tmp_path):
    out = tmp_path / "bench.json"
    result = _bench("--preset=tiny", *SMALL, f"--json={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    record = _check_results(out, [1, 2])
    assert "device" in result.stdout and record["device"]["platform"] in result.stdout
    assert record["config"]["model"]["max_len"] >= 12


def test_checkpoint_is_measured(workdir, tmp_path):
    out = tmp_path / "bench.json"
    result = _bench(f"--checkpoint={workdir}", "--batch_sizes=2", "--prompt_len=8",
                    "--new_tokens=4", "--repeats=1", f"--json={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    _check_results(out, [2])


@pytest.mark.parametrize("args, message", [
    (["--preset=tiny", "--checkpoint=CKPT"], "exactly one"),
    ([], "exactly one"),
    (["--preset=tiny", "--quant=int4"], "--quant=int4 is not one of"),
    (["--preset=tiny", "--batch_sizes=0"], "batch_sizes"),
    (["--preset=tiny", "--batch_sizes=1,x"], "batch_sizes"),
    (["--preset=nope"], "unknown preset"),
    (["--preset=tiny", "--new_tokens=0"], "new_tokens"),
    (["--checkpoint=CKPT", "--prompt_len=100", "--new_tokens=100"], "context"),
])
def test_bad_input_is_one_line_and_writes_nothing(workdir, tmp_path, args, message):
    out = tmp_path / "bench.json"
    args = [a.replace("CKPT", workdir) for a in args]
    result = _bench(*args, "--repeats=1", f"--json={out}")
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()
