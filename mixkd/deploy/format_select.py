"""``mixkd select --formats ...``: the budget choice over (configuration × deployment format).

For each configuration (seed group of :func:`mixkd.deploy.groups.group_runs`) its best seed's model is
converted to every asked format (:mod:`.formats`), its dev score is **measured after conversion** on the
task's dev set (:func:`mixkd.deploy.ship.convert_and_score`; for onnx-int8 the better of the two weight
types) and its latency is measured in that format (:func:`mixkd.deploy.formats.format_latencies`, cached).
Every point is then one (configuration, format) pair; the Pareto front and the choice
(:func:`mixkd.deploy.pareto.choose`: the highest score within the budget, ties to the faster) run over them,
so a faster int8 point that lost accuracy is not preferred to a slightly slower fp32 one that scores higher
within the budget. The chosen pair is exported in its format with :func:`mixkd.deploy.ship.export_model`
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
from . import formats as F
from .export import _group_summary, _jsonable, _model_source
from .pareto import _finite, choose, pareto_front, plot_pareto


def _summary(p: Mapping[str, Any]) -> dict:
    keep = ("format", "weight_type", "seed_mean", "torch_score", "converted_score", "conversion_delta", "agreement",
            "base_config_group")
    return {**(_group_summary(p) or {}), **_jsonable({k: p.get(k) for k in keep})}


def _source(g: Mapping[str, Any], gi: int, tracking_uri: str | None, workdir: Path, log) -> str | None:
    """The model folder of a configuration's best run (downloaded from MLflow if needed); None, said, if none."""
    try:
        return _model_source(g.get("best_run") or {}, tracking_uri, workdir / f"dl{gi}")
    except UsageError as e:
        log(f"skipping {g.get('label')}: {e}")
        return None


def check_budget_first(groups: list[dict], formats: list[str], budget_ms: float, what: str, *,
                       tracking_uri: str | None, workdir: Path, percentile: str, batch_size: int, seq_len: int,
                       device: str, threads: int | None, cache_dir: str | None,
                       protocol: Mapping[str, Any] | None, log: Callable[[str], None]) -> dict[int, str]:
    """Each group's model folder, once some (configuration, format) is known to meet ``budget_ms``: latency depends
    on the architecture and format only, so it is measured (or read from the cache) before any model is converted
    or scored, and a budget nothing can meet is refused at once, naming the fastest point."""
    sources, pre = {}, []
    for gi, g in enumerate(groups):
        src = _source(g, gi, tracking_uri, workdir, log)
        if src is None:
            continue
        sources[gi] = src
        for fmt in formats:
            wts = ("qint8", "quint8") if fmt == "onnx-int8" else ("qint8",)
            lat = min(F.format_latencies(src, fmt, [batch_size], seq_len, device, "fp32", cache_dir, threads=threads,
                                         weight_type=wt, **(protocol or {}))[batch_size][f"{percentile}_ms"]
                      for wt in wts)
            pre.append({"label": f"{g['label']} [{fmt}]", "score": g.get("score"), "latency_ms": lat})
    pre = [p for p in pre if _finite(p["score"])]
    if pre:
        choose(pre, budget_ms, what=what)   # UsageError naming the fastest point when none is within the budget
    return sources


def format_points(groups: list[dict], formats: list[str], *, task: str, tracking_uri: str | None, workdir: Path,
                  data_dir: str | None = None, max_eval_samples: int | None = None, percentile: str = "p90",
                  batch_size: int = 1, seq_len: int = 128, device: str = "cpu", threads: int | None = None,
                  cache_dir: str | None = None, protocol: Mapping[str, Any] | None = None,
                  log: Callable[[str], None] = print, sources: dict[int, str] | None = None) -> list[dict]:
    """One point per (configuration, format): score measured after conversion, latency measured in that format.
    ``sources``: each group's model folder, already resolved (:func:`check_budget_first`)."""
    from ..core.tasks import metric_key
    from .ship import _metrics, convert_and_score, load_reference
    points = []
    for gi, g in enumerate(groups):
        br = g.get("best_run") or {}
        src = (sources or {}).get(gi) if sources is not None else _source(g, gi, tracking_uri, workdir, log)
        if src is None:
            continue
        seq = int(float((br.get("params") or {}).get("max_seq_length") or 128))
        model, tok, data, ref = load_reference(src, task, data_dir, max_eval_samples, seq)
        primary = metric_key(data.task.primary_metric, data.dev_splits[0])
        torch_score = _metrics(data.task, data, ref)[primary]
        for fmt in formats:
            best, _ = convert_and_score(model, fmt, workdir / f"g{gi}", data, tok, ref, threads=threads, log=log)
            wt = best["weight_type"]
            res = F.format_latencies(src, fmt, [batch_size], seq_len, device, "fp32", cache_dir, threads=threads,
                                     weight_type=wt or "qint8", **(protocol or {}))[batch_size]
            converted = best["metrics"][primary]
            # the configuration's mean over seeds (as logged, in PyTorch) shifted by what conversion to this format
            # cost its best seed, measured on the same dev rows: a seed mean, like the fp32 choice uses
            delta = converted - torch_score
            mean = g.get("score")
            seeds_scores = [s + delta for s in g.get("scores") or []] if _finite(mean) else [converted]
            score = mean + delta if _finite(mean) else converted
            points.append({
                **{k: g.get(k) for k in ("task", "variant", "student_layers", "layer_strategy", "data_fraction",
                                         "augmentation", "experiment", "run_ids", "params_count", "metrics")},
                "config_group": f"{g['config_group']}/{fmt}", "base_config_group": g["config_group"],
                "label": f"{g['label']} [{fmt}]", "format": fmt, "weight_type": wt, "best_run": br,
                "n": len(seeds_scores), "seeds": g.get("seeds") or [br.get("seed")], "score": score,
                "score_std": g.get("score_std", math.nan) if _finite(mean) else math.nan, "scores": seeds_scores,
                "seed_mean": mean, "torch_score": torch_score, "converted_score": converted,
                "conversion_delta": delta, "agreement": best["agreement"],
                "latency_ms": res[f"{percentile}_ms"], "source_dir": src,
                "latency": {k: res[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput")},
                "latency_source": "cache" if res["cached"] else "measured", "latency_fingerprint": res["fingerprint"]})
            log(f"{points[-1]['label']}: {primary} {converted:.4f} after conversion (torch {torch_score:.4f}; seed "
                f"mean {score:.4f}), {percentile} "
                f"{points[-1]['latency_ms']:.2f} ms")
            best.pop("module", None)
    return points


def select_over_formats(groups: list[dict], formats: list[str], budget_ms: float, out: Path, *, task: str,
                        tracking_uri: str | None, experiment: str | None = None, teacher: Mapping | None = None,
                        data_dir: str | None = None, max_eval_samples: int | None = None, percentile: str = "p90",
                        batch_size: int = 1, seq_len: int = 128, device: str = "cpu", threads: int | None = None,
                        cache_dir: str | None = None, protocol: Mapping[str, Any] | None = None,
                        primary_metric: str = "primary", log: Callable[[str], None] = print) -> dict:
    """The most accurate (configuration, format) within ``budget_ms``, exported to ``out`` in its format.
    Returns the selection dict (also ``out/selection.json``), in the layout of
    :func:`mixkd.deploy.selection.select` (``format_selection`` prints it) plus each point's format."""
    from .ship import export_model
    work = Path(tempfile.mkdtemp(prefix="mixkd-select-"))
    try:
        what = f"{percentile}, batch {batch_size}, seq {seq_len}, {device}, formats {','.join(formats)}"
        sources = check_budget_first(groups, formats, budget_ms, what, tracking_uri=tracking_uri, workdir=work,
                                     percentile=percentile, batch_size=batch_size, seq_len=seq_len, device=device,
                                     threads=threads, cache_dir=cache_dir, protocol=protocol, log=log)
        points = format_points(groups, formats, task=task, tracking_uri=tracking_uri, workdir=work, data_dir=data_dir,
                               max_eval_samples=max_eval_samples, percentile=percentile, batch_size=batch_size,
                               seq_len=seq_len, device=device, threads=threads, cache_dir=cache_dir,
                               protocol=protocol, log=log, sources=sources)
        if not points:
            raise UsageError("no configuration has a model to convert (run dirs unreachable and no model/ artifacts)")
        chosen = choose(points, budget_ms, what=what)
        front = pareto_front(points)
        t_lat = (teacher or {}).get("latency_ms")
        speedup = float(t_lat) / float(chosen["latency_ms"]) if t_lat and chosen["latency_ms"] else None
        selection = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "tracking_uri": tracking_uri, "experiment": experiment,
            "task": task, "budget_ms": float(budget_ms), "percentile": percentile, "batch_size": batch_size,
            "seq_len": seq_len, "device": device, "dtype": "fp32", "formats": list(formats),
            "primary_metric": primary_metric, "chosen": _summary(chosen), "out": str(out),
            "teacher": _jsonable(dict(teacher)) if teacher else None, "speedup_vs_teacher": speedup,
            "front": [_summary(p) for p in front], "groups": [_summary(p) for p in points],
            "feasible": [p["label"] for p in points if p["latency_ms"] <= float(budget_ms)],
            "score_note": "score = the configuration's mean dev score over seeds plus the change that conversion to "
                          "the format caused on its best seed (measured on the dev set: converted_score - torch_score)"}

        def extra(folder: Path) -> None:
            plot_pareto(points, folder / "pareto.png", trials=[], teachers=[teacher] if teacher else [],
                        budget_ms=float(budget_ms), chosen=chosen,
                        title=f"{task}: dev score after conversion vs {percentile} latency (configuration × format)",
                        xlabel=f"{percentile} latency (ms), batch {batch_size}, seq {seq_len}, {device}",
                        ylabel="dev score (mean over seeds, after conversion)")
            (folder / "selection.json").write_text(json.dumps(_jsonable({**selection, "plot": "pareto.png"}),
                                                              indent=2, default=str) + "\n")
        card_note = (f"{chosen['label']}, the most accurate (configuration, format) within {float(budget_ms):g} ms "
                     f"({percentile}, batch {batch_size}, seq {seq_len}, {device}) among {len(points)} points; "
                     f"see selection.json and pareto.png")
        export_model(chosen["source_dir"], chosen["format"], out, task=task, data_dir=data_dir,
                     max_eval_samples=max_eval_samples, threads=threads, weight_type=chosen["weight_type"] or "auto",
                     extra={"selection": card_note}, write_extra=extra, log=log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return json.loads((out / "selection.json").read_text())
