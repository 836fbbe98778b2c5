"""The griffe extension that renders reST-flavoured docstrings as Markdown for the API pages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip(
    "griffe", reason="docstring parsing uses griffe, which mkdocstrings of the docs extra installs"
)
_PATH = Path(__file__).resolve().parents[2] / "docs" / "_ext" / "rst_docstrings.py"
_spec = importlib.util.spec_from_file_location("rst_docstrings", _PATH)
rst_docstrings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rst_docstrings)
convert = rst_docstrings.rst_to_markdown


def test_inline_math_and_cross_references():
    text = r"Sample :math:`\pi(x)` with :class:`~smcdiff.SMCResult` and :func:`smcdiff.steer`."
    assert convert(text) == r"Sample $\pi(x)$ with ``SMCResult`` and ``smcdiff.steer``."


def test_inline_math_across_lines():
    assert convert(":math:`a +\n    b` end") == "$a +\n    b$ end"


def test_math_directive_one_line_and_block():
    assert convert("Text\n.. math:: x = 1\nmore") == "Text\n\n$$\nx = 1\n$$\n\nmore"
    text = "Text\n\n    .. math::\n        a = b\n        c = d\n\n    after"
    assert convert(text) == "Text\n\n    $$\n    a = b\n    c = d\n    $$\n\n    after"


def test_literal_block_markers():
    assert convert("Example::\n\n    x = 1") == "Example:\n\n    x = 1"
    assert convert("Text\n\n::\n\n    x = 1") == "Text\n\n\n    x = 1"


def test_double_backticks_are_kept():
    assert convert("``steer(model)``") == "``steer(model)``"


def test_simple_table_becomes_a_markdown_table():
    border = "=== ========="
    rows = ["name config", border, "fk  :class:`~a.FKConfig`", "x   two words", border]
    text = "\n".join(["Methods", "", border, *rows, "", "after"])
    table = ["| name | config |", "| --- | --- |", "| fk | ``FKConfig`` |", "| x | two words |"]
    assert convert(text) == "\n".join(["Methods", "", *table, "", "", "after"])


def test_a_lone_border_line_is_not_a_table():
    assert convert("a\n=== ===\nb") == "a\n=== ===\nb"
