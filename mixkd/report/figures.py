"""The report's figures as PNG bytes (matplotlib, Agg): the score-vs-latency Pareto scatter per task (drawn by
:func:`mixkd.deploy.selection.plot_pareto` when importable, else here), Fig. 1 bars, Fig. 3 curves and the
Table 2 bars, each from the tables of :mod:`mixkd.report.tables`.
"""
from __future__ import annotations

import io
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import paper_numbers as P
from ..core.tasks import TASKS
from .cells import TASK_LABEL, Table, row_label
from .tables import latency_cols, preferred_latency


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


@dataclass
class ParetoPoint:
    """One config group of runs on the score-vs-cost plane."""
    task: str
    role: str                    # "trial" (a student) or "teacher"
    label: str
    score: float                 # mean primary dev metric ×100 over the group's runs
    scores: list[float]          # each run's
    std: float                   # sample std (0 for one run)
    n: int
    x: float                     # mean latency (ms) or parameter count, as named by pareto_points' xcol
    run_ids: list[str]


def pareto_points(d) -> tuple[list[ParetoPoint], str]:
    """Per config group of trial and teacher runs, a :class:`ParetoPoint`; and the x column (latency or size)."""
    lat = preferred_latency(latency_cols(d))
    xcol = lat or "params_count"
    pts = []
    if d is None or len(d) == 0 or xcol not in d.columns:
        return pts, xcol
    for role in ("trial", "teacher"):
        if "final/primary" in d.columns:
            sub = d[(d["role"] == role) & d[xcol].notna() & d["final/primary"].notna()]
        else:
            sub = d.iloc[:0]
        for (task, grp), g in sub.groupby([sub["task"], sub["config_group"].fillna(sub["run_id"])]):
            s = g["final/primary"].astype(float) * 100
            first = g.iloc[0]
            label = "teacher" if role == "teacher" else row_label(first["base_variant"], bool(first["bt"]),
                                                                   first["student_layers"], first["layer_strategy"])
            pts.append(ParetoPoint(task=task, role=role, label=label, score=float(s.mean()), scores=list(s),
                                   std=float(s.std(ddof=1)) if len(s) > 1 else 0.0, n=len(s),
                                   x=float(g[xcol].astype(float).mean()), run_ids=list(g["run_id"])))
    return pts, xcol


def _front(points: list[ParetoPoint]) -> list[ParetoPoint]:
    """Non-dominated points (lower x, higher score), sorted by x."""
    pts = sorted(points, key=lambda p: (p.x, -p.score))
    front, best = [], -math.inf
    for p in pts:
        if p.score > best:
            front.append(p)
            best = p.score
    return front


def plot_pareto(d) -> tuple[bytes | None, str]:
    pts, xcol = pareto_points(d)
    if not pts:
        return None, "no finished runs with final/primary and " + xcol
    plt = _plt()
    tasks = sorted({p.task for p in pts})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        tp = [p for p in pts if p.task == task]
        students = [p for p in tp if p.role == "trial"]
        ax.errorbar([p.x for p in students], [p.score for p in students], yerr=[p.std for p in students],
                    fmt="o", color="tab:blue", alpha=0.6, label="student configs (mean ± std)")
        front = _front(students)
        ax.plot([p.x for p in front], [p.score for p in front], "-o", color="tab:red", mfc="none", ms=10,
                label="Pareto front")
        for p in [p for p in tp if p.role == "teacher"]:
            ax.plot([p.x], [p.score], "*", ms=14, color="black", label="teacher")
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


def external_pareto(d) -> tuple[dict[str, bytes], str] | None:
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
            for task in sorted({p.task for p in pts}):
                groups = [{"latency_ms": p.x, "score": p.score, "score_std": p.std, "label": p.label,
                           "scores": p.scores} for p in pts if p.task == task and p.role == "trial"]
                teachers = [{"latency_ms": p.x, "score": p.score, "label": "teacher"}
                            for p in pts if p.task == task and p.role == "teacher"]
                path = Path(tmp) / f"pareto_{task}.png"
                metric = TASKS[task].primary_metric if task in TASKS else "score"
                versus = "latency" if xcol != "params_count" else "size"
                sel_plot(groups, path, teachers=teachers, xlabel=xlabel,
                         ylabel=f"dev {metric} × 100 (mean over seeds)",
                         title=f"{TASK_LABEL.get(task, task)}: score vs {versus}")
                figs[path.name] = path.read_bytes()
    except Exception:
        return None
    return figs, xcol
