"""Griffe extension: render smcdiff's reST-flavoured docstrings as Markdown for mkdocstrings.

The docstrings use a few reST constructs that Markdown does not know. Before mkdocstrings parses a
docstring, this extension rewrites them:

* ``:math:`x``` -> ``$x$`` and ``.. math::`` blocks -> ``$$ ... $$`` (pymdownx.arithmatex);
* ``:class:`~smcdiff.X```, ``:func:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``,
  ``:exc:``, ``:obj:`` -> a code span (``~`` keeps the last component, as in Sphinx);
* a paragraph ending in ``::`` (reST literal block) -> ends in ``:``; a line ``::`` is dropped;
* a reST simple table (``===== =====`` borders around a header row) -> a Markdown table.

Double-backtick literals are already Markdown code spans. Loaded from ``mkdocs.yml``
(``extensions: [docs/_ext/rst_docstrings.py]``); ``mkdocs build`` does not copy this folder.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_XREF_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):`!?(~?)([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(\s*)\.\. math::[ \t]*(.*)$")
_TABLE_BORDER = re.compile(r"^\s*=+(?: +=+)+\s*$")


def _xref(match: re.Match) -> str:
    tilde, target = match.group(1), match.group(2).strip()
    if "<" in target and target.endswith(">"):  # :class:`title <target>`
        return f"``{target.split('<', 1)[0].strip()}``"
    return f"``{target.rsplit('.', 1)[-1] if tilde else target}``"


def _math_blocks(lines: list[str]) -> list[str]:
    """``.. math:: expr`` or ``.. math::`` + an indented block -> a ``$$`` block."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH_DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent, body = m.group(1), [m.group(2)] if m.group(2).strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > len(indent)):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        tex = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}$$", *(f"{indent}{t}" for t in tex), f"{indent}$$", ""]
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _simple_tables(lines: list[str]) -> list[str]:
    """reST simple tables (border, header row, border, rows, border) -> Markdown tables; the
    columns are the runs of ``=`` of the first border, the last one open to the right."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        end = _table_end(lines, i)
        if end is None:
            out.append(lines[i])
            i += 1
            continue
        starts = [m.start() for m in re.finditer(r"=+", lines[i])]
        bounds = list(zip(starts, [*starts[1:], None], strict=True))
        rows = [lines[i + 1]] + [line for line in lines[i + 3 : end] if line.strip()]
        table = [" | ".join(row[a:b].strip() for a, b in bounds) for row in rows]
        table.insert(1, " | ".join("---" for _ in bounds))
        indent = lines[i][: starts[0]]
        if out and out[-1].strip():
            out.append("")
        out += [f"{indent}| {row} |" for row in table] + [""]
        i = end + 1
    return out


def _table_end(lines: list[str], i: int) -> int | None:
    """The index of the closing border of a simple table that starts at line ``i``, else None."""
    if not (_TABLE_BORDER.match(lines[i]) and i + 2 < len(lines)):
        return None
    if not _TABLE_BORDER.match(lines[i + 2]):
        return None
    for j in range(i + 3, len(lines)):
        if _TABLE_BORDER.match(lines[j]):
            return j
    return None


def _literal_markers(lines: list[str]) -> list[str]:
    """reST ``text::`` introduces a literal block; Markdown only needs the indentation."""
    out = []
    for line in lines:
        if line.strip() == "::":
            continue
        out.append(line[:-1] if line.rstrip().endswith("::") and line.endswith("::") else line)
    return out


def rst_to_markdown(text: str) -> str:
    """The Markdown text mkdocstrings renders for a reST-flavoured docstring ``text``."""
    lines = _literal_markers(_simple_tables(_math_blocks(text.splitlines())))
    text = "\n".join(lines)
    text = _MATH_ROLE.sub(lambda m: f"${m.group(1).strip()}$", text)
    return _XREF_ROLE.sub(_xref, text)


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring once, after the package is loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
