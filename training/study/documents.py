"""A tiny document model rendered both as Markdown and as one self-contained HTML file.

The study report is a list of sections, each a list of blocks (paragraphs, bullet lists, tables,
figures). Markdown links figures by relative path; HTML embeds them as base64 PNG, so the file can
be mailed or opened anywhere without its folder.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from sepsis_rl.common.markdown import markdown_table


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)


def render_markdown(title: str, sections: list[Section], base: Path) -> str:
    """Markdown with figures linked relative to `base` (the report's folder)."""
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                out += [block.text, ""]
            elif isinstance(block, Bullets):
                out += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Table):
                if block.caption:
                    out += [f"*{block.caption}*", ""]
                out += [markdown_table(block.headers, block.rows), ""]
            elif isinstance(block, Figure):
                rel = Path(block.path).resolve().relative_to(base.resolve())
                out += [f"![{block.caption}]({rel.as_posix()})", "", f"*{block.caption}*", ""]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1050px;
margin:2em auto;padding:0 1.2em;color:#1d2433;line-height:1.5}
h1{border-bottom:3px solid #2b6cb0;padding-bottom:.3em}
h2{margin-top:2.2em;border-bottom:1px solid #d5dbe5;padding-bottom:.2em;color:#2b4f81}
table{border-collapse:collapse;margin:.8em 0 1.4em;font-size:.9em}
th,td{border:1px solid #d5dbe5;padding:.3em .6em;text-align:left}
th{background:#eef3fa}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:nth-child(even) td{background:#f8fafc}
figure{margin:1em 0 2em;width:min(1500px,96vw);position:relative;left:50%;
transform:translateX(-50%)}figure img{display:block;margin:0 auto;max-width:100%;
border:1px solid #e2e8f0}figcaption{max-width:1050px;margin:.3em auto 0}
figcaption{font-size:.9em;color:#4a5568}
.caption{font-style:italic;color:#4a5568;margin-bottom:.2em}
nav ul{columns:2}code{background:#f1f4f8;padding:0 .2em}
"""


def _inline(text: str) -> str:
    """Escape, then render `code` and **bold** (the only inline Markdown the report uses)."""
    escaped = html.escape(text)
    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
    escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"\*([^*\s][^*]*)\*", r"<em>\1</em>", escaped)


_NUMERIC = re.compile(r"^[-+]?[\d.,]+%?( \[.*\])?$")


def _cell(text: str) -> str:
    """A table cell; numbers (with or without an interval) are right-aligned."""
    css = " class='num'" if _NUMERIC.match(text.strip()) else ""
    return f"<td{css}>{_inline(text)}</td>"


def render_html(title: str, sections: list[Section]) -> str:
    """One self-contained HTML page (figures embedded)."""
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<nav><strong>Contents</strong><ul>",
    ]
    out += [f"<li><a href='#s{i}'>{html.escape(s.title)}</a></li>" for i, s in enumerate(sections)]
    out.append("</ul></nav>")
    for i, section in enumerate(sections):
        out.append(f"<h2 id='s{i}'>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Paragraph):
                out.append(f"<p>{_inline(block.text)}</p>")
            elif isinstance(block, Bullets):
                out.append(
                    "<ul>" + "".join(f"<li>{_inline(x)}</li>" for x in block.items) + "</ul>"
                )
            elif isinstance(block, Table):
                if block.caption:
                    out.append(f"<div class='caption'>{_inline(block.caption)}</div>")
                head = "".join(f"<th>{_inline(h)}</th>" for h in block.headers)
                body = "".join(
                    "<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in block.rows
                )
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(Path(block.path).read_bytes()).decode()
                out.append(
                    f"<figure><img alt='{html.escape(block.caption)}' "
                    f"src='data:image/png;base64,{data}'>"
                    f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
                )
    out.append("</body></html>")
    return "\n".join(out)
