"""The paper's tables as :class:`~mixkd.report.cells.Table` s of our runs, the paper's numbers beside them.

``table1`` (GLUE dev) and ``table3`` (the paper's test-set layout) per setting (teacher backbone, data
fraction), ``table2`` (parameters, latency, speed-up), ``fig1_table`` (limited data), ``fig3_tables``
(sensitivity to α_TMKD, α_SM and the mixup ratio), and ``paper_only_tables`` (Tables 4, 5 and the reference
numbers, printed as the paper has them). Each takes the frame of :func:`mixkd.report.cells.prepare`.
"""
from __future__ import annotations

import math
import re

from . import paper_numbers as P
from ..core.tasks import TASKS
from .cells import (PAPER_TEACHERS, TASK_LABEL, Cell, Row, Table, TextTable, best_group_cell, column_label,
                    fraction_text, in_setting, our_row_keys, paper_comparable, row_label, select_runs, setting_text,
                    task_metrics)


def _score_table(key, spec, d, setting, columns: list[tuple[str, tuple[str, ...]]], paper_of, extra_rows=True,
                 title_suffix="", notes=(), paper_fmt="{:.2f}") -> Table:
    sub = d
    if setting is not None and d is not None and len(d):
        sub = d[in_setting(d, setting)]
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
                cells.append(best_group_cell(select_runs(sub, task, prow["key"]), metrics, paper, paper_fmt=paper_fmt))
        label = prow["label"]
        if variant == "teacher" and setting is not None and setting.teacher not in PAPER_TEACHERS:
            label = f"{label} · ours: teacher [{setting.teacher}]"   # our teacher is another model: say which
        rows.append(Row(label, cells, paper_only=bool(prow.get("reference_only"))))
    if extra_rows:
        for v, bt, k, strat in our_row_keys(sub):
            if (v, bt, k, strat) in paper_keys:
                continue
            cells = [best_group_cell(select_runs(sub, task, (v, bt, k), strat), metrics, None)
                     for task, metrics in columns]
            if any(c.has_run for c in cells):
                rows.append(Row(row_label(v, bt, k, strat), cells, ours_only=True))
    title = f"{spec['title']}{title_suffix} — ours: {setting_text(setting)}"
    table = Table(key, title, [column_label(t, m) for t, m in columns], rows,
                  notes=[f"Paper: {spec['source']}", *notes, *spec.get("notes", [])])
    if setting is not None and not paper_comparable(*setting):
        _no_cross_setting_delta(table, "the paper's BERT-base teacher on full data")
    return table


def _no_cross_setting_delta(table: Table, paper_setting: str) -> None:
    """Ours and the paper's side by side, labelled, without a Δ between different settings."""
    for r in table.rows:
        for c in r.cells:
            c.compare = False
    table.paper_label = f"paper ({paper_setting})"
    table.notes.insert(1, f"No Δ in this table: our runs are not in the paper's setting ({paper_setting}), so "
                          "the two columns are shown side by side only. Our variants are compared with each "
                          "other in the claims scorecard.")


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
             "from our teacher. Δ = ours − paper, only where ours are in the paper's setting."]
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


def latency_cols(d) -> list[str]:
    """The latency/* columns Table 2 shows: p50 and p90 per batch size and sequence length."""
    if d is None:
        return []
    # p50 and p90 per batch / seq len: the table stays readable (every stat is in report.json and MLflow)
    return sorted(c for c in d.columns if re.match(r"latency/b\d+_s\d+_p(50|90)_ms$", c))


def preferred_latency(cols: list[str]) -> str | None:
    """The latency column for speed-ups and the Pareto plot: b1 s128 p90 if logged, else the first p90/p50."""
    for pat in (r"latency/b1_s128_p90_ms$", r"latency/b1_s\d+_p90_ms$", r"_p90_ms$", r"_p50_ms$", r"_ms$"):
        hits = [c for c in cols if re.search(pat, c)]
        if hits:
            return hits[0]
    return None


def _agg(runs, col, fmt="{:.2f}", scale=1.0) -> Cell:
    """Mean ± std of ``col`` over the runs that logged it (an empty cell when none did)."""
    c = Cell(metrics=(col,), fmt=fmt)
    if runs is None or len(runs) == 0 or col not in runs.columns or not runs[col].notna().any():
        return c
    r = runs[runs[col].notna()]
    v = r[col].astype(float) * scale
    c.mean, c.std, c.n = [float(v.mean())], [float(v.std(ddof=1)) if len(v) > 1 else math.nan], len(v)
    c.runs = [(str(e), str(i)) for e, i in zip(r["experiment_id"], r["run_id"])]
    return c


def _table2_runs(d, model, k):
    """The runs of one Table 2 row: ``model``'s teacher (k None) or its k-layer students."""
    if d is None or len(d) == 0:
        return d
    sub = d[d["teacher_model"] == model]
    if k is None:
        sub = sub[sub["role"] == "teacher"]
    else:
        sub = sub[(sub["role"] == "trial") & (sub["student_layers"] == k)]
    if "sst2" in set(sub["task"]):
        sub = sub[sub["task"] == "sst2"]    # the paper's Table 2 task (heads differ by a few parameters)
    return sub


def _table2_depths(d) -> list[int | None]:
    """The rows' depths: the teacher (None), the paper's 6 and 3, then our other depths, deepest first."""
    keys = [None, 6, 3]
    if d is not None and len(d):
        keys += sorted({int(k) for k in d["student_layers"] if k is not None and int(k) not in (6, 3)}, reverse=True)
    return keys


def _table2_row(prow, model, k, runs, t_lat: Cell, lat: str | None, lat_cols: list[str], teacher_sps) -> Row:
    """One Table 2 row: parameters, the paper's samples/s, the speed-up (teacher latency / ours), latencies."""
    label = ("teacher" if k is None else f"{k}-layer student") + (f" [{model}]" if model else "")
    if prow:
        label = f"{prow['label']} · ours: {label}"
    params = _agg(runs, "params_count", fmt="{:,.0f}")
    params.paper = [prow["params"]] if prow else None
    params.paper_fmt, params.delta_fmt = "{:,.0f}", "{:+,.0f}"
    sps = Cell(metrics=("samples_per_s",), paper=[prow["samples_per_s"]] if prow else None,
               note="not measured by mixkd (see the latency columns)", paper_fmt="{:.0f}")
    speed = Cell(metrics=("speedup",), fmt="{:.2f}×", paper_fmt="{:.2f}×",
                 paper=[round(prow["samples_per_s"] / teacher_sps, 2)] if prow else None)
    s_lat = _agg(runs, lat) if lat else Cell(metrics=("latency",))
    if lat and s_lat.has_run and t_lat.has_run:
        speed.mean, speed.std, speed.n = [t_lat.mean[0] / s_lat.mean[0]], [math.nan], s_lat.n
        speed.runs = s_lat.runs + t_lat.runs
        speed.note = f"teacher {lat} / this row's"
    elif not lat:
        speed.note = "missing: no latency/* metrics in the store"
    lat_cells = [_agg(runs, c) for c in lat_cols]
    return Row(label, [params, sps, speed, *lat_cells], ours_only=prow is None)


def _table2_notes(spec, lat_cols: list[str]) -> list[str]:
    notes = [f"Paper: {spec['source']}",
             "Ours: params_count (the model's parameters) and latency/* metrics (ms) as logged; speed-up = the "
             "teacher's latency / the student's, same metric. Paper speed-up = student samples/s ÷ teacher's."]
    if not lat_cols:
        notes.append("**Latency missing**: no run in the store logged latency/* metrics (measure with `mixkd latency` "
                     "or sweep with --latency-budget-ms); samples/s and speed-up are therefore not filled in.")
    return notes


def table2(d) -> Table:
    """Parameters, latency and speed-up per teacher backbone: the teacher, the paper's 6- and 3-layer students
    and our other depths, the paper's samples/s and speed-ups beside them."""
    spec = P.TABLE2_SPEED
    lat_cols = latency_cols(d)
    lat = preferred_latency(lat_cols)
    columns = ["parameters", "samples/s (paper: b16, TITAN X)", "speed-up vs teacher"] + \
              [c.replace("latency/", "") for c in lat_cols]
    teacher_sps = {r["key"][2]: r["samples_per_s"] for r in spec["rows"]}[None]
    models = sorted({str(t) for t in d["teacher_model"]}) if d is not None and len(d) else []
    rows = []
    for model in models or [None]:
        t_runs = _table2_runs(d, model, None) if model else None
        t_lat = _agg(t_runs, lat) if lat else Cell(metrics=("latency",))
        for k in _table2_depths(d):
            runs = _table2_runs(d, model, k) if model else None
            prow = next((r for r in spec["rows"] if r["key"][2] == k), None)
            if prow is None and (runs is None or len(runs) == 0):
                continue
            rows.append(_table2_row(prow, model, k, runs, t_lat, lat, lat_cols, teacher_sps))
    return Table("table2", spec["title"], columns, rows, notes=_table2_notes(spec, lat_cols))


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
        keys += [k for k in our_row_keys(fsub) if k not in keys]
        for v, bt, k, strat in [("teacher", False, None, "first")] + keys:
            paper_vals = spec["values"].get(frac, {}).get((v, bt)) if k == 3 and strat == "first" else None
            cells = []
            for i, (task, metric) in enumerate(columns):
                paper = [paper_vals[i]] if paper_vals is not None and i < len(paper_cols) else None
                cells.append(best_group_cell(select_runs(fsub, task, (v, bt, k), strat), (metric,), paper,
                                             paper_fmt="{:.1f}"))
            if v == "teacher" and not any(c.has_run for c in cells):
                continue
            name = "teacher" if v == "teacher" else (
                f"BERT{k} {vlabel[(v, bt)]}" if (v, bt) in vlabel and k == 3 and strat == "first"
                else row_label(v, bt, k, strat))
            rows.append(Row(f"{fraction_text(frac)} · {name}", cells, ours_only=paper_vals is None))
    notes = [f"Paper: {spec['source']}",
             f"Paper metric: {spec['metric_note']}; FT+MixKD = the SM+TMKD variant. Paper values are read from the "
             "figure (marked 'fig' in the notes), not printed numbers.",
             "Ours: every run with data fraction < 1 (any teacher), mean ± std over seeds; teacher and student "
             "trained on the same subset."]
    table = Table("fig1", spec["title"], labels, rows, notes=notes)
    teachers = set(limited["teacher_model"]) if limited is not None and len(limited) else set()
    if not teachers <= set(PAPER_TEACHERS):
        _no_cross_setting_delta(table, "a BERT-base teacher")
    return table


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
    sm = (d[(d["role"] == "trial") & (d["base_variant"] == "sm+tmkd") & d["task"].isin(list(TASKS))]   # GLUE only
          if d is not None and len(d) else None)
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
                f"{fraction_text(setting[2])} data")
        notes = [f"Paper: {spec['source']}", f"Paper FT baseline: {spec['ft_baseline']}.",
                 f"Ours: {ours}; runs grouped by the value of {pname} (other knobs as each run had them; a cell "
                 "with several configurations shows the best)."]
        if not paper_match:
            notes.append("Our setting is not the paper's (SST-2, 3-layer student): paper values left out.")
        table = Table(f"fig3_{pname}", f"{spec['title']} — {p['label']}", ["w/o BT", "w/ BT"], rows,
                      notes=notes + spec["notes"])
        if paper_match and not paper_comparable(setting[3], setting[2], next((c for c in sm["train_cap"] if c), None)):
            _no_cross_setting_delta(table, "BERT-base teacher, full data")
        tables.append(table)
    return tables


def _num(x: float) -> str:
    return f"{x:g}" if abs(x) >= 1000 else (f"{x:.2f}" if round(x, 1) != x else f"{x:.1f}")


def paper_only_tables() -> list[TextTable]:
    out = []
    for key, spec in (("table4", P.TABLE4_DA), ("table5", P.TABLE5_VARIANCE)):
        out.append(TextTable(key, spec["title"] + " (paper only)", ["Model", *spec["columns"]],
                             [[name, *[v if isinstance(v, str) else _num(v) for v in vals]]
                              for name, vals in spec["rows"]],
                             notes=[f"Source: {spec['source']}"]))
    ref = P.REFERENCE
    out.append(TextTable("reference", ref["title"], list(ref["columns"]), [list(r) for r in ref["rows"]],
                         notes=[f"Source: {ref['source']}", *ref["notes"]]))
    return out
