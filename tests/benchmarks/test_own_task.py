"""benchmarks/own_task.py writes a user's kind of seq2seq .jsonl (dates, name reordering), and the
quickstart path learns such a file: a tokenizer is trained on data too small for the asked
--vocab_size, and a tiny T5 reads its sources to exact answers."""

import json
import os
import subprocess
import sys

from benchmarks.own_task import long_date, pairs, reordered_name
from train.flags import TrainConfig
from train.loop import train


def test_the_mappings_are_the_documented_ones():
    assert long_date("1987-03-09") == "9 March 1987" and long_date("2099-12-31") == "31 December 2099"
    assert reordered_name("Okafor, Ada K.") == "Ada K. OKAFOR"
    for task in ("dates", "reorder"):
        rows = pairs(task, 500, seed=3)
        assert rows == pairs(task, 500, seed=3) and rows != pairs(task, 500, seed=4)
        assert len({r["source"] for r in rows}) == 500  # distinct, so held out means unseen
        convert = long_date if task == "dates" else reordered_name
        assert all(r["target"] == convert(r["source"]) for r in rows)


def _command(*args):
    return subprocess.run([sys.executable, "-m", "benchmarks.own_task", *args],
                          capture_output=True, text=True, check=False, timeout=120,
                          stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_the_command_writes_jsonl_and_never_overwrites_unasked(tmp_path):
    out = tmp_path / "dates.jsonl"
    done = _command("--task=dates", "--pairs=50", f"--out={out}")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == pairs("dates", 50, 0)
    again = _command("--task=reorder", "--pairs=50", f"--out={out}")
    assert again.returncode == 2 and again.stderr.strip().startswith("error: ")
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows
    assert sorted(os.listdir(tmp_path)) == ["dates.jsonl"]
