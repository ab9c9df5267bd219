"""The report's data model, and how runs become cells.

:class:`Cell` holds ours (mean ± std over seeds, n, run ids) next to the paper's value and the difference;
:class:`Row`, :class:`Table` and :class:`TextTable` hold cells and paper-only text; :class:`Report` is what
:func:`mixkd.report.build.build_report` returns. ``prepare`` keeps the usable runs of a
:func:`mixkd.tracking.runstore.load_runs` frame and ``best_group_cell`` turns the runs of one cell into a cell.

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

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .scorecard import ScoreRow

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
    compare: bool = True         # False: ours and the paper's are different settings, so no Δ between them

    @property
    def has_run(self) -> bool:
        return self.mean is not None

    @property
    def delta(self) -> list[float | None] | None:
        if self.mean is None or self.paper is None or not self.compare:
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
    scorecard: list[ScoreRow] = field(default_factory=list)   # one per claim and setting

    def table(self, key: str) -> Table:
        found = [t for t in self.tables if t.key == key]
        if not found:
            raise KeyError(f"no table {key!r}; have {[t.key for t in self.tables]}")
        return found[0]


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
    d["train_cap"] = [train_cap(p) for p in d["params"]]
    return d.reset_index(drop=True)


def train_cap(params: dict | None) -> int | None:
    """The run's --max-train-samples (None: no cap)."""
    try:
        return int(float((params or {}).get("max_train_samples")))
    except (TypeError, ValueError):
        return None


def in_setting(d, setting: Setting) -> Any:
    """Row mask of the runs of ``setting``."""
    teacher, fraction, cap = setting
    return (d["teacher_model"] == teacher) & (d["data_fraction"] == fraction) & d["train_cap"].map(lambda c: c == cap)


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
    if "final/above_chance" in g.columns and (g["final/above_chance"] == 0).any():
        k = int((g["final/above_chance"] == 0).sum())
        cell.note = "; ".join(x for x in (cell.note, f"AT CHANCE: {k} of {len(g)} runs no better than a "
                                                   f"constant predictor") if x)
    return cell


class Setting(NamedTuple):
    """The runs one Table 1 / Table 3 shows: teacher backbone, training-data fraction, row cap (None: no cap)."""
    teacher: str
    fraction: float
    cap: int | None


def setting_keys(d) -> list[Setting]:
    """The settings with trial or teacher runs, full data first."""
    if d is None or len(d) == 0:
        return []
    keys = {Setting(str(t), float(f), c) for t, f, c in zip(d["teacher_model"], d["data_fraction"], d["train_cap"])}
    return sorted(keys, key=lambda p: (-p.fraction, p.cap is not None, -(p.cap or 0), p.teacher))


def row_label(variant: str, bt: bool, k: int | None, strategy: str = "first") -> str:
    """A row's name: "teacher", or BERTk-VARIANT(+BT), with the layer strategy when it is not "first"."""
    if variant == "teacher":
        return "teacher"
    name = f"BERT{k}-{VARIANT_LABEL.get(variant, variant.upper())}{'+BT' if bt else ''}"
    return name if strategy in ("first", None) else f"{name} ({strategy} layers)"


def select_runs(d, task, key, strategy="first"):
    """The runs of ``task`` in the row ``key`` = (variant, +BT, depth k) with ``strategy`` (teacher: its runs)."""
    variant, bt, k = key
    if d is None or len(d) == 0:
        return d
    if variant == "teacher":
        return d[(d["role"] == "teacher") & (d["task"] == task)]
    return d[(d["role"] == "trial") & (d["task"] == task) & (d["base_variant"] == variant) & (d["bt"] == bt)
             & (d["student_layers"] == k) & (d["layer_strategy"] == strategy)]


def our_row_keys(d) -> list[tuple[str, bool, int, str]]:
    """(variant, +BT, depth k, layer strategy) of the trial runs in ``d``: deepest first, then by variant."""
    if d is None or len(d) == 0:
        return []
    t = d[d["role"] == "trial"]
    keys = {(v, bool(b), int(k), s) for v, b, k, s in zip(t["base_variant"], t["bt"], t["student_layers"],
                                                          t["layer_strategy"]) if k is not None}
    order = {v: i for i, v in enumerate(("ft", "kd", "pkd", "tmkd", "sm+tmkd"))}
    return sorted(keys, key=lambda x: (-x[2], x[3] != "first", x[3], x[1], order.get(x[0], 99), x[0]))


PAPER_TEACHERS = ("bert-base-uncased", "google-bert/bert-base-uncased")   # the paper's BERT12 teacher


def paper_comparable(teacher: str | None, fraction: float | None, cap: int | None = None,
                     paper_fraction: float = 1.0) -> bool:
    """True when our runs are in the paper's setting (its teacher backbone and data fraction, no row cap):
    only then is a Δ between our absolute score and the paper's meaningful."""
    return teacher in PAPER_TEACHERS and fraction == paper_fraction and cap is None


def setting_text(setting: Setting | None) -> str:
    """A setting (teacher backbone, data fraction, row cap) in words."""
    if setting is None:
        return "no runs"
    teacher, frac, cap = setting
    return f"teacher {teacher}, {fraction_text(frac)} of the training data" + (f", at most {cap:,} rows" if cap else "")


def fraction_text(f: float) -> str:
    """A data fraction as a percentage: 0.1 -> "10%"."""
    return f"{f * 100:g}%"


__all__ = ["Cell", "Row", "Table", "TextTable", "Report", "Setting", "prepare", "best_group_cell", "setting_keys",
           "row_label", "select_runs", "our_row_keys", "setting_text", "fraction_text"]
