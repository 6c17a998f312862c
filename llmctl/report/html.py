"""HTML helpers the report's page and sections share.

Every value put into the page is escaped for where it goes: text with `html.escape`, attribute
values (image file names, which come from stage directory names) percent-encoded and then
escaped inside double quotes, so no directory name can add markup or script.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import quote

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left;font-size:.92em}
th{background:#f4f4f4} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.fp{font-family:ui-monospace,monospace;font-size:.85em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0} .muted{color:#777;font-size:.9em} code{background:#f4f4f4;padding:0 .2em}
"""


def esc(v: Any) -> str:
    """Text content."""
    return html.escape(str(v), quote=True)


def img(name: str, alt: str) -> str:
    """An <img> of a PNG beside index.html: the file name percent-encoded, then escaped, in double quotes."""
    return f'<img src="{esc(quote(name))}" alt="{esc(alt)}">'


def table(head: list[str], rows: list[list[Any]], classes: dict[int, str] | None = None) -> str:
    """A <table> with a header row: floats to 4 significant digits and ints with thousands separators
    right-aligned, other cells escaped text (`classes`: a CSS class per column index)."""

    def cell(i: int, v: Any) -> str:
        cls = (classes or {}).get(i)
        if isinstance(v, float):
            return f'<td class="num">{v:.4g}</td>'
        if isinstance(v, int) and not isinstance(v, bool):
            return f'<td class="num">{v:,}</td>'
        return f'<td class="{cls}">{esc(v)}</td>' if cls else f"<td>{esc(v)}</td>"

    return (
        "<table><tr>"
        + "".join(f"<th>{esc(h)}</th>" for h in head)
        + "</tr>"
        + "".join("<tr>" + "".join(cell(i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
        + "</table>"
    )
