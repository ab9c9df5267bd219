"""The files of a run folder besides its model: checkpoints (``checkpoints/last`` with the trainer state,
``checkpoints/best``), written atomically and repaired after a crash, and the JSON-lines logs
(``events.jsonl``, ``log.jsonl``)."""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import UsageError


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Make the complete folder ``tmp`` the new ``final``. Two renames (a folder cannot replace a non-empty
    one in one step): a crash between them leaves ``final.old`` (complete) and no ``final``, which
    :func:`repair_checkpoints` puts back; a crash before them leaves the old ``final`` untouched."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        if final.exists():
            shutil.rmtree(old)
        else:   # a crash between the renames of the previous save: old is the checkpoint, keep it
            old.rename(final)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def repair_checkpoints(ckpt_dir: Path) -> None:
    """Undo what a crash during :meth:`Trainer.save_checkpoint` left in ``ckpt_dir``: a checkpoint
    moved aside (``last.old`` without ``last``) is put back; half-written temporary folders are removed."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    for which in ("last", "best"):
        final, old = ckpt_dir / which, ckpt_dir / f"{which}.old"
        if old.is_dir():
            if final.is_dir():
                shutil.rmtree(old)
            else:
                old.rename(final)
        tmp = ckpt_dir / f".{which}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)


def append_event(out_dir: Path, event: str, **fields: Any) -> None:
    """One line of ``events.jsonl`` in a run folder: each start, resume (with the step it resumed from)
    and sweep attempt (pid, Ray node) of the run, so a restart after a crash can be seen and checked."""
    import socket
    row = {"event": event, "time": round(time.time(), 3), "pid": os.getpid(), "host": socket.gethostname(),
           **fields}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "events.jsonl", "a") as fh:
        fh.write(json.dumps(row, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file; a last line torn by a crash mid-write is skipped."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA) and Python RNG states, for a checkpoint."""
    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
          "python_version": random.getstate()[0]}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate((st["python_version"], tuple(st["python"]), None))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def write_checkpoint(ckpt_dir: Path, which: str, student: nn.Module, tokenizer,
                     state: Callable[[], dict[str, Any]]) -> Path:
    """``ckpt_dir/which``: the weights (safetensors) and, for ``last``, ``state()`` (optimizer, scheduler,
    RNG and counters) as trainer_state.pt, else the tokenizer; written atomically."""
    final = ckpt_dir / which
    tmp = ckpt_dir / f".{which}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    student.save_pretrained(tmp, safe_serialization=True)
    if which == "last":
        torch.save(state(), tmp / "trainer_state.pt")
    else:
        tokenizer.save_pretrained(tmp)
    _atomic_replace_dir(tmp, final)
    return final


def read_checkpoint(path: Path, student: nn.Module, device: torch.device, total_steps: int) -> dict[str, Any]:
    """The trainer state of the checkpoint ``path``, whose weights are loaded into ``student``; a checkpoint
    of another run length or of another student raises :class:`UsageError`."""
    from safetensors.torch import load_file
    state = torch.load(path / "trainer_state.pt", weights_only=True, map_location="cpu")
    if state["total_steps"] != total_steps:
        raise UsageError(f"checkpoint {path} was made for {state['total_steps']} steps, this run has "
                         f"{total_steps}; resume with the same config or pass --overwrite")
    from .weights import check_weights
    check_weights(path)
    weights = load_file(str(path / "model.safetensors"), device=str(device))
    missing, unexpected = student.load_state_dict(weights, strict=False)
    real_missing = [k for k in missing if not k.endswith("position_ids")]
    if real_missing or unexpected:
        raise UsageError(f"checkpoint {path} does not match the student ({len(real_missing)} missing, "
                         f"{len(unexpected)} unexpected tensors); resume with the same config")
    return state


def truncate_log(log: Path, step: int) -> None:
    """Drop the rows of ``log`` (log.jsonl) after ``step``: rows logged after the checkpoint a run resumes
    from (a crash between the log write and the save) are redone."""
    if log.is_file():
        rows = [r for r in read_jsonl(log) if r.get("step", 0) <= step]
        tmp = log.with_name(".log.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, log)
