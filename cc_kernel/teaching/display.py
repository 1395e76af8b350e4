"""Teaching: display helpers of the teaching lab — hex dumps, side-by-side panels, tables and pictures for notebooks.

Layer: pure (text in, text and HTML out), part of ``cc_kernel.teaching``. Invariants: every widget is shown the
same way by ``print`` and by IPython's plain-text display (``Shown``), and its HTML escapes every text it shows.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

__all__ = ["Diagram", "Panels", "Shown", "Table", "hexdump", "pre", "short", "side_by_side"]


class Shown:
    """Shown as its plain text, ``text()``, by ``print`` (``str``) and by IPython's plain-text display alike.

    A dataclass subclass passes ``repr=False``: IPython prefers a class's own ``__repr__`` to an inherited
    ``_repr_pretty_``."""

    def text(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.text()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text(self.text())


def hexdump(data: bytes, *, offset: int = 0, width: int = 16, max_lines: int | None = 16) -> str:
    """A classic hex dump: offset, hex bytes, printable ASCII (``.`` for the rest). ``offset`` labels the
    first byte; at most ``max_lines`` lines (None: all), then a line saying how much was left out."""
    lines = []
    total = len(data)
    shown = total if max_lines is None else min(total, max_lines * width)
    for start in range(0, shown, width):
        row = data[start : start + width]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in row)
        lines.append(f"{offset + start:08x}  {hexes:<{width * 3 - 1}}  {text}")
    if shown < total:
        lines.append(f"… {total - shown} more bytes")
    return "\n".join(lines)


def short(value: object, limit: int = 48) -> str:
    """``value`` for a table cell: bytes as hex, anything else as its repr, cut to about ``limit`` characters."""
    if isinstance(value, bytes | bytearray):
        text = bytes(value).hex()
        return text if len(text) <= limit else f"{text[: limit - 8]}…({len(value)} bytes)"
    text = repr(value)
    return text if len(text) <= limit * 2 else text[: limit * 2] + "…"


def pre(text: str) -> str:
    """``text`` as an escaped, pre-formatted HTML block."""
    return (
        '<pre style="margin:0;padding:6px;background:#fafafa;border:1px solid #ddd;font-size:11px;'
        f'line-height:1.3;white-space:pre;overflow-x:auto">{html.escape(text)}</pre>'
    )


@dataclass(frozen=True, repr=False)
class Panels(Shown):
    """Two (or more) titled text panels shown side by side (HTML) or one after the other (text)."""

    panels: tuple[tuple[str, str], ...]

    def text(self) -> str:
        return "\n\n".join(f"== {title} ==\n{body}" for title, body in self.panels)

    def _repr_html_(self) -> str:
        cols = "".join(
            f'<div style="flex:1;min-width:22em"><div style="font-weight:bold;margin:2px 0">{html.escape(t)}</div>'
            f"{pre(body)}</div>"
            for t, body in self.panels
        )
        return f'<div style="display:flex;gap:12px;align-items:flex-start">{cols}</div>'


def side_by_side(left_title: str, left: str, right_title: str, right: str) -> Panels:
    """Two texts side by side (e.g. recorded ciphertext and the plaintext the notebook received)."""
    return Panels(((left_title, left), (right_title, right)))


@dataclass(frozen=True, repr=False)
class Table(Shown):
    """A small table with a title; renders as HTML or aligned text."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def text(self) -> str:
        widths = [max([len(c)] + [len(r[i]) for r in self.rows]) for i, c in enumerate(self.columns)]
        head = "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))
        body = ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in self.rows]
        return "\n".join([self.title, head, "-" * len(head), *body])

    def _repr_html_(self) -> str:
        th = "".join(f'<th style="text-align:left;padding:2px 8px">{html.escape(c)}</th>' for c in self.columns)
        trs = "".join(
            "<tr>"
            + "".join(
                f'<td style="text-align:left;padding:2px 8px;font-family:monospace;vertical-align:top">'
                f"{html.escape(v)}</td>"
                for v in r
            )
            + "</tr>"
            for r in self.rows
        )
        return (
            f'<div><div style="font-weight:bold">{html.escape(self.title)}</div>'
            f'<table style="border-collapse:collapse;font-size:12px"><tr>{th}</tr>{trs}</table></div>'
        )


@dataclass(frozen=True, repr=False)
class Diagram(Shown):
    """An SVG picture (shown by Jupyter through ``_repr_svg_``)."""

    svg: str
    alt: str

    def _repr_svg_(self) -> str:
        return self.svg

    def text(self) -> str:
        return self.alt

