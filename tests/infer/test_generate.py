"""infer.generate as a user runs it: --json holds the engine's ids and their text; bad input is
one line and exit code 2."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from infer.engine.engine import generate
from infer.engine.load import load


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "infer.generate", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def test_json_matches_engine_and_streams_the_text(workdir, tmp_path):
    out = tmp_path / "gen.json"
    result = _cli(f"--checkpoint={workdir}", "--prompt=def f(x):\n", "--max_new_tokens=10",
                  f"--json={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    loaded = load(workdir)
    prompt_ids = loaded.tokenizer.encode("def f(x):\n").tolist()
    assert record["prompt_tokens"] == [prompt_ids]
    expected = generate(loaded, [prompt_ids], 10, eos_id=loaded.tokenizer.eos_id)
    assert record["tokens"] == expected
    assert record["text"] == [loaded.tokenizer.decode(expected[0])]
    assert result.stdout.startswith("def f(x):\n" + record["text"][0])


def test_batch_file_generates_one_row_per_prompt(workdir, tmp_path):
    (tmp_path / "prompts.txt").write_text("import os\nclass A:\n\ndef g():\n")
    out = tmp_path / "gen.json"
    result = _cli(f"--checkpoint={workdir}", f"--batch_file={tmp_path}/prompts.txt",
                  "--max_new_tokens=5", "--temperature=0.8", "--top_k=20", f"--json={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert len(record["tokens"]) == len(record["text"]) == 3
    assert all(len(t) <= 5 for t in record["tokens"])


@pytest.mark.parametrize("args,message", [
    (["--max_new_tokens=5"], "exactly one of"),
    (["--prompt=x", "--max_new_tokens=100000"], "exceeds the model's context"),
    (["--prompt=x", "--max_new_tokens=0"], "must be positive"),
    (["--prompt=x", "--temperature=-1"], "--temperature"),
    (["--prompt=x", "--top_p=0"], "--top_p"),
])
def test_bad_input_exit_2(workdir, tmp_path, args, message):
    result = _cli(f"--checkpoint={workdir}", f"--json={tmp_path}/o.json", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "o.json").exists()


PROMPT = "def refused_prompt(x):\n"


@pytest.mark.parametrize("prompt,args", [
    (PROMPT * 400, []),  # thousands of tokens, past any context of the tiny model
    (PROMPT, ["--max_new_tokens=100000"]),
    (PROMPT, ["--max_new_tokens=0"]),
], ids=["long_prompt", "long_generation", "no_generation"])
def test_refusal_is_printed_before_the_prompt_is_echoed(workdir, prompt, args):
    result = _cli(f"--checkpoint={workdir}", f"--prompt={prompt}", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert PROMPT.strip() not in result.stdout


def test_model_without_tokenizer_says_so(workdir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(workdir, bare)
    (bare / "tokenizer.model").unlink()
    result = _cli(f"--checkpoint={bare}", "--prompt=x")
    assert result.returncode == 2 and "no tokenizer" in result.stderr


def test_streaming_prints_the_whole_text_decoding_only_short_windows(tmp_path, capsys):
    # A text with multi-byte characters the tokenizer spells in bytes (byte fallback), streamed
    # one token a callback in a shuffled order: what is printed, plus the rest the CLI adds at
    # the end, is the decode of all ids, and no callback decodes more than a short window.
    from data.sentencepiece_tokenizer import train_tokenizer
    from infer.generate import _Stream

    corpus = [f"def f{i}(x):\n    return x * {i}  # café\n" for i in range(300)]
    tok = train_tokenizer(corpus, 300, str(tmp_path / "t.model"))
    ids = tok.encode("def g(y):\n    return y + 1  # naïve € 日本語 ok\n" * 8).tolist()
    assert any(tok.decode([i]) == "\ufffd" for i in ids)  # some pieces are single bytes
    windows = {}
    for name, order in (("in order", np.arange(len(ids))),
                        ("shuffled", np.random.default_rng(0).permutation(len(ids)))):
        lengths = windows[name] = []
        stream = _Stream(lambda window, seen=lengths: seen.append(len(window)) or
                         tok.decode(window))
        for step in order:
            stream(step, np.array([ids[step]]), np.array([False]))
        printed = capsys.readouterr().out
        assert printed == stream.printed
        assert printed + stream.rest(tok.decode(ids)) == tok.decode(ids)
        assert len(printed) > 0.9 * len(tok.decode(ids))
        assert sum(lengths) < 8 * len(ids)  # O(n): the whole-prefix decode summed to ~n^2 / 2
    assert max(windows["in order"]) <= 12  # a token or a few, plus the last printed chunk


def test_a_second_run_loads_its_programs_from_the_compilation_cache(workdir, tmp_path):
    # The first run compiles and writes the cache; the second, with another prompt of the same
    # bucket, finds every program there (no new entries) and prints the same as an uncached run.
    cache = tmp_path / "cache"
    first = _cli(f"--checkpoint={workdir}", "--prompt=def f(x):", "--max_new_tokens=6",
                 f"--compilation_cache={cache}")
    assert first.returncode == 0, first.stderr[-2000:]
    entries = sorted(p.name for p in cache.iterdir())
    assert entries  # the generate program at least
    second = _cli(f"--checkpoint={workdir}", "--prompt=class A:", "--max_new_tokens=6",
                  f"--compilation_cache={cache}")
    assert second.returncode == 0, second.stderr[-2000:]
    assert sorted(p.name for p in cache.iterdir()) == entries
    uncached = _cli(f"--checkpoint={workdir}", "--prompt=class A:", "--max_new_tokens=6",
                    "--compilation_cache=")
    assert uncached.returncode == 0 and uncached.stdout == second.stdout


def test_the_command_starts_without_the_training_input_pipeline():
    # grain (the input pipeline) costs ~0.6 s of import inside every time to first token.
    probe = ("import sys, infer.generate; print(sorted(m for m in sys.modules if "
             "m.split('.')[0] in ('grain', 'optax', 'tensorboardX')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=120)
    assert done.stdout.strip() == "[]"
