"""index.html: every section on one static page that opens from disk (relative links, inline CSS, no scripts)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from kcomp.report.section import Section

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1700px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.source { color: #666; font-family: monospace; font-size: .9em; word-break: break-all; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td.key, th.key { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; } figure img { max-width: 800px; width: 100%; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #555; max-width: 800px; }
.note { color: #8a5a00; }
"""


def write_page(sections: list[Section], out_dir: Path, title: str = "kcomp report") -> str:
    from kcomp import __version__
    from kcomp.artifacts import atomic_write_bytes

    parts = [f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{_e(title)}</title>\n'
             f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>{_e(title)}</h1>\n"
             f'<p class="source">kcomp {_e(__version__)}</p>\n']
    for i, s in enumerate(sections):
        parts.append(_section(s, i))
    parts.append("</body>\n</html>\n")
    path = out_dir / "index.html"
    atomic_write_bytes(path, "".join(parts).encode())
    return str(path)


def _section(s: Section, i: int) -> str:
    out = [f'<section id="s{i}">\n<h2>{_e(s.title)}</h2>\n<p class="source">{_e(s.source)}</p>\n']
    if s.facts:
        out.append("<table>\n" + "".join(f'<tr><th class="key">{_e(k)}</th><td class="key">{_e(_fmt(v))}</td>'
                                          "</tr>\n" for k, v in s.facts.items()) + "</table>\n")
    if s.rows:
        cols = list(dict.fromkeys(k for r in s.rows for k in r))
        out.append("<table>\n<tr>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>\n")
        for r in s.rows:
            out.append("<tr>" + "".join(f"<td>{_e(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>\n")
        out.append("</table>\n")
    for n in s.notes:
        out.append(f'<p class="note">{_e(n)}</p>\n')
    if s.images:
        out.append('<div class="figures">\n')
        for im in s.images:
            out.append(f'<figure><a href="{_e(im.path)}"><img src="{_e(im.path)}" alt="{_e(im.caption)}" '
                       f'loading="lazy"></a><figcaption>{_e(im.caption)}</figcaption></figure>\n')
        out.append("</div>\n")
    out.append("</section>\n")
    return "".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, list | tuple | dict):
        return json.dumps(v, default=str) if len(str(v)) <= 200 else f"{len(v)} items"
    return str(v)


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)
