"""Deployment formats of a sequence classifier: names, which ones this device has, conversion of a
PyTorch model into each, loading an exported folder back, and latency per format (cached).

The formats (what runs; both int8 formats quantize dynamically):

- ``torch``: the PyTorch model (safetensors weights);
- ``torch-int8``: the same weights, ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` at load time
  (qint8 weights, activations quantized per batch); CPU only;
- ``onnx``: ``model.onnx`` under ONNX Runtime (:mod:`.onnx_export`);
- ``onnx-int8``: ``model.onnx`` after ONNX Runtime dynamic quantization (weight type qint8 or quint8, measured).

An exported folder (``mixkd export``) holds :data:`EXPORT_META` (``mixkd_export.json``: the format, the
quantization, the runtime and the checks), ``config.json``, the tokenizer and the weights (``model.safetensors``
or ``model.onnx``). :func:`load_exported` loads any of them as a torch module whose ``(...).logits`` is what
the format computes, so the same evaluation code runs every format.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import UsageError
from . import latency as L

FORMATS = ("torch", "torch-int8", "onnx", "onnx-int8")
BASE_FORMATS = ("torch", "onnx")
QUANTIZE = ("none", "int8")
EXPORT_META = "mixkd_export.json"
TORCH_INT8 = {"method": "torch.ao.quantization.quantize_dynamic", "modules": "nn.Linear", "weight_type": "qint8",
              "activations": "quint8, dynamic", "engine": None}


def format_name(fmt: str, quantize: str | None = None, device: str = "cpu") -> str:
    """``--format F [--quantize int8]`` as one name of :data:`FORMATS` (``onnx`` + ``int8`` -> ``onnx-int8``);
    a bad name, or int8 where this device has no int8 path (CUDA), is a UsageError."""
    fmt = str(fmt).strip().lower()
    q = (quantize or "none").strip().lower()
    if q not in QUANTIZE:
        raise UsageError(f"--quantize {quantize!r} is invalid; use int8 (or leave it out for fp32)")
    if fmt.endswith("-int8") and fmt in FORMATS:
        fmt, q = fmt[:-5], "int8"
    if fmt not in BASE_FORMATS:
        raise UsageError(f"--format {fmt!r} is unknown; use one of {', '.join(BASE_FORMATS)} "
                         f"(with --quantize int8 for {', '.join(f for f in FORMATS if f.endswith('int8'))})")
    if q == "int8" and str(device).startswith("cuda"):
        raise UsageError(f"--format {fmt} --quantize int8 has no path on {device} here (dynamic int8 quantization "
                         f"runs on CPU); use --device cpu, or fp32 on the GPU")
    if fmt == "onnx" and str(device).startswith("cuda"):
        raise UsageError("--format onnx runs on ONNX Runtime's CPU provider here; use --device cpu or --format torch")
    return fmt if q == "none" else f"{fmt}-int8"


def parse_formats(text: str | Iterable[str] | None, device: str = "cpu") -> list[str]:
    """``--formats torch,onnx-int8`` as a list of :data:`FORMATS` (default: :func:`available_formats`)."""
    if text is None or text == "" or text == "all":
        return available_formats(device)
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for f in (f.strip() for f in items if f.strip()):
        if f.lower() not in FORMATS:   # select's own flag and names, not export's --format / --quantize
            raise UsageError(f"--formats: {f!r} is not a format; choose among {','.join(FORMATS)} (comma-separated)")
        if str(device).startswith("cuda") and f.lower() != "torch":
            raise UsageError(f"--formats: {f} runs on the CPU only; on --device {device} use --formats torch")
        out.append(format_name(f, device=device))
    if not out:
        raise UsageError(f"--formats {text!r} names no format; use e.g. {','.join(FORMATS)}")
    return list(dict.fromkeys(out))


def available_formats(device: str = "cpu") -> list[str]:
    """Every format this device runs: on CPU torch, torch-int8 and, with onnxruntime installed, onnx and
    onnx-int8; on CUDA torch only."""
    if str(device).startswith("cuda"):
        return ["torch"]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return ["torch", "torch-int8"]
    return list(FORMATS)


def is_onnx(fmt: str) -> bool:
    return fmt.startswith("onnx")


def is_int8(fmt: str) -> bool:
    return fmt.endswith("-int8")


# --------------------------------------------------------------------------------------------------
# conversion and loading
# --------------------------------------------------------------------------------------------------
def quantize_torch(model):
    """``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` to qint8 (CPU; returns a copy).
    torch 2.13 marks torch.ao.quantization deprecated (for torchao); it still works and needs no extra package."""
    import copy
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).to("cpu", dtype=torch.float32).eval(),
                                                      {torch.nn.Linear}, dtype=torch.qint8)


def torch_int8_info() -> dict[str, Any]:
    import torch
    return {**TORCH_INT8, "engine": torch.backends.quantized.engine}


def convert(model, fmt: str, workdir: str | os.PathLike, *, weight_type: str = "qint8",
            threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """``model`` (a PyTorch classifier) as a module computing ``fmt``: itself (torch), its dynamic-int8
    copy (torch-int8), or an :class:`~.onnx_export.OnnxClassifier` over ``workdir/model.onnx`` (onnx,
    onnx-int8 with ``weight_type``; ``workdir`` must outlive the module). Returns (module, info)."""
    if fmt == "torch":
        return model, {}
    if fmt == "torch-int8":
        return quantize_torch(model), {"quantization": torch_int8_info()}
    if not is_onnx(fmt):
        raise UsageError(f"format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    from . import onnx_export as O
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    fp32 = wd / ("model-fp32.onnx" if is_int8(fmt) else "model.onnx")
    info = {"onnx": O.export_onnx(model, fp32)}
    if is_int8(fmt):
        info["quantization"] = O.quantize_onnx(fp32, wd / "model.onnx", weight_type)
    return O.OnnxClassifier(wd / "model.onnx", model.config, threads), info


def read_export_meta(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The :data:`EXPORT_META` of an exported folder, or None for any other folder."""
    p = Path(folder).expanduser() / EXPORT_META
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        raise UsageError(f"{p} is not valid JSON; export the model again with `mixkd export`") from None


def load_exported(folder: str | os.PathLike, threads: int | None = None):
    """(module, tokenizer, meta) of a ``mixkd export`` folder in any format (no remote code, safetensors
    weights or an ONNX file)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    from ..core.models import quiet_transformers
    quiet_transformers()
    folder = Path(folder).expanduser()
    meta = read_export_meta(folder)
    if meta is None:
        raise UsageError(f"{folder} is not a `mixkd export` folder (no {EXPORT_META})")
    fmt = meta.get("format")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        if is_onnx(str(fmt)):
            from .onnx_export import OnnxClassifier
            model = OnnxClassifier(folder / "model.onnx", AutoConfig.from_pretrained(str(folder)), threads)
        else:
            from ..core.weights import check_weights
            check_weights(folder)
            model = AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=False,
                                                                       use_safetensors=True).eval()
            if fmt == "torch-int8":
                model = quantize_torch(model)
            elif fmt != "torch":
                raise UsageError(f"{folder}/{EXPORT_META} names format {fmt!r}; this mixkd knows {', '.join(FORMATS)}")
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load the exported model in {folder} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]})") from None
    return model, tok, meta


def evaluate_exported(cfg) -> dict[str, Any]:
    """``mixkd evaluate --model EXPORTED_DIR``: GLUE dev metrics of an exported model in its own format
    (ONNX Runtime for onnx folders, the dynamic-int8 model for torch-int8)."""
    from ..core.config import validate
    from ..core.data import load_glue
    from ..core.trainer import evaluate_model, make_collator
    from ..jobs.run import scored
    import torch
    from ..core.custom_data import task_for
    from ..core.tasks import task_name
    cfg, task = task_for(validate(cfg, "evaluate"), "evaluate")
    model, tok, meta = load_exported(cfg.model)
    if meta.get("task") and task_name(meta["task"]) != task.name:
        raise UsageError(f"{cfg.model} was exported for task {meta['task']}, not {task.name}; "
                         f"use --task {meta['task']}")
    data = load_glue(cfg, task, tok, train=False)
    metrics = evaluate_model(model, data, make_collator(tok), cfg.eval_batch_size, torch.device("cpu"), "fp32")
    return scored(task, cfg.model, metrics, data, format=meta.get("format"))


# --------------------------------------------------------------------------------------------------
# latency per format
# --------------------------------------------------------------------------------------------------
def runtime_fingerprint(fmt: str, threads: int | None = None, weight_type: str = "qint8") -> dict[str, Any]:
    """What is added to the device fingerprint of a latency in ``fmt``: the format, and the runtime with its
    version and thread settings (ONNX Runtime) or the quantized engine (torch-int8)."""
    if fmt == "torch":
        return {}
    if fmt == "torch-int8":
        return {"format": fmt, "quantization": torch_int8_info()}
    from .onnx_export import runtime_info
    out = {"format": fmt, **runtime_info(threads)}
    if is_int8(fmt):
        out["weight_type"] = weight_type
    return out


def format_latencies(model_config_or_dir: Any, fmt: str = "torch", batch_sizes: Iterable[int] = L.DEFAULT_BATCH_SIZES,
                     seq_len: int = L.DEFAULT_SEQ_LEN, device: str = "cpu", dtype: str = "fp32",
                     cache_dir: str | os.PathLike | None = None, *, student_layers: int | None = None,
                     num_labels: int | None = None, threads: int | None = None, warmup: int = L.DEFAULT_WARMUP,
                     min_iters: int = L.DEFAULT_MIN_ITERS, min_seconds: float = L.DEFAULT_MIN_SECONDS,
                     use_cache: bool = True, weight_type: str = "qint8") -> dict[int, dict[str, Any]]:
    """:func:`mixkd.deploy.latency.cached_latencies` in a deployment format: a random-weight model of the
    architecture is converted to ``fmt`` and measured with the same protocol (ONNX Runtime: one
    ``session.run`` per iteration, intra-op threads = ``threads``); the cache key adds the format and the
    runtime fingerprint (:func:`runtime_fingerprint`). {batch_size: result}."""
    fmt = format_name(fmt, device=device)
    common = dict(student_layers=student_layers, num_labels=num_labels, threads=threads, warmup=warmup,
                  min_iters=min_iters, min_seconds=min_seconds, use_cache=use_cache)
    if fmt == "torch":
        return L.cached_latencies(model_config_or_dir, batch_sizes, seq_len, device, dtype, cache_dir, **common)
    if dtype != "fp32":
        raise UsageError(f"--dtype {dtype} applies to --format torch only; {fmt} runs fp32 (int8 weights for int8)")
    threads = L.device_info(device, dtype, threads)["threads"]
    common["threads"] = threads
    runtime = runtime_fingerprint(fmt, threads, weight_type)
    fingerprint = {**L.device_info(device, dtype, threads), **runtime}
    work = Path(tempfile.mkdtemp(prefix="mixkd-latency-"))

    def make_measure(cfg):
        module, _ = convert(L.build_random_model(cfg), fmt, work, weight_type=weight_type, threads=threads)
        if is_onnx(fmt):
            from .onnx_export import measure_onnx
            return lambda b, s, **proto: measure_onnx(module.path, int(cfg.vocab_size), b, s, threads=threads,
                                                      fingerprint=fingerprint, sess=module.session, **proto)
        return lambda b, s, **proto: L.measure(module, b, s, device="cpu", dtype="fp32", threads=threads,
                                               fingerprint_extra=runtime, **proto)
    try:
        return L.cached_latencies(model_config_or_dir, batch_sizes, seq_len, device, dtype, cache_dir, fmt=fmt,
                                  runtime=runtime, make_measure=make_measure, **common)
    finally:
        shutil.rmtree(work, ignore_errors=True)
