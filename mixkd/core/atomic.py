"""Atomic file writes: readers (and a crash) see the old file or the whole new one, never a torn one."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to a temporary name (unique per process), flush it to disk, then rename over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(obj, indent=2, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@contextmanager
def atomic_folder(out: str | os.PathLike, flag: str = "--out"):
    """Build a folder complete or not at all: yields a temporary sibling of ``out`` to write into, renamed to
    ``out`` when the block ends without an error, removed (with everything in it) when it raises. ``out`` must
    not exist, before or at the rename (a UsageError naming ``flag``)."""
    from .errors import UsageError
    out = Path(out).expanduser()
    if out.exists():
        raise UsageError(f"{flag} {out} already exists; choose a new folder or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            raise UsageError(f"{flag} {out} appeared while it was being written; choose a new folder")
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
