"""The floors of DESIGN.md section 9, held by import-linter's contracts in pyproject.toml: the
checkout keeps them, every command module is on the "imported by nobody" list, and an upward
import or an import of a command makes `lint-imports` fail."""

import ast
import os
import shutil
import subprocess
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("runtime", "model", "data", "train", "infer", "benchmarks", "experiments")


def _lint(cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("lint-imports") or "lint-imports", "--no-cache"],
                          cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def _contracts() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return {c["type"]: c for c in tomllib.load(f)["tool"]["importlinter"]["contracts"]}


def _command_modules() -> set[str]:
    found = set()
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read())
                guarded = any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
                              for node in tree.body)
                if guarded or name == "__main__.py":
                    found.add(os.path.relpath(path, ROOT)[:-3].replace(os.sep, "."))
    return found


def test_checkout_keeps_the_floors():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


def test_every_command_module_is_forbidden_to_import():
    forbidden = set(_contracts()["forbidden"]["forbidden_modules"])
    assert _command_modules() == forbidden


@pytest.fixture
def tree_copy(tmp_path):
    for name in (*PACKAGES, "pyproject.toml"):
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, tmp_path / name,
                            ignore=shutil.ignore_patterns("__pycache__", "results", "*.png"))
        else:
            shutil.copy(src, tmp_path / name)
    return tmp_path


def _append(path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n{line}\n")


@pytest.mark.parametrize("where, line, message", [
    ("model/layers.py", "import infer.engine.sampling", "model is not allowed to import infer"),
    ("runtime/files.py", "import model.config", "runtime is not allowed to import model"),
    ("data/corpus.py", "import model.config", "data is not allowed to import model"),
    ("infer/engine/sampling.py", "import infer.generate",
     "infer.engine.sampling -> infer.generate"),
])
def test_a_bad_import_breaks_the_contract(tree_copy, where, line, message):
    assert _lint(str(tree_copy)).returncode == 0  # the copy itself is clean
    _append(tree_copy / where, line)
    result = _lint(str(tree_copy))
    assert result.returncode == 1
    assert message in result.stdout
