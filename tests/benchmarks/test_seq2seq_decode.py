"""Smoke run of benchmarks/seq2seq_decode.py on tiny_t5: both paths run, give the same tokens,
and every timing recorded is finite and positive."""

import json
import math
import subprocess
import sys


def test_smoke_run_records_both_paths(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.seq2seq_decode", "--smoke",
                           f"--out={out}"], capture_output=True, text=True, check=False,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(out.read_text())["runs"][-1]
    assert run["benchmark"] == "seq2seq_decode" and run["config"]["smoke"]
    assert set(run["results"]) == {"1", "2"}
    for result in run["results"].values():
        assert result["outputs_equal"]
        for path in ("old", "new"):
            assert result["compile_s"][path] > 0
            for kind in ("decode_tokens_per_s", "end_to_end_tokens_per_s"):
                spread = result[path][kind]
                assert all(math.isfinite(v) and v > 0 for v in spread.values())
                assert spread["min"] <= spread["median"] <= spread["max"]
        ratio = result["ratio_new_to_old"]["decode"]
        assert ratio["of_medians"] == (result["new"]["decode_tokens_per_s"]["median"]
                                       / result["old"]["decode_tokens_per_s"]["median"])
