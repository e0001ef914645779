"""infer.compare: one run on the tiny trained workdir prunes, distils and measures six rows (the
smaller models are smaller, int8 weights a quarter of the bytes, the speculative row the
baseline's quality); given --pruned and --student it trains nothing; bad inputs are one line,
exit 2, nothing written."""

import json
import math
import os
import subprocess
import sys

import pytest

from model.config import get_preset

VARIANTS = ["baseline", "int8", "int8+KV", "pruned", "distilled", "speculative"]
SMALL = ["--batch_sizes=1,2", "--prompt_len=8", "--new_tokens=8", "--repeats=1",
         "--eval_batches=2"]


def _compare(*args, cache=None):
    # One device: batch 1 cannot split over the 8 fake ones. Speed is not under test, so XLA
    # skips its slow CPU optimizations (about a third of the time goes to compiling dozens of
    # small programs), and a compilation cache shared by the runs of this file lets the second
    # run reuse the first one's programs (same shapes).
    env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0",
           "JAX_PLATFORMS": "cpu"}
    if cache:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return subprocess.run([sys.executable, "-m", "infer.compare", *args], capture_output=True,
                          text=True, timeout=400, check=False, env=env)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def compared(workdir, tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("compare") / "out"
    result = _compare(f"--checkpoint={workdir}", f"--out={out}", *SMALL, "--distill_steps=4",
                      "--finetune_steps=2", cache=cache)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "compare.json").read_text()), result.stdout


def test_six_rows_measured(compared):
    out, record, stdout = compared
    assert {"device", "versions", "command", "config", "rows"} <= set(record)
    rows = {r["variant"]: r for r in record["rows"]}
    assert [r["variant"] for r in record["rows"]] == VARIANTS
    for i, name in enumerate(VARIANTS, 1):  # one progress line per variant
        assert f"[{i}/6] {name}:" in stdout
    for r in rows.values():
        assert math.isfinite(r["eval_loss"]) and math.isfinite(r["eval_ppl"]), r
        assert r["params"] > 0 and r["param_bytes"] > 0
        assert [s["batch_size"] for s in r["speed"]] == [1, 2]
        assert r["speed"][0]["tokens_per_s"] > 0
    for r in (rows[n] for n in VARIANTS[:-1]):
        for s in r["speed"]:
            assert s["ttft_s"] > 0 and s["tpot_s"] > 0 and s["tokens_per_s"] > 0, r["variant"]
    base = rows["baseline"]
    assert rows["pruned"]["params"] < base["params"]
    assert rows["distilled"]["params"] < base["params"]
    assert rows["int8"]["params"] == base["params"]  # the same weights, narrower
    assert rows["int8"]["param_bytes"] <= 0.3 * base["param_bytes"]
    # Scored through what each runs: int8 matmuls, then also the int8 KV cache.
    assert rows["int8"]["eval_loss"] != base["eval_loss"]
    assert rows["int8+KV"]["eval_loss"] != rows["int8"]["eval_loss"]
    spec = rows["speculative"]
    assert 0.0 <= spec["acceptance_rate"] <= 1.0 and spec["tokens_per_target_pass"] >= 1.0
    assert spec["eval_loss"] == base["eval_loss"] and spec["quality"] == base["quality"]
    assert spec["speed"][1]["tokens_per_s"] is None  # batch 2: not measured
    assert spec["params"] == base["params"] + rows["distilled"]["params"]
    assert record["config"]["made_here"] == {"pruned": True, "student": True}
    assert os.path.isdir(out / "pruned" / "finetune") and os.path.isdir(out / "student")
    table = (out / "compare.md").read_text()
    assert all(f"| {name} |" in table for name in VARIANTS) and "n/a" in table
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_given_models_are_reused(compared, workdir, tmp_path, cache):
    _, record, _ = compared
    pruned, student = record["config"]["pruned"], record["config"]["student"]
    out = tmp_path / "again"
    result = _compare(f"--checkpoint={workdir}", f"--out={out}", f"--pruned={pruned}",
                      f"--student={student}", *SMALL, cache=cache)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((out / "compare.json").read_text())
    assert again["config"]["made_here"] == {"pruned": False, "student": False}
    assert not (out / "student").exists() and not (out / "pruned").exists()
    rows = {r["variant"]: r for r in again["rows"]}
    assert rows["pruned"]["model"] == pruned and rows["distilled"]["model"] == student
    # The same models on the same held-out batches: the same losses.
    assert rows["distilled"]["eval_loss"] == {r["variant"]: r for r in record["rows"]}[
        "distilled"]["eval_loss"]


def test_eval_through_a_float_cache_equals_the_plain_eval(workdir, tmp_path):
    """The int8+KV row is scored by a prefill through the KV cache; with a float cache that
    path must reproduce the training loop's own eval exactly, so any change is the int8's."""
    from infer.compress.comparison import Request, eval_run, quality
    from infer.engine.load import load
    from model.store import read_recorded

    request = Request(workdir, str(tmp_path / "out"), eval_batches=2)
    run = eval_run(request, read_recorded(workdir, "checkpoint")[1])
    loaded = load(workdir)
    plain, cached = quality(run, loaded), quality(run, loaded, through_cache=True)
    assert cached["eval_tokens"] == plain["eval_tokens"] > 0
    assert abs(cached["eval_loss"] - plain["eval_loss"]) < 1e-5
    assert not (tmp_path / "out").exists()


def _model_dir(tmp_path, name: str, preset: str, flags: bool) -> str:
    """A config.json alone: every refusal below comes before any params are read."""
    path = tmp_path / name
    path.mkdir()
    recorded = {"model": get_preset(preset).to_dict(), **({"flags": {}} if flags else {})}
    (path / "config.json").write_text(json.dumps(recorded))
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--checkpoint=CKPT"], "--out=DIR is required"),
    (["--checkpoint=BERT", "--out=OUT"], "decoder-only"),
    (["--checkpoint=CKPT", "--out=OUT", "--batch_sizes=0"], "--batch_sizes=0"),
])
def test_bad_input_is_one_line_and_writes_nothing(workdir, tmp_path, args, message):
    out, bert = tmp_path / "out", _model_dir(tmp_path, "bert", "tiny_bert", flags=True)
    args = [a.replace("CKPT", workdir).replace("BERT", bert).replace("OUT", str(out))
            for a in args]
    result = _compare(*args, *SMALL[1:])
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()


@pytest.mark.parametrize("changes, message", [
    ({"batch_sizes": (2, 4)}, "must include 1"),
    ({"student": "BERT"}, "decoder-only"),
    ({"checkpoint": "CONVERTED"}, "records no training flags"),
    ({"prune_heads": 1.0}, "--prune_heads=1.0 must be a fraction"),
    ({"prune_heads": 0.0, "prune_mlp": 0.0}, "nothing to prune"),
    ({"out": "EARLIER"}, "pass --student="),
])
def test_refused_before_any_work(workdir, tmp_path, changes, message):
    from infer.compress.comparison import Request, check
    from runtime.errors import UserError

    paths = {"BERT": _model_dir(tmp_path, "bert", "tiny_bert", flags=True),
             "CONVERTED": _model_dir(tmp_path, "converted", "tiny", flags=False),
             "EARLIER": str(tmp_path / "earlier")}
    os.makedirs(tmp_path / "earlier" / "student")  # an earlier compare's student
    changes = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in changes.items()}
    request = Request(**{"checkpoint": workdir, "out": str(tmp_path / "out"), **changes})
    with pytest.raises(UserError, match=message):
        check(request)
    assert not (tmp_path / "out").exists()
