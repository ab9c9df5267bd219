"""Pareto front, budget choice and the plot of score vs latency: pure functions over points (mappings or
objects with a score and a latency); no MLflow, no run store. Used by :mod:`mixkd.deploy.selection` and the
report's Pareto figure."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..core.errors import UsageError


# --------------------------------------------------------------------------------------------------
# Pareto front and budget choice
# --------------------------------------------------------------------------------------------------
_REQUIRED = object()


def _get(p: Any, key: str, default: Any = _REQUIRED) -> Any:
    """Field ``key`` of a point, a mapping or an object with attributes (a :class:`mixkd.deploy.records.ConfigGroup`
    or :class:`mixkd.deploy.records.FormatPoint`); ``default`` when it has none (without one: KeyError or
    AttributeError)."""
    if default is _REQUIRED:
        return p[key] if isinstance(p, Mapping) else getattr(p, key)
    return p.get(key, default) if isinstance(p, Mapping) else getattr(p, key, default)


def is_finite(v: Any) -> bool:
    """Is ``v`` a finite number (None, NaN, inf and non-numbers are not)?"""
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def pareto_front(points: Iterable[Any], score: str = "score", latency: str = "latency_ms") -> list:
    """The non-dominated points over (``score`` higher-better, ``latency`` lower-better).

    A point is on the front unless another point has a score >= and a latency <= with at least one of
    the two strictly better. Hence, of points with equal latency only those with the highest score can
    be on the front; a point with the same score as a faster point is dominated; and **exact duplicates
    (equal score and equal latency) are all kept**, since neither dominates the other. Points whose
    score or latency is missing or not finite are never on the front.

    ``points`` are mappings or objects with the two fields. Returns them ordered by latency ascending,
    then by score descending, then by input order (deterministic).
    """
    pts = [(i, p) for i, p in enumerate(points) if is_finite(_get(p, score)) and is_finite(_get(p, latency))]
    pts.sort(key=lambda ip: (float(_get(ip[1], latency)), -float(_get(ip[1], score)), ip[0]))
    front: list = []
    best_faster = -math.inf          # best score among points strictly faster than the current latency
    i = 0
    while i < len(pts):
        lat = float(_get(pts[i][1], latency))
        same = [p for _, p in pts[i:] if float(_get(p, latency)) == lat]   # sorted: a contiguous run
        top = float(_get(same[0], score))
        if top > best_faster:
            front += [p for p in same if float(_get(p, score)) == top]
        best_faster = max(best_faster, top)
        i += len(same)
    return front


def _label(p: Any) -> str:
    if isinstance(p, Mapping):
        return str(p.get("label") or p.get("config_group") or p)
    return str(getattr(p, "label", p))


def choose(groups: Iterable[Any], budget_ms: float, score: str = "score", latency: str = "latency_ms",
           what: str = "") -> Any:
    """The best group whose latency is <= ``budget_ms``: the highest mean score; ties go to the lower
    latency, then to the smaller label (deterministic). It is always on the Pareto front.

    Raises :class:`UsageError` when the budget is not a positive number, when no group has both a
    score and a latency, or when none meets the budget; then the message names the fastest
    configuration and its latency. ``what`` describes the latency in messages (e.g. "p90, batch 1").
    """
    if not is_finite(budget_ms) or float(budget_ms) <= 0:
        raise UsageError(f"--latency-budget-ms {budget_ms} is invalid; use a positive number of milliseconds")
    budget_ms = float(budget_ms)
    pts = [p for p in groups if is_finite(_get(p, score)) and is_finite(_get(p, latency))]
    if not pts:
        raise UsageError("no configuration has both a dev score and a latency; check that the sweep finished")
    feasible = [p for p in pts if float(_get(p, latency)) <= budget_ms]
    if not feasible:
        fastest = min(pts, key=lambda p: (float(_get(p, latency)), -float(_get(p, score)), _label(p)))
        lat = float(_get(fastest, latency))
        where = f" ({what})" if what else ""
        raise UsageError(f"no configuration meets the latency budget of {budget_ms:g} ms{where}; the fastest is "
                         f"{_label(fastest)} at {lat:.2f} ms (score {float(_get(fastest, score)):.4f}); "
                         f"raise --latency-budget-ms to at least {math.ceil(lat * 100) / 100:.2f}")
    return min(feasible, key=lambda p: (-float(_get(p, score)), float(_get(p, latency)), _label(p)))



# --------------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------------
def plot_pareto(groups: Sequence[Any], path: str | os.PathLike, *,
                trials: Sequence[Any] | None = None, teachers: Sequence[Any] = (),
                budget_ms: float | None = None, chosen: Any | None = None, title: str | None = None,
                xlabel: str = "latency (ms)", ylabel: str = "dev score (mean over seeds)") -> Path:
    """A PNG of score vs latency: each trial as a small point, each configuration's mean ± std, the
    Pareto front of the configurations as a staircase, the teacher(s) as stars, the budget as a
    vertical line, feasible (latency <= budget) and infeasible points in different colours and
    markers, and the chosen configuration ringed.

    Points are mappings or objects with the fields (like :func:`pareto_front`'s). ``groups``: with
    ``latency_ms``, ``score`` and optionally ``score_std``, ``label``, ``scores``. ``trials``: with
    ``latency_ms`` and ``score`` (one per run; default: ``scores`` of each group). ``teachers``: with
    ``latency_ms``, ``score``, ``label``. Uses the Agg canvas (no display, no pyplot state). Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def feasible(p) -> bool:
        return budget_ms is None or float(_get(p, "latency_ms")) <= float(budget_ms)

    pts = [g for g in groups if _drawable(g)]
    if trials is None:
        trials = [{"latency_ms": _get(g, "latency_ms"), "score": s} for g in pts for s in _get(g, "scores", [])]
    fig = Figure(figsize=(7.5, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    _draw_trials(ax, trials, feasible)
    _draw_groups(ax, pts, feasible)
    _draw_front(ax, pts)
    tpts = _draw_teachers(ax, teachers)
    if chosen is not None and is_finite(_get(chosen, "latency_ms", None)):
        x, y = _xy(chosen)
        ax.scatter([x], [y], s=260, facecolors="none", edgecolors="tab:green", linewidths=2.2, label="chosen",
                   zorder=6)
    if budget_ms is not None:
        ax.axvline(float(budget_ms), color="tab:green", ls="--", lw=1.3, label=f"budget {float(budget_ms):g} ms")
        ax.axvspan(0, float(budget_ms), color="tab:green", alpha=0.06, zorder=0)
    xs_all = [_get(p, "latency_ms") for p in (*pts, *tpts)] + ([budget_ms] if budget_ms else [])
    if xs_all:
        ax.set_xlim(0, max(xs_all) * 1.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save_png(fig, Path(path))


_WITHIN, _OVER = "tab:blue", "tab:gray"   # colours of points within and over the budget


def _drawable(p: Any) -> bool:
    """Has ``p`` a finite latency and score?"""
    return is_finite(_get(p, "latency_ms", None)) and is_finite(_get(p, "score", None))


def _xy(p: Any) -> tuple[Any, Any]:
    """(latency, score) of ``p``."""
    return _get(p, "latency_ms"), _get(p, "score")


def _draw_trials(ax, trials: Sequence[Any], feasible: Callable[[Any], bool]) -> None:
    """Each trial (one seed) as a small point: blue circles within the budget, grey crosses over it."""
    for flag, colour, marker, name in ((True, _WITHIN, "o", "trial (within budget)"),
                                       (False, _OVER, "x", "trial (over budget)")):
        sel = [t for t in trials if _drawable(t) and feasible(t) == flag]
        if sel:
            xs, ys = zip(*map(_xy, sel))
            ax.scatter(list(xs), list(ys), s=14, c=colour, marker=marker, alpha=0.45, label=name, zorder=2)


def _draw_groups(ax, pts: Sequence[Any], feasible: Callable[[Any], bool]) -> None:
    """Each configuration's mean ± std: filled circles within the budget, hollow squares over it."""
    for flag, colour, marker, name in ((True, _WITHIN, "o", "configuration mean ± std (within budget)"),
                                       (False, _OVER, "s", "configuration mean ± std (over budget)")):
        sel = [g for g in pts if feasible(g) == flag]
        if sel:
            xs, ys = zip(*map(_xy, sel))
            ax.errorbar(list(xs), list(ys),
                        yerr=[_get(g, "score_std") if is_finite(_get(g, "score_std", None)) else 0.0 for g in sel],
                        fmt=marker, color=colour, ms=7, mfc="white" if not flag else colour, capsize=3,
                        label=name, zorder=3)


def _draw_front(ax, pts: Sequence[Any]) -> None:
    """The Pareto front of the configurations as a staircase, each point on it labelled."""
    front = pareto_front(pts)
    if front:
        xs, ys = (list(v) for v in zip(*map(_xy, front)))
        ax.plot(xs, ys, drawstyle="steps-post", color="tab:orange", lw=1.8, label="Pareto front", zorder=4)
        for f, x, y in zip(front, xs, ys):
            ax.annotate(str(_get(f, "label", ""))[:40], (x, y), textcoords="offset points",
                        xytext=(5, 5), fontsize=7, color="0.25")


def _draw_teachers(ax, teachers: Sequence[Any]) -> list[Any]:
    """The teachers with a score and a latency as labelled red stars; returns them."""
    tpts = [t for t in teachers if _drawable(t)]
    for i, t in enumerate(tpts):
        xy = _xy(t)
        ax.scatter([xy[0]], [xy[1]], marker="*", s=220, c="tab:red", edgecolors="black",
                   label="teacher" if i == 0 else None, zorder=5)
        ax.annotate(str(_get(t, "label", "teacher"))[:40], xy, textcoords="offset points",
                    xytext=(6, -12), fontsize=7, color="tab:red")
    return tpts


def _save_png(fig, path: Path) -> Path:
    """``fig`` as a PNG at ``path``, through a temporary sibling (complete or absent)."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path
