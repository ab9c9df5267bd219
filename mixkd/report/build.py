"""The paper's tables rebuilt from the MLflow runs of mixkd sweeps, with the paper's numbers beside ours.

    from mixkd.report.build import write_report
    write_report("sqlite:///runs/sweeps/smoke/mlflow.db", "runs/report")   # report.md, report.html, PNGs

``build_report(df)`` turns the DataFrame of :func:`mixkd.tracking.runstore.load_runs` into a :class:`Report`:
a list of :class:`Table` (Table 1 dev, Table 2 speed/size, Table 3 layout, Fig. 1 limited data,
Fig. 3 sensitivity, and the paper-only reference tables) whose :class:`Cell` s hold our mean ± std
over seeds (n, run ids), the paper's value and the difference. ``render_markdown`` and
``render_html`` print the same structure; the HTML is one self-contained file (inline CSS, PNGs as
base64 data URIs; the only links are to the MLflow UI).

How runs become cells:

- Only FINISHED runs with ``final/*`` metrics count. Scores are the runs' final dev metrics × 100.
- A row is (variant, +BT, student depth k, layer strategy); "+BT" means the run trained with an
  augment file (tag ``augmentation`` not 'none') or a variant named ``...+bt``. Teachers are their
  own row. Paper rows are BERTk with the first-k layers; our other depths/strategies become extra
  rows with no paper value.
- Runs are grouped by setting (teacher backbone, data fraction); each setting gets its own Table 1 /
  Table 3. Within a cell, runs that differ only in seed (same ``config_group``) are averaged; when a
  cell holds several configurations (a search sweep), the one with the best mean primary metric is
  shown and the cell says "best of N configs".
- A cell without runs says "no run"; a value the paper does not give is "—". Nothing is filled in.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import paper_numbers as P
from ..core.errors import UsageError
from ..core.tasks import TASKS

DEFAULT_UI = "http://127.0.0.1:5000"
TASK_LABEL = {"sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "mnli": "MNLI-m", "qnli": "QNLI", "rte": "RTE",
              "cola": "CoLA", "stsb": "STS-B", "wnli": "WNLI"}
# the paper's column conventions: MRPC/QQP F1/Acc, STS-B Pearson/Spearman, CoLA MCC, MNLI-m accuracy
TASK_METRICS = {"mrpc": ("f1", "accuracy"), "qqp": ("f1", "accuracy"), "stsb": ("pearson", "spearman"),
                "cola": ("matthews_correlation",)}
METRIC_LABEL = {"f1": "F1", "accuracy": "Acc", "pearson": "P", "spearman": "S", "matthews_correlation": "MCC",
                "accuracy_mm": "Acc-mm"}
VARIANT_LABEL = {"ft": "FT", "kd": "KD", "pkd": "PKD", "tmkd": "TMKD", "sm+tmkd": "SM+TMKD"}
PAPER_TASK_ORDER = ("sst2", "mrpc", "qqp", "mnli", "qnli", "rte")


def task_metrics(task: str) -> tuple[str, ...]:
    return TASK_METRICS.get(task, ("accuracy",))


def column_label(task: str, metrics: tuple[str, ...] | None = None) -> str:
    metrics = metrics or task_metrics(task)
    if metrics == ("accuracy_mm",):
        return "MNLI-mm"
    base = TASK_LABEL.get(task, task)
    return base if metrics == ("accuracy",) else f"{base} ({'/'.join(METRIC_LABEL.get(m, m) for m in metrics)})"


# ------------------------------------------------------------------------------------------------
# the structured report
# ------------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One table cell: ours (aggregated over seeds) next to the paper's value(s).

    ``metrics`` names the values in the cell (two for F1/Acc); ``mean``/``std``/``paper`` are lists
    aligned with it; ``mean`` is None when no run fills the cell; ``std`` is NaN for n == 1.
    """
    metrics: tuple[str, ...]
    mean: list[float] | None = None
    std: list[float] | None = None
    n: int = 0
    paper: list[float | None] | None = None
    runs: list[tuple[str, str]] = field(default_factory=list)    # (experiment_id, run_id)
    note: str = ""
    fmt: str = "{:.2f}"
    paper_fmt: str = "{:.2f}"    # as the paper prints it (Table 1: 2 decimals, Table 3 and Fig. 1: 1)
    delta_fmt: str = "{:+.2f}"

    @property
    def has_run(self) -> bool:
        return self.mean is not None

    @property
    def delta(self) -> list[float | None] | None:
        if self.mean is None or self.paper is None:
            return None
        return [None if p is None or m is None or math.isnan(m) else m - p for m, p in zip(self.mean, self.paper)]

    def ours_text(self) -> str:
        if self.mean is None:
            return "no run"
        parts = []
        for m, s in zip(self.mean, self.std or [math.nan] * len(self.mean)):
            if m is None or math.isnan(m):
                parts.append("—")
            else:
                parts.append(self.fmt.format(m) + ("" if s is None or math.isnan(s) else " ± " + self.fmt.format(s)))
        return " / ".join(parts) + f" (n={self.n})"

    def paper_text(self) -> str:
        if self.paper is None or all(p is None for p in self.paper):
            return "—"
        return "/".join("—" if p is None else self.paper_fmt.format(p) for p in self.paper)

    def delta_text(self) -> str:
        d = self.delta
        if d is None or all(x is None for x in d):
            return ""
        return "/".join("—" if x is None else self.delta_fmt.format(x).replace("-", "−") for x in d)

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": list(self.metrics), "mean": self.mean, "std": self.std, "n": self.n,
                "paper": self.paper, "delta": self.delta, "run_ids": [r for _, r in self.runs],
                "experiment_ids": sorted({e for e, _ in self.runs}), "note": self.note,
                "text": self.ours_text(), "paper_text": self.paper_text(), "delta_text": self.delta_text()}


@dataclass
class Row:
    label: str
    cells: list[Cell]
    paper_only: bool = False    # a row of the paper that mixkd does not run (DistilBERT)
    ours_only: bool = False     # a row of ours without a paper counterpart


@dataclass
class Table:
    key: str                    # table1, table2, table3, fig1, fig3, reference, ...
    title: str
    columns: list[str]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    paper_label: str = "paper"
    ours_label: str = "ours"

    def cell(self, row_label: str, column: str) -> Cell:
        for r in self.rows:
            if r.label == row_label:
                return r.cells[self.columns.index(column)]
        raise KeyError(f"{row_label!r} not in {self.key}: {[r.label for r in self.rows]}")

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "columns": self.columns, "notes": self.notes,
                "paper_label": self.paper_label, "ours_label": self.ours_label,
                "rows": [{"label": r.label, "paper_only": r.paper_only, "ours_only": r.ours_only,
                          "cells": [c.to_dict() for c in r.cells]} for r in self.rows]}


@dataclass
class TextTable:
    """A paper-only table printed as is (reference numbers, Table 4, Table 5)."""
    key: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    tables: list[Any]
    figures: dict[str, bytes]           # file name -> PNG bytes
    figure_notes: dict[str, str]
    summary: list[str]
    mlflow_ui_url: str = DEFAULT_UI

    def table(self, key: str) -> Table:
        found = [t for t in self.tables if t.key == key]
        if not found:
            raise KeyError(f"no table {key!r}; have {[t.key for t in self.tables]}")
        return found[0]


def _num(x: float) -> str:
    return f"{x:g}" if abs(x) >= 1000 else (f"{x:.2f}" if round(x, 1) != x else f"{x:.1f}")


# ------------------------------------------------------------------------------------------------
# selecting and aggregating runs
# ------------------------------------------------------------------------------------------------
def prepare(df):
    """FINISHED runs with final metrics, plus columns: base_variant, bt, setting."""
    if df is None:
        return None
    d = df.copy()
    has_final = [c for c in d.columns if c.startswith("final/")]
    d = d[d["status"] == "FINISHED"]
    if has_final:
        d = d[d[has_final].notna().any(axis=1)]
    variant = d["variant"].fillna("").astype(str)
    aug = d["augmentation"].fillna("none").astype(str)
    d["bt"] = variant.str.endswith("+bt") | ~aug.isin(["none", "", "None"])
    d["base_variant"] = variant.str.replace(r"\+bt$", "", regex=True)
    d["teacher_model"] = d["teacher_model"].fillna("?").astype(str)
    d["layer_strategy"] = d["layer_strategy"].fillna("first")
    return d.reset_index(drop=True)


def _pct(df, col: str):
    return df[col].astype(float) * 100.0


def best_group_cell(runs, metrics: tuple[str, ...], paper: list | None, primary: str = "final/primary",
                    paper_fmt: str = "{:.2f}") -> Cell:
    """Average ``metrics`` (×100) over the seeds of each config group; keep the group with the best mean
    primary metric (ties: more seeds)."""
    cell = Cell(metrics=metrics, paper=paper, paper_fmt=paper_fmt)
    if runs is None or len(runs) == 0:
        return cell
    cols = [f"final/{m}" for m in metrics]
    present = [c for c in cols if c in runs.columns]
    if not present:
        return cell
    usable = runs[runs[present].notna().any(axis=1)]
    if len(usable) == 0:
        return cell
    groups = []
    for _, g in usable.groupby(usable["config_group"].fillna(usable["run_id"]), sort=True):
        score = g[primary].astype(float).mean() if primary in g.columns else math.nan
        groups.append((-(score if not math.isnan(score) else -math.inf), -len(g), g))
    groups.sort(key=lambda t: (t[0], t[1]))
    g = groups[0][2]
    mean, std = [], []
    for c in cols:
        if c in g.columns and g[c].notna().any():
            v = _pct(g[g[c].notna()], c)
            mean.append(float(v.mean()))
            std.append(float(v.std(ddof=1)) if len(v) > 1 else math.nan)
        else:
            mean.append(math.nan)
            std.append(math.nan)
    cell.mean, cell.std, cell.n = mean, std, len(g)
    cell.runs = [(str(e), str(r)) for e, r in zip(g["experiment_id"], g["run_id"])]
    if len(groups) > 1:
        cell.note = f"best of {len(groups)} configs"
    return cell


def _settings(d) -> list[tuple[str, float]]:
    """(teacher backbone, data fraction) pairs with trial or teacher runs, full data first."""
    if d is None or len(d) == 0:
        return []
    pairs = {(str(t), float(f)) for t, f in zip(d["teacher_model"], d["data_fraction"])}
    return sorted(pairs, key=lambda p: (-p[1], p[0]))


def _row_label(variant: str, bt: bool, k: int | None, strategy: str = "first") -> str:
    if variant == "teacher":
        return "teacher"
    name = f"BERT{k}-{VARIANT_LABEL.get(variant, variant.upper())}{'+BT' if bt else ''}"
    return name if strategy in ("first", None) else f"{name} ({strategy} layers)"


def _select(d, task, key, strategy="first"):
    variant, bt, k = key
    if d is None or len(d) == 0:
        return d
    if variant == "teacher":
        return d[(d["role"] == "teacher") & (d["task"] == task)]
    return d[(d["role"] == "trial") & (d["task"] == task) & (d["base_variant"] == variant) & (d["bt"] == bt)
             & (d["student_layers"] == k) & (d["layer_strategy"] == strategy)]


def _our_row_keys(d) -> list[tuple[str, bool, int, str]]:
    if d is None or len(d) == 0:
        return []
    t = d[d["role"] == "trial"]
    keys = {(v, bool(b), int(k), s) for v, b, k, s in zip(t["base_variant"], t["bt"], t["student_layers"],
                                                          t["layer_strategy"]) if k is not None}
    order = {v: i for i, v in enumerate(("ft", "kd", "pkd", "tmkd", "sm+tmkd"))}
    return sorted(keys, key=lambda x: (-x[2], x[3] != "first", x[3], x[1], order.get(x[0], 99), x[0]))


def _setting_text(setting: tuple[str, float] | None) -> str:
    if setting is None:
        return "no runs"
    teacher, frac = setting
    return f"teacher {teacher}, {_frac(frac)} of the training data"


def _frac(f: float) -> str:
    return f"{f * 100:g}%"


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------
def _score_table(key, spec, d, setting, columns: list[tuple[str, tuple[str, ...]]], paper_of, extra_rows=True,
                 title_suffix="", notes=(), paper_fmt="{:.2f}") -> Table:
    sub = d
    if setting is not None and d is not None and len(d):
        sub = d[(d["teacher_model"] == setting[0]) & (d["data_fraction"] == setting[1])]
    rows = []
    paper_keys = set()
    for prow in spec["rows"]:
        variant, bt, k = prow["key"]
        paper_keys.add((variant, bt, k, "first"))
        cells = []
        for task, metrics in columns:
            paper = paper_of(prow, task, metrics)
            if prow.get("reference_only"):
                cells.append(Cell(metrics=metrics, paper=paper, paper_fmt=paper_fmt))
            else:
                cells.append(best_group_cell(_select(sub, task, prow["key"]), metrics, paper, paper_fmt=paper_fmt))
        rows.append(Row(prow["label"], cells, paper_only=bool(prow.get("reference_only"))))
    if extra_rows:
        for v, bt, k, strat in _our_row_keys(sub):
            if (v, bt, k, strat) in paper_keys:
                continue
            cells = [best_group_cell(_select(sub, task, (v, bt, k), strat), metrics, None)
                     for task, metrics in columns]
            if any(c.has_run for c in cells):
                rows.append(Row(_row_label(v, bt, k, strat), cells, ours_only=True))
    title = f"{spec['title']}{title_suffix} — ours: {_setting_text(setting)}"
    return Table(key, title, [column_label(t, m) for t, m in columns], rows,
                 notes=[f"Paper: {spec['source']}", *notes, *spec.get("notes", [])])


def _extra_tasks(d, paper_tasks) -> list[str]:
    if d is None or len(d) == 0:
        return []
    return [t for t in TASKS if t in set(d["task"]) and t not in paper_tasks]


def table1(d, setting) -> Table:
    spec = P.TABLE1_DEV
    tasks = list(spec["tasks"]) + _extra_tasks(d, spec["tasks"])
    columns = [(t, task_metrics(t)) for t in tasks]

    def paper_of(prow, task, metrics):
        v = prow["values"].get(task)
        return None if v is None else [v.get(m) for m in metrics]
    notes = ["Ours: GLUE dev, mean ± sample std over seeds (n runs), × 100. BERTk = a k-layer student cut "
             "from our teacher. Δ = ours − paper."]
    if setting is not None and (setting[1] != 1.0 or setting[0] not in ("bert-base-uncased",)):
        notes.append(f"Setting differs from the paper's (BERT-base teacher, full training sets): ours uses "
                     f"{_setting_text(setting)}; read Δ with that in mind.")
    return _score_table("table1", spec, d, setting, columns, paper_of, notes=notes)


def table3(d, setting) -> Table:
    spec = P.TABLE3_TEST
    columns = [("sst2", ("accuracy",)), ("mrpc", ("f1", "accuracy")), ("qqp", ("f1", "accuracy")),
               ("mnli", ("accuracy",)), ("mnli", ("accuracy_mm",)), ("qnli", ("accuracy",)), ("rte", ("accuracy",))]

    def paper_of(prow, task, metrics):
        v = prow["values"].get(task)
        return None if v is None else [v.get(m) for m in metrics]
    t = _score_table("table3", spec, d, setting, columns, paper_of, extra_rows=False,
                     title_suffix=" (layout)", paper_fmt="{:.1f}",
                     notes=["**Ours are GLUE dev scores; the paper's are GLUE test-server scores** (mixkd does "
                            "not submit to the test server). Δ = ours (dev) − paper (test): not a like-for-like "
                            "comparison.", "MixKD rows need +BT runs (augment file); FT/KD/PKD rows are without BT."])
    t.columns[3] = "MNLI-m"
    t.paper_label, t.ours_label = "paper (test)", "ours (dev)"
    return t


def _latency_cols(d) -> list[str]:
    if d is None:
        return []
    # p50 and p90 per batch / seq len: the table stays readable (every stat is in report.json and MLflow)
    return sorted(c for c in d.columns if re.match(r"latency/b\d+_s\d+_p(50|90)_ms$", c))


def _preferred_latency(cols: list[str]) -> str | None:
    """The latency column for speed-ups and the Pareto plot: b1 s128 p90 if logged, else the first p90/p50."""
    for pat in (r"latency/b1_s128_p90_ms$", r"latency/b1_s\d+_p90_ms$", r"_p90_ms$", r"_p50_ms$", r"_ms$"):
        hits = [c for c in cols if re.search(pat, c)]
        if hits:
            return hits[0]
    return None


def table2(d) -> Table:
    spec = P.TABLE2_SPEED
    lat_cols = _latency_cols(d)
    lat = _preferred_latency(lat_cols)
    columns = ["parameters", "samples/s (paper: b16, TITAN X)", "speed-up vs teacher"] + \
              [c.replace("latency/", "") for c in lat_cols]
    paper_speed = {r["key"][2]: r["samples_per_s"] for r in spec["rows"]}
    teacher_sps = paper_speed[None]
    rows = []
    models = sorted({str(t) for t in d["teacher_model"]}) if d is not None and len(d) else []

    def agg(runs, col, fmt="{:.2f}", scale=1.0) -> Cell:
        c = Cell(metrics=(col,), fmt=fmt)
        if runs is None or len(runs) == 0 or col not in runs.columns or not runs[col].notna().any():
            return c
        r = runs[runs[col].notna()]
        v = r[col].astype(float) * scale
        c.mean, c.std, c.n = [float(v.mean())], [float(v.std(ddof=1)) if len(v) > 1 else math.nan], len(v)
        c.runs = [(str(e), str(i)) for e, i in zip(r["experiment_id"], r["run_id"])]
        return c

    def runs_for(model, k):
        if d is None or len(d) == 0:
            return d
        sub = d[d["teacher_model"] == model]
        sub = sub[sub["role"] == "teacher"] if k is None else sub[(sub["role"] == "trial") & (sub["student_layers"] == k)]
        if "sst2" in set(sub["task"]):
            sub = sub[sub["task"] == "sst2"]    # the paper's Table 2 task (heads differ by a few parameters)
        return sub

    keys = [None, 6, 3]
    if d is not None and len(d):
        keys += sorted({int(k) for k in d["student_layers"] if k is not None and int(k) not in (6, 3)}, reverse=True)
    for model in models or [None]:
        t_runs = runs_for(model, None) if model else None
        t_lat = agg(t_runs, lat) if lat else Cell(metrics=("latency",))
        for k in keys:
            runs = runs_for(model, k) if model else None
            prow = next((r for r in spec["rows"] if r["key"][2] == k), None)
            if prow is None and (runs is None or len(runs) == 0):
                continue
            label = ("teacher" if k is None else f"{k}-layer student") + (f" [{model}]" if model else "")
            if prow:
                label = f"{prow['label']} · ours: {label}"
            params = agg(runs, "params_count", fmt="{:,.0f}")
            params.paper, params.paper_fmt, params.delta_fmt = ([prow["params"]] if prow else None), "{:,.0f}", "{:+,.0f}"
            sps = Cell(metrics=("samples_per_s",), paper=[prow["samples_per_s"]] if prow else None,
                       note="not measured by mixkd (see the latency columns)", paper_fmt="{:.0f}")
            speed = Cell(metrics=("speedup",), fmt="{:.2f}×", paper_fmt="{:.2f}×",
                         paper=[round(prow["samples_per_s"] / teacher_sps, 2)] if prow else None)
            s_lat = agg(runs, lat) if lat else Cell(metrics=("latency",))
            if lat and s_lat.has_run and t_lat.has_run:
                speed.mean, speed.std, speed.n = [t_lat.mean[0] / s_lat.mean[0]], [math.nan], s_lat.n
                speed.runs = s_lat.runs + t_lat.runs
                speed.note = f"teacher {lat} / this row's"
            elif not lat:
                speed.note = "missing: no latency/* metrics in the store"
            lat_cells = [agg(runs, c) for c in lat_cols]
            rows.append(Row(label, [params, sps, speed, *lat_cells], ours_only=prow is None))
    notes = [f"Paper: {spec['source']}",
             "Ours: params_count (the model's parameters) and latency/* metrics (ms) as logged; speed-up = the "
             "teacher's latency / the student's, same metric. Paper speed-up = student samples/s ÷ teacher's."]
    if not lat_cols:
        notes.append("**Latency missing**: no run in the store logged latency/* metrics (measure with `mixkd latency` "
                     "or sweep with --latency-budget-ms); samples/s and speed-up are therefore not filled in.")
    return Table("table2", spec["title"], columns, rows, notes=notes)


def fig1_table(d) -> Table:
    spec = P.FIG1_LIMITED
    limited = d[d["data_fraction"] < 1.0] if d is not None and len(d) else d
    paper_cols = list(spec["columns"])
    extra = [(t, m) for t in _extra_tasks(limited, ("qqp", "mnli", "qnli")) for m in [task_metrics(t)[0]]]
    columns = paper_cols + extra
    labels = list(spec["column_labels"]) + [column_label(t, (m,)) for t, m in extra]
    fractions = sorted(set(spec["values"]) | (set(map(float, limited["data_fraction"])) if limited is not None
                                              and len(limited) else set()), reverse=True)
    vlabel = dict(spec["variants"])
    rows = []
    for frac in fractions:
        fsub = limited[limited["data_fraction"] == frac] if limited is not None and len(limited) else limited
        keys = [(v, bt, 3, "first") for (v, bt), _ in spec["variants"]] if frac in spec["values"] else []
        keys += [k for k in _our_row_keys(fsub) if k not in keys]
        for v, bt, k, strat in [("teacher", False, None, "first")] + keys:
            paper_vals = spec["values"].get(frac, {}).get((v, bt)) if k == 3 and strat == "first" else None
            cells = []
            for i, (task, metric) in enumerate(columns):
                paper = [paper_vals[i]] if paper_vals is not None and i < len(paper_cols) else None
                cells.append(best_group_cell(_select(fsub, task, (v, bt, k), strat), (metric,), paper, paper_fmt="{:.1f}"))
            if v == "teacher" and not any(c.has_run for c in cells):
                continue
            name = "teacher" if v == "teacher" else (
                f"BERT{k} {vlabel[(v, bt)]}" if (v, bt) in vlabel and k == 3 and strat == "first"
                else _row_label(v, bt, k, strat))
            rows.append(Row(f"{_frac(frac)} · {name}", cells, ours_only=paper_vals is None))
    notes = [f"Paper: {spec['source']}",
             f"Paper metric: {spec['metric_note']}; FT+MixKD = the SM+TMKD variant. Paper values are read from the "
             "figure (marked 'fig' in the notes), not printed numbers.",
             "Ours: every run with data fraction < 1 (any teacher), mean ± std over seeds; teacher and student "
             "trained on the same subset."]
    return Table("fig1", spec["title"], labels, rows, notes=notes)


def _param_value(params: dict, name: str) -> float | None:
    try:
        return float(params.get(name))
    except (TypeError, ValueError):
        return None


def fig3_tables(d) -> list[Table]:
    """One table per swept knob (a_tmkd, a_sm, mixup_ratio): rows = value, columns = w/o BT, w/ BT;
    ours from SM+TMKD runs on SST-2 with a 3-layer student when present, else the most common
    (task, depth) among SM+TMKD runs."""
    spec = P.FIG3_SENSITIVITY
    tables = []
    sm = d[(d["role"] == "trial") & (d["base_variant"] == "sm+tmkd")] if d is not None and len(d) else None
    setting = None
    if sm is not None and len(sm):
        counts = sm.groupby(["task", "student_layers", "data_fraction", "teacher_model"]).size()
        pref = [i for i in counts.index if i[0] == "sst2" and i[1] == 3]
        setting = max(pref or list(counts.index), key=lambda i: (i[2] == 1.0, counts[i]))
        sm = sm[(sm["task"] == setting[0]) & (sm["student_layers"] == setting[1]) & (sm["data_fraction"] == setting[2])
                & (sm["teacher_model"] == setting[3])].copy()
    paper_match = setting is not None and setting[0] == spec["task"] and setting[1] == spec["student_layers"]
    metric = spec["metric"] if setting is None else TASKS[setting[0]].primary_metric
    for pname, p in spec["params"].items():
        xs = set(float(x) for x in p["x"]) if paper_match or setting is None else set()
        if sm is not None and len(sm):
            sm["_x"] = [_param_value(pp, pname) for pp in sm["params"]]
            xs |= {round(x, 6) for x in sm["_x"] if x is not None}
        rows = []
        for x in sorted(xs):
            cells = []
            for bt, pkey in ((False, "no_bt"), (True, "bt")):
                paper = None
                if paper_match and x in [float(v) for v in p["x"]]:
                    paper = [p[pkey][[float(v) for v in p["x"]].index(x)]]
                runs = sm[(sm["bt"] == bt) & (sm["_x"].round(6) == x)] if sm is not None and len(sm) else None
                cells.append(best_group_cell(runs, (metric,), paper))
            rows.append(Row(f"{p['label']} = {x:g}", cells, ours_only=not any(c.paper for c in cells)))
        ours = ("no SM+TMKD runs" if setting is None else
                f"SM+TMKD, {TASK_LABEL.get(setting[0], setting[0])}, {setting[1]}-layer student, teacher {setting[3]}, "
                f"{_frac(setting[2])} data")
        notes = [f"Paper: {spec['source']}", f"Paper FT baseline: {spec['ft_baseline']}.",
                 f"Ours: {ours}; runs grouped by the value of {pname} (other knobs as each run had them; a cell "
                 "with several configurations shows the best)."]
        if not paper_match:
            notes.append("Our setting is not the paper's (SST-2, 3-layer student): paper values left out.")
        tables.append(Table(f"fig3_{pname}", f"{spec['title']} — {p['label']}", ["w/o BT", "w/ BT"], rows,
                            notes=notes + spec["notes"]))
    return tables


def paper_only_tables() -> list[TextTable]:
    out = []
    for key, spec in (("table4", P.TABLE4_DA), ("table5", P.TABLE5_VARIANCE)):
        out.append(TextTable(key, spec["title"] + " (paper only)", ["Model", *spec["columns"]],
                             [[name, *[v if isinstance(v, str) else _num(v) for v in vals]] for name, vals in spec["rows"]],
                             notes=[f"Source: {spec['source']}"]))
    ref = P.REFERENCE
    out.append(TextTable("reference", ref["title"], list(ref["columns"]), [list(r) for r in ref["rows"]],
                         notes=[f"Source: {ref['source']}", *ref["notes"]]))
    return out


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def pareto_points(d):
    """Per config group of trial runs: task, label, mean primary score (×100), std, n, x (latency or size)."""
    lat = _preferred_latency(_latency_cols(d))
    xcol = lat or "params_count"
    pts = []
    if d is None or len(d) == 0 or xcol not in d.columns:
        return pts, xcol
    for role in ("trial", "teacher"):
        sub = d[(d["role"] == role) & d[xcol].notna() & d["final/primary"].notna()] if "final/primary" in d.columns else d.iloc[:0]
        for (task, grp), g in sub.groupby([sub["task"], sub["config_group"].fillna(sub["run_id"])]):
            s = g["final/primary"].astype(float) * 100
            first = g.iloc[0]
            label = "teacher" if role == "teacher" else _row_label(first["base_variant"], bool(first["bt"]),
                                                                   first["student_layers"], first["layer_strategy"])
            pts.append({"task": task, "role": role, "label": label, "score": float(s.mean()), "scores": list(s),
                        "std": float(s.std(ddof=1)) if len(s) > 1 else 0.0, "n": len(s),
                        "x": float(g[xcol].astype(float).mean()), "run_ids": list(g["run_id"])})
    return pts, xcol


def _front(points: list[dict]) -> list[dict]:
    """Non-dominated points (lower x, higher score), sorted by x."""
    pts = sorted(points, key=lambda p: (p["x"], -p["score"]))
    front, best = [], -math.inf
    for p in pts:
        if p["score"] > best:
            front.append(p)
            best = p["score"]
    return front


def plot_pareto(d) -> tuple[bytes | None, str]:
    pts, xcol = pareto_points(d)
    if not pts:
        return None, "no finished runs with final/primary and " + xcol
    plt = _plt()
    tasks = sorted({p["task"] for p in pts})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        tp = [p for p in pts if p["task"] == task]
        students = [p for p in tp if p["role"] == "trial"]
        ax.errorbar([p["x"] for p in students], [p["score"] for p in students], yerr=[p["std"] for p in students],
                    fmt="o", color="tab:blue", alpha=0.6, label="student configs (mean ± std)")
        front = _front(students)
        ax.plot([p["x"] for p in front], [p["score"] for p in front], "-o", color="tab:red", mfc="none", ms=10,
                label="Pareto front")
        for p in [p for p in tp if p["role"] == "teacher"]:
            ax.plot([p["x"]], [p["score"]], "*", ms=14, color="black", label="teacher")
        ax.set_title(TASK_LABEL.get(task, task))
        ax.set_xlabel(xcol.replace("latency/", "latency ") if xcol != "params_count" else "parameters")
        ax.set_ylabel(f"dev {TASKS[task].primary_metric} × 100" if task in TASKS else "score")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    note = (f"x = {xcol}" if xcol != "params_count" else
            "no latency/* metrics in the store: x = parameter count instead of latency")
    return _png(fig), note


def plot_fig1(t: Table) -> bytes | None:
    rows = [r for r in t.rows if any(c.has_run or c.paper for c in r.cells)]
    if not rows:
        return None
    plt = _plt()
    fracs = []
    for r in rows:
        f = r.label.split(" · ")[0]
        if f not in fracs:
            fracs.append(f)
    fig, axes = plt.subplots(len(fracs), 1, figsize=(max(6, 1.6 * len(t.columns) + 3), 3.6 * len(fracs)), squeeze=False)
    for ax, f in zip(axes[:, 0], fracs):
        fr = [r for r in rows if r.label.startswith(f + " · ")]
        width = 0.8 / max(1, len(fr))
        for i, r in enumerate(fr):
            xs = [j + i * width for j in range(len(t.columns))]
            ours = [c.mean[0] if c.has_run else 0 for c in r.cells]
            err = [0 if not c.has_run or math.isnan(c.std[0]) else c.std[0] for c in r.cells]
            paper = [c.paper[0] if c.paper and c.paper[0] is not None else 0 for c in r.cells]
            bars = ax.bar(xs, ours, width, yerr=err, label=r.label.split(" · ")[1], alpha=0.85)
            ax.bar(xs, paper, width, fill=False, edgecolor=bars.patches[0].get_facecolor(), hatch="//",
                   linewidth=1, label=None)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(t.columns))], t.columns)
        ax.set_title(f"{f} of the training data — filled: ours, hatched outline: paper (fig. 1)")
        ax.set_ylabel("dev score × 100")
        lo = [v for r in fr for c in r.cells for v in ([c.mean[0]] if c.has_run else []) + (c.paper or []) if v]
        if lo:
            ax.set_ylim(max(0, min(lo) - 10), min(100, max(lo) + 5))
        ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def plot_fig3(tables: list[Table]) -> bytes | None:
    if not tables:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 3.8), squeeze=False)
    for ax, t in zip(axes[0], tables):
        xs = [float(r.label.split("= ")[1]) for r in t.rows]
        for j, (name, color) in enumerate((("w/o BT", "tab:blue"), ("w/ BT", "tab:orange"))):
            ours = [(x, r.cells[j]) for x, r in zip(xs, t.rows) if r.cells[j].has_run]
            if ours:
                ax.errorbar([x for x, _ in ours], [c.mean[0] for _, c in ours],
                            yerr=[0 if math.isnan(c.std[0]) else c.std[0] for _, c in ours],
                            fmt="o-", color=color, label=f"ours {name}")
            paper = [(x, r.cells[j].paper[0]) for x, r in zip(xs, t.rows) if r.cells[j].paper]
            if paper:
                ax.plot([x for x, _ in paper], [v for _, v in paper], "s--", color=color, alpha=0.6,
                        label=f"paper {name}")
        if any(r.cells[0].paper or r.cells[1].paper for r in t.rows):
            ax.axhline(P.FIG3_SENSITIVITY["ft_baseline"], color="grey", lw=0.8, ls=":", label="paper FT 87.16")
        if "mixup" not in t.key:
            ax.set_xscale("log")
        ax.set_xlabel(t.title.split("— ")[-1])
        ax.set_ylabel("dev score × 100")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def plot_table2(t: Table) -> bytes | None:
    rows = [r for r in t.rows if r.cells[0].has_run or r.cells[0].paper]
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    labels = [r.label.split(" · ours: ")[-1] if r.cells[0].has_run else r.label for r in rows]
    xs = range(len(rows))
    axes[0].bar([x - 0.2 for x in xs], [r.cells[0].mean[0] / 1e6 if r.cells[0].has_run else 0 for r in rows], 0.4,
                label="ours")
    axes[0].bar([x + 0.2 for x in xs], [r.cells[0].paper[0] / 1e6 if r.cells[0].paper else 0 for r in rows], 0.4,
                label="paper", alpha=0.6)
    axes[0].set_ylabel("parameters (M)")
    axes[1].bar([x - 0.2 for x in xs], [r.cells[2].mean[0] if r.cells[2].has_run else 0 for r in rows], 0.4,
                label="ours (latency ratio)")
    axes[1].bar([x + 0.2 for x in xs], [r.cells[2].paper[0] if r.cells[2].paper else 0 for r in rows], 0.4,
                label="paper (samples/s ratio, TITAN X)", alpha=0.6)
    axes[1].set_ylabel("speed-up vs teacher (×)")
    for ax in axes:
        ax.set_xticks(list(xs), labels, rotation=20, ha="right", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _external_pareto(d) -> tuple[dict[str, bytes], str] | None:
    """One PNG per task from ``mixkd.deploy.selection.plot_pareto`` (the selection command's plot), when that
    module is importable; None otherwise (the report then draws its own scatter)."""
    try:
        from ..deploy.selection import plot_pareto as sel_plot
    except Exception:
        return None
    pts, xcol = pareto_points(d)
    if not pts:
        return None
    xlabel = (f"{xcol.replace('latency/', '')} (ms)" if xcol != "params_count"
              else "parameters (no latency/* metrics logged)")
    figs = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for task in sorted({p["task"] for p in pts}):
                groups = [{"latency_ms": p["x"], "score": p["score"], "score_std": p["std"], "label": p["label"],
                           "scores": p["scores"]} for p in pts if p["task"] == task and p["role"] == "trial"]
                teachers = [{"latency_ms": p["x"], "score": p["score"], "label": "teacher"}
                            for p in pts if p["task"] == task and p["role"] == "teacher"]
                path = Path(tmp) / f"pareto_{task}.png"
                sel_plot(groups, path, teachers=teachers, xlabel=xlabel,
                         ylabel=f"dev {TASKS[task].primary_metric if task in TASKS else 'score'} × 100 (mean over seeds)",
                         title=f"{TASK_LABEL.get(task, task)}: score vs {'latency' if xcol != 'params_count' else 'size'}")
                figs[path.name] = path.read_bytes()
    except Exception:
        return None
    return figs, xcol


# ------------------------------------------------------------------------------------------------
# build
# ------------------------------------------------------------------------------------------------
def build_report(df, mlflow_ui_url: str = DEFAULT_UI, figures: bool = True) -> Report:
    """The report of the runs in ``df`` (a :func:`mixkd.tracking.runstore.load_runs` frame)."""
    total = 0 if df is None else len(df)
    d = prepare(df)
    settings = _settings(d)
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
    tables += [f1, *f3, *paper_only_tables()]
    used = 0 if d is None else len(d)
    summary = [f"{total} mixkd runs in the store; {used} FINISHED with final metrics are used.",
               "Settings (teacher backbone, training-data fraction): "
               + ("; ".join(_setting_text(s) for s in settings) if settings else "none")]
    if d is not None and len(d):
        exps = sorted(set(zip(d["experiment"], d["experiment_id"])))
        summary.append("Experiments: " + ", ".join(f"{n} (id {i})" for n, i in exps))
    figs, notes = {}, {}
    if figures:
        ext = _external_pareto(d) if d is not None and len(d) else None
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
    return Report(tables, figs, notes, summary, mlflow_ui_url)


# ------------------------------------------------------------------------------------------------
# rendering
# ------------------------------------------------------------------------------------------------
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
    out += ["- Each cell: **ours** mean ± std over seeds (n), the paper's value, Δ = ours − paper, and the MLflow "
            f"runs (links into the MLflow UI at {ui}). \"no run\": no finished run for that cell; \"—\": the paper "
            "gives no value.", ""]
    for t in report.tables:
        out += [f"## {t.title}", ""]
        if isinstance(t, TextTable):
            out += ["| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
            out += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in t.rows]
        else:
            out += ["| Model | " + " | ".join(t.columns) + " |", "|---|" + "---|" * len(t.columns)]
            for r in t.rows:
                label = r.label + (" _(paper only, not run by mixkd)_" if r.paper_only else "") + (" _(ours only)_" if r.ours_only else "")
                out.append("| " + _md_escape(label) + " | " + " | ".join(_md_cell(c, ui, t, r.paper_only) for c in r.cells) + " |")
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
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:4px 6px;vertical-align:top}
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
            f"<p>Paper: {e(P.PAPER)} ({e(P.PAPER_PDF)}); paper numbers from <code>mixkd/report/paper_numbers.py</code>.</p>",
            "<ul>" + "".join(f"<li>{_inline_md(s)}</li>" for s in report.summary) + "</ul>",
            "<p>Each cell: <b>ours</b> mean ± std over seeds (n), the paper's value, Δ = ours − paper, and links "
            f"to the runs in the MLflow UI ({e(ui)}). <i>no run</i>: no finished run; —: the paper gives no value.</p>"]
    for t in report.tables:
        body.append(f"<h2 id=\"{e(t.key)}\">{e(t.title)}</h2><table>")
        if isinstance(t, TextTable):
            body.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in t.rows]
        else:
            body.append("<tr><th>Model</th>" + "".join(f"<th>{e(c)}</th>" for c in t.columns) + "</tr>")
            for r in t.rows:
                cls = "ours-only" if r.ours_only else ("paper-only" if r.paper_only else "")
                tag = " <i>(paper only, not run by mixkd)</i>" if r.paper_only else (" <i>(ours only)</i>" if r.ours_only else "")
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
            body.append(f"<p class=\"note\">{e(name)}: not drawn ({e(report.figure_notes.get(name, 'nothing to plot'))})</p>")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>MixKD report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def report_json(report: Report) -> dict[str, Any]:
    tables = []
    for t in report.tables:
        if isinstance(t, TextTable):
            tables.append({"key": t.key, "title": t.title, "columns": t.columns, "rows": t.rows, "notes": t.notes})
        else:
            tables.append(t.to_dict())
    return {"summary": report.summary, "mlflow_ui_url": report.mlflow_ui_url, "tables": tables,
            "figures": sorted(report.figures), "figure_notes": report.figure_notes}


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


__all__ = ["Cell", "Row", "Table", "TextTable", "Report", "build_report", "render_markdown", "render_html",
           "report_json", "write_report", "run_url", "prepare", "best_group_cell"]
