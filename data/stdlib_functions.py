"""The functions and methods of the running Python's standard library, parsed with `ast`.

The offline seq2seq (code → docstring) and classification (which package) tasks are built from them.
"""

import ast
import functools
import gc
import os
import re
import textwrap
from typing import NamedTuple

from data.corpus import stdlib_sources

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


class Function(NamedTuple):
    qualname: str  # module.classes.name, e.g. "json.encoder.JSONEncoder.default"
    package: str  # top-level package or module: "email", "json", "os"
    source: str  # the dedented source, decorators and docstring included
    code: str  # `source` without its docstring; "" if the docstring can't be cut out cleanly
    summary: str  # the docstring's first paragraph on one line; "" without a docstring


@functools.cache
def stdlib_functions() -> tuple[Function, ...]:
    """Every module-level function and every method of a module-level class (nested classes too)
    in stdlib_sources(), in file order; not functions inside functions, whose text is part of
    their parent's."""
    functions = []
    # The stdlib's syntax trees are millions of objects that the cyclic GC would rescan over and
    # over (a quarter of the time); they hold no cycles, so reference counting frees them anyway.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for path, text in stdlib_sources():
            try:
                tree = ast.parse(text)
            except (SyntaxError, ValueError):
                continue  # a file written for another Python version
            module = _module_name(path)
            lines = text.splitlines(keepends=True)
            functions.extend(_functions(tree.body, module, module.split(".")[0], lines))
    finally:
        if gc_was_enabled:
            gc.enable()
    return tuple(functions)


def _module_name(path: str) -> str:
    parts = path[: -len(".py")].split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _functions(body: list[ast.stmt], prefix: str, package: str, lines: list[str]) -> list[Function]:
    found = []
    for node in body:
        if isinstance(node, ast.ClassDef):
            found.extend(_functions(node.body, f"{prefix}.{node.name}", package, lines))
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            own = lines[first - 1 : node.end_lineno]
            docstring = ast.get_docstring(node, clean=True) or ""
            code = ""
            if _docstring_alone(node, lines):
                doc = node.body[0]
                code = "".join(own[: doc.lineno - first] + own[doc.end_lineno + 1 - first :])
            found.append(
                Function(
                    qualname=f"{prefix}.{node.name}",
                    package=package,
                    source=textwrap.dedent("".join(own)),
                    code=textwrap.dedent(code),
                    summary=" ".join(_PARAGRAPH_BREAK.split(docstring)[0].split()),
                )
            )
    return found


def _docstring_alone(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> bool:
    """Whether the function has a docstring on lines of its own, followed by more statements."""
    if len(node.body) < 2 or ast.get_docstring(node) is None:
        return False
    doc, after = node.body[0], node.body[1]
    starts_line = not lines[doc.lineno - 1][: doc.col_offset].strip()
    return starts_line and doc.lineno > node.lineno and after.lineno > doc.end_lineno
