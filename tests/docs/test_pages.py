"""The python blocks of the user-guide pages with runnable examples run, in order, one namespace
per page (a failing block's traceback names the page and the block)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

# page -> the fewest python blocks it must have (a page that lost its examples fails loudly)
PAGES = {
    "getting-started.md": 4,
    "engine.md": 5,
    "conventions.md": 2,
    "checkpoint.md": 4,
    "training.md": 4,
    "diffusers.md": 5,
}
NEEDS = {  # optional packages a page's blocks import
    "getting-started.md": ("arviz",),
    "diffusers.md": ("diffusers",),
}


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown page, in order."""
    return BLOCK.findall(text)


@pytest.mark.parametrize("page", PAGES)
def test_page_has_python_blocks(page):
    assert len(python_blocks((DOCS / page).read_text())) >= PAGES[page]


@pytest.mark.parametrize("page", PAGES)
def test_page_blocks_run(page, monkeypatch):
    for module in NEEDS.get(page, ()):
        pytest.importorskip(module, reason=f"the page {page} imports {module}, an optional extra")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": page.removesuffix(".md").replace("-", "_")}
    for i, block in enumerate(python_blocks((DOCS / page).read_text())):
        code = compile(block, f"{page}[block {i}]", "exec")
        exec(code, namespace)
