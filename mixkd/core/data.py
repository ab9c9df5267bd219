"""GLUE data: the original TSV layout (``--data-dir`` / ``$GLUE_DIR``), the hub (``nyu-mll/glue``), or the
SST-2 sample embedded in the package (``sample_data/``, for a machine with neither).

Local files are parsed strictly (GLUE TSV is unquoted: quote characters are kept verbatim; CoLA
has no header; every row is checked for its field count and label) so a bad row gives a one-line
error naming the file and line. Rows become a ``datasets.Dataset``; tokenization runs through
``Dataset.map`` with an on-disk cache keyed by the file contents, tokenizer and length.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .tasks import DevSplit, TaskSpec

HUB_DATASET = "nyu-mll/glue"


def cache_dir() -> Path:
    return Path(os.environ.get("MIXKD_CACHE", Path.home() / ".cache" / "mixkd"))


EMBEDDED_DIR = Path(__file__).resolve().parent / "sample_data"   # GLUE layout; see its README.md
EMBEDDED_TASKS = ("sst2",)
_TRUE = ("1", "ON", "YES", "TRUE")


@functools.lru_cache(maxsize=None)
def hub_status(timeout: float = 3.0) -> tuple[bool, str]:
    """(reachable, why): offline when ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` is set, else one HEAD
    request to the hub (``$HF_ENDPOINT``, proxies honoured) with a short timeout, so an unreachable hub costs
    seconds instead of the datasets library's retries. Asked once per process; an unreachable hub sets
    ``HF_HUB_OFFLINE=1`` and ``HF_DATASETS_OFFLINE=1`` for this process and the ones it starts (Ray workers),
    so they neither ask again nor let the Hugging Face libraries retry."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return False, f"{var} is set"
    import urllib.error
    import urllib.request
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/datasets/{HUB_DATASET}", method="HEAD"),
                               timeout=timeout).close()
    except urllib.error.HTTPError:
        return True, f"{endpoint} answered"       # the server is there (an error status is still an answer)
    except (OSError, ValueError) as e:           # URLError, timeouts, DNS failures are OSErrors
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        return False, f"{endpoint} is unreachable ({type(getattr(e, 'reason', e)).__name__})"
    return True, f"{endpoint} answered"


@dataclass(frozen=True)
class DataSource:
    kind: str                # "dir" (a GLUE folder), "hub" or "embedded"
    path: Path | None        # the GLUE-layout folder (None: the hub)
    description: str         # one line for people: which source, and why this one


_announced: set[tuple[str, str]] = set()


def resolve_data_source(data_dir: str | None, task: TaskSpec | None = None) -> DataSource:
    """Where a task's data comes from, in this order: ``--data-dir``, ``$GLUE_DIR``, the hub when it is
    reachable, the embedded sample (``sst2`` only). ``task=None`` stops before the hub check (the hub)."""
    if task is not None and task.custom is not None:
        src = task.custom
        if src.dataset:
            what = f"the dataset {src.where('train')} and {src.where('dev')}"
        else:
            what = f"your files {src.train_file or '-'} (train) and {src.validation_file} (dev)"
        return DataSource("custom", None, what)
    d = data_dir or os.environ.get("GLUE_DIR") or None
    if d is not None:
        p = Path(d).expanduser()
        # a sweep passes $GLUE_DIR on to its runs as their data_dir: name it by where it came from
        src = "--data-dir" if data_dir and data_dir != os.environ.get("GLUE_DIR") else "$GLUE_DIR"
        if not p.is_dir():
            raise UsageError(f"{src} '{d}' is not a directory; point it at a GLUE folder (with SST-2/, MRPC/, ...) "
                             f"or leave it unset to load from the hub")
        return DataSource("dir", p, f"the GLUE folder {p} ({src})")
    if task is None:
        return DataSource("hub", None, f"the Hugging Face hub ({HUB_DATASET})")
    reachable, why = hub_status()
    if reachable:
        return DataSource("hub", None, f"the Hugging Face hub ({HUB_DATASET}; no --data-dir or $GLUE_DIR)")
    if task.name in EMBEDDED_TASKS:
        return DataSource("embedded", EMBEDDED_DIR,
                          f"the SST-2 sample embedded in mixkd ({EMBEDDED_DIR}: 4,000 train rows, the 872-row dev "
                          f"set; no --data-dir or $GLUE_DIR, and the hub is offline: {why})")
    raise UsageError(f"no data for task {task.name}: no --data-dir or $GLUE_DIR, the hub is offline ({why}), and the "
                     f"embedded sample holds {', '.join(EMBEDDED_TASKS)} only; pass --data-dir PATH/glue_data")


def resolve_data_dir(data_dir: str | None, task: TaskSpec | None = None) -> Path | None:
    """The GLUE-layout folder a task's data comes from (None: the hub); see :func:`resolve_data_source`."""
    return resolve_data_source(data_dir, task).path


def announce_data_source(source: DataSource, task: TaskSpec) -> None:
    """One line on stderr, once per process and task, saying which data source is used."""
    if (task.name, source.description) not in _announced:
        _announced.add((task.name, source.description))
        print(f"mixkd: {task.name} data from {source.description}", file=sys.stderr, flush=True)


def read_glue_tsv(path: Path, task: TaskSpec) -> dict[str, list]:
    """Columns ``{text_key: [...], 'label': [...]}`` of one GLUE TSV file, validated row by row."""
    if not path.is_file():
        raise UsageError(f"missing data file '{path}'; put the task's GLUE TSV files there "
                         f"(see the GLUE layout in the README) or load the task from the hub")
    cols: dict[str, list] = {k: [] for k in task.text_keys}
    cols["label"] = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        lines = fh.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    start = 1 if task.has_header else 0
    for lineno, line in enumerate(lines[start:], start=start + 1):
        line = line.rstrip("\r")
        parts = line.split("\t")
        if len(parts) < task.min_columns:
            raise UsageError(f"{path}:{lineno}: malformed row, expected {task.min_columns} tab-separated "
                             f"fields for {task.name}, found {len(parts)}; fix or remove the row")
        for key, c in zip(task.text_keys, task.text_columns):
            cols[key].append(parts[c])
        raw = parts[task.label_column].strip()
        if task.regression:
            try:
                y = float(raw)
            except ValueError:
                y = float("nan")
            if not (0.0 <= y <= 5.0):
                raise UsageError(f"{path}:{lineno}: label {raw!r} is not a similarity score in [0, 5]; "
                                 f"fix the row")
            cols["label"].append(y)
        else:
            if raw not in task.tsv_labels:
                raise UsageError(f"{path}:{lineno}: label {raw!r} is not one of {task.name}'s labels "
                                 f"({', '.join(task.tsv_labels)}); fix the row")
            cols["label"].append(task.tsv_labels.index(raw))
    if not cols["label"]:
        raise UsageError(f"{path} has no data rows; give a non-empty {task.name} file")
    return cols


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_split(task: TaskSpec, split: str, data_dir: Path | None, dev: DevSplit | None = None):
    """One split ('train' or a dev split) as a Dataset with the text keys and 'label';
    returns (dataset, source description, content id for caching)."""
    from datasets import Dataset

    if task.custom is not None:
        from .custom_data import load_custom_split
        ds, where, content = load_custom_split(task, split)
        return ds, where, f"{content}|{task.text_keys}|{task.label_names}|{task.regression}"
    if data_dir is not None:
        folder = data_dir / task.folder
        if not folder.is_dir():
            raise UsageError(f"no {task.folder}/ folder in '{data_dir}'; add the task's GLUE files there "
                             f"or load it from the hub by leaving --data-dir and $GLUE_DIR unset")
        path = folder / ("train.tsv" if split == "train" else dev.tsv_file)
        return Dataset.from_dict(read_glue_tsv(path, task)), str(path), _file_sha(path)
    from datasets import load_dataset
    hub_split = "train" if split == "train" else dev.hub_split
    try:
        ds = load_dataset(HUB_DATASET, task.hub_config, split=hub_split)
    except Exception as e:  # offline, no such config, network errors
        raise UsageError(f"cannot load {task.name} from the hub ({type(e).__name__}); give a local GLUE "
                         f"folder with --data-dir or $GLUE_DIR") from None
    ds = ds.select_columns([*task.text_keys, "label"])
    return ds, f"hub:{HUB_DATASET}/{task.hub_config}/{hub_split}", ds._fingerprint


def subset_indices(n: int, fraction: float, seed: int, max_rows: int | None = None) -> np.ndarray:
    """A fixed random subset of round(fraction * n) rows (at least 1), sorted, from a seeded RNG; with
    ``max_rows``, at most that many of them (a second seeded draw from the fraction's subset)."""
    idx = np.arange(n)
    if fraction < 1.0:
        size = max(1, int(round(fraction * n)))
        idx = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
    if max_rows is not None and len(idx) > max_rows:
        idx = np.sort(np.random.default_rng([seed, 1]).choice(idx, size=max_rows, replace=False))
    return idx


@dataclass
class GlueData:
    task: TaskSpec
    train: Any                      # tokenized datasets.Dataset (None when only dev was loaded)
    dev: dict[str, Any]             # DevSplit.name -> tokenized Dataset
    dev_splits: list[DevSplit]
    info: dict[str, Any] = field(default_factory=dict)
    source: DataSource | None = None   # where the rows came from (announced once the run starts)


def _tokenize(ds, task: TaskSpec, tokenizer, max_len: int, key: str):
    keys = task.text_keys

    def fn(batch):
        texts = [batch[k] for k in keys]
        enc = tokenizer(*texts, truncation=True, max_length=max_len)
        enc["labels"] = batch["label"]
        return enc

    tok_id = hashlib.sha256(json.dumps([tokenizer.name_or_path, type(tokenizer).__name__, len(tokenizer),
                                        sorted(tokenizer.get_vocab().items())[:50]]).encode()).hexdigest()
    name = hashlib.sha256(f"{key}|{tok_id}|{max_len}|{keys}".encode()).hexdigest()[:24]
    out = cache_dir() / "tokenized"
    out.mkdir(parents=True, exist_ok=True)
    # new_fingerprint: our own cache key, so datasets does not hash (and dump) the closure
    return ds.map(fn, batched=True, remove_columns=ds.column_names, cache_file_name=str(out / f"{name}.arrow"),
                  load_from_cache_file=True, new_fingerprint=name, desc=f"tokenize {task.name}")


def check_subset(data: "GlueData", cfg) -> None:
    """A training subset that cannot teach a classifier is refused before any training (finetune, distill; not
    augment, which only translates rows): a --data-fraction / --max-train-samples subset of fewer rows than one
    batch, or (classification) rows of one class only."""
    task, rows = data.task, int(data.info.get("train_rows_subset", len(data.train)))
    asked = (f"--data-fraction {cfg.data_fraction:g}" if cfg.data_fraction not in (None, 1.0) else "") + \
            (f" --max-train-samples {cfg.max_train_samples}" if cfg.max_train_samples else "")
    asked = asked.strip() or "the training data"
    subset = cfg.data_fraction not in (None, 1.0) or cfg.max_train_samples is not None
    if subset and rows < cfg.batch_size:   # a subset asked for (a whole small file is the user's data as it is)
        raise UsageError(f"{asked} leaves {rows} training row(s), fewer than one batch (--batch-size "
                         f"{cfg.batch_size}); use more rows or a smaller --batch-size")
    if not task.regression:
        classes = set(data.train["labels"])
        if len(classes) < 2:
            raise UsageError(f"{asked} leaves {rows} training rows, all of one class; use more rows (a larger "
                             f"--data-fraction) or another --data-seed")


def load_glue(cfg, task: TaskSpec, tokenizer, train: bool = True) -> GlueData:
    """Tokenized train (subset + augmentation) and dev splits for ``cfg``."""
    from datasets import concatenate_datasets

    import datasets
    datasets.disable_progress_bars()
    source = resolve_data_source(cfg.data_dir, task)
    data_dir = source.path
    info: dict[str, Any] = {"data_source": {"embedded": f"embedded:{data_dir}", "hub": f"hub:{HUB_DATASET}",
                                            "custom": source.description}.get(source.kind, str(data_dir))}
    train_ds = None
    if train:
        raw, src, content = load_split(task, "train", data_dir)
        fraction = 1.0 if cfg.data_fraction is None else cfg.data_fraction
        idx = subset_indices(len(raw), fraction, cfg.resolved_data_seed, cfg.max_train_samples)
        info.update(train_rows_total=len(raw), train_rows_subset=int(len(idx)),
                    data_fraction=fraction, data_seed=cfg.resolved_data_seed, max_train_samples=cfg.max_train_samples,
                    subset_fingerprint=hashlib.sha256(idx.astype(np.int64).tobytes()).hexdigest()[:16])
        if len(idx) < len(raw):
            raw = raw.select(idx)
        content = f"{content}|{info['subset_fingerprint']}"
        if cfg.augment_file:
            p = Path(cfg.augment_file)
            if task.custom is not None:
                from .custom_data import read_augment_rows
                aug = read_augment_rows(task, str(p)).cast(raw.features)
            else:
                aug = datasets.Dataset.from_dict(read_glue_tsv(p, task)).cast(raw.features)
            info.update(augment_file=str(p), augment_rows=len(aug))
            raw = concatenate_datasets([raw, aug])
            content = f"{content}|aug:{_file_sha(p)}"
        info["train_rows"] = len(raw)
        train_ds = _tokenize(raw, task, tokenizer, cfg.max_seq_length, content)
    dev = {}
    for split in task.dev_splits:
        raw, src, content = load_split(task, "dev", data_dir, split)
        if cfg.max_eval_samples:
            raw = raw.select(range(min(cfg.max_eval_samples, len(raw))))
            content = f"{content}|first{len(raw)}"
        info[f"dev_rows{'_' + split.name if split.name else ''}"] = len(raw)
        dev[split.name] = _tokenize(raw, task, tokenizer, cfg.max_seq_length, content)
    return GlueData(task, train_ds, dev, list(task.dev_splits), info, source)
