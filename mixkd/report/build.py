"""The paper's tables rebuilt from the MLflow runs of mixkd sweeps, with the paper's numbers beside ours.

    from mixkd.report.build import write_report
    write_report("sqlite:///runs/sweeps/smoke/mlflow.db", "runs/report")   # report.md, report.html, PNGs

``build_report(df)`` turns the DataFrame of :func:`mixkd.tracking.runstore.load_runs` into a :class:`Report`:
a list of :class:`Table` (Table 1 dev, Table 2 speed/size, Table 3 layout, Fig. 1 limited data,
Fig. 3 sensitivity, and the paper-only reference tables) whose :class:`Cell` s hold our mean ± std
over seeds (n, run ids), the paper's value and the difference. ``render_markdown`` and
``render_html`` print the same structure; the HTML is one self-contained file (inline CSS, PNGs as
base64 data URIs; the only links are to the MLflow UI).

The pieces: :mod:`mixkd.report.cells` (the data model, and how runs become cells), :mod:`mixkd.report.tables`
(one function per paper table), :mod:`mixkd.report.figures` (the PNGs) and :mod:`mixkd.report.render`
(Markdown, HTML, JSON); this module assembles the report and writes the folder.
"""
from __future__ import annotations

import contextlib

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..core.errors import UsageError
from .cells import DEFAULT_UI, Report, prepare, setting_keys, setting_text
from .figures import external_pareto, plot_fig1, plot_fig3, plot_pareto, plot_table2
from .render import render_html, render_markdown, report_json
from .scorecard import build_scorecard, plot as plot_scorecard
from .custom import custom_tables
from .tables import fig1_table, fig3_tables, paper_only_tables, table1, table2, table3


# ------------------------------------------------------------------------------------------------
# build
# ------------------------------------------------------------------------------------------------
def build_report(df, mlflow_ui_url: str = DEFAULT_UI, figures: bool = True) -> Report:
    """The report of the runs in ``df`` (a :func:`mixkd.tracking.runstore.load_runs` frame)."""
    total = 0 if df is None else len(df)
    d = prepare(df)
    settings = setting_keys(d)
    tables: list[Any] = []
    for s in settings or [None]:
        tables.append(table1(d, s))
    for s in settings or [None]:
        tables.append(table3(d, s))
    if len(settings) > 1:   # keys unique: table1, table1_2, ...
        for key in ("table1", "table3"):
            for i, t in enumerate([t for t in tables if t.key == key][1:], start=2):
                t.key = f"{key}_{i}"
    t2 = table2(d)
    f1 = fig1_table(d)
    f3 = fig3_tables(d)
    first3 = next(i for i, t in enumerate(tables) if t.key.startswith("table3"))
    tables.insert(first3, t2)            # paper order: Table 1, Table 2, Table 3
    tables += [f1, *f3, *custom_tables(d), *paper_only_tables()]
    used = 0 if d is None else len(d)
    summary = [f"{total} mixkd runs in the store; {used} FINISHED with final metrics are used.",
               "Settings (teacher backbone, training-data fraction, row cap): "
               + ("; ".join(setting_text(s) for s in settings) if settings else "none")]
    if d is not None and len(d):
        exps = sorted(set(zip(d["experiment"], d["experiment_id"])))
        summary.append("Experiments: " + ", ".join(f"{n} (id {i})" for n, i in exps))
    figs, notes = {}, {}
    card = build_scorecard(df)
    if figures:
        with _quiet_matplotlib():
            _draw(d, f1, f3, t2, card, figs, notes)
    return Report(tables, figs, notes, summary, mlflow_ui_url, card)


@contextlib.contextmanager
def _quiet_matplotlib():
    """matplotlib's own warnings (empty legends, glyphs, log axes) and log lines stay out of the report's stderr:
    the report says what each figure shows, and an empty panel is left out."""
    import logging
    import warnings
    level = logging.getLogger("matplotlib").level
    logging.getLogger("matplotlib").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="matplotlib")
            warnings.filterwarnings("ignore", category=UserWarning, message=".*(legend|glyph|Glyph|tight_layout).*")
            yield
    finally:
        logging.getLogger("matplotlib").setLevel(level)


def _draw(d, f1, f3, t2, card, figs: dict, notes: dict) -> None:
    """The report's PNGs into ``figs`` (name -> bytes), what each shows into ``notes``."""
    ext = external_pareto(d) if d is not None and len(d) else None
    if ext:
        for name, png in ext[0].items():
            figs[name] = png
            notes[name] = (f"x = {ext[1]}" if ext[1] != "params_count" else
                           "no latency/* metrics in the store: x = parameter count instead of latency") + \
                          "; drawn by mixkd.deploy.selection.plot_pareto"
    else:
        png, note = plot_pareto(d)
        if png:
            figs["pareto.png"], notes["pareto.png"] = png, note + " (the report's own scatter)"
        else:
            notes["pareto.png"] = note
    for name, fn, arg in (("fig1_limited_data.png", plot_fig1, f1), ("fig3_sensitivity.png", plot_fig3, f3),
                          ("table2_speed_params.png", plot_table2, t2)):
        png = fn(arg)
        if png:
            figs[name] = png
    png = plot_scorecard(card)
    if png:
        figs["scorecard.png"], notes["scorecard.png"] = png, "our effect (●, 95% CI) next to the paper's (◇)"


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _json_default(o):
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


def _clean(o):
    if isinstance(o, float) and (math.isnan(o) or math.isinf(o)):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def check_out_dir(out: str | os.PathLike, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and not overwrite:
        raise UsageError(f"--out {out} already exists; pass --overwrite to replace it or choose another folder")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    return out


def write_report(tracking_uri: str, out: str | os.PathLike, experiment: str | None = None, overwrite: bool = False,
                 mlflow_ui_url: str = DEFAULT_UI) -> Path:
    """Load the runs, build the report and write ``out``: report.md, report.html (self-contained),
    report.json (the structured tables with full run ids) and the PNGs. Written into a temporary
    folder next to ``out`` and renamed, so ``out`` is either complete or absent."""
    from ..tracking.runstore import load_runs
    out = check_out_dir(out, overwrite)
    df = load_runs(tracking_uri, experiment)
    report = build_report(df, mlflow_ui_url=mlflow_ui_url)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, png in report.figures.items():
            (tmp / name).write_bytes(png)
        (tmp / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (tmp / "report.html").write_text(render_html(report), encoding="utf-8")
        (tmp / "report.json").write_text(json.dumps(_clean(report_json(report)), indent=1, default=_json_default),
                                         encoding="utf-8")
        os.chmod(tmp, 0o755)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["build_report", "write_report"]
