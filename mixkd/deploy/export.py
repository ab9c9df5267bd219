"""``mixkd export``: a fine-tuned classifier in a deployment format, reloaded and checked before it is declared
done (:func:`export_model`).

1. The PyTorch model (a mixkd run dir, its ``model/`` or any HF classifier folder) is evaluated on the task's dev
   set: the reference logits and metrics.
2. It is converted (:func:`mixkd.deploy.formats.convert`) into a temporary sibling of ``--out``. For
   ``onnx-int8`` both ONNX Runtime weight types (qint8, quint8) are quantized and measured on the dev set, and the
   one with the better primary metric is kept (ties: more labels agreeing with fp32, then the smaller mean
   |logit difference|); ``--weight-type`` fixes one instead.
3. The folder is loaded back as a user would (:func:`mixkd.deploy.formats.load_exported`) and evaluated again. An
   fp32 format must give the same label as PyTorch on at least ``min_agreement`` (99.5%) of the dev rows, else
   :class:`ExportCheckFailed`; the max and mean |logit difference| are recorded. For int8 the dev metrics after
   conversion are recorded next to fp32's (int8 changes predictions by design: the numbers are the check).
4. ``mixkd_export.json`` (format, runtime and version, opset, quantization, metrics before/after, agreement) and
   ``README.md`` (model card) are written, and the folder is renamed to ``--out``: complete or absent.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from ..core.errors import UsageError
from . import formats as deploy_formats

MIN_AGREEMENT = 0.995


class ExportCheckFailed(RuntimeError):
    """The reloaded export does not reproduce the PyTorch model (one line; the CLI exits 1, nothing written)."""


def _run_config(model: str, path: str):
    """The mixkd run config next to a model (``RUN/config.yaml`` for ``RUN`` or ``RUN/model``), or None."""
    from ..core.config import MixKDConfig
    for d in (Path(model).expanduser(), Path(path).parent):
        if (d / "config.yaml").is_file() and (d / "metrics.json").is_file():
            return MixKDConfig.from_yaml(d / "config.yaml")
    return None


def task_data(src: str) -> dict | None:
    """A custom task's data keys (files, columns, labels) of the run ``src`` came from, kept in the export so
    `mixkd evaluate` on the exported folder finds the same data and label ids; None for a GLUE task."""
    from ..core.custom_data import DATA_KEYS, run_config_file
    import yaml
    f = run_config_file(src)
    saved = yaml.safe_load(f.read_text()) or {} if f is not None else {}
    if not (saved.get("train_file") or saved.get("validation_file") or saved.get("dataset")):
        return None
    return {k: saved.get(k) for k in ("task", *DATA_KEYS)}


def resolve_source(model: str, task: str | None) -> tuple[str, str, Any]:
    """(model folder, task name, run config or None) of a model to export; UsageError for a folder that is
    not a sequence classifier, an exported folder, or a task that cannot be told."""
    from ..core.models import resolve_model
    from ..core.tasks import task_name
    from .latency import load_config
    meta = deploy_formats.read_export_meta(model) if Path(model).expanduser().is_dir() else None
    if meta is not None:
        raise UsageError(f"--model {model} is already an export ({meta.get('format')}); export from the PyTorch "
                         f"model it came from ({meta.get('source')})")
    path = resolve_model(model)
    archs = list(getattr(load_config(path), "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise UsageError(f"--model {model} is not a sequence classifier (architectures: {', '.join(archs) or 'none'}); "
                         f"export a fine-tuned classifier: a mixkd run dir or its model/ folder")
    run_cfg = _run_config(model, path)
    name = task or (run_cfg.task if run_cfg is not None else None)
    if not name:
        raise UsageError(f"cannot tell the task of {model} (no mixkd run config beside it); pass --task")
    return path, task_name(name), run_cfg


def _dev_logits(model, data, tok, batch_size: int) -> dict[str, tuple]:
    import torch
    from ..core.trainer import make_collator, predict
    col = make_collator(tok)
    return {s.name: predict(model, data.dev[s.name], col, batch_size, torch.device("cpu"), "fp32")
            for s in data.dev_splits}


def dev_metrics(task, data, logits: dict[str, tuple]) -> dict[str, float]:
    """The GLUE metrics of ``logits`` ({split: (logits, labels)}) over every dev split of ``data``."""
    from ..core.metrics import glue_metrics
    out: dict[str, float] = {}
    for s in data.dev_splits:
        out.update(glue_metrics(task, logits[s.name][0], logits[s.name][1], s))
    return out


def agreement(task, ref: dict[str, tuple], new: dict[str, tuple]) -> dict[str, Any]:
    """Rows whose label (argmax; regression: |difference| <= 0.01) is the same in ``new`` as in ``ref``,
    over every dev split, and the max / mean |logit difference|."""
    import numpy as np
    a = np.concatenate([ref[k][0] for k in ref]).astype(np.float64)
    b = np.concatenate([new[k][0] for k in ref]).astype(np.float64)
    diff = np.abs(a - b)
    same = (diff.reshape(len(a), -1).max(1) <= 0.01) if task.regression else (a.argmax(-1) == b.argmax(-1))
    return {"rows": int(len(a)), "same_label": int(same.sum()), "label_agreement": float(same.mean()),
            "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean())}


def load_reference(src: str, task_name: str, data_dir: str | None = None, max_eval_samples: int | None = None,
                   max_seq_length: int = 128, eval_batch_size: int = 64):
    """(PyTorch model, tokenizer, dev data, its dev logits {split: (logits, labels)}) of the classifier in ``src``."""
    from ..core.config import MixKDConfig
    from ..core.data import load_glue
    from ..core.models import load_classifier, load_tokenizer
    from ..core.custom_data import dev_config
    dcfg, spec = dev_config(MixKDConfig(task=task_name, data_dir=data_dir, max_eval_samples=max_eval_samples,
                                        max_seq_length=max_seq_length), src)
    tok = load_tokenizer(src)
    torch_model = load_classifier(src, spec, new_head=False).eval()
    data = load_glue(dcfg, spec, tok, train=False)
    return torch_model, tok, data, _dev_logits(torch_model, data, tok, eval_batch_size)


def convert_and_score(torch_model, fmt: str, work: Path, data, tok, ref: dict[str, tuple], *, weight_type: str = "auto",
                      threads: int | None = None, eval_batch_size: int = 64, log: Callable[[str], None] = print):
    """``torch_model`` converted to ``fmt`` under ``work`` and scored on ``data``'s dev splits against the PyTorch
    logits ``ref``. For onnx-int8 with ``weight_type`` auto both weight types are tried and the better kept
    (primary metric, then label agreement, then mean |logit difference|). Returns (best, candidates): dicts
    with ``module`` (the converted model), ``weight_type``, ``metrics``, ``agreement`` and ``info``."""
    from .onnx_export import WEIGHT_TYPES
    from ..core.tasks import metric_key
    primary = metric_key(data.task.primary_metric, data.dev_splits[0])
    wts = (WEIGHT_TYPES if weight_type == "auto" else (weight_type,)) if fmt == "onnx-int8" else (None,)
    candidates = []
    for wt in wts:
        module, info = deploy_formats.convert(torch_model, fmt, Path(work) / (wt or fmt), weight_type=wt or "qint8",
                                              threads=threads)
        logits = _dev_logits(module, data, tok, eval_batch_size)
        m = dev_metrics(data.task, data, logits)
        candidates.append({"module": module, "weight_type": wt, "metrics": m,
                           "agreement": agreement(data.task, ref, logits), "info": info})
        if wt:
            log(f"{fmt} weight type {wt}: {primary} {m[primary]:.4f} "
                f"(label agreement with fp32 {candidates[-1]['agreement']['label_agreement']:.2%})")
    best = max(candidates, key=lambda c: (c["metrics"][primary], c["agreement"]["label_agreement"],
                                          -c["agreement"]["mean_abs_logit_diff"]))
    return best, candidates


def _checked_format(fmt: str, quantize: str | None, out: str | os.PathLike, weight_type: str,
                    min_agreement: float) -> tuple[str, Path]:
    """(format name, output folder) of an export, or UsageError for a bad flag, an existing ``--out`` or a missing
    ONNX Runtime, before any model is loaded."""
    from ..core.config import check_writable_dir
    from .onnx_export import WEIGHT_TYPES
    fmt = deploy_formats.format_name(fmt, quantize)
    outp = Path(out).expanduser()
    if outp.exists():
        raise UsageError(f"--out {out} already exists; choose a new folder or remove it")
    check_writable_dir(outp, "--out")
    if weight_type != "auto" and weight_type not in WEIGHT_TYPES:
        raise UsageError(f"--weight-type {weight_type!r} is invalid; use auto, {' or '.join(WEIGHT_TYPES)}")
    if weight_type != "auto" and fmt != "onnx-int8":
        raise UsageError(f"--weight-type applies to --format onnx --quantize int8 only, not {fmt}")
    if deploy_formats.is_onnx(fmt):
        from .onnx_export import require_onnxruntime
        require_onnxruntime()
    if not 0 < min_agreement <= 1:
        raise UsageError(f"--min-agreement {min_agreement} is invalid; use a fraction in (0, 1], e.g. 0.995")
    return fmt, outp


def _write_model(tmp: Path, fmt: str, torch_model, tok, work: Path, data, ref: dict[str, tuple], *, weight_type: str,
                 threads: int | None, eval_batch_size: int,
                 log: Callable[[str], None]) -> tuple[dict[str, Any], list[dict]]:
    """The model in ``fmt`` and its tokenizer, written to ``tmp``. Returns (conversion info, the weight types tried
    with their scores: onnx formats only)."""
    info: dict[str, Any] = {}
    candidates: list[dict] = []
    if deploy_formats.is_onnx(fmt):
        best, candidates = convert_and_score(torch_model, fmt, work, data, tok, ref, weight_type=weight_type,
                                             threads=threads, eval_batch_size=eval_batch_size, log=log)
        info = best["info"]
        shutil.copyfile(best["module"].path, tmp / "model.onnx")
        torch_model.config.save_pretrained(tmp)
    else:
        torch_model.save_pretrained(tmp, safe_serialization=True)
        if fmt == "torch-int8":
            info = {"quantization": deploy_formats.torch_int8_info()}
    tok.save_pretrained(tmp)
    return info, candidates


def _export_meta(fmt: str, model: str, src: str, task_name: str, primary: str, seq: int, data, info: dict[str, Any],
                 candidates: list[dict], threads: int | None, extra: dict | None) -> dict[str, Any]:
    """``mixkd_export.json`` before the reload check adds its numbers: format, runtime, conversion, data."""
    weight_type = (info.get("quantization") or {}).get("weight_type", "qint8")
    runtime = deploy_formats.runtime_fingerprint(fmt, threads, weight_type)
    meta = {"format": fmt, "task": task_name, "source": str(Path(src).resolve()), "model": model,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "primary_metric": primary,
            "runtime": runtime.get("runtime", "torch"), "runtime_version": runtime.get("runtime_version"),
            **info, "weight_type_candidates": [{k: c[k] for k in ("weight_type", "metrics", "agreement")}
                                               for c in candidates if c["weight_type"]],
            "data": data.info, "max_seq_length": seq, "task_data": task_data(src), **(extra or {})}
    if meta["runtime"] == "torch":
        import torch
        meta["runtime_version"] = torch.__version__
    return meta


def _check_reloaded(tmp: Path, fmt: str, meta: dict[str, Any], torch_model, tok, data, ref: dict[str, tuple],
                    before: dict[str, float], primary: str, *, threads: int | None, eval_batch_size: int,
                    min_agreement: float, log: Callable[[str], None]) -> None:
    """The folder loaded back as a user would and scored again; its metrics, agreement with PyTorch, parameters and
    size added to ``meta``. ExportCheckFailed when an fp32 format disagrees with PyTorch too often."""
    loaded, _, _ = deploy_formats.load_exported(tmp, threads)
    new = _dev_logits(loaded, data, tok, eval_batch_size)
    after = dev_metrics(data.task, data, new)
    agree = agreement(data.task, ref, new)
    meta.update(metrics_before=before, metrics_after=after, agreement=agree, min_agreement=min_agreement,
                params=sum(p.numel() for p in torch_model.parameters()),
                size_bytes=sum(p.stat().st_size for p in tmp.iterdir() if p.is_file()))
    log(f"{fmt} reloaded from the export: {primary} {after[primary]:.4f} (fp32 torch {before[primary]:.4f}, "
        f"delta {after[primary] - before[primary]:+.4f}); same label on {agree['same_label']}/{agree['rows']} "
        f"rows ({agree['label_agreement']:.2%}), max |logit diff| {agree['max_abs_logit_diff']:.2e}")
    if not deploy_formats.is_int8(fmt) and agree["label_agreement"] < min_agreement:
        raise ExportCheckFailed(
            f"the {fmt} export gives PyTorch's label on {agree['label_agreement']:.2%} "
            f"of {agree['rows']} dev rows "
            f"(< {min_agreement:.1%}; max |logit diff| {agree['max_abs_logit_diff']:.2e}); nothing was written")


def export_model(model: str, fmt: str, out: str | os.PathLike, *, quantize: str | None = None, task: str | None = None,
                 data_dir: str | None = None, max_eval_samples: int | None = None, weight_type: str = "auto",
                 threads: int | None = None, min_agreement: float = MIN_AGREEMENT, eval_batch_size: int = 64,
                 extra: dict | None = None, write_extra: Callable[[Path], Any] | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Export ``model`` in ``fmt`` (``--format`` plus ``--quantize``) to the new folder ``out`` and check it
    (see the module doc). Returns the export's metadata (also ``out/mixkd_export.json``). ``extra`` is
    recorded as is and ``write_extra(folder)`` may add files before the rename (``mixkd select``: its choice,
    ``selection.json`` and the Pareto plot)."""
    from ..core.atomic import atomic_folder
    from ..core.tasks import metric_key
    from .modelcard import export_card
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    fmt, outp = _checked_format(fmt, quantize, out, weight_type, min_agreement)
    src, task_name, run_cfg = resolve_source(model, task)
    seq = run_cfg.max_seq_length if run_cfg is not None else 128
    torch_model, tok, data, ref = load_reference(src, task_name, data_dir, max_eval_samples, seq, eval_batch_size)
    primary = metric_key(data.task.primary_metric, data.dev_splits[0])
    before = dev_metrics(data.task, data, ref)
    log(f"torch fp32 on {task_name} dev ({sum(len(v[1]) for v in ref.values())} rows): {primary} {before[primary]:.4f}")
    work = Path(tempfile.mkdtemp(prefix="mixkd-export-"))
    try:
        with atomic_folder(outp) as tmp:
            info, candidates = _write_model(tmp, fmt, torch_model, tok, work, data, ref, weight_type=weight_type,
                                            threads=threads, eval_batch_size=eval_batch_size, log=log)
            meta = _export_meta(fmt, model, src, task_name, primary, seq, data, info, candidates, threads, extra)
            (tmp / deploy_formats.EXPORT_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            _check_reloaded(tmp, fmt, meta, torch_model, tok, data, ref, before, primary, threads=threads,
                            eval_batch_size=eval_batch_size, min_agreement=min_agreement, log=log)
            if write_extra is not None:
                write_extra(tmp)
            (tmp / deploy_formats.EXPORT_META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
            (tmp / "README.md").write_text(export_card(meta, str(outp)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {**meta, "out": str(outp)}
