"""The ``torch-int8`` format: the PyTorch weights, with every ``nn.Linear`` quantized dynamically to qint8 at load
time (activations quantized per batch); CPU only. The export holds the fp32 safetensors weights."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from . import torch_fp32

NAME = "torch-int8"
TORCH_INT8 = {"method": "torch.ao.quantization.quantize_dynamic", "modules": "nn.Linear", "weight_type": "qint8",
              "activations": "quint8, dynamic", "engine": None}


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
    """What the quantization is, with this machine's quantized engine."""
    import torch
    return {**TORCH_INT8, "engine": torch.backends.quantized.engine}


def runtime(threads: int | None = None, weight_type: str = "qint8") -> dict[str, Any]:
    """The format and the quantization (with its engine)."""
    return {"format": NAME, "quantization": torch_int8_info()}


def convert(model, workdir: Path, *, weight_type: str = "qint8", threads: int | None = None) -> tuple[Any, dict]:
    """The dynamic-int8 copy of ``model``, and the quantization."""
    return quantize_torch(model), {"quantization": torch_int8_info()}


def load(folder: Path, threads: int | None = None):
    """The exported fp32 weights, quantized as they load."""
    return quantize_torch(torch_fp32.load(folder))


measure = torch_fp32.measure
