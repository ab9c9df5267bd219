"""ONNX export and ONNX Runtime: the ``onnx`` and ``onnx-int8`` formats of :mod:`.formats`.

- :func:`export_onnx`: ``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``), opset
  :data:`OPSET`, dynamic batch and sequence axes. It needs no extra package (the dynamo exporter needs
  ``onnxscript``), exports MiniLM in about 1 s (the dynamo exporter: several), and reproduces PyTorch's
  logits to about 1e-7 at any batch size and sequence length, padded or not.
- :func:`quantize_onnx`: ONNX Runtime dynamic quantization (int8 weights, activations quantized at run time)
  with weight type ``qint8`` or ``quint8``; :mod:`.export` picks one by measuring both on the dev set.
- :func:`session`: a CPU ``InferenceSession`` with explicit thread settings (recorded by :func:`runtime_info`,
  part of the latency fingerprint).
- :class:`OnnxClassifier`: a torch-module facade over a session, so mixkd's dev-set evaluation
  (:func:`mixkd.core.trainer.evaluate_model`) runs an ONNX model unchanged.
- :func:`measure_onnx`: the latency protocol of :mod:`.protocol` under ONNX Runtime.

Imported lazily (it imports torch): by :mod:`.formats` and :mod:`.export` when an onnx format is asked for.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import torch

from ..core.errors import UsageError
from .protocol import check_protocol, protocol_result, timed_loop

OPSET = 17
EXPORTER = "torch.onnx.export (TorchScript exporter, dynamo=False)"
WEIGHT_TYPES = ("qint8", "quint8")
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UsageError("the onnx formats need onnxruntime and onnx; run `pip install onnxruntime onnx` "
                         "(both are mixkd dependencies)") from None
    return onnxruntime


def _has_token_types(model) -> bool:
    """Does ``model`` take ``token_type_ids`` (segment embeddings of more than one row)? The evaluation's answer."""
    from ..core.evaluation import model_inputs
    return "token_type_ids" in model_inputs(model, dict.fromkeys(INPUTS))


def export_onnx(model, path: str | os.PathLike, opset: int = OPSET) -> dict[str, Any]:
    """Export a (CPU, fp32) sequence classifier to ``path``: inputs ``input_ids``, ``attention_mask`` and,
    for models with segment embeddings, ``token_type_ids`` (int64, axes batch × sequence); output
    ``logits`` (batch × labels). Returns what the model card records (exporter, opset, inputs)."""
    import torch
    model = model.to("cpu", dtype=torch.float32).eval()
    names = list(INPUTS if _has_token_types(model) else INPUTS[:2])
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0))
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))[: len(names)]
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")     # tracer warnings about python control flow on shapes
        torch.onnx.export(model, args, str(path), input_names=names, output_names=["logits"], dynamic_axes=axes,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    return {"exporter": EXPORTER, "opset": opset, "inputs": names, "torch": torch.__version__}


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, weight_type: str = "qint8") -> dict[str, Any]:
    """ONNX Runtime dynamic int8 quantization of ``src`` into ``dst`` (MatMul/Gemm/... weights to
    ``weight_type``, activations quantized per batch at run time, per-tensor)."""
    require_onnxruntime()
    if weight_type not in WEIGHT_TYPES:
        raise UsageError(f"weight type {weight_type!r} is invalid; use one of {', '.join(WEIGHT_TYPES)} or auto")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    qt = {"qint8": QuantType.QInt8, "quint8": QuantType.QUInt8}[weight_type]
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)      # "consider pre-processing" on the root logger, every call
        try:
            quantize_dynamic(str(src), str(dst), weight_type=qt, per_channel=False, reduce_range=False)
        finally:
            root.setLevel(level)
    return {"method": "onnxruntime dynamic quantization", "weight_type": weight_type, "activations": "uint8, dynamic",
            "per_channel": False, "reduce_range": False}


def _threads(threads: int | None) -> int:
    return int(threads) if threads else torch.get_num_threads()


def runtime_info(threads: int | None = None) -> dict[str, Any]:
    """The ONNX Runtime a latency or an export belongs to: version, provider, thread settings."""
    ort = require_onnxruntime()
    return {"runtime": "onnxruntime", "runtime_version": ort.__version__, "provider": "CPUExecutionProvider",
            "intra_op_threads": _threads(threads), "inter_op_threads": 1, "execution_mode": "sequential",
            "graph_optimization": "all"}


def session(path: str | os.PathLike, threads: int | None = None):
    """A CPU ``InferenceSession`` of ``path`` with :func:`runtime_info`'s settings (intra-op threads:
    ``threads``, default torch's current count, so both runtimes get the same cores)."""
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = _threads(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:   # onnxruntime raises its own exception types (Fail, InvalidGraph, NoSuchFile ...)
        raise UsageError(f"ONNX Runtime cannot load {path} ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})") from None


class OnnxClassifier(torch.nn.Module):
    """``model(input_ids=, attention_mask=, token_type_ids=)`` on an ONNX Runtime session, returning an
    object with ``.logits`` (a float CPU tensor), like a transformers sequence classifier. ``config`` is
    the model's transformers config; ``base_model.embeddings.token_type_embeddings`` is set only when the
    graph takes ``token_type_ids`` (mixkd's batching passes them to such models only)."""

    def __init__(self, path: str | os.PathLike, config, threads: int | None = None):
        super().__init__()
        self.path = str(path)
        self.session = session(path, threads)
        self.config = config
        self.input_names = [i.name for i in self.session.get_inputs()]
        tt = True if "token_type_ids" in self.input_names else None
        self.base_model = SimpleNamespace(embeddings=SimpleNamespace(token_type_embeddings=tt))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **_):
        import numpy as np
        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        given = {"attention_mask": attention_mask, "token_type_ids": token_type_ids}
        feed = {"input_ids": ids}
        for name in self.input_names[1:]:
            v = given.get(name)
            feed[name] = (np.ones_like(ids) if name == "attention_mask" else np.zeros_like(ids)) if v is None \
                else v.detach().cpu().numpy().astype(np.int64)
        logits = self.session.run(["logits"], feed)[0]
        return SimpleNamespace(logits=torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32)))


def measure_onnx(path: str | os.PathLike, vocab_size: int, batch_size: int, seq_len: int, *, warmup: int,
                 min_iters: int, min_seconds: float, threads: int | None, fingerprint: Mapping[str, Any],
                 sess=None, seed: int = 0) -> dict[str, Any]:
    """Latency of one ``session.run`` on random token ids of shape (batch_size, seq_len) with a full
    attention mask, under the protocol of :func:`mixkd.deploy.latency.measure` (``sess``: reuse a session)."""
    import numpy as np
    check_protocol(batch_size, seq_len, warmup, min_iters, min_seconds)
    sess = sess or session(path, threads)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, int(vocab_size), (batch_size, seq_len), dtype=np.int64)
    full = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feed = {i.name: full[i.name] for i in sess.get_inputs()}
    loop = timed_loop(lambda: sess.run(["logits"], feed), warmup, min_iters, min_seconds)
    return protocol_result(loop, batch_size, seq_len, warmup, min_iters, min_seconds, fingerprint)


def onnx_file(folder: str | os.PathLike) -> Path:
    return Path(folder) / "model.onnx"
