"""The report printed: ``render_markdown`` (report.md), ``render_html`` (report.html: one self-contained file,
inline CSS, PNGs as base64 data URIs, the only links are to the MLflow UI) and ``report_json`` (report.json:
the same tables with full run ids).
"""
from __future__ import annotations

import base64
import html
import re
from typing import Any

from . import paper_numbers as P
from . import scorecard as SC
from .cells import Cell, Report, Table, TextTable

SCORECARD_INTRO = ("The paper's claims as contrasts between our runs in the same setting: our Δ = method − "
                   "baseline (points of the primary dev metric), mean over seeds with a 95% CI (paired by seed "
                   "where both arms share seeds, else Welch); **holds**: CI above 0, **contradicted**: CI below 0, "
                   "**inconclusive**: CI includes 0, **no runs**: an arm is missing. The paper's Δ is its own "
                   "effect in its setting (source given).")


def run_url(ui: str, exp_id: str, run_id: str) -> str:
    return f"{ui.rstrip('/')}/#/experiments/{exp_id}/runs/{run_id}"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def _md_cell(c: Cell, ui: str, table: Table, paper_only: bool = False) -> str:
    parts = [f"**{c.ours_text()}**"] if c.has_run else ([] if paper_only else ["no run"])
    if c.paper is not None:
        parts.append(f"{table.paper_label} {c.paper_text()}")
        if c.delta_text():
            parts.append(f"Δ {c.delta_text()}")
    if c.note:
        parts.append(f"_{c.note}_")
    if c.runs:
        parts.append("runs: " + ", ".join(f"[{r[:8]}]({run_url(ui, e, r)})" for e, r in c.runs))
    return _md_escape("<br>".join(parts))


def _figure_names(report: Report) -> list[str]:
    names = [n for n in report.figures if n.startswith("pareto")] or ["pareto.png"]
    return names + ["fig1_limited_data.png", "fig3_sensitivity.png", "table2_speed_params.png"]


def render_markdown(report: Report, images: bool = True) -> str:
    ui = report.mlflow_ui_url
    out = ["# MixKD report: the paper's tables with our runs", "",
           f"Paper: {P.PAPER} ({P.PAPER_PDF}). Paper numbers: `mixkd/report/paper_numbers.py` "
           f"(from {P.NOTES_FILE}).", ""]
    out += [f"- {s}" for s in report.summary]
    out += ["- Each cell: **ours** mean ± std over seeds (n), the paper's value, Δ = ours − paper where our runs "
            f"are in the paper's setting, and the MLflow runs (links into the MLflow UI at {ui}). \"no run\": no "
            "finished run for that cell; \"—\": the paper gives no value.", ""]
    out += ["## Claims scorecard", "", SCORECARD_INTRO, "", SC.to_markdown(report.scorecard), ""]
    if "scorecard.png" in report.figures:
        out += ["![scorecard.png](scorecard.png)" if images else "- scorecard.png", ""]
    for t in report.tables:
        out += [f"## {t.title}", ""]
        if isinstance(t, TextTable):
            out += ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
            out += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in t.rows]
        else:
            out += ["| Model | " + " | ".join(t.columns) + " |", "|---|" + "---|" * len(t.columns)]
            for r in t.rows:
                label = (r.label + (" _(paper only, not run by mixkd)_" if r.paper_only else "")
                         + (" _(ours only)_" if r.ours_only else ""))
                out.append("| " + _md_escape(label) + " | "
                           + " | ".join(_md_cell(c, ui, t, r.paper_only) for c in r.cells) + " |")
        out.append("")
        out += [f"- {n}" for n in t.notes]
        out.append("")
    out += ["## Figures", ""]
    for name in _figure_names(report):
        if name in report.figures:
            out.append(f"![{name}]({name})" if images else f"- {name}")
            if name in report.figure_notes:
                out.append(f"_{report.figure_notes[name]}_")
        else:
            out.append(f"- {name}: not drawn ({report.figure_notes.get(name, 'nothing to plot')})")
        out.append("")
    return "\n".join(out)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;max-width:1600px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
th{background:#f0f0f0}td.ours{white-space:nowrap}.paper{color:#555}.delta-pos{color:#1a7f37}.delta-neg{color:#c62828}
.norun{color:#999;font-style:italic}.note{color:#666;font-size:12px}.runs a{font-family:monospace;font-size:11px}
tr.ours-only td:first-child{font-style:italic}tr.paper-only{background:#fafafa}img{max-width:100%;border:1px solid #eee}
ul.notes{font-size:12px;color:#444}"""


def _html_cell(c: Cell, ui: str, t: Table, paper_only: bool = False) -> str:
    e = html.escape
    if c.has_run:
        parts = [f"<b>{e(c.ours_text())}</b>"]
    else:
        parts = [] if paper_only else ['<span class="norun">no run</span>']
    if c.paper is not None:
        parts.append(f'<span class="paper">{e(t.paper_label)} {e(c.paper_text())}</span>')
        d = c.delta
        if c.delta_text():
            cls = "delta-pos" if all(x is None or x >= 0 for x in d) else "delta-neg"
            parts.append(f'<span class="{cls}">Δ {e(c.delta_text())}</span>')
    if c.note:
        parts.append(f'<span class="note">{e(c.note)}</span>')
    if c.runs:
        links = ", ".join(f'<a href="{e(run_url(ui, x, r))}" title="{e(r)}">{e(r[:8])}</a>' for x, r in c.runs)
        parts.append(f'<span class="runs">{links}</span>')
    return '<td class="ours">' + "<br>".join(parts) + "</td>"


def _inline_md(s: str) -> str:
    s = html.escape(s)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def render_html(report: Report) -> str:
    e = html.escape
    ui = report.mlflow_ui_url
    body = ["<h1>MixKD report: the paper's tables with our runs</h1>",
            f"<p>Paper: {e(P.PAPER)} ({e(P.PAPER_PDF)}); paper numbers from "
            "<code>mixkd/report/paper_numbers.py</code>.</p>",
            "<ul>" + "".join(f"<li>{_inline_md(s)}</li>" for s in report.summary) + "</ul>",
            "<p>Each cell: <b>ours</b> mean ± std over seeds (n), the paper's value, Δ = ours − paper, and links "
            f"to the runs in the MLflow UI ({e(ui)}). <i>no run</i>: no finished run; —: the paper gives no value.</p>",
            f"<h2 id=\"scorecard\">Claims scorecard</h2><p>{_inline_md(SCORECARD_INTRO)}</p>",
            SC.to_html(report.scorecard)]
    if "scorecard.png" in report.figures:
        b64 = base64.b64encode(report.figures["scorecard.png"]).decode()
        body.append(f"<img alt=\"scorecard.png\" src=\"data:image/png;base64,{b64}\">")
    for t in report.tables:
        body.append(f"<h2 id=\"{e(t.key)}\">{e(t.title)}</h2><table>")
        if isinstance(t, TextTable):
            body.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in t.rows]
        else:
            body.append("<tr><th>Model</th>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr>")
            for r in t.rows:
                cls = "ours-only" if r.ours_only else ("paper-only" if r.paper_only else "")
                tag = (" <i>(paper only, not run by mixkd)</i>" if r.paper_only
                       else (" <i>(ours only)</i>" if r.ours_only else ""))
                body.append(f'<tr class="{cls}"><td>{e(r.label)}{tag}</td>'
                            + "".join(_html_cell(c, ui, t, r.paper_only) for c in r.cells) + "</tr>")
        body.append("</table><ul class=\"notes\">" + "".join(f"<li>{_inline_md(n)}</li>" for n in t.notes) + "</ul>")
    body.append("<h2>Figures</h2>")
    for name in _figure_names(report):
        if name in report.figures:
            b64 = base64.b64encode(report.figures[name]).decode()
            body.append(f"<h3>{e(name)}</h3><img alt=\"{e(name)}\" src=\"data:image/png;base64,{b64}\">")
            if name in report.figure_notes:
                body.append(f"<p class=\"note\">{e(report.figure_notes[name])}</p>")
        else:
            why = report.figure_notes.get(name, "nothing to plot")
            body.append(f"<p class=\"note\">{e(name)}: not drawn ({e(why)})</p>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>MixKD report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def report_json(report: Report) -> dict[str, Any]:
    tables = []
    for t in report.tables:
        if isinstance(t, TextTable):
            tables.append({"key": t.key, "title": t.title, "columns": t.columns, "rows": t.rows, "notes": t.notes})
        else:
            tables.append(t.to_dict())
    return {"summary": report.summary, "mlflow_ui_url": report.mlflow_ui_url, "scorecard": SC.to_json(report.scorecard),
            "tables": tables,
            "figures": sorted(report.figures), "figure_notes": report.figure_notes}


__all__ = ["render_markdown", "render_html", "report_json", "run_url"]
