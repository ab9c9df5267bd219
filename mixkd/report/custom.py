"""Tables of custom tasks (your own data): one per (task, setting), every variant and depth of our runs with the
teacher on top, scored on the task's own metrics. The paper has no numbers for them, so there is no paper column;
the claims scorecard compares the variants with each other."""
from __future__ import annotations

from ..core.tasks import is_glue
from .cells import (Row, Table, best_group_cell, in_setting, our_row_keys, row_label, select_runs, setting_keys,
                    setting_text)

_CLASSIFICATION, _REGRESSION = ("accuracy", "macro_f1"), ("pearson", "spearman")


def custom_task_names(d) -> list[str]:
    if d is None or len(d) == 0:
        return []
    return sorted({str(t) for t in d["task"] if t is not None and not is_glue(str(t))})


def _metrics_of(sub) -> tuple[str, ...]:
    """The task's metrics, its primary first (the `metric` param of its runs)."""
    regression = "final/pearson" in sub.columns and sub["final/pearson"].notna().any()
    metrics = _REGRESSION if regression else _CLASSIFICATION
    primary = next((str(p.get("metric")) for p in sub["params"] if isinstance(p, dict) and p.get("metric") in metrics),
                   metrics[0])
    return (primary, *[m for m in metrics if m != primary])


def custom_tables(d) -> list[Table]:
    tables = []
    for task in custom_task_names(d):
        td = d[d["task"] == task]
        for setting in setting_keys(td):
            sub = td[in_setting(td, setting)]
            metrics = _metrics_of(sub)
            rows = [Row("teacher", [best_group_cell(select_runs(sub, task, ("teacher", False, None)), metrics, None)])]
            for v, bt, k, strat in our_row_keys(sub):
                cell = best_group_cell(select_runs(sub, task, (v, bt, k), strat), metrics, None)
                if cell.has_run:
                    rows.append(Row(row_label(v, bt, k, strat), [cell], ours_only=True))
            key = f"custom_{task}" + (f"_{len(tables)}" if any(t.key == f"custom_{task}" for t in tables) else "")
            tables.append(Table(key, f"Your task {task} — ours: {setting_text(setting)}",
                                [f"{task} ({'/'.join(metrics)})"], rows,
                                notes=[f"{task} is your own data (not GLUE): no paper numbers. Mean ± std over seeds "
                                       f"of the best configuration per row, × 100; the scorecard compares variants."]))
    return tables
