"""The ``torch`` format: the PyTorch model itself, its weights as safetensors (the reference every other format
is checked against). Its latency in :func:`mixkd.deploy.formats.format_latencies` is :mod:`mixkd.deploy.latency`'s
own protocol, on any device and dtype; :func:`measure` here is the CPU fp32 one that torch-int8 shares."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import latency as L

NAME = "torch"


def runtime(threads: int | None = None, weight_type: str = "qint8") -> dict[str, Any]:
    """Nothing: a torch latency's device fingerprint is the device's own."""
    return {}


def convert(model, workdir: Path, *, weight_type: str = "qint8", threads: int | None = None) -> tuple[Any, dict]:
    """The model itself; nothing recorded."""
    return model, {}


def load(folder: Path, threads: int | None = None):
    """The safetensors classifier of an exported folder, in eval mode (no remote code)."""
    from transformers import AutoModelForSequenceClassification
    from ...core.weights import check_weights
    check_weights(folder)
    return AutoModelForSequenceClassification.from_pretrained(str(folder), trust_remote_code=False,
                                                              use_safetensors=True).eval()


def measure(module, batch_size: int, seq_len: int, *, threads: int | None, fingerprint: dict[str, Any],
            runtime: dict[str, Any], **protocol) -> dict[str, Any]:
    """One latency of ``module`` on the CPU in fp32 (:func:`mixkd.deploy.latency.measure`); ``runtime`` is added to
    its fingerprint."""
    return L.measure(module, batch_size, seq_len, device="cpu", dtype="fp32", threads=threads,
                     fingerprint_extra=runtime, **protocol)
