"""`python -m train` as a user runs it: bad input is one line and exit code 2 with nothing
written; a good run writes the workdir and rerunning its flags.txt resumes it."""

import json
import os
import subprocess
import sys

import pytest

TINY = ["--preset=tiny", "--vocab_size=512", "--seq_len=32", "--batch_size=8", "--log_every=1",
        "--eval_every=0", "--save_every=2"]


def _train(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "train", *args], capture_output=True, text=True, check=False,
                          timeout=300, cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("name,args,message", [
    ("unknown preset", ["--preset=gpt5"], "unknown preset"),
    ("batch not divisible", ["--batch_size=12", "--mesh=data=8"], "divisible"),
    ("empty data glob", ["--data={tmp}/nothing/*.txt"], "matches no files"),
    ("missing tokenizer", ["--tokenizer={tmp}/missing.model"], "cannot read tokenizer"),
    ("unknown flag", ["--batchsize=8"], "Unknown command line flag"),
    ("malformed value", ["--steps=ten"], "--steps"),
    ("negative size", ["--num_layers=-2"], "positive"),
    ("bad mesh", ["--mesh=data=3"], "--mesh"),
    ("workdir is a file", ["--workdir={tmp}/afile"], "is a file"),
    ("vocab smaller than tokenizer", ["--vocab_size=300", "--tokenizer={tok}"], "smaller"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, name, args, message):
    (tmp_path / "afile").write_text("not a directory")
    tok = str(tmp_path / "tok.model")
    if "{tok}" in " ".join(args):
        with open(os.__file__) as f:  # any real text will do
            (tmp_path / "text.txt").write_text(f.read())
        subprocess.run([sys.executable, "-m", "data.tokenizer", f"--data={tmp_path}/text.txt",
                        "--vocab_size=400", f"--out={tok}"], check=True, capture_output=True)
    workdir = tmp_path / "run"
    args = [a.format(tmp=tmp_path, tok=tok) for a in args]
    if not any(a.startswith("--workdir") for a in args):
        args.append(f"--workdir={workdir}")
    result = _train(*TINY, "--steps=2", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert message in lines[0]
    assert not workdir.exists()
    assert (tmp_path / "afile").read_text() == "not a directory"


def test_run_writes_workdir_and_flags_txt_resumes_it(tmp_path):
    workdir = tmp_path / "run"
    first = _train(*TINY, "--steps=2", f"--workdir={workdir}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "step 2/2" in first.stdout and "unigram baseline" in first.stdout
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
    flags_txt = (workdir / "flags.txt").read_text()
    assert "--preset=tiny" in flags_txt and "--steps=2" in flags_txt

    second = _train(f"--flagfile={workdir}/flags.txt", "--steps=4")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "step 4/4" in second.stdout
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == [1, 2, 3, 4]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]

    changed = _train(f"--flagfile={workdir}/flags.txt", "--steps=6", "--d_model=32")
    assert changed.returncode == 2 and "different model" in changed.stderr
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
