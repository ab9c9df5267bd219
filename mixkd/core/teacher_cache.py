"""The frozen teacher's outputs on the training rows, computed once and read back by every run that needs them.

``kd`` and ``pkd`` query the teacher on the original training rows, which do not change between epochs or between
the trials of a sweep that share a teacher and a training set. :func:`teacher_outputs` computes the teacher's logits
(and, for PKD, each layer's first-token hidden state) over the training set once, in evaluation batches, with the
run's precision and packing, and stores them next to the teacher (``<teacher>/teacher_outputs/<key>.safetensors``;
a teacher that is not a mixkd run folder: under ``$MIXKD_CACHE``).

The key covers what the outputs depend on: the teacher's weights as held (their SHA-256), the training rows as tokenized
(ids, segments, lengths, in order), the precision, packing and whether hidden states are kept. An entry is written
to a temporary file and renamed (a crash leaves no partial entry under the final name), carries the SHA-256 of its
tensors, and is checked on every read: a damaged, truncated or mismatched entry is reported in one line and
computed again, never used. Concurrent writers are safe (each renames a complete file of its own)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import batching, packing
from .device import autocast_for

FOLDER = "teacher_outputs"
VERSION = 1   # of the entry format and of what it holds


@dataclass
class TeacherOutputs:
    """Per training row: ``logits`` (N, C) float32 and, for PKD, ``hidden`` (N, layers + 1, H): the first token of
    every hidden state (index 0: the embeddings), as the patient loss reads them."""
    logits: torch.Tensor
    hidden: torch.Tensor | None
    path: Path | None = None
    reused: bool = False

    def rows(self, index: list[int] | torch.Tensor, device: torch.device):
        """The logits of these rows and, with hidden states, their tuple of (B, 1, H) first tokens, on ``device``."""
        idx = torch.as_tensor(index, dtype=torch.long)
        logits = self.logits[idx].to(device, non_blocking=True)
        if self.hidden is None:
            return logits, None
        h = self.hidden[idx].to(device, non_blocking=True)
        return logits, tuple(h[:, j:j + 1] for j in range(h.shape[1]))


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the teacher's parameters and buffers as held (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def rows_digest(dataset) -> str:
    """SHA-256 of the tokenized rows in order (ids, segment ids where present, each row's length)."""
    h = hashlib.sha256()
    cols = [c for c in ("input_ids", "token_type_ids") if c in dataset.column_names]
    for c in cols:
        h.update(c.encode())
        for row in dataset[c]:
            a = np.asarray(row, dtype=np.int64)
            h.update(np.int64(a.size).tobytes())
            h.update(a.tobytes())
    return h.hexdigest()


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_dir(teacher: str | os.PathLike) -> Path:
    """Where a teacher's entries live: inside a mixkd teacher run (shared storage in a sweep), else $MIXKD_CACHE."""
    p = Path(teacher).expanduser()
    if (p / "metrics.json").is_file() and (p / "model").is_dir():
        return p / FOLDER
    from .data import cache_dir as mixkd_cache
    return mixkd_cache() / FOLDER


def entry_key(teacher: nn.Module, dataset, precision: str, packed: bool, hidden: bool) -> str:
    spec = {"version": VERSION, "weights": weights_digest(teacher), "rows": rows_digest(dataset), "n": len(dataset),
            "precision": precision, "packed": bool(packed), "hidden": bool(hidden)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:32]


@torch.inference_mode()
def compute(teacher: nn.Module, dataset, collator, batch_size: int, device: torch.device, precision: str,
            packed: bool, hidden: bool) -> TeacherOutputs:
    """The teacher's logits (and first-token hidden states) over ``dataset``, in dataset order: evaluation batches
    in length order, under the run's autocast and packing (the teacher as the step holds it)."""
    was_training = teacher.training
    teacher.eval()
    order = batching.length_order(dataset)
    # a private generator: iterating a loader draws its seed, and the global RNG (dropout, mixup plans) must not
    # advance, or a cache miss would change the run that follows it
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=order,
                                         collate_fn=collator, generator=torch.Generator())
    logits, states = [], []
    from .evaluation import model_inputs
    for batch in loader:
        lengths = packing.row_lengths(batch["attention_mask"]) if packed else None
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast_for(device, precision):
            out = packing.forward(teacher, model_inputs(teacher, batch), packed, lengths, hidden_states=hidden)
        logits.append(out.logits.float().cpu())
        if hidden:
            states.append(torch.stack([h[:, 0] for h in out.hidden_states], dim=1).float().cpu())
    teacher.train(was_training)
    lg = batching.restore_order(order, torch.cat(logits))
    hs = batching.restore_order(order, torch.cat(states)) if hidden else None
    return TeacherOutputs(lg, hs)


def _read(path: Path, n: int) -> TeacherOutputs:
    """An entry, checked: its format version, row count and tensor checksum (ValueError when any is off)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    if meta.get("version") != str(VERSION):
        raise ValueError(f"format version {meta.get('version')!r}, expected {VERSION}")
    if "logits" not in tensors or tensors["logits"].shape[0] != n:
        raise ValueError(f"holds {tensors.get('logits', torch.empty(0)).shape[0]} rows, the training set {n}")
    if _tensor_digest(tensors) != meta.get("sha256"):
        raise ValueError("its checksum does not match its tensors")
    return TeacherOutputs(tensors["logits"], tensors.get("hidden"), path)


def _write(out: TeacherOutputs, path: Path) -> None:
    from safetensors.torch import save_file
    tensors = {"logits": out.logits.contiguous()}
    if out.hidden is not None:
        tensors["hidden"] = out.hidden.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"version": str(VERSION), "sha256": _tensor_digest(tensors),
                                          "rows": str(out.logits.shape[0])})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def teacher_outputs(teacher: nn.Module, teacher_dir: str | os.PathLike, dataset, collator, batch_size: int,
                    device: torch.device, precision: str, packed: bool, hidden: bool) -> TeacherOutputs:
    """The entry of this (teacher, training rows, precision, packing, hidden) read back when it is intact, else
    computed (and stored); a damaged entry is said in one line and replaced."""
    path = cache_dir(teacher_dir) / f"{entry_key(teacher, dataset, precision, packed, hidden)}.safetensors"
    if path.is_file():
        try:
            out = _read(path, len(dataset))
            out.reused = True
            return out
        except Exception as e:   # truncated, corrupt, another format: never used
            print(f"mixkd: teacher outputs {path} are damaged ({str(e).splitlines()[0][:160]}); computing them "
                  f"again", file=sys.stderr, flush=True)
    out = compute(teacher, dataset, collator, batch_size, device, precision, packed, hidden)
    try:
        _write(out, path)
        out.path = path
    except OSError as e:   # a read-only teacher folder: the run goes on with the outputs in memory
        print(f"mixkd: teacher outputs not stored ({e}); this run computed them once in memory", file=sys.stderr,
              flush=True)
    return out
