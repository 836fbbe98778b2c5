"""House rules on the shape of the code in ``smcdiff/`` (DESIGN.md, "Style").

- No function has more than ``MAX_LINES`` lines of code. A line of code is a non-blank line of the
  function's body that is not a comment; the docstring, the signature and the decorators do not
  count. A nested function's lines count towards the function that holds it too.
- No module imports a private name (``from smcdiff.x import _y``, or ``from .x import _y``) from
  another smcdiff module: a name another module needs is public.

Each failure lists every offender as ``path:line name (n lines)`` (or ``path:line imports ...``).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "smcdiff"
MAX_LINES = 60


@functools.cache
def _modules() -> list[tuple[str, list[str], ast.Module]]:
    """``(path relative to the repository, source lines, syntax tree)`` of every module."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        out.append((path.relative_to(ROOT).as_posix(), source.splitlines(), ast.parse(source)))
    return out


def code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> int:
    """Non-blank, non-comment lines of ``function``'s body after its docstring."""
    first = function.body[0]
    has_docstring = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )
    start = first.end_lineno + 1 if has_docstring else first.lineno
    body = lines[start - 1 : function.end_lineno]
    return sum(1 for line in body if line.strip() and not line.strip().startswith("#"))


def long_functions(max_lines: int = MAX_LINES) -> list[str]:
    """``path:line name (n lines)`` for every function over ``max_lines`` lines of code."""
    rows = []
    for path, lines, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = code_lines(node, lines)
                if n > max_lines:
                    rows.append(f"{path}:{node.lineno} {node.name} ({n} lines)")
    return sorted(rows)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imported_module(path: str, node: ast.ImportFrom) -> str:
    """Absolute dotted name of the module ``node`` imports from (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    # the package holding the module: smcdiff/a/b.py and smcdiff/a/__init__.py -> (smcdiff, a)
    package = Path(path).with_suffix("").parts[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def private_imports() -> list[str]:
    """``path:line imports _name from module`` for every private name taken from smcdiff."""
    rows = []
    for path, _, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = _imported_module(path, node)
            if module != "smcdiff" and not module.startswith("smcdiff."):
                continue
            for alias in node.names:
                if _is_private(alias.name):
                    rows.append(f"{path}:{node.lineno} imports {alias.name} from {module}")
    return sorted(rows)


def test_no_function_is_longer_than_the_limit():
    offenders = long_functions()
    if offenders:
        pytest.fail(
            f"{len(offenders)} functions have more than {MAX_LINES} lines of code (docstring, "
            "comments and blank lines excluded); split them:\n" + "\n".join(offenders),
            pytrace=False,
        )


def test_no_module_imports_a_private_name_from_another():
    offenders = private_imports()
    if offenders:
        pytest.fail(
            "private names imported across smcdiff modules; make them public or move them:\n"
            + "\n".join(offenders),
            pytrace=False,
        )


def test_the_rules_see_what_they_claim():
    """The two scanners on a small source: a 61-line function, a docstring, comments, an import."""
    body = "\n".join(f"    x{i} = {i}  # code" for i in range(61))
    source = f'def f():\n    """Doc.\n\n    more doc\n    """\n    # a comment\n\n{body}\n'
    tree = ast.parse(source)
    assert code_lines(tree.body[0], source.splitlines()) == 61
    rel = ast.parse("from ..weights import _private, public\nfrom . import __version__\n")
    module = _imported_module("smcdiff/steering/fk.py", rel.body[0])
    assert module == "smcdiff.weights"
    assert _imported_module("smcdiff/steering/__init__.py", rel.body[1]) == "smcdiff.steering"
    assert [_is_private(a.name) for a in rel.body[0].names] == [True, False]
    assert not _is_private("__version__")


def test_every_package_is_installed() -> None:
    """Every package directory under ``smcdiff/`` is listed in pyproject's ``packages`` (a
    non-editable ``pip install .`` ships only those)."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    missing = sorted(found - listed)
    assert not missing, (
        f"packages missing from pyproject.toml [tool.setuptools] packages: {missing}"
    )
