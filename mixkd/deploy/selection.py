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
:mod:`.pareto`, step 4 in :mod:`.select_export`; their public names are importable from here too.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..core.errors import UsageError
from . import latency as L
from .groups import PRIMARY, group_label, group_runs, run_records
from .pareto import choose, is_finite, pareto_front, plot_pareto
from .records import ConfigGroup, LatencyQuery
from .select_export import export_student, group_summary, teacher_summary


# --------------------------------------------------------------------------------------------------
# the whole selection
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepRuns:
    """The runs a selection chooses from: the finished trials of one task, with a final/primary metric, and the
    teacher runs of that task."""
    stores: list[str]
    uri: str | None               # the store's URI; None for several stores (each run then carries its own)
    where: str                    # the store(s) or experiment, for messages
    task: str
    trials: list[dict]
    teacher_rows: list[dict]

    @property
    def primary_metric(self) -> str:
        return _primary_name(self.task, self.trials[0].get("params"))


def _teacher_for(chosen: ConfigGroup, teachers: list[ConfigGroup], teacher_rows: list[dict]) -> ConfigGroup | None:
    """The teacher group of the chosen student's sweep: the one whose run dir is the student's
    ``teacher`` param; else the teacher of the same task and data fraction; else of the same task."""
    params = (chosen.best_run or {}).get("params") or {}
    tpath = params.get("teacher")
    if tpath:
        tp = os.path.realpath(os.path.expanduser(tpath))
        for t in teachers:
            for rid in t.run_ids:
                rd = next((r.get("run_dir") for r in teacher_rows if r["run_id"] == rid), None)
                if rd and os.path.realpath(os.path.expanduser(rd)) == tp:
                    return t
    same = [t for t in teachers if t.task == chosen.task]
    frac = [t for t in same if t.data_fraction == chosen.data_fraction]
    return (frac or same or [None])[0]


def _teacher_from_dir(chosen: ConfigGroup, query: LatencyQuery) -> ConfigGroup | None:
    """No teacher run in the store: measure the student's ``teacher`` dir from its params, if it is here."""
    params = (chosen.best_run or {}).get("params") or {}
    tpath = params.get("teacher")
    if not tpath or tpath == "None":
        return None
    try:
        cfg = L.load_config(tpath)
    except UsageError:
        return None
    latency = query.measure(cfg)
    score = None
    mfile = Path(tpath).expanduser() / "metrics.json"
    if mfile.is_file():
        try:
            score = json.loads(mfile.read_text()).get("primary_value")
        except ValueError:
            pass
    return ConfigGroup(None, "teacher", label=f"teacher {Path(tpath).name}", task=chosen.task, score=score,
                       score_std=math.nan, n=1 if score is not None else 0, run_ids=[],
                       **latency.group_fields(query.percentile), path=str(tpath))


def _kind(g: ConfigGroup) -> str | None:
    """Where a latency comes from: 'sweep' (logged by the sweep) or 'here' (measured or cached here)."""
    src = g.latency_source
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


def _log_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load_sweep_runs(tracking_uri: str | list[str], experiment: str | None, task: str | None) -> SweepRuns:
    """The finished trials (and teacher runs) of the one task in the store(s), or of ``task``; UsageError when there
    are none, or when several tasks have runs and none is named."""
    from ..tracking.runstore import expand_stores, load_runs, resolve_tracking_uri
    stores = expand_stores(tracking_uri)
    uri = resolve_tracking_uri(stores[0]) if len(stores) == 1 else None   # several: each run carries its store
    rows = run_records(load_runs(stores, experiment))
    where = f"experiment {experiment!r}" if experiment else f"tracking store {', '.join(stores)}"
    trials = [r for r in rows
              if r.get("role") == "trial" and r.get("status") == "FINISHED" and is_finite(r.get(PRIMARY))]
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
    teacher_rows = [r for r in rows if r.get("role") == "teacher" and r.get("task") == task]
    return SweepRuns(stores, uri, where, task, trials, teacher_rows)


def _grouped(runs: SweepRuns, query: LatencyQuery, *, remeasure: bool, allow_chance: bool,
             log: Callable[[str], None]) -> tuple[list[ConfigGroup], list[ConfigGroup]]:
    """(student groups, teacher groups) of ``runs``, each with its latency (:func:`group_runs`)."""
    kw = dict(keep_at_chance=allow_chance, tracking_uri=runs.uri, remeasure=remeasure, log=log, **query.group_args())
    return group_runs(runs.trials, **kw), group_runs(runs.teacher_rows, role="teacher", **kw)


def _refuse_all_at_chance(groups: list[ConfigGroup], runs: SweepRuns, query: LatencyQuery) -> None:
    if not groups:
        raise UsageError(f"every configuration in {runs.where} ({query.describe()}) is at chance level (see the lines "
                         f"above); nothing worth exporting: train the students longer, with another --lr or deeper "
                         f"(--allow-chance considers them anyway)")


def _mixed_sources(groups: list[ConfigGroup], teachers: list[ConfigGroup]) -> bool:
    """Were some latencies logged by the sweep and others measured here? (The two machines do not compare.)"""
    return len({_kind(g) for g in groups + teachers} - {None}) > 1


def _teacher(chosen: ConfigGroup, teachers: list[ConfigGroup], runs: SweepRuns,
             query: LatencyQuery) -> ConfigGroup | None:
    """The chosen student's teacher group; without a latency, its ``teacher`` dir measured here instead (if any)."""
    teacher = _teacher_for(chosen, teachers, runs.teacher_rows)
    if teacher is None or teacher.latency_ms is None:
        teacher = _teacher_from_dir(chosen, query) or teacher
    return teacher


def _speedup(teacher: ConfigGroup | None, chosen: ConfigGroup, log: Callable[[str], None]) -> float | None:
    """The teacher's latency over the chosen student's, when both come from the same place."""
    if teacher is None or not is_finite(teacher.latency_ms) or not float(chosen.latency_ms) > 0:
        return None
    if _kind(teacher) == _kind(chosen):    # both from the sweep or both measured here
        return float(teacher.latency_ms) / float(chosen.latency_ms)
    log("the teacher's latency was measured here but the students' were logged by the sweep; "
        "no speed-up reported (use --remeasure to measure all here)")
    return None


def _selection_record(runs: SweepRuns, query: LatencyQuery, budget_ms: float, out: Path, experiment: str | None, *,
                      chosen: ConfigGroup, teacher: ConfigGroup | None, groups: list[ConfigGroup],
                      usable: list[ConfigGroup], front: list[ConfigGroup], speedup: float | None) -> dict:
    """The selection dict (``selection.json`` before export adds the model's fields)."""
    teacher_params = None
    if teacher is not None and teacher.best_run and is_finite(teacher.best_run.get("params_count")):
        teacher_params = int(teacher.best_run["params_count"])
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tracking_uri": runs.uri or runs.stores, "experiment": experiment or chosen.experiment,
        "task": runs.task, "budget_ms": float(budget_ms), "percentile": query.percentile,
        "batch_size": query.batch_size, "seq_len": query.seq_len, "device": query.device, "dtype": query.dtype,
        "primary_metric": runs.primary_metric, "chosen": group_summary(chosen),
        "config": _typed_params((chosen.best_run or {}).get("params") or {}), "out": str(out),
        "teacher": teacher_summary(teacher),
        "teacher_params": teacher_params, "speedup_vs_teacher": speedup,
        "front": [group_summary(g) for g in front],
        "groups": [group_summary(g) for g in groups],
        "feasible": [g.label for g in usable if g.latency_ms <= float(budget_ms)],
        "no_latency": [g.label for g in groups if g.latency_ms is None],
    }


def _draw_choice(path: Path, runs: SweepRuns, query: LatencyQuery, budget_ms: float, usable: list[ConfigGroup],
                 chosen: ConfigGroup, teacher: ConfigGroup | None) -> Path:
    """pareto.png of a selection: every seed, every configuration, the front, the teacher, the budget, the choice."""
    where = f"batch {query.batch_size}, seq {query.seq_len}, {query.device}"
    return plot_pareto(usable, path, trials=[{"latency_ms": g.latency_ms, "score": s} for g in usable
                                             for s in g.scores],
                       teachers=[teacher] if teacher is not None else [], budget_ms=float(budget_ms), chosen=chosen,
                       title=f"{runs.task}: dev {runs.primary_metric} vs {query.percentile} latency ({where})",
                       xlabel=f"{query.percentile} latency (ms), {where}")


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
    log = log or _log_to_stderr
    query = LatencyQuery(percentile, batch_size, seq_len, device, dtype, threads, cache_dir, protocol)
    if not is_finite(budget_ms) or float(budget_ms) <= 0:
        raise UsageError(f"--latency-budget-ms {budget_ms} is invalid; use a positive number of milliseconds")
    query.check_statistic()
    outp = Path(out).expanduser()
    if outp.exists():
        raise UsageError(f"--out {out} already exists; choose a new folder or remove it")
    query.check_device()                        # bad device / dtype / threads fail before any work
    runs = load_sweep_runs(tracking_uri, experiment, task)
    groups, teachers = _grouped(runs, query, remeasure=remeasure, allow_chance=allow_chance, log=log)
    _refuse_all_at_chance(groups, runs, query)
    if formats and list(formats) != ["torch"]:
        from .format_select import select_over_formats
        return select_over_formats(groups, list(formats), float(budget_ms), outp, task=runs.task, query=query,
                                   tracking_uri=runs.uri, experiment=experiment,
                                   teacher=teachers[0] if teachers else None, data_dir=data_dir,
                                   max_eval_samples=max_eval_samples, primary_metric=runs.primary_metric, log=log)
    if _mixed_sources(groups, teachers):
        log("some latencies were logged by the sweep and others must be measured here; measuring all here so "
            "they compare (once per architecture)")
        groups, teachers = _grouped(runs, query, remeasure=True, allow_chance=allow_chance, log=log)
    usable = [g for g in groups if g.latency_ms is not None]
    if not usable:
        raise UsageError(f"no latency for any configuration in {runs.where} ({query.describe()}): no logged latency "
                         f"metrics and no model configs found; check that the runs' run_dir or model/ artifacts exist")
    chosen = choose(usable, budget_ms, what=query.describe())
    teacher = _teacher(chosen, teachers, runs, query)
    selection = _selection_record(runs, query, budget_ms, outp, experiment, chosen=chosen, teacher=teacher,
                                  groups=groups, usable=usable, front=pareto_front(usable),
                                  speedup=_speedup(teacher, chosen, log))
    export_student(chosen, outp, selection, tracking_uri=runs.uri,
                   plot=lambda path: _draw_choice(path, runs, query, budget_ms, usable, chosen, teacher))
    return json.loads((outp / "selection.json").read_text())


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
