"""Deployment formats of a sequence classifier: names, which ones this device has, conversion of a
PyTorch model into each, loading an exported folder back, and latency per format (cached).

The formats (what runs; both int8 formats quantize dynamically):

- ``torch``: the PyTorch model (safetensors weights);
- ``torch-int8``: the same weights, ``torch.ao.quantization.quantize_dynamic`` of every ``nn.Linear`` at load time
  (qint8 weights, activations quantized per batch); CPU only;
- ``onnx``: ``model.onnx`` under ONNX Runtime (:mod:`.onnx_export`);
- ``onnx-int8``: ``model.onnx`` after ONNX Runtime dynamic quantization (weight type qint8 or quint8, measured).

Each format is one module of this package with the same small interface (:data:`IMPLEMENTATIONS`):
``NAME``; ``runtime(threads, weight_type)``, what a latency in the format adds to the device fingerprint;
``convert(model, workdir, weight_type=, threads=)``, the PyTorch model as a module computing the format, and
what the conversion records; ``load(folder, threads)``, an exported folder of the format as such a module; and
``measure(module, batch_size, seq_len, threads=, fingerprint=, runtime=, **protocol)``, one latency of a
converted module under the protocol of :mod:`mixkd.deploy.latency`. A new format is a new module listed there.

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
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable

from ...core.errors import UsageError
from .. import latency as L
from . import onnx_fp32, onnx_int8, torch_fp32, torch_int8
from .torch_int8 import TORCH_INT8, quantize_torch, torch_int8_info  # noqa: F401  (their names here, as before)

# every format's module, by name, in the order of FORMATS
IMPLEMENTATIONS: dict[str, ModuleType] = {m.NAME: m for m in (torch_fp32, torch_int8, onnx_fp32, onnx_int8)}
FORMATS = tuple(IMPLEMENTATIONS)           # torch, torch-int8, onnx, onnx-int8
BASE_FORMATS = ("torch", "onnx")
QUANTIZE = ("none", "int8")
EXPORT_META = "mixkd_export.json"


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


def implementation(fmt: str) -> ModuleType:
    """The module of format ``fmt`` (:data:`IMPLEMENTATIONS`); UsageError for a name that is none of them."""
    try:
        return IMPLEMENTATIONS[fmt]
    except KeyError:
        raise UsageError(f"format {fmt!r} is unknown; use one of {', '.join(FORMATS)}") from None


# --------------------------------------------------------------------------------------------------
# conversion and loading
# --------------------------------------------------------------------------------------------------
def convert(model, fmt: str, workdir: str | os.PathLike, *, weight_type: str = "qint8",
            threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """``model`` (a PyTorch classifier) as a module computing ``fmt``: itself (torch), its dynamic-int8
    copy (torch-int8), or an :class:`~.onnx_export.OnnxClassifier` over ``workdir/model.onnx`` (onnx,
    onnx-int8 with ``weight_type``; ``workdir`` must outlive the module). Returns (module, info)."""
    return implementation(fmt).convert(model, Path(workdir), weight_type=weight_type, threads=threads)


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
    from transformers import AutoTokenizer
    from ...core.models import quiet_transformers
    quiet_transformers()
    folder = Path(folder).expanduser()
    meta = read_export_meta(folder)
    if meta is None:
        raise UsageError(f"{folder} is not a `mixkd export` folder (no {EXPORT_META})")
    fmt = meta.get("format")
    try:
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        if fmt not in IMPLEMENTATIONS:
            raise UsageError(f"{folder}/{EXPORT_META} names format {fmt!r}; this mixkd knows {', '.join(FORMATS)}")
        model = IMPLEMENTATIONS[fmt].load(folder, threads)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load the exported model in {folder} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]})") from None
    return model, tok, meta


def evaluate_exported(cfg) -> dict[str, Any]:
    """``mixkd evaluate --model EXPORTED_DIR``: GLUE dev metrics of an exported model in its own format
    (ONNX Runtime for onnx folders, the dynamic-int8 model for torch-int8)."""
    from ...core.custom_data import resolve_config
    from ...core.data import load_glue
    from ...core.trainer import evaluate_model, make_collator
    from ...jobs.run import scored
    import torch
    from ...core.custom_data import task_for
    from ...core.tasks import task_name
    cfg, task = task_for(resolve_config(cfg, "evaluate"), "evaluate")
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
    return implementation(fmt).runtime(threads, weight_type)


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
    impl = implementation(fmt)
    common = dict(student_layers=student_layers, num_labels=num_labels, threads=threads, warmup=warmup,
                  min_iters=min_iters, min_seconds=min_seconds, use_cache=use_cache)
    if fmt == "torch":   # the reference: latency.py's own protocol, on any device and in any dtype
        return L.cached_latencies(model_config_or_dir, batch_sizes, seq_len, device, dtype, cache_dir, **common)
    if dtype != "fp32":
        raise UsageError(f"--dtype {dtype} applies to --format torch only; {fmt} runs fp32 (int8 weights for int8)")
    threads = L.device_info(device, dtype, threads)["threads"]
    common["threads"] = threads
    runtime = impl.runtime(threads, weight_type)
    fingerprint = {**L.device_info(device, dtype, threads), **runtime}
    work = Path(tempfile.mkdtemp(prefix="mixkd-latency-"))

    def make_measure(cfg):
        module, _ = impl.convert(L.build_random_model(cfg), work, weight_type=weight_type, threads=threads)
        return lambda b, s, **proto: impl.measure(module, b, s, threads=threads, fingerprint=fingerprint,
                                                  runtime=runtime, **proto)
    try:
        return L.cached_latencies(model_config_or_dir, batch_sizes, seq_len, device, dtype, cache_dir, fmt=fmt,
                                  runtime=runtime, make_measure=make_measure, **common)
    finally:
        shutil.rmtree(work, ignore_errors=True)
