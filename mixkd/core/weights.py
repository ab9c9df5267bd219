"""One check before any model's weights are read: a damaged safetensors file is one line naming the file and what
is wrong with it (issue 24, class 1), never a deserialisation traceback from deep inside a loader.

A safetensors file is an 8-byte little-endian header length, a JSON header giving every tensor's byte range, then
the data: it is whole when the header parses and the data is exactly as long as the header says. Checking that
reads the header only (kilobytes), so every loader (teacher, student, evaluate, predict, export, latency, resume)
calls it."""
from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import UsageError


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with the safetensors file at ``path`` (None: nothing found)."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than a safetensors header"
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > size - 8:
            return f"truncated: its header says {n} header bytes but the file has {size - 8} after the length"
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            return "its header is not valid JSON (not a safetensors file, or overwritten)"
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    ends = [t.get("data_offsets", [0, 0])[1] for k, t in header.items() if k != "__metadata__" and isinstance(t, dict)]
    expected = 8 + n + max(ends, default=0)
    if size != expected:
        return (f"truncated: {size:,} of {expected:,} bytes" if size < expected
                else f"{size - expected:,} bytes longer than its header says")
    return None


def check_weights(folder: str | Path) -> None:
    """UsageError naming the first damaged ``*.safetensors`` file in ``folder`` (a local model folder; anything
    else, e.g. a hub id, is left to the loader)."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        return
    for f in sorted(d.glob("*.safetensors")):
        why = safetensors_problem(f)
        if why:
            raise UsageError(f"damaged weights file {f}: {why}; restore it, or retrain / re-export the model")
