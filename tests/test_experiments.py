"""Every flag file under experiments/ names only flags of `python -m train` with values of the
right type, and every paper flag file says which paper, table, data and number it reproduces; the
scaling study refuses bad input with one error line before running anything."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from train import sweep_spec

ROOT = pathlib.Path(__file__).resolve().parents[1] / "experiments"
FLAG_FILES = sorted(ROOT.rglob("*.flags"))
PAPERS = sorted(p for p in (ROOT / "papers").glob("*.flags") if not p.stem.endswith("_tiny"))
TYPES = sweep_spec.field_types()


def test_there_are_experiments():
    assert len(FLAG_FILES) >= 15 and len(PAPERS) == 6


@pytest.mark.parametrize("path", FLAG_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_flag_file_names_real_flags_with_valid_values(path):
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"--(\w+)(?:=(.*))?", line)
        assert match, f"{path.name}:{number}: {line!r} is not --name=value"
        name, value = match.groups()
        if name == "flagfile":  # absl nests flag files, paths relative to the repository
            assert (ROOT.parent / value).is_file(), f"{path.name}:{number}: no {value}"
            continue
        negated = name not in TYPES and name.startswith("no") and TYPES.get(name[2:]) is bool
        name = name[2:] if negated else name
        assert name in TYPES, f"{path.name}:{number}: --{name} is not a flag of python -m train"
        if TYPES[name] is bool:
            assert value is None or value in ("true", "false"), f"{path.name}:{number}"
        else:
            assert not negated and value is not None, f"{path.name}:{number}: --{name} needs a value"
            if TYPES[name] in (int, float):
                TYPES[name](float(value) if TYPES[name] is float else int(value))


@pytest.mark.parametrize("path", PAPERS, ids=lambda p: p.name)
def test_paper_flag_files_say_what_they_reproduce(path):
    header = path.read_text()
    for key in ("# PAPER:", "NUMBER TO REACH:", "# DATA:"):
        assert key in header, f"{path.name} lacks {key}"
    sweep = re.search(r'--sweep="([^"]+)"', header)
    if sweep:  # a sweep's base: the command in its header must be a valid sweep
        assert len(sweep_spec.trials(sweep_spec.parse(sweep.group(1)))) > 1
    else:
        assert (path.parent / f"{path.stem}_tiny.flags").exists(), "no CPU variant"


@pytest.mark.parametrize("args", [["--out={file}"], ["--runs={file}"], ["stray"], ["--steps=3"]])
def test_scaling_study_refuses_bad_input_with_one_line(tmp_path, args):
    file = tmp_path / "a_file"
    file.write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT.parent)}
    result = subprocess.run([sys.executable, str(ROOT / "scaling" / "run.py"),
                             *(a.format(file=file) for a in args)], capture_output=True,
                            text=True, timeout=120, check=False, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not result.stdout and os.listdir(tmp_path) == ["a_file"]
