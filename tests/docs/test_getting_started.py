"""The python blocks of docs/getting-started.md run, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "getting-started.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown page, in order."""
    return BLOCK.findall(text)


def test_page_has_python_blocks():
    assert len(python_blocks(PAGE.read_text())) >= 4


def test_getting_started_blocks_run(monkeypatch):
    pytest.importorskip("arviz")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "getting_started"}
    for i, block in enumerate(python_blocks(PAGE.read_text())):
        code = compile(block, f"{PAGE.name}[block {i}]", "exec")
        exec(code, namespace)  # a failing block's traceback names the page and the block
