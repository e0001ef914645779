"""benchmarks/generate_startup.py on a tiny workdir: cold and warm runs (which it checks print
the same text) are both timed and recorded. Real timings are a benchmark, not a test."""

import json
import subprocess
import sys

from train.flags import TrainConfig
from train.loop import train


def test_one_round_records_cold_and_warm(tmp_path):
    cfg = TrainConfig(preset="tiny", vocab_size=512, seq_len=32, batch_size=8, steps=2,
                      warmup_steps=1, log_every=1, eval_every=0, save_every=2,
                      workdir=str(tmp_path / "run"))
    train(cfg)
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.generate_startup",
                           f"--checkpoint={cfg.workdir}", "--rounds=1", "--max_new_tokens=4",
                           f"--out={out}"], capture_output=True, text=True, check=False,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = json.loads(out.read_text())["runs"]
    assert run["output"].startswith("def ") and len(run["output"]) > len("def ")
    for kind in ("cold", "warm"):
        ttft, total = run[kind]["ttft_s"], run[kind]["total_s"]
        assert run[kind]["ttft_s"]["n"] == 1 and 0 < ttft["median"] <= total["median"]
    assert run["ttft_cold_over_warm"] > 0


def test_a_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.generate_startup",
                           f"--checkpoint={tmp_path}/nope", f"--out={tmp_path}/r.json"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: ")
    assert not (tmp_path / "r.json").exists()
