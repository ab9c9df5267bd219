"""The ``onnx-int8`` format: ``model.onnx`` after ONNX Runtime dynamic quantization (int8 weights of type qint8 or
quint8, activations quantized at run time), under ONNX Runtime's CPU provider."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import onnx_fp32

NAME = "onnx-int8"


def runtime(threads: int | None = None, weight_type: str = "qint8") -> dict[str, Any]:
    """The format, ONNX Runtime's version and thread settings, and the weight type."""
    from ..onnx_export import runtime_info
    return {"format": NAME, **runtime_info(threads), "weight_type": weight_type}


def convert(model, workdir: Path, *, weight_type: str = "qint8", threads: int | None = None) -> tuple[Any, dict]:
    """``model`` exported to ``workdir/model-fp32.onnx``, quantized with ``weight_type`` into ``workdir/model.onnx``
    and run by ONNX Runtime (``workdir`` must outlive the module); records the exporter, opset and quantization."""
    from .. import onnx_export as O
    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = workdir / "model-fp32.onnx"
    info = {"onnx": O.export_onnx(model, fp32)}
    info["quantization"] = O.quantize_onnx(fp32, workdir / "model.onnx", weight_type)
    return O.OnnxClassifier(workdir / "model.onnx", model.config, threads), info


load = onnx_fp32.load
measure = onnx_fp32.measure
