"""The most accurate student of a sweep within a latency budget.

1. :func:`group_runs`: the finished trial runs of an MLflow store (read by :mod:`mixkd.tracking.runstore`) are
   grouped by the tag ``config_group`` (the config hash without seeds), the primary dev metric
   ``final/primary`` is averaged over seeds (mean, sample std, 95% CI), and each group gets a latency at
   (percentile, batch size, seq len): the run's ``latency/b{B}_s{L}_{pXX}_ms`` metrics when the sweep
   logged them, else measured here with :func:`mixkd.deploy.latency.cached_latency` from the run's model config.
2. :func:`pareto_front` over (score: higher is better, latency: lower is better).
3. :func:`choose`: the group with the highest mean score whose latency meets the budget.
4. :func:`export_student`: the best seed's model of that group, ``save_pretrained`` + tokenizer, a model
   card (README.md), ``selection.json`` and ``pareto.png`` (:func:`plot_pareto`), into a folder that is
   complete or absent.

:func:`select` runs all four (``mixkd select``).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..core.errors import UsageError
from . import latency as L

PERCENTILES = L.PERCENTILES
PRIMARY = "final/primary"


# --------------------------------------------------------------------------------------------------
# Pareto front and budget choice
# --------------------------------------------------------------------------------------------------
def _get(p: Any, key: str) -> Any:
    return p[key] if isinstance(p, Mapping) else getattr(p, key)


def _finite(v: Any) -> bool:
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
    pts = [(i, p) for i, p in enumerate(points) if _finite(_get(p, score)) and _finite(_get(p, latency))]
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
    if not _finite(budget_ms) or float(budget_ms) <= 0:
        raise UsageError(f"--latency-budget-ms {budget_ms} is invalid; use a positive number of milliseconds")
    budget_ms = float(budget_ms)
    pts = [p for p in groups if _finite(_get(p, score)) and _finite(_get(p, latency))]
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
# groups of runs
# --------------------------------------------------------------------------------------------------
def _ci95(values: list[float]) -> list[float] | None:
    n = len(values)
    if n < 2:
        return None
    from scipy import stats
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    h = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return [mean - h, mean + h]


def _none(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def group_label(g: Mapping[str, Any]) -> str:
    """A short human name: ``sm+tmkd k=2 first`` (+ fraction / augmentation when not the default)."""
    if g.get("role") == "teacher":
        parts = ["teacher", f"{g.get('task')}"]
    else:
        parts = [str(g.get("variant")), f"k={g.get('student_layers')}", str(g.get("layer_strategy") or "")]
    frac = g.get("data_fraction")
    if _finite(frac) and float(frac) != 1.0:
        parts.append(f"frac={float(frac):g}")
    if g.get("augmentation") not in (None, "none"):
        parts.append(f"aug={g['augmentation']}")
    parts.append(f"[{str(g.get('config_group'))[:6]}]")
    return " ".join(p for p in parts if p)


class _Latencies:
    """Latency of a run at one (percentile, batch, seq len): logged by the sweep or measured here."""

    def __init__(self, tracking_uri: str | None, percentile: str, batch_size: int, seq_len: int, device: str,
                 dtype: str, threads: int | None, remeasure: bool, cache_dir: str | None, protocol: dict,
                 log: Callable[[str], None]):
        self.uri, self.pct, self.b, self.s = tracking_uri, percentile, batch_size, seq_len
        self.device, self.dtype, self.threads, self.remeasure = device, dtype, threads, remeasure
        self.cache_dir, self.protocol, self.log = cache_dir, protocol, log
        self._client = None
        self._tmp = None

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _tags(self, run_id: str) -> dict:
        if not self.uri:
            return {}
        try:
            if self._client is None:
                from mlflow.tracking import MlflowClient
                self._client = MlflowClient(self.uri)
            return dict(self._client.get_run(run_id).data.tags)
        except Exception:
            return {}

    def logged(self, run: Mapping[str, Any]) -> dict | None:
        """The sweep's latency metrics of this run, when present and measured on the requested device kind."""
        stats = {st: _none(run.get(L.metric_name(self.b, self.s, st))) for st in (*PERCENTILES, "mean", "std",
                                                                                   "throughput")}
        if not _finite(stats[self.pct]):
            return None
        tags = self._tags(run["run_id"])
        dev = tags.get(L.LATENCY_DEVICE_TAG)
        if dev is not None and dev != self.device.split(":")[0]:
            return None
        fp = tags.get(L.LATENCY_FINGERPRINT_TAG)
        try:
            fp = json.loads(fp) if fp else None
        except ValueError:
            fp = None
        return {"stats": {f"{k}_ms" if k != "throughput" else k: v for k, v in stats.items()},
                "source": "sweep", "fingerprint": fp, "run_id": run["run_id"]}

    def model_config(self, run: Mapping[str, Any]) -> Any:
        """The run's model config: ``<run_dir>/model/config.json``, else the MLflow ``model/config.json``
        artifact, else the teacher's config with ``student_layers`` layers."""
        rd = run.get("run_dir")
        if rd and (Path(rd) / "model" / "config.json").is_file():
            return str(Path(rd) / "model" / "config.json")
        if run.get("artifact_uri") and self.uri:
            try:
                import mlflow.artifacts
                if self._tmp is None:
                    self._tmp = tempfile.mkdtemp(prefix="mixkd-select-")
                dst = Path(self._tmp) / run["run_id"]
                dst.mkdir(exist_ok=True)
                return mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path="model/config.json",
                                                           dst_path=str(dst), tracking_uri=self.uri)
            except Exception:
                pass
        params = run.get("params") or {}
        teacher, k = params.get("teacher"), _none(run.get("student_layers"))
        if run.get("role") == "trial" and teacher not in (None, "None") and params.get("student_model") in (None, "None") \
                and k is not None:
            try:
                return L.student_config(teacher, int(k))
            except UsageError:
                pass
        return None

    def measured(self, run: Mapping[str, Any]) -> dict | None:
        cfg = self.model_config(run)
        if cfg is None:
            return None
        res = L.cached_latency(cfg, self.b, self.s, self.device, self.dtype, self.cache_dir, threads=self.threads,
                               **self.protocol)
        if not res["cached"]:
            self.log(f"measured {run.get('_label', run['run_id'])}: {self.pct} {res[self.pct + '_ms']:.2f} ms "
                     f"(batch {self.b}, seq {self.s}, {res['iters']} iterations)")
        return {"stats": {k: res[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput")},
                "source": "cache" if res["cached"] else "measured", "fingerprint": res["fingerprint"],
                "architecture_fingerprint": res["architecture_fingerprint"], "run_id": run["run_id"]}

    def __call__(self, runs: Sequence[Mapping[str, Any]]) -> dict | None:
        if not self.remeasure:
            for r in runs:
                got = self.logged(r)
                if got:
                    return got
        for r in runs:
            got = self.measured(r)
            if got:
                return got
        return None


def _records(df) -> list[dict]:
    return [{k: _none(v) if not isinstance(v, (dict, list)) else v for k, v in row.items()}
            for row in df.to_dict("records")]


def group_runs(runs, *, percentile: str = "p90", batch_size: int = 1, seq_len: int = L.DEFAULT_SEQ_LEN,
               device: str = "cpu", dtype: str = "fp32", threads: int | None = None, tracking_uri: str | None = None,
               remeasure: bool = False, cache_dir: str | None = None, protocol: dict | None = None,
               role: str = "trial", log: Callable[[str], None] | None = None) -> list[dict]:
    """One dict per ``config_group`` of the finished ``role`` runs in ``runs`` (a :func:`runstore.load_runs`
    DataFrame or a list of its row dicts) that have ``final/primary``.

    Each dict: ``config_group, role, task, variant, student_layers, layer_strategy, data_fraction,
    augmentation, label, n, seeds, run_ids, scores, score`` (mean of final/primary), ``score_std``
    (sample std, NaN for one seed), ``score_ci95`` ([lo, hi] or None), ``metrics`` ({final/x: [mean, std]}),
    ``best_run`` (the row of the seed with the highest score; ties: lowest seed, then run id),
    ``params_count``, ``latency_ms`` (at ``percentile``; None when unknown), ``latency`` (p50/p90/p99/mean/
    std ms and throughput), ``latency_source`` (sweep | measured | cache), ``latency_fingerprint``.
    Ordered by score descending, then label.
    """
    if percentile not in PERCENTILES:
        raise UsageError(f"--percentile {percentile!r} is invalid; use one of {', '.join(PERCENTILES)}")
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    rows = runs if isinstance(runs, list) else _records(runs)
    rows = [r for r in rows if r.get("role") == role and r.get("status", "FINISHED") == "FINISHED"
            and _finite(r.get(PRIMARY))]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r.get("config_group") or r.get("config_hash") or r["run_id"], []).append(r)
    lat = _Latencies(tracking_uri, percentile, batch_size, seq_len, device, dtype, threads, remeasure, cache_dir,
                     protocol or {}, log)
    groups = []
    try:
        for key, rs in by.items():
            rs.sort(key=lambda r: (-float(r[PRIMARY]), r.get("seed") if r.get("seed") is not None else 1 << 62,
                                   r["run_id"]))
            first = rs[0]
            g = {"config_group": key, "role": role}
            for col in ("task", "variant", "student_layers", "layer_strategy", "data_fraction", "augmentation",
                        "experiment"):
                g[col] = first.get(col)
            if _finite(g["student_layers"]):            # 3, not 3.0 (a float column next to missing values)
                g["student_layers"] = int(g["student_layers"])
            g["label"] = group_label(g)
            scores = [float(r[PRIMARY]) for r in rs]
            n = len(scores)
            mean = sum(scores) / n
            g.update(n=n, seeds=[r.get("seed") for r in rs], run_ids=[r["run_id"] for r in rs], scores=scores,
                     score=mean,
                     score_std=(sum((s - mean) ** 2 for s in scores) / (n - 1)) ** 0.5 if n > 1 else math.nan,
                     score_ci95=_ci95(scores))
            metrics = {}
            for k in sorted({k for r in rs for k in r if k.startswith("final/")}):
                vals = [float(r[k]) for r in rs if _finite(r.get(k))]
                if vals:
                    m = sum(vals) / len(vals)
                    sd = (sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else math.nan
                    metrics[k] = [m, sd, len(vals)]
            g["metrics"] = metrics
            g["best_run"] = first
            g["params_count"] = int(first["params_count"]) if _finite(first.get("params_count")) else None
            for r in rs:
                r["_label"] = g["label"]
            got = lat(rs)
            if got is None:
                log(f"no latency for {g['label']}: no logged latency/b{batch_size}_s{seq_len}_{percentile}_ms and "
                    f"no model config found (run_dir or MLflow model/ artifact); left out")
            g["latency"] = got["stats"] if got else None
            g["latency_ms"] = got["stats"][f"{percentile}_ms"] if got else None
            g["latency_source"] = got["source"] if got else None
            g["latency_fingerprint"] = got.get("fingerprint") if got else None
            groups.append(g)
    finally:
        lat.close()
    groups.sort(key=lambda g: (-g["score"], g["label"]))
    return groups


# --------------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------------
def plot_pareto(groups: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                trials: Sequence[Mapping[str, Any]] | None = None, teachers: Sequence[Mapping[str, Any]] = (),
                budget_ms: float | None = None, chosen: Mapping[str, Any] | None = None, title: str | None = None,
                xlabel: str = "latency (ms)", ylabel: str = "dev score (mean over seeds)") -> Path:
    """A PNG of score vs latency: each trial as a small point, each configuration's mean ± std, the
    Pareto front of the configurations as a staircase, the teacher(s) as stars, the budget as a
    vertical line, feasible (latency <= budget) and infeasible points in different colours and
    markers, and the chosen configuration ringed.

    ``groups``: mappings with ``latency_ms``, ``score`` and optionally ``score_std``, ``label``.
    ``trials``: mappings with ``latency_ms`` and ``score`` (one per run; default: ``scores`` of each
    group). ``teachers``: mappings with ``latency_ms``, ``score``, ``label``. Uses the Agg canvas (no
    display, no pyplot state). Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def feasible(p) -> bool:
        return budget_ms is None or float(p["latency_ms"]) <= float(budget_ms)

    pts = [g for g in groups if _finite(g.get("latency_ms")) and _finite(g.get("score"))]
    if trials is None:
        trials = [{"latency_ms": g["latency_ms"], "score": s} for g in pts for s in g.get("scores", [])]
    fig = Figure(figsize=(7.5, 5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ok_c, bad_c = "tab:blue", "tab:gray"
    for flag, colour, marker, name in ((True, ok_c, "o", "trial (within budget)"),
                                       (False, bad_c, "x", "trial (over budget)")):
        sel = [t for t in trials if _finite(t.get("latency_ms")) and _finite(t.get("score")) and feasible(t) == flag]
        if sel:
            ax.scatter([t["latency_ms"] for t in sel], [t["score"] for t in sel], s=14, c=colour, marker=marker,
                       alpha=0.45, label=name, zorder=2)
    for flag, colour, marker, name in ((True, ok_c, "o", "configuration mean ± std (within budget)"),
                                       (False, bad_c, "s", "configuration mean ± std (over budget)")):
        sel = [g for g in pts if feasible(g) == flag]
        if sel:
            ax.errorbar([g["latency_ms"] for g in sel], [g["score"] for g in sel],
                        yerr=[g["score_std"] if _finite(g.get("score_std")) else 0.0 for g in sel],
                        fmt=marker, color=colour, ms=7, mfc="white" if not flag else colour, capsize=3,
                        label=name, zorder=3)
    front = pareto_front(pts)
    if front:
        xs = [f["latency_ms"] for f in front]
        ys = [f["score"] for f in front]
        ax.plot(xs, ys, drawstyle="steps-post", color="tab:orange", lw=1.8, label="Pareto front", zorder=4)
        for f in front:
            ax.annotate(str(f.get("label", ""))[:40], (f["latency_ms"], f["score"]), textcoords="offset points",
                        xytext=(5, 5), fontsize=7, color="0.25")
    tpts = [t for t in teachers if _finite(t.get("latency_ms")) and _finite(t.get("score"))]
    for i, t in enumerate(tpts):
        ax.scatter([t["latency_ms"]], [t["score"]], marker="*", s=220, c="tab:red", edgecolors="black",
                   label="teacher" if i == 0 else None, zorder=5)
        ax.annotate(str(t.get("label", "teacher"))[:40], (t["latency_ms"], t["score"]), textcoords="offset points",
                    xytext=(6, -12), fontsize=7, color="tab:red")
    if chosen is not None and _finite(chosen.get("latency_ms")):
        ax.scatter([chosen["latency_ms"]], [chosen["score"]], s=260, facecolors="none", edgecolors="tab:green",
                   linewidths=2.2, label="chosen", zorder=6)
    if budget_ms is not None:
        ax.axvline(float(budget_ms), color="tab:green", ls="--", lw=1.3, label=f"budget {float(budget_ms):g} ms")
        ax.axvspan(0, float(budget_ms), color="tab:green", alpha=0.06, zorder=0)
    xs_all = [p["latency_ms"] for p in pts] + [t["latency_ms"] for t in tpts] + ([budget_ms] if budget_ms else [])
    if xs_all:
        ax.set_xlim(0, max(xs_all) * 1.15)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or "accuracy vs latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------
def _model_source(run: Mapping[str, Any], tracking_uri: str | None, tmp: Path) -> str:
    rd = run.get("run_dir")
    if rd and (Path(rd) / "model" / "config.json").is_file():
        return str(Path(rd) / "model")
    if tracking_uri:
        try:
            import mlflow.artifacts
            return mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path="model",
                                                       dst_path=str(tmp), tracking_uri=tracking_uri)
        except Exception as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise UsageError(f"the model of run {run['run_id']} is neither in its run dir {rd!r} nor downloadable "
                             f"from MLflow ({msg}); make the run dir reachable or log the model/ artifact") from None
    raise UsageError(f"the model of run {run['run_id']} is not in its run dir {rd!r}; make the run dir reachable")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):   # numpy scalars
        return _jsonable(obj.item())
    return obj


def _group_summary(g: Mapping[str, Any] | None) -> dict | None:
    if g is None:
        return None
    keep = ("config_group", "role", "label", "task", "variant", "student_layers", "layer_strategy", "data_fraction",
            "augmentation", "experiment", "n", "seeds", "run_ids", "scores", "score", "score_std", "score_ci95",
            "metrics", "params_count", "latency_ms", "latency", "latency_source", "latency_fingerprint")
    out = {k: g.get(k) for k in keep}
    br = g.get("best_run") or {}
    out["best_run_id"] = br.get("run_id")
    out["best_seed"] = br.get("seed")
    out["run_dir"] = br.get("run_dir")
    return _jsonable(out)


def export_student(chosen: Mapping[str, Any], out: str | os.PathLike, selection: Mapping[str, Any],
                   tracking_uri: str | None = None, plot: Callable[[Path], Any] | None = None) -> Path:
    """Write the best seed's model of ``chosen`` to ``out``: ``save_pretrained`` weights (safetensors)
    and tokenizer, README.md (model card), selection.json and, when ``plot`` is given, pareto.png
    (``plot(path)`` draws it). Everything is written to a temporary sibling folder first and renamed
    at the end, so ``out`` is complete or absent. Refuses an existing ``out``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from .modelcard import model_card
    from ..core.models import quiet_transformers
    quiet_transformers()
    out = Path(out).expanduser()
    if out.exists():
        raise UsageError(f"--out {out} already exists; choose a new folder or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    dl = Path(tempfile.mkdtemp(prefix="mixkd-model-"))
    try:
        src = _model_source(chosen["best_run"], tracking_uri, dl)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(src, trust_remote_code=False)
            tok = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load the chosen model from {src} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160]})") from None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        sel = dict(selection)
        sel["exported_from"] = src
        sel["params"] = sum(p.numel() for p in model.parameters())
        if plot is not None:
            plot(tmp / "pareto.png")
            sel["plot"] = "pareto.png"
        (tmp / "selection.json").write_text(json.dumps(_jsonable(sel), indent=2, default=str) + "\n")
        (tmp / "README.md").write_text(model_card(sel))
        if out.exists():
            raise UsageError(f"--out {out} appeared while exporting; choose a new folder")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(dl, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------------
# the whole selection
# --------------------------------------------------------------------------------------------------
def _teacher_for(chosen: Mapping[str, Any], teachers: list[dict], trial_rows: list[dict]) -> dict | None:
    """The teacher group of the chosen student's sweep: the one whose run dir is the student's
    ``teacher`` param; else the teacher of the same task and data fraction; else of the same task."""
    params = (chosen.get("best_run") or {}).get("params") or {}
    tpath = params.get("teacher")
    if tpath:
        tp = os.path.realpath(os.path.expanduser(tpath))
        for t in teachers:
            for rid in t["run_ids"]:
                rd = next((r.get("run_dir") for r in t.get("_rows", []) if r["run_id"] == rid), None)
                if rd and os.path.realpath(os.path.expanduser(rd)) == tp:
                    return t
    same = [t for t in teachers if t.get("task") == chosen.get("task")]
    frac = [t for t in same if t.get("data_fraction") == chosen.get("data_fraction")]
    return (frac or same or [None])[0]


def _teacher_from_dir(chosen: Mapping[str, Any], lat: Callable[[Any], dict], log) -> dict | None:
    """No teacher run in the store: measure the student's ``teacher`` dir from its params, if it is here."""
    params = (chosen.get("best_run") or {}).get("params") or {}
    tpath = params.get("teacher")
    if not tpath or tpath == "None":
        return None
    try:
        cfg = L.load_config(tpath)
    except UsageError:
        return None
    res = lat(cfg)
    score = None
    mfile = Path(tpath).expanduser() / "metrics.json"
    if mfile.is_file():
        try:
            score = json.loads(mfile.read_text()).get("primary_value")
        except ValueError:
            pass
    return {"role": "teacher", "label": f"teacher {Path(tpath).name}", "task": chosen.get("task"), "score": score,
            "score_std": math.nan, "n": 1 if score is not None else 0, "run_ids": [], "latency": res["stats"],
            "latency_ms": res["p"], "latency_source": res["source"], "latency_fingerprint": res["fingerprint"],
            "path": str(tpath)}


def _kind(g: Mapping[str, Any]) -> str | None:
    """Where a latency comes from: 'sweep' (logged by the sweep) or 'here' (measured or cached here)."""
    src = g.get("latency_source")
    return None if src is None else ("sweep" if src == "sweep" else "here")


def _typed_params(params: Mapping[str, str]) -> dict:
    """MLflow params (strings) back to YAML types: '1.0' -> 1.0, 'False' -> False, 'None' -> None."""
    import yaml
    out = {}
    for k, v in sorted(params.items()):
        if v == "None":
            out[k] = None
            continue
        try:
            val = yaml.safe_load(v)
        except yaml.YAMLError:
            val = v
        out[k] = val if isinstance(val, (str, int, float, bool)) or val is None else v
    return out


def _primary_name(task: str | None) -> str:
    try:
        from ..core.tasks import get_task
        return get_task(task).primary_metric
    except Exception:
        return "primary"


def select(tracking_uri: str, budget_ms: float, out: str | os.PathLike, *, experiment: str | None = None,
           percentile: str = "p90", batch_size: int = 1, seq_len: int = L.DEFAULT_SEQ_LEN, task: str | None = None,
           device: str = "cpu", dtype: str = "fp32", threads: int | None = None, remeasure: bool = False,
           cache_dir: str | None = None, protocol: dict | None = None,
           log: Callable[[str], None] | None = None) -> dict:
    """The most accurate student of the sweep(s) in ``tracking_uri`` whose ``percentile`` latency at
    (``batch_size``, ``seq_len``) on ``device`` is within ``budget_ms``, exported to ``out``.

    Returns the selection dict (also written to ``out/selection.json``): the chosen group with its
    scores (mean, std, 95% CI over seeds) and latency, the teacher and the speed-up, the Pareto
    front, every group, and where each latency came from. Bad input raises :class:`UsageError`.
    """
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    if not _finite(budget_ms) or float(budget_ms) <= 0:
        raise UsageError(f"--latency-budget-ms {budget_ms} is invalid; use a positive number of milliseconds")
    if percentile not in PERCENTILES:
        raise UsageError(f"--percentile {percentile!r} is invalid; use one of {', '.join(PERCENTILES)}")
    for flag, v in (("--batch-size", batch_size), ("--seq-len", seq_len)):
        if not isinstance(v, int) or v < 1:
            raise UsageError(f"{flag} {v} is invalid; use a positive integer")
    outp = Path(out).expanduser()
    if outp.exists():
        raise UsageError(f"--out {out} already exists; choose a new folder or remove it")
    L.device_info(device, dtype, threads)            # bad device / dtype / threads fail before any work
    from ..tracking.runstore import load_runs, resolve_tracking_uri
    uri = resolve_tracking_uri(tracking_uri)
    df = load_runs(uri, experiment)
    rows = _records(df)
    where = f"experiment {experiment!r}" if experiment else f"tracking store {tracking_uri}"
    trials = [r for r in rows if r.get("role") == "trial" and r.get("status") == "FINISHED" and _finite(r.get(PRIMARY))]
    if not trials:
        raise UsageError(f"no finished trial runs with a final/primary metric in {where}; run or finish a sweep first")
    tasks = sorted({str(r.get("task")) for r in trials})
    if task is not None:
        from ..core.tasks import get_task
        task = get_task(task).name
        trials = [r for r in trials if r.get("task") == task]
        if not trials:
            raise UsageError(f"no finished trial runs of task {task!r} in {where}; tasks with runs: {', '.join(tasks)}")
    elif len(tasks) > 1:
        raise UsageError(f"{where} holds trial runs of several tasks ({', '.join(tasks)}); pick one with --task")
    task = trials[0].get("task")
    what = f"{percentile}, batch {batch_size}, seq {seq_len}, {device}"
    kw = dict(percentile=percentile, batch_size=batch_size, seq_len=seq_len, device=device, dtype=dtype,
              threads=threads, tracking_uri=uri, remeasure=remeasure, cache_dir=cache_dir, protocol=protocol, log=log)
    teacher_rows = [r for r in rows if r.get("role") == "teacher" and r.get("task") == task]
    groups = group_runs(trials, **kw)
    teachers = group_runs(teacher_rows, role="teacher", **kw)
    if len({_kind(g) for g in groups + teachers} - {None}) > 1:
        # latencies from the sweep's hardware and from this machine do not compare: measure all of them here
        log("some latencies were logged by the sweep and others must be measured here; measuring all here so "
            "they compare (once per architecture)")
        kw["remeasure"] = True
        groups = group_runs(trials, **kw)
        teachers = group_runs(teacher_rows, role="teacher", **kw)
    usable = [g for g in groups if g["latency_ms"] is not None]
    if not usable:
        raise UsageError(f"no latency for any configuration in {where} ({what}): no logged latency metrics and "
                         f"no model configs found; check that the runs' run_dir or model/ artifacts exist")
    for t in teachers:
        t["_rows"] = [r for r in teacher_rows if r["run_id"] in t["run_ids"]]
    chosen = choose(usable, budget_ms, what=what)
    front = pareto_front(usable)
    teacher = _teacher_for(chosen, teachers, trials)
    if teacher is None or teacher.get("latency_ms") is None:
        def measure_cfg(cfg):
            r = L.cached_latency(cfg, batch_size, seq_len, device, dtype, cache_dir, threads=threads, **(protocol or {}))
            return {"stats": {k: r[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput")},
                    "p": r[f"{percentile}_ms"], "source": "cache" if r["cached"] else "measured",
                    "fingerprint": r["fingerprint"]}
        teacher = _teacher_from_dir(chosen, measure_cfg, log) or teacher
    speedup = None
    if teacher is not None and _finite(teacher.get("latency_ms")) and float(chosen["latency_ms"]) > 0:
        if _kind(teacher) == _kind(chosen):    # both from the sweep or both measured here
            speedup = float(teacher["latency_ms"]) / float(chosen["latency_ms"])
        else:
            log("the teacher's latency was measured here but the students' were logged by the sweep; "
                "no speed-up reported (use --remeasure to measure all here)")
    teacher_params = None
    br = chosen.get("best_run") or {}
    if teacher is not None and teacher.get("best_run") and _finite(teacher["best_run"].get("params_count")):
        teacher_params = int(teacher["best_run"]["params_count"])
    selection = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tracking_uri": uri, "experiment": experiment or chosen.get("experiment"), "task": task,
        "budget_ms": float(budget_ms), "percentile": percentile, "batch_size": batch_size, "seq_len": seq_len,
        "device": device, "dtype": dtype, "primary_metric": _primary_name(task),
        "chosen": _group_summary(chosen), "config": _typed_params(br.get("params") or {}),
        "out": str(outp),
        "teacher": _group_summary(teacher) if teacher and "best_run" in teacher else _jsonable(teacher),
        "teacher_params": teacher_params, "speedup_vs_teacher": speedup,
        "front": [_group_summary(g) for g in front],
        "groups": [_group_summary(g) for g in groups],
        "feasible": [g["label"] for g in usable if g["latency_ms"] <= float(budget_ms)],
        "no_latency": [g["label"] for g in groups if g["latency_ms"] is None],
    }

    def draw(path: Path):
        tlist = [teacher] if teacher is not None else []
        trial_pts = [{"latency_ms": g["latency_ms"], "score": s} for g in usable for s in g["scores"]]
        return plot_pareto(usable, path, trials=trial_pts, teachers=tlist, budget_ms=float(budget_ms), chosen=chosen,
                           title=f"{task}: dev {_primary_name(task)} vs {percentile} latency "
                                 f"(batch {batch_size}, seq {seq_len}, {device})",
                           xlabel=f"{percentile} latency (ms), batch {batch_size}, seq {seq_len}, {device}")
    export_student(chosen, outp, selection, tracking_uri=uri, plot=draw)
    selection = json.loads((outp / "selection.json").read_text())
    return selection


__all__ = ["pareto_front", "choose", "group_runs", "group_label", "plot_pareto", "export_student", "select"]
