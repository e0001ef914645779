"""No code path of the packages can run code hidden in a data file: their sources (read with `ast`,
not grep, so comments and strings don't count) never import a pickle library, call eval/exec,
np.load with allow_pickle, torch.load or pickle.load(s). Findings are reported as file:line."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("model", "data", "train", "infer", "benchmarks")
# Modules whose load functions unpickle (run arbitrary code from the file they read).
PICKLERS = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve"}
UNPICKLING_CALLS = {("torch", "load"), ("pandas", "read_pickle"), ("pd", "read_pickle")}


def _dotted(node: ast.expr) -> str:
    """'a.b.c' for a Name/Attribute chain, '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])


def findings(source: str, filename: str = "<string>") -> list[str]:
    """'file:line: what' for each unsafe construct in `source`."""
    found = []

    def report(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PICKLERS:
                    report(node, f"imports {alias.name}")
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")[0]
            if module in PICKLERS:
                report(node, f"imports from {node.module}")
            if module == "torch" and any(alias.name == "load" for alias in node.names):
                report(node, "imports torch.load")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
                report(node, f"calls {name}()")
            if name in ("__import__", "importlib.import_module") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in PICKLERS:
                    report(node, f"imports {arg.value} dynamically")
            head, _, attr = name.rpartition(".")
            if head.split(".")[0] in PICKLERS and attr in ("load", "loads", "Unpickler"):
                report(node, f"calls {name}()")
            if (head, attr) in UNPICKLING_CALLS:
                report(node, f"calls {name}(), which unpickles")
            for keyword in node.keywords:
                # Only a literal False is provably safe; a variable may be True at run time.
                if keyword.arg == "allow_pickle" and not (
                        isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                    report(node, f"calls {name or 'a function'}(allow_pickle=...) not False")
    return found


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_packages_never_unpickle_or_eval():
    files = _sources()
    assert len(files) > 50, "the scan found too few files; are the packages where expected?"
    problems = [line for path in files
                for line in findings(path.read_text(encoding="utf-8"),
                                     str(path.relative_to(ROOT)))]
    assert not problems, "unsafe loading of data:\n" + "\n".join(problems)


@pytest.mark.parametrize("snippet", [
    "import pickle",
    "import cPickle as p",
    "from dill import loads",
    "import joblib.numpy_pickle",
    "x = eval('1 + 1')",
    "exec(code)",
    "np.load(path, allow_pickle=True)",
    "numpy.load(path, mmap_mode='r', allow_pickle=flag)",
    "state = torch.load(path)",
    "from torch import load",
    "obj = pickle.loads(blob)",
    "pickle.load(f)",
    "m = __import__('pickle')",
])
def test_scanner_catches(snippet):
    result = findings(snippet, "x.py")
    assert result and all(line.startswith("x.py:1: ") for line in result), result


@pytest.mark.parametrize("snippet", [
    "model = model.eval()",  # torch's train/eval switch, not the builtin
    "np.load(path, allow_pickle=False)",
    "np.load(path)",  # numpy's default is allow_pickle=False
    "json.load(f)",
    "text = 'import pickle; eval(x)'  # strings and comments don't count",
])
def test_scanner_passes(snippet):
    assert findings(snippet) == []
