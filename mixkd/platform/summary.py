"""The end of a sweep: the best finished trial per (task, variant, student depth), as summary.json
and as a table."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.config import MixKDConfig
from ..core.atomic import write_json_atomic


def summarize(exp_dir: Path, tracker=None) -> dict[str, Any]:
    """Best finished trial per (task, variant, student depth), from the trial folders' metrics.json."""
    from ..tracking.store import redact_uri
    best: dict[tuple, dict] = {}
    n_finished, at_chance, configs = 0, [], {}
    for m in sorted((exp_dir / "trials").glob("*/metrics.json")):
        d = json.loads(m.read_text())
        cfg = configs[m] = MixKDConfig.from_yaml(m.parent / "config.yaml")   # read once: recorded below
        n_finished += 1
        if d.get("above_chance") is False:
            at_chance.append(m.parent.name)
        key = (d["task"], d["variant"], d["layers"], cfg.data_fraction, cfg.augmentation)
        row = {"task": d["task"], "variant": d["variant"], "augmentation": cfg.augmentation,
               "student_layers": d["layers"],
               "data_fraction": cfg.data_fraction, "trial": m.parent.name, "primary_metric": d["primary_metric"],
               "primary_value": d["primary_value"], "metrics": d["metrics"], "params": d["params"],
               "run_dir": str(m.parent), "above_chance": d.get("above_chance")}
        if key not in best or row["primary_value"] > best[key]["primary_value"]:
            best[key] = row
    rows = sorted(best.values(), key=lambda r: (r["task"], r["data_fraction"], r["student_layers"], r["variant"]))
    summary = {"experiment_dir": str(exp_dir), "finished_trials": n_finished, "best": rows, "at_chance": at_chance,
               "tracking_uri": redact_uri(tracker.uri) if tracker else None,
               "parent_run_id": tracker.parent_id if tracker else None}
    write_json_atomic(exp_dir / "summary.json", summary)
    if tracker is not None:
        from ..tracking.writer import SweepTracker
        for m, cfg in configs.items():   # finished trials a crash left unrecorded
            tracker.submit(SweepTracker.record_finished, m.parent.name, cfg, "trial", m.parent)
        tracker.submit(SweepTracker.close_stale_trials, exp_dir / "trials")
        if rows:
            top = max(rows, key=lambda r: r["primary_value"])
            tracker.submit(SweepTracker.log_parent_artifact, top["run_dir"] + "/model", "best_student")
            tracker.submit(SweepTracker.set_parent_tag, "best_trial", top["trial"])
            tracker.submit(SweepTracker.log_parent_artifact, str(exp_dir / "summary.json"))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'task':<6}{'frac':>6}{'layers':>7}  {'variant':<9}{'metric':<22}{'dev':>8}  {'params':>11}  trial"]
    for r in summary["best"]:
        variant = r["variant"] + ("+bt" if str(r.get("augmentation", "none")).startswith("bt") else "")
        lines.append(f"{r['task']:<6}{r['data_fraction']:>6g}{r['student_layers']:>7}  {variant:<9}"
                     f"{r['primary_metric']:<22}{100 * r['primary_value']:>8.2f}  {r['params']:>11,}  {r['trial']}"
                     + ("  AT CHANCE" if r.get("above_chance") is False else ""))
    lines.append(f"{summary['finished_trials']} finished trials; folders under {summary['experiment_dir']}/trials")
    if summary.get("at_chance"):
        lines.append(f"{len(summary['at_chance'])} trial(s) at chance level (no better than a constant predictor on "
                     f"dev; never selected): {', '.join(summary['at_chance'])}")
    for sel in summary.get("selection") or []:
        if "error" in sel:
            lines.append(f"{sel['task']}: no student within the latency budget: {sel['error']}")
        else:
            sp = f", {sel['speedup_vs_teacher']:.1f}x faster than the teacher" if sel.get("speedup_vs_teacher") else ""
            lines.append(f"{sel['task']}: best within the budget: {sel['label']} dev {100 * sel['score']:.2f} at "
                         f"{sel['latency_ms']:.2f} ms{sp}; exported to {sel['out']}")
    return "\n".join(lines)
