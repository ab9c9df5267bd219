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

:func:`select` runs all four (``mixkd select``). Step 1 lives in :mod:`.groups`, steps 2 and 3 and the plot in
:mod:`.pareto`, step 4 in :mod:`.export`; their public names are importable from here too.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..core.errors import UsageError
from . import latency as L
from .export import _group_summary, _jsonable, export_student
from .groups import PERCENTILES, PRIMARY, _records, group_label, group_runs
from .pareto import _finite, choose, pareto_front, plot_pareto


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


def _primary_name(task: str | None, params: dict | None = None) -> str:
    try:
        from ..core.tasks import primary_metric_of
        return primary_metric_of(task, params)
    except Exception:
        return "primary"


def select(tracking_uri: str, budget_ms: float, out: str | os.PathLike, *, experiment: str | None = None,
           percentile: str = "p90", batch_size: int = 1, seq_len: int = L.DEFAULT_SEQ_LEN, task: str | None = None,
           device: str = "cpu", dtype: str = "fp32", threads: int | None = None, remeasure: bool = False,
           cache_dir: str | None = None, protocol: dict | None = None,
           log: Callable[[str], None] | None = None, formats: list[str] | None = None,
           data_dir: str | None = None, max_eval_samples: int | None = None, allow_chance: bool = False) -> dict:
    """The most accurate student of the sweep(s) in ``tracking_uri`` whose ``percentile`` latency at
    (``batch_size``, ``seq_len``) on ``device`` is within ``budget_ms``, exported to ``out``.

    Returns the selection dict (also written to ``out/selection.json``): the chosen group with its
    scores (mean, std, 95% CI over seeds) and latency, the teacher and the speed-up, the Pareto
    front, every group, and where each latency came from. Bad input raises :class:`UsageError`.

    ``formats`` other than ``["torch"]`` (e.g. ``["torch", "torch-int8", "onnx", "onnx-int8"]``) choose over
    (configuration × format) instead, each score measured after conversion on the dev set of ``data_dir``
    (:mod:`mixkd.deploy.format_select`); the chosen pair is exported in its format.
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
    from ..tracking.runstore import expand_stores, load_runs, resolve_tracking_uri
    stores = expand_stores(tracking_uri)
    uri = resolve_tracking_uri(stores[0]) if len(stores) == 1 else None   # several: each run carries its store
    df = load_runs(stores, experiment)
    rows = _records(df)
    where = f"experiment {experiment!r}" if experiment else f"tracking store {', '.join(stores)}"
    trials = [r for r in rows if r.get("role") == "trial" and r.get("status") == "FINISHED" and _finite(r.get(PRIMARY))]
    if not trials:
        raise UsageError(f"no finished trial runs with a final/primary metric in {where}; run or finish a sweep first")
    tasks = sorted({str(r.get("task")) for r in trials})
    if task is not None:
        from ..core.tasks import task_name
        task = task_name(task)
        trials = [r for r in trials if r.get("task") == task]
        if not trials:
            raise UsageError(f"no finished trial runs of task {task!r} in {where}; tasks with runs: {', '.join(tasks)}")
    elif len(tasks) > 1:
        raise UsageError(f"{where} holds trial runs of several tasks ({', '.join(tasks)}); pick one with --task")
    task = trials[0].get("task")
    what = f"{percentile}, batch {batch_size}, seq {seq_len}, {device}"
    kw = dict(keep_at_chance=allow_chance, percentile=percentile, batch_size=batch_size, seq_len=seq_len,
              device=device, dtype=dtype, threads=threads, tracking_uri=uri, remeasure=remeasure, cache_dir=cache_dir,
              protocol=protocol, log=log)
    teacher_rows = [r for r in rows if r.get("role") == "teacher" and r.get("task") == task]
    groups = group_runs(trials, **kw)
    teachers = group_runs(teacher_rows, role="teacher", **kw)
    if not groups:
        raise UsageError(f"every configuration in {where} ({what}) is at chance level (see the lines above); "
                         f"nothing worth exporting: train the students longer, with another --lr or deeper "
                         f"(--allow-chance considers them anyway)")
    if formats and list(formats) != ["torch"]:
        from .format_select import select_over_formats
        return select_over_formats(groups, list(formats), float(budget_ms), outp, task=task, tracking_uri=uri,
                                   experiment=experiment, teacher=teachers[0] if teachers else None, data_dir=data_dir,
                                   max_eval_samples=max_eval_samples, percentile=percentile, batch_size=batch_size,
                                   seq_len=seq_len, device=device, threads=threads, cache_dir=cache_dir,
                                   protocol=protocol, primary_metric=_primary_name(task, trials[0].get("params")),
                                   log=log)
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
            r = L.cached_latency(cfg, batch_size, seq_len, device, dtype, cache_dir, threads=threads,
                                 **(protocol or {}))
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
        "tracking_uri": uri or stores, "experiment": experiment or chosen.get("experiment"), "task": task,
        "budget_ms": float(budget_ms), "percentile": percentile, "batch_size": batch_size, "seq_len": seq_len,
        "device": device, "dtype": dtype, "primary_metric": _primary_name(task, trials[0].get("params")),
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
                           title=f"{task}: dev {_primary_name(task, trials[0].get('params'))} vs {percentile} latency "
                                 f"(batch {batch_size}, seq {seq_len}, {device})",
                           xlabel=f"{percentile} latency (ms), batch {batch_size}, seq {seq_len}, {device}")
    export_student(chosen, outp, selection, tracking_uri=uri, plot=draw)
    selection = json.loads((outp / "selection.json").read_text())
    return selection


def format_selection(sel: Mapping[str, Any]) -> str:
    """A selection (``select``'s result or a ``selection.json``) for a terminal: every configuration with its
    score, latency, whether it is on the Pareto front and within the budget (* the chosen one), then the
    choice and where it was exported."""
    pct, ch = sel["percentile"], sel["chosen"]
    width = max([len("configuration")] + [len(g["label"]) for g in sel["groups"]])   # whole names, never cut
    lines = [f"{'':2}{'configuration':<{width}} {'score':>18} {pct + ' ms':>10}  on front  within budget"]
    front = {g["config_group"] for g in sel["front"]}
    for g in sel["groups"]:
        if g["latency_ms"] is None:
            continue
        mark = "*" if g["config_group"] == ch["config_group"] else " "
        s = f"{g['score']:.4f}" + (f" ± {g['score_std']:.4f}" if isinstance(g.get("score_std"), float) else "")
        lines.append(f"{mark:2}{g['label']:<{width}} {s:>18} {g['latency_ms']:>10.2f}  "
                     f"{'yes' if g['config_group'] in front else 'no':<8}  "
                     f"{'yes' if g['latency_ms'] <= sel['budget_ms'] else 'no'}")
    t, sp, std = sel.get("teacher") or {}, sel.get("speedup_vs_teacher"), ch.get("score_std")
    pm = f" ± {std:.4f}" if isinstance(std, float) else ""
    lines.append(f"chosen: {ch['label']}: {sel['primary_metric']} {ch['score']:.4f}{pm} over {ch['n']} seed(s), "
                 f"{pct} {ch['latency_ms']:.2f} ms (batch {sel['batch_size']}, seq {sel['seq_len']}, {sel['device']}; "
                 f"{ch['latency_source']})" +
                 (f", {sp:.2f}x faster than the teacher ({t.get('latency_ms'):.2f} ms)" if sp else ""))
    lines.append(f"exported run {ch['best_run_id']} (seed {ch['best_seed']}) "
                 + (f"as {ch['format']} " if ch.get('format') else "")
                 + f"to {sel['out']}: model, tokenizer, "
                 f"README.md, selection.json, pareto.png")
    return "\n".join(lines)


__all__ = ["pareto_front", "choose", "group_runs", "group_label", "plot_pareto", "export_student", "select",
           "format_selection"]
