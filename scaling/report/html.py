"""One self-contained HTML file for a sweep report: inline CSS, every figure embedded as a base64
PNG, no scripts and no external resources (it opens from a mail attachment or a laptop)."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import pandas as pd

from parcae_scaling.scaling.report.sweep_report import Section, SweepReport

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;\
max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{font-size:1em;color:#444}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.8em}
table{border-collapse:collapse;font-size:.75em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:right}th{background:#f0f0f0}
td.text{text-align:left}
.warn{background:#fff8e1;border-left:4px solid #f0ad4e;padding:.4em .8em;font-size:.85em}
.error{background:#fdecea;border-left:4px solid #d9534f;padding:.4em .8em;font-size:.85em}
.status-succeeded{color:#2e7d32}.status-failed,.verdict-diverged{color:#c62828;font-weight:bold}
.verdict-spiked,.verdict-unstable{color:#e65100;font-weight:bold}.verdict-marginal{color:#8d6e00}.verdict-stable{color:#2e7d32}
figure{margin:1em 0}figure img{max-width:100%;max-height:460px;border:1px solid #eee}\
figcaption{font-size:.75em;color:#666}
nav ul{font-size:.85em;columns:2}
"""


def _esc(x: object) -> str:
    return html.escape(str(x))


def _cell(col: str, v: object) -> str:
    if isinstance(v, float):
        text = "-" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1e5 or v == 0 else f"{v:.3g}")
        return f"<td>{text}</td>"
    if v is None or v is pd.NaT:
        return "<td>-</td>"
    cls = "text"
    if col in ("status", "verdict"):
        cls += f" {col}-{_esc(v)}"
    return f'<td class="{cls}">{_esc(v)}</td>'


def table_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    rows = []
    for rec in df.head(max_rows).to_dict("records"):
        rows.append("<tr>" + "".join(_cell(c, None if _isna(v) else v) for c, v in rec.items()) + "</tr>")
    more = f"<p>({len(df) - max_rows} more rows not shown)</p>" if len(df) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def _isna(v: object) -> bool:
    try:
        return bool(pd.isna(v)) and not isinstance(v, float)
    except (TypeError, ValueError):
        return False


def figure_html(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    pdf = Path(path).with_suffix(".pdf")
    caption = f"{path.name}" + (f" (PDF beside it: {pdf.name})" if pdf.is_file() else "")
    return (f'<figure><img alt="{_esc(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _anchor(title: str) -> str:
    return "s-" + "".join(ch if ch.isalnum() else "-" for ch in title.lower())


def section_html(s: Section) -> str:
    parts = [f'<h2 id="{_anchor(s.title)}">{_esc(s.title)}</h2>']
    if s.error:
        parts.append(f'<div class="error">not available: {_esc(s.error)}</div>')
    if s.summary:
        parts.append(f"<pre>{_esc(s.summary)}</pre>")
    if s.warnings:
        items = "".join(f"<li>{_esc(w)}</li>" for w in s.warnings)
        parts.append(f'<div class="warn"><b>warnings ({len(s.warnings)})</b><ul>{items}</ul></div>')
    for caption, df in s.tables:
        parts.append(f"<h3>{_esc(caption)}</h3>{table_html(df)}")
    parts += [figure_html(f) for f in s.figures]
    return "\n".join(parts)


def render_html(report: SweepReport) -> str:
    nav = "".join(f'<li><a href="#{_anchor(s.title)}">{_esc(s.title)}</a>'
                  + (" (not available)" if s.error else "") + "</li>" for s in report.sections)
    specs = "".join(f"<h3>spec of {_esc(name)}</h3><pre>{_esc(json.dumps(spec, indent=2))}</pre>"
                    for name, spec in report.specs.items() if spec is not None)
    body = "\n".join(section_html(s) for s in report.sections)
    title = "parcae-scaling report: " + ", ".join(report.sweeps)
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_esc(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{_esc(title)}</h1>"
            f"<p>store <code>{_esc(report.store_url)}</code> &middot; generated {_esc(report.created)} &middot; "
            f"{len(report.figures)} figures</p><nav><ul>{nav}</ul></nav>{body}"
            f"<h2 id=\"specs\">Recorded sweep specs</h2>{specs}</body></html>")


def write_html(report: SweepReport, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(report), encoding="utf-8")
    return path
