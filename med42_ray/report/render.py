"""One document, two renderings: Markdown (next to the PNGs) and a self-contained HTML page
(PNGs inlined as base64 data URIs, so the single file can be mailed or opened anywhere).

Text uses a small Markdown subset: `code` and **bold** inline; blocks are headings (two levels),
paragraphs, bullet lists, tables and images.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 62rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.sub { padding-left: 1.6rem; color: #555; }
img { max-width: 100%; }
code { background: #f3f3f3; padding: 0 0.2rem; }
"""


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: list[bool]                                  # per column: right-aligned
    sub_rows: set[int] = field(default_factory=set)      # rows shown indented under the one above


@dataclass
class Doc:
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def subheading(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, table: Table) -> None:
        self.blocks.append(("table", table))

    def image(self, filename: str, alt: str) -> None:
        self.blocks.append(("img", (filename, alt)))


def duration(s: float | None) -> str:
    if s is None:
        return "—"
    m, s = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(doc: Doc) -> str:
    out = [f"# {doc.title}", ""]
    for kind, body in doc.blocks:
        if kind in ("h2", "h3"):
            out += [f"{'#' * int(kind[1])} {body}", ""]
        elif kind == "p":
            out += [body, ""]
        elif kind == "ul":
            out += [f"- {item}" for item in body] + [""]
        elif kind == "img":
            out += [f"![{body[1]}]({body[0]})", ""]
        elif kind == "table":
            t: Table = body
            out.append("| " + " | ".join(_md_cell(h) for h in t.header) + " |")
            out.append("|" + "".join("---:|" if num else "---|" for num in t.numeric))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in t.rows]
            out.append("")
    return "\n".join(out)


def _inline(text: str) -> str:
    text = html.escape(text, quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def to_html(doc: Doc, image_dir: Path) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(doc.title.replace('`', ''))}</title><style>{STYLE}</style></head><body>",
           f"<h1>{_inline(doc.title)}</h1>"]
    for kind, body in doc.blocks:
        if kind in ("h2", "h3"):
            out.append(f"<{kind}>{_inline(body)}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(body)}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in body) + "</ul>")
        elif kind == "img":
            data = base64.b64encode((image_dir / body[0]).read_bytes()).decode("ascii")
            out.append(f'<p><img alt="{html.escape(body[1])}" src="data:image/png;base64,{data}"></p>')
        elif kind == "table":
            t: Table = body
            out.append("<table><thead><tr>" + "".join(f"<th>{_inline(h)}</th>" for h in t.header)
                       + "</tr></thead><tbody>")
            for i, row in enumerate(t.rows):
                cells = []
                for j, c in enumerate(row):
                    cls = "num" if t.numeric[j] else ("sub" if i in t.sub_rows and j == 0 else "")
                    cells.append(f'<td class="{cls}">{_inline(c)}</td>' if cls else f"<td>{_inline(c)}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
