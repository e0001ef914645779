"""benchmarks/train_throughput.py on a tiny GPT-2 shape: the HF peer holds our weights and
computes our loss, rounds alternate, the JSON merges, and bad input is one line with exit code 2.
Real timings are a benchmark, not a test."""

import json
import subprocess
import sys
import time

import pytest

from benchmarks import record
from benchmarks import train_throughput as tt
from train.flags import TrainConfig


def test_peer_holds_our_weights_and_computes_our_loss(tmp_path):
    pytest.importorskip("transformers")
    cfg = tt.model_config("tiny_gpt", 16, "float32", num_layers=2)
    train_cfg = TrainConfig(steps=4, warmup_steps=1)
    batch = tt.synthetic_batch(8, 16, cfg.vocab_size, seed=0)
    ours_step, ours, initial = tt.build_ours(cfg, train_cfg, batch, "")
    peer_step, peer = tt.build_hf_peer(cfg, train_cfg, batch["tokens"], initial)
    assert ours["params"] == peer["params"] == cfg.num_params()  # same shape on both sides
    # Same weights, same batch, same loss: equal to float rounding (a random-init peer is ~0.1 off).
    assert abs(ours["first_loss"] - peer["first_loss"]) < 1e-5 * ours["first_loss"]
    assert tt.losses_agree(ours["first_loss"], peer["first_loss"], "float32")
    times = tt.paired_steps({"ours": ours_step, "peer": peer_step}, warmup=0, steps=1)
    assert len(times["ours"]) == len(times["peer"]) == 1
    out = tmp_path / "r.json"
    for i in range(2):
        record.merge_into(str(out), {"i": i}, {"device": record.device_info(),
                                               "versions": record.versions()})
    assert [r["i"] for r in json.loads(out.read_text())["runs"]] == [0, 1]


def test_llama_shape_skips_the_gpt2_peer():
    cfg = tt.model_config("tiny_llama", 16, "float32")
    step, facts = tt.build_hf_peer(cfg, TrainConfig(), None, None)
    assert step is None and "skipped" in facts


def test_rounds_alternate_which_side_runs_first():
    order = []
    sides = {name: (lambda name=name: order.append(name)) for name in ("a", "b")}
    times = tt.paired_steps(sides, warmup=1, steps=4)
    assert order == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert all(len(t) == 4 for t in times.values())


def test_bad_preset_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--preset=nope",
                           f"--out={out}"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown preset")
    assert not out.exists()


@pytest.mark.parametrize("script", ["train_throughput", "generate_throughput", "quant_decode"])
def test_a_bad_results_file_is_refused_before_timing_and_kept(script, tmp_path):
    out = tmp_path / "r.json"
    out.write_text('{"not": "runs"}')
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{script}", f"--out={out}"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: --out={out} exists but is "
                                                            "not a results file")
    assert out.read_text() == '{"not": "runs"}'


_WRITER = """
import sys, time
from benchmarks import record
time.sleep(max(0.0, float(sys.argv[4]) - time.time()))  # all start together, after imports
for i in range(int(sys.argv[3])):
    record.merge_into(sys.argv[1], {"writer": int(sys.argv[2]), "i": i}, {"date": "d"})
"""


def test_concurrent_writers_lose_no_run(tmp_path):
    # Four processes appending 25 runs each to one file at once: without the lock, a writer's
    # read-modify-rename overwrites another's and runs go missing.
    out = tmp_path / "r.json"
    start = str(time.time() + 8)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(out), str(w), "25", start])
             for w in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 4
    runs = json.loads(out.read_text())["runs"]
    assert sorted((r["writer"], r["i"]) for r in runs) == [(w, i) for w in range(4)
                                                            for i in range(25)]
    for w in range(4):  # and each writer's runs stay in its order
        assert [r["i"] for r in runs if r["writer"] == w] == list(range(25))


def test_generate_pairs_alternate_and_the_ratio_is_of_the_medians():
    from benchmarks.timed_generate import paired

    calls = []

    def side(name, per_token):
        def generate(n):
            calls.append(name)
            return 0.1 + per_token * n
        return generate

    sides = paired(side("ours", 0.01), side("hf", 0.03), batch=2, new_tokens=9, repeats=2)
    # warm-up, then round 0 ours first, round 1 HF first
    assert calls[4:8] == ["ours", "hf", "ours", "hf"] and calls[8:] == ["hf", "ours", "hf", "ours"]
    assert sides["ours"]["tokens_per_s"] == pytest.approx(2 / 0.01)
    assert sides["ratio"]["decode_tokens_per_s"] == pytest.approx(
        sides["ours"]["tokens_per_s"] / sides["hf"]["tokens_per_s"]) == pytest.approx(3.0)


def test_hf_generate_holding_our_weights_generates_our_greedy_ids():
    """The decode benchmarks' HF peer runs our very weights: its greedy ids equal the engine's
    (a peer left at its own random init agrees on next to nothing)."""
    pytest.importorskip("transformers")
    import numpy as np

    from benchmarks.timed_generate import agreement, hf_generate, ours_generate
    from infer.timing.timed_model import random_loaded
    from model.config import get_preset

    cfg = get_preset("tiny_llama").replace(num_layers=2, max_len=64)
    loaded = random_loaded(cfg, "", 0)
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 12), dtype=np.int32)
    ours = ours_generate(loaded, tokens)
    ours(16)
    same, _ = hf_generate(cfg, tokens, params=loaded.params["params"])
    same(16)
    assert agreement(ours.last, same.last) == {"equal": True, "common_prefix_min": 16,
                                                "tokens": 16}
    own_init, _ = hf_generate(cfg, tokens, seed=1)
    own_init(16)
    assert agreement(ours.last, own_init.last)["common_prefix_min"] < 4
    split = ours.last.copy()
    split[1, 5] += 1
    assert agreement(ours.last, split) == {"equal": False, "common_prefix_min": 5, "tokens": 16}
