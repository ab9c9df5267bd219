"""Export of the chosen student: its best seed's model, a model card, ``selection.json`` and the Pareto
plot, into a folder that is complete or absent (:func:`export_student`, step 4 of
:mod:`mixkd.deploy.selection`)."""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

from ..core.errors import UsageError
from .records import ConfigGroup, FormatPoint

# what selection.json keeps of a group or a point, besides its best run's id, seed and run dir
SUMMARY_FIELDS = ("config_group", "role", "label", "task", "variant", "student_layers", "layer_strategy",
                  "data_fraction", "augmentation", "experiment", "n", "seeds", "run_ids", "scores", "score",
                  "score_std", "score_ci95", "metrics", "params_count", "latency_ms", "latency", "latency_source",
                  "latency_fingerprint")
# what selection.json keeps of a teacher measured from its run dir (no teacher run in the store)
TEACHER_DIR_FIELDS = ("role", "label", "task", "score", "score_std", "n", "run_ids", "latency", "latency_ms",
                      "latency_source", "latency_fingerprint", "path")


# --------------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------------
def model_folder(run: Mapping[str, Any], tracking_uri: str | None, tmp: Path) -> str:
    """The model folder of a run: ``<run_dir>/model``, else its MLflow ``model/`` artifact downloaded under ``tmp``;
    UsageError when neither is reachable."""
    rd = run.get("run_dir")
    if rd and (Path(rd) / "model" / "config.json").is_file():
        return str(Path(rd) / "model")
    tracking_uri = run.get("store") or tracking_uri   # several stores: the run's own
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


def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON values: non-finite floats as None, numpy scalars as Python numbers, keys starting
    with ``_`` left out."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):   # numpy scalars
        return json_safe(obj.item())
    return obj


def group_summary(g: ConfigGroup | FormatPoint | None) -> dict | None:
    """What ``selection.json`` keeps of a group (:func:`mixkd.deploy.groups.group_runs`) or of a (configuration,
    format) point: its fields (:data:`SUMMARY_FIELDS`; a point has no role nor CI: None) and its best run's id,
    seed and run dir, JSON-safe."""
    if g is None:
        return None
    out = {k: getattr(g, k, None) for k in SUMMARY_FIELDS}
    br = g.best_run or {}
    out["best_run_id"] = br.get("run_id")
    out["best_seed"] = br.get("seed")
    out["run_dir"] = br.get("run_dir")
    return json_safe(out)


def teacher_summary(t: ConfigGroup | None) -> dict | None:
    """What ``selection.json`` keeps of the teacher: a teacher group of the store as any group
    (:func:`group_summary`); a teacher measured from its run dir, :data:`TEACHER_DIR_FIELDS`, JSON-safe."""
    if t is None or t.path is None:
        return group_summary(t)
    return json_safe({k: getattr(t, k) for k in TEACHER_DIR_FIELDS})


def export_student(chosen: ConfigGroup, out: str | os.PathLike, selection: Mapping[str, Any],
                   tracking_uri: str | None = None, plot: Callable[[Path], Any] | None = None) -> Path:
    """Write the best seed's model of ``chosen`` to ``out``: ``save_pretrained`` weights (safetensors)
    and tokenizer, README.md (model card), selection.json and, when ``plot`` is given, pareto.png
    (``plot(path)`` draws it). Everything is written to a temporary sibling folder first and renamed
    at the end, so ``out`` is complete or absent. Refuses an existing ``out``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from .modelcard import model_card
    from ..core.models import quiet_transformers
    quiet_transformers()
    from ..core.atomic import atomic_folder
    out = Path(out).expanduser()
    dl = Path(tempfile.mkdtemp(prefix="mixkd-model-"))
    try:
        with atomic_folder(out) as tmp:
            src = model_folder(chosen.best_run, tracking_uri, dl)
            from ..core.weights import check_weights
            check_weights(src)
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
            (tmp / "selection.json").write_text(json.dumps(json_safe(sel), indent=2, default=str) + "\n")
            (tmp / "README.md").write_text(model_card(sel))
    finally:
        shutil.rmtree(dl, ignore_errors=True)
    return out
