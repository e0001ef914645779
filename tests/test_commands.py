"""Every entry point goes through runtime/command.py: a stray positional argument or an unknown
flag is one `error:` line and exit code 2, before anything is loaded or written."""

import os
import subprocess
import sys
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _commands() -> list[str]:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    forbidden = next(c for c in contracts if c["type"] == "forbidden")["forbidden_modules"]
    # train.launch_local hands every argument after `--` to the processes it starts.
    return sorted(m.removesuffix(".__main__") for m in forbidden if m != "train.launch_local")


def _run(command: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", command, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize("command", _commands())
def test_stray_argument_and_unknown_flag_are_refused(command, tmp_path):
    before = set(os.listdir(ROOT))
    # A command with a required flag names that one first (absl checks it while parsing);
    # train.results takes one positional argument (its directory), none takes two.
    for args, words in ((["stray", "stray"], ("unexpected arguments", "other than None")),
                        (["--no_such_flag=1"], ("no_such_flag",))):
        result = _run(command, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (command, result.stderr[-2000:])
        assert lines[-1].startswith("error: "), lines[-3:]
        assert any(w in lines[-1] for w in words), lines[-1]
    assert set(os.listdir(ROOT)) == before  # nothing written
