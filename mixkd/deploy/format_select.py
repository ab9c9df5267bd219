"""``mixkd select --formats ...``: the budget choice over (configuration × deployment format).

For each configuration (seed group of :func:`mixkd.deploy.groups.group_runs`) its best seed's model is
converted to every asked format (:mod:`.formats`), its dev score is **measured after conversion** on the
task's dev set (:func:`mixkd.deploy.export.convert_and_score`; for onnx-int8 the better of the two weight
types) and its latency is measured in that format (:func:`mixkd.deploy.formats.format_latencies`, cached).
Every point is then one (configuration, format) pair; the Pareto front and the choice
(:func:`mixkd.deploy.pareto.choose`: the highest score within the budget, ties to the faster) run over them,
so a faster int8 point that lost accuracy is not preferred to a slightly slower fp32 one that scores higher
within the budget. The chosen pair is exported in its format with :func:`mixkd.deploy.export.export_model`
(checked, model card), plus ``selection.json`` and ``pareto.png``.

A point's score is the configuration's mean dev score over seeds (as logged, PyTorch fp32) plus the change
conversion to that format caused on its best seed, measured on the same dev rows (``converted_score -
torch_score``, both kept): the same seed mean the fp32 choice ranks by, with the format's own cost included.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ..core.errors import UsageError
from . import formats as deploy_formats
from .pareto import choose, is_finite, pareto_front, plot_pareto
from .records import CONFIG_FIELDS, ConfigGroup, FormatPoint, LatencyQuery, LatencyRecord
from .select_export import group_summary, json_safe, model_folder

# what selection.json keeps of a point besides its group's fields (:func:`mixkd.deploy.select_export.group_summary`)
POINT_FIELDS = ("format", "weight_type", "seed_mean", "torch_score", "converted_score", "conversion_delta",
                "agreement", "base_config_group")
SCORE_NOTE = ("score = the configuration's mean dev score over seeds plus the change that conversion to the format "
              "caused on its best seed (measured on the dev set: converted_score - torch_score)")
# the configuration's fields a point carries over from its group
GROUP_FIELDS = (*CONFIG_FIELDS, "run_ids", "params_count", "metrics")


def _summary(p: FormatPoint) -> dict:
    return {**(group_summary(p) or {}), **json_safe({k: getattr(p, k) for k in POINT_FIELDS})}


def _source(g: ConfigGroup, gi: int, tracking_uri: str | None, workdir: Path, log) -> str | None:
    """The model folder of a configuration's best run (downloaded from MLflow if needed); None, said, if none."""
    try:
        return model_folder(g.best_run or {}, tracking_uri, workdir / f"dl{gi}")
    except UsageError as e:
        log(f"skipping {g.label}: {e}")
        return None


def _format_latency(src: str, fmt: str, query: LatencyQuery, weight_type: str = "qint8") -> dict[str, Any]:
    """The latency result of the architecture in ``src`` in ``fmt`` (fp32 activations; cached)."""
    return deploy_formats.format_latencies(src, fmt, [query.batch_size], query.seq_len, query.device, "fp32",
                                           query.cache_dir, threads=query.threads, weight_type=weight_type,
                                           **(query.protocol or {}))[query.batch_size]


def check_budget_first(groups: list[ConfigGroup], formats: list[str], budget_ms: float, query: LatencyQuery, *,
                       tracking_uri: str | None, workdir: Path, log: Callable[[str], None],
                       what: str | None = None) -> dict[int, str]:
    """Each group's model folder, once some (configuration, format) is known to meet ``budget_ms``: latency depends
    on the architecture and format only, so it is measured (or read from the cache) before any model is converted
    or scored, and a budget nothing can meet is refused at once, naming the fastest point (``what`` describes the
    latency in that message)."""
    sources, pre = {}, []
    for gi, g in enumerate(groups):
        src = _source(g, gi, tracking_uri, workdir, log)
        if src is None:
            continue
        sources[gi] = src
        for fmt in formats:
            wts = ("qint8", "quint8") if fmt == "onnx-int8" else ("qint8",)
            lat = min(_format_latency(src, fmt, query, wt)[f"{query.percentile}_ms"] for wt in wts)
            pre.append({"label": f"{g.label} [{fmt}]", "score": g.score, "latency_ms": lat})
    pre = [p for p in pre if is_finite(p["score"])]
    if pre:
        choose(pre, budget_ms, what=what or query.describe())   # UsageError naming the fastest point when none fits
    return sources


def _point(g: ConfigGroup, fmt: str, src: str, best: Mapping[str, Any], torch_score: float, primary: str,
           query: LatencyQuery) -> FormatPoint:
    """The point of configuration ``g`` in ``fmt``, from its best seed's conversion ``best``
    (:func:`mixkd.deploy.export.convert_and_score`) and its latency in that format."""
    br = g.best_run or {}
    wt = best["weight_type"]
    latency = LatencyRecord.of_measurement(_format_latency(src, fmt, query, wt or "qint8"))
    converted = best["metrics"][primary]
    # the configuration's mean over seeds (as logged, in PyTorch) shifted by what conversion to this format cost its
    # best seed, measured on the same dev rows: a seed mean, like the fp32 choice uses
    delta = converted - torch_score
    mean = g.score
    seeds_scores = [s + delta for s in g.scores or []] if is_finite(mean) else [converted]
    return FormatPoint(
        config_group=f"{g.config_group}/{fmt}", base_config_group=g.config_group, label=f"{g.label} [{fmt}]",
        format=fmt, weight_type=wt, best_run=br, n=len(seeds_scores), seeds=g.seeds or [br.get("seed")],
        score=mean + delta if is_finite(mean) else converted,
        score_std=g.score_std if is_finite(mean) else math.nan, scores=seeds_scores,
        seed_mean=mean, torch_score=torch_score, converted_score=converted, conversion_delta=delta,
        agreement=best["agreement"], source_dir=src, **{k: getattr(g, k) for k in GROUP_FIELDS},
        **latency.group_fields(query.percentile))


def format_points(groups: list[ConfigGroup], formats: list[str], *, task: str, tracking_uri: str | None, workdir: Path,
                  data_dir: str | None = None, max_eval_samples: int | None = None, query: LatencyQuery | None = None,
                  log: Callable[[str], None] = print, sources: dict[int, str] | None = None) -> list[FormatPoint]:
    """One point per (configuration, format): score measured after conversion, latency measured in that format.
    ``sources``: each group's model folder, already resolved (:func:`check_budget_first`)."""
    from ..core.tasks import metric_key
    from .export import convert_and_score, dev_metrics, load_reference
    query = query or LatencyQuery()
    points = []
    for gi, g in enumerate(groups):
        src = (sources or {}).get(gi) if sources is not None else _source(g, gi, tracking_uri, workdir, log)
        if src is None:
            continue
        seq = int(float(((g.best_run or {}).get("params") or {}).get("max_seq_length") or 128))
        model, tok, data, ref = load_reference(src, task, data_dir, max_eval_samples, seq)
        primary = metric_key(data.task.primary_metric, data.dev_splits[0])
        torch_score = dev_metrics(data.task, data, ref)[primary]
        for fmt in formats:
            best, _ = convert_and_score(model, fmt, workdir / f"g{gi}", data, tok, ref, threads=query.threads, log=log)
            points.append(_point(g, fmt, src, best, torch_score, primary, query))
            p = points[-1]
            log(f"{p.label}: {primary} {p.converted_score:.4f} after conversion (torch {torch_score:.4f}; seed "
                f"mean {p.score:.4f}), {query.percentile} {p.latency_ms:.2f} ms")
            best.pop("module", None)
    return points


def _selection_record(points: list[FormatPoint], chosen: FormatPoint, formats: list[str], budget_ms: float,
                      out: Path, task: str, query: LatencyQuery, *, tracking_uri: str | None, experiment: str | None,
                      teacher: ConfigGroup | None, primary_metric: str) -> dict:
    """The selection dict of a choice over (configuration × format), in :func:`mixkd.deploy.selection.select`'s
    layout plus each point's format fields (the teacher's: every field of its group)."""
    t_lat = teacher.latency_ms if teacher is not None else None
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "tracking_uri": tracking_uri, "experiment": experiment,
        "task": task, "budget_ms": float(budget_ms), "percentile": query.percentile, "batch_size": query.batch_size,
        "seq_len": query.seq_len, "device": query.device, "dtype": "fp32", "formats": list(formats),
        "primary_metric": primary_metric, "chosen": _summary(chosen), "out": str(out),
        "teacher": json_safe(teacher.as_dict()) if teacher is not None else None,
        "speedup_vs_teacher": float(t_lat) / float(chosen.latency_ms) if t_lat and chosen.latency_ms else None,
        "front": [_summary(p) for p in pareto_front(points)], "groups": [_summary(p) for p in points],
        "feasible": [p.label for p in points if p.latency_ms <= float(budget_ms)], "score_note": SCORE_NOTE}


def _write_choice(folder: Path, selection: dict, points: list[FormatPoint], chosen: FormatPoint,
                  teacher: ConfigGroup | None, budget_ms: float, task: str, query: LatencyQuery) -> None:
    """pareto.png and selection.json, into the export's folder before it is renamed."""
    plot_pareto(points, folder / "pareto.png", trials=[],
                teachers=[teacher] if teacher is not None else [], budget_ms=float(budget_ms), chosen=chosen,
                title=f"{task}: dev score after conversion vs {query.percentile} latency (configuration × format)",
                xlabel=f"{query.percentile} latency (ms), batch {query.batch_size}, seq {query.seq_len}, "
                       f"{query.device}",
                ylabel="dev score (mean over seeds, after conversion)")
    (folder / "selection.json").write_text(json.dumps(json_safe({**selection, "plot": "pareto.png"}),
                                                      indent=2, default=str) + "\n")


def select_over_formats(groups: list[ConfigGroup], formats: list[str], budget_ms: float, out: Path, *, task: str,
                        tracking_uri: str | None, experiment: str | None = None, teacher: ConfigGroup | None = None,
                        data_dir: str | None = None, max_eval_samples: int | None = None,
                        query: LatencyQuery | None = None, primary_metric: str = "primary",
                        log: Callable[[str], None] = print) -> dict:
    """The most accurate (configuration, format) within ``budget_ms`` (its latency: ``query``), exported to ``out``
    in its format. Returns the selection dict (also ``out/selection.json``), in the layout of
    :func:`mixkd.deploy.selection.select` (``format_selection`` prints it) plus each point's format."""
    from .export import export_model
    query = query or LatencyQuery()
    work = Path(tempfile.mkdtemp(prefix="mixkd-select-"))
    try:
        what = f"{query.describe()}, formats {','.join(formats)}"
        sources = check_budget_first(groups, formats, budget_ms, query, tracking_uri=tracking_uri, workdir=work,
                                     log=log, what=what)
        points = [p if isinstance(p, FormatPoint) else FormatPoint.from_mapping(p)   # (tests hand in dicts)
                  for p in format_points(groups, formats, task=task, tracking_uri=tracking_uri, workdir=work,
                                         data_dir=data_dir, max_eval_samples=max_eval_samples, query=query, log=log,
                                         sources=sources)]
        if not points:
            raise UsageError("no configuration has a model to convert (run dirs unreachable and no model/ artifacts)")
        chosen = choose(points, budget_ms, what=what)
        selection = _selection_record(points, chosen, formats, budget_ms, out, task, query, tracking_uri=tracking_uri,
                                      experiment=experiment, teacher=teacher, primary_metric=primary_metric)
        card_note = (f"{chosen.label}, the most accurate (configuration, format) within {float(budget_ms):g} ms "
                     f"({query.describe()}) among {len(points)} points; see selection.json and pareto.png")
        export_model(chosen.source_dir, chosen.format, out, task=task, data_dir=data_dir,
                     max_eval_samples=max_eval_samples, threads=query.threads, weight_type=chosen.weight_type or "auto",
                     extra={"selection": card_note},
                     write_extra=lambda folder: _write_choice(folder, selection, points, chosen, teacher, budget_ms,
                                                              task, query), log=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return json.loads((out / "selection.json").read_text())
