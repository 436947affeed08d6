"""A small, safe Markdown-to-HTML renderer for the rule book (docs/risk-rules.md).

Supports what the rule book uses: ATX headings (with an optional ``{#id}``), paragraphs, ``-`` lists
(with indented continuation lines), pipe tables, ``code``, **bold** and *italic*. Everything is
HTML-escaped first: no raw HTML, no links or images from the source, so the output is safe to inline.

``anchors``: names (e.g. custom error names) whose first appearance as a code span gets ``id=name``, so
that /rules#LeverageTooHigh lands on the rule. ``inserts``: trusted HTML placed right after the heading
with that id (the live parameters).
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)(?:\s+\{#([A-Za-z][\w-]*)\})?\s*$")
_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")
_NAME = re.compile(r"^([A-Za-z_]\w*)")


def slug(text: str) -> str:
    s = re.sub(r"[^\w\s-]", "", text.lower())
    return re.sub(r"[\s_]+", "-", s).strip("-") or "section"


class _Renderer:
    def __init__(self, anchors: Iterable[str], inserts: dict[str, str]) -> None:
        self.anchors = set(anchors)
        self.used: set[str] = set()
        self.inserts = inserts

    def inline(self, text: str) -> str:
        parts: list[str] = []
        pos = 0
        for m in _CODE.finditer(text):
            parts.append(self._emph(html.escape(text[pos : m.start()], quote=False)))
            code = m.group(1)
            name = _NAME.match(code)
            attr = ""
            if name and name.group(1) in self.anchors and name.group(1) not in self.used:
                self.used.add(name.group(1))
                attr = f' id="{name.group(1)}"'
            parts.append(f"<code{attr}>{html.escape(code, quote=False)}</code>")
            pos = m.end()
        parts.append(self._emph(html.escape(text[pos:], quote=False)))
        return "".join(parts)

    @staticmethod
    def _emph(s: str) -> str:
        s = _BOLD.sub(r"<strong>\1</strong>", s)
        return _ITALIC.sub(r"<em>\1</em>", s)

    def heading(self, line: str) -> str:
        m = _HEADING.match(line)
        assert m
        level, text, hid = len(m.group(1)), m.group(2), m.group(3)
        hid = hid or slug(text)
        self.used.add(hid)
        out = f'<h{level} id="{html.escape(hid)}">{self.inline(text)}</h{level}>'
        return out + self.inserts.get(hid, "")

    def table(self, rows: list[str]) -> str:
        def cells(r: str) -> list[str]:
            r = r.strip()
            r = r[1:] if r.startswith("|") else r
            r = r[:-1] if r.endswith("|") else r
            return [c.strip() for c in r.split("|")]

        head = cells(rows[0])
        body = (
            [cells(r) for r in rows[2:]]
            if len(rows) > 1 and set(rows[1].replace("|", "").strip()) <= set("-: ")
            else [cells(r) for r in rows[1:]]
        )
        th = "".join(f"<th>{self.inline(c)}</th>" for c in head)
        trs = "".join("<tr>" + "".join(f"<td>{self.inline(c)}</td>" for c in r) + "</tr>" for r in body)
        return f'<div class="table"><table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table></div>'

    def render(self, text: str) -> str:
        out: list[str] = []
        lines = text.splitlines()
        i = 0
        para: list[str] = []

        def flush() -> None:
            if para:
                out.append(f"<p>{self.inline(' '.join(s.strip() for s in para))}</p>")
                para.clear()

        while i < len(lines):
            line = lines[i]
            if not line.strip():
                flush()
                i += 1
            elif _HEADING.match(line):
                flush()
                out.append(self.heading(line))
                i += 1
            elif line.lstrip().startswith("|"):
                flush()
                rows = []
                while i < len(lines) and lines[i].lstrip().startswith("|"):
                    rows.append(lines[i])
                    i += 1
                out.append(self.table(rows))
            elif re.match(r"^\s*[-*]\s+", line):
                flush()
                items: list[str] = []
                while i < len(lines) and lines[i].strip():
                    cur = lines[i]
                    if re.match(r"^[-*]\s+", cur):
                        items.append(re.sub(r"^[-*]\s+", "", cur))
                    elif items:
                        items[-1] += " " + cur.strip()
                    i += 1
                out.append("<ul>" + "".join(f"<li>{self.inline(it)}</li>" for it in items) + "</ul>")
            else:
                para.append(line)
                i += 1
        flush()
        return "\n".join(out)


def render(
    text: str, anchors: Iterable[str] = (), inserts: dict[str, str] | None = None
) -> tuple[str, set[str]]:
    """(HTML, the anchors placed) of Markdown ``text``."""
    r = _Renderer(anchors, inserts or {})
    body = r.render(text)
    return body, r.used
