"""The pieces every lab page is made of: one style sheet, escaped text, tables, verdict badges, embedded figures.

Pages are self-contained (figures embedded as PNG data), so a report can be mailed or archived as one file.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bnlab.lab.result import Claim

__all__ = ["VERDICT_CLASS", "badge", "claims_table", "esc", "figure", "page", "table"]

VERDICT_CLASS = {"reproduced": "ok", "not reproduced": "fail", "not judged": "skip", "reported": "info"}
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.meta { color: #555; } .banner { background: #fff3cd; border: 1px solid #e0c060; padding: .6em 1em; }
table { border-collapse: collapse; margin: .6em 0; } th, td { border: 1px solid #ccc; padding: .3em .6em;
  text-align: left; vertical-align: top; } th { background: #f3f3f3; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.verdict { font-weight: bold; white-space: nowrap; padding: .15em .5em; border-radius: .3em; color: #fff; }
.ok { background: #2e7d32; } .fail { background: #c62828; } .skip { background: #757575; }
.info { background: #1565c0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: .93em; max-width: 60em; } code { background: #f3f3f3; padding: 0 .2em; }
.note { color: #444; font-size: .93em; } ul.claims { margin: 0; padding-left: 1.1em; }
"""


def esc(value: Any) -> str:
    """``value`` as HTML text."""
    return html.escape(str(value))


def table(columns: Sequence[Any], rows: Iterable[Sequence[Any]], cls: str = "", raw: bool = False) -> str:
    """A table of escaped cells (``raw``: the cells are HTML already)."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    cell = (lambda v: str(v)) if raw else esc
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def badge(verdict: str) -> str:
    return f'<span class="verdict {VERDICT_CLASS.get(verdict, "skip")}">{esc(verdict)}</span>'


def claims_table(claims: Sequence[Claim]) -> str:
    rows = [f"<tr><td>{esc(c.claim)}</td><td>{badge(c.verdict)}</td><td>{esc(c.evidence)}</td></tr>" for c in claims]
    return ('<table class="claims"><thead><tr><th>claim</th><th>verdict</th><th>evidence (this run\'s numbers)'
            f'</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def figure(png: Path, caption: str, link: str) -> str:
    """A figure embedded from ``png``, its caption, and a link to its SVG (relative to the page)."""
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(png.stem)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{esc(caption)} (<a href="{esc(link)}">SVG</a>)</figcaption></figure>')


def page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")
