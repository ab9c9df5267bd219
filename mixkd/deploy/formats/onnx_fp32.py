"""The ``onnx`` format: ``model.onnx`` under ONNX Runtime's CPU provider (:mod:`mixkd.deploy.onnx_export`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

NAME = "onnx"


def runtime(threads: int | None = None, weight_type: str = "qint8") -> dict[str, Any]:
    """The format, and ONNX Runtime's version and thread settings."""
    from ..onnx_export import runtime_info
    return {"format": NAME, **runtime_info(threads)}


def convert(model, workdir: Path, *, weight_type: str = "qint8", threads: int | None = None) -> tuple[Any, dict]:
    """``model`` exported to ``workdir/model.onnx`` and run by ONNX Runtime (``workdir`` must outlive the module);
    records the exporter and opset."""
    from .. import onnx_export as O
    workdir.mkdir(parents=True, exist_ok=True)
    info = {"onnx": O.export_onnx(model, workdir / "model.onnx")}
    return O.OnnxClassifier(workdir / "model.onnx", model.config, threads), info


def load(folder: Path, threads: int | None = None):
    """``model.onnx`` of an exported folder on an ONNX Runtime session, with the folder's config."""
    from transformers import AutoConfig
    from ..onnx_export import OnnxClassifier
    return OnnxClassifier(folder / "model.onnx", AutoConfig.from_pretrained(str(folder)), threads)


def measure(module, batch_size: int, seq_len: int, *, threads: int | None, fingerprint: dict[str, Any],
            runtime: dict[str, Any], **protocol) -> dict[str, Any]:
    """One latency of ``session.run`` on the converted module's session (:func:`mixkd.deploy.onnx_export.measure_onnx`)
    with the whole ``fingerprint``."""
    from ..onnx_export import measure_onnx
    return measure_onnx(module.path, int(module.config.vocab_size), batch_size, seq_len, threads=threads,
                        fingerprint=fingerprint, sess=module.session, **protocol)
