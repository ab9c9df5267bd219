"""Your own data: a task built from files (CSV, TSV, JSON, JSON lines, Parquet) or a ``datasets`` dataset (a hub id
or a local dataset folder), with your column names and label set.

The label set comes from the training split (sorted: numbers numerically, names alphabetically) unless the config
names it (``labels``, recorded in config.yaml once resolved, so a student, a resumed run and an evaluation use the
same ids). Every row is checked before anything trains: a missing column, an empty split, a null or empty text, a
label of another type than the rest, a dev label never seen in training: one line naming the file, the row and
the fix.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .tasks import TASKS, DevSplit, TaskSpec

FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearman")
# Text columns tried, in order, when --text-columns is not given (the names of common datasets)
_TEXT_GUESSES = (("text",), ("sentence",), ("sentence1", "sentence2"), ("premise", "hypothesis"),
                 ("question", "sentence"), ("question1", "question2"), ("text_a", "text_b"))


@dataclass(frozen=True)
class CustomData:
    """Where a custom task's rows live: files, or a dataset (hub id or local folder) with split names."""
    train_file: str | None
    validation_file: str | None
    dataset: str | None
    dataset_config: str | None
    train_split: str
    validation_split: str
    label_column: str

    def where(self, split: str) -> str:
        """The file, or dataset:split, of 'train' or 'dev', for messages."""
        if self.dataset:
            name = self.dataset + (f":{self.dataset_config}" if self.dataset_config else "")
            return f"{name} ({self.train_split if split == 'train' else self.validation_split} split)"
        return str(self.train_file if split == "train" else self.validation_file)


def is_custom(cfg) -> bool:
    return bool(cfg.train_file or cfg.validation_file or cfg.dataset)


def split_dataset_id(dataset: str) -> tuple[str, str | None]:
    """'user/name:config' -> ('user/name', 'config'); a local folder keeps its path whole."""
    if Path(dataset).expanduser().exists() or ":" not in dataset:
        return dataset, None
    name, config = dataset.rsplit(":", 1)
    return name, config or None


def _source(cfg) -> CustomData:
    name, config = split_dataset_id(cfg.dataset) if cfg.dataset else (None, None)
    return CustomData(cfg.train_file, cfg.validation_file, name, config, cfg.train_split, cfg.validation_split,
                      cfg.label_column)


def default_task_name(cfg) -> str:
    """The task's name for tags and folders: --task, else the file or dataset name ('tickets' from
    tickets_train.csv); a name GLUE uses gets '-custom' so the paper's tables never mix them up."""
    if cfg.task:
        return cfg.task
    if cfg.dataset:
        base = split_dataset_id(cfg.dataset)[0].rstrip("/").split("/")[-1]
    else:
        base = Path(cfg.train_file or cfg.validation_file).name.split(".")[0]
        base = re.sub(r"([_.-]?(train|training|dev|validation|valid|val|test))$", "", base, flags=re.I) or base
    name = re.sub(r"[^a-z0-9_-]+", "-", base.lower()).strip("-") or "custom"
    return f"{name}-custom" if name.replace("-", "") in TASKS else name


def read_rows(src: CustomData, split: str):
    """One split ('train' or 'dev') as a ``datasets.Dataset``, unvalidated."""
    import datasets
    datasets.disable_progress_bars()
    if src.dataset:
        return _read_dataset(src, src.train_split if split == "train" else src.validation_split)
    path = Path(src.train_file if split == "train" else src.validation_file).expanduser()
    flag = "--train-file" if split == "train" else "--validation-file"
    if not path.is_file():
        raise UsageError(f"{flag} '{path}' does not exist; give a CSV, TSV, JSON, JSON lines or Parquet file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UsageError(f"{flag} '{path}': unknown file type '{path.suffix}'; use .csv, .tsv, .json, .jsonl "
                         f"or .parquet")
    if path.stat().st_size == 0:
        raise UsageError(f"{path} is empty; give a file with a header and at least one row")
    kw = {"delimiter": "\t", "quoting": 3} if path.suffix.lower() == ".tsv" else {}   # TSV: quotes are text
    if path.suffix.lower() in (".csv", ".tsv"):
        from .table_files import check_table_file
        check_table_file(path, "\t" if kw else ",")
    try:
        rows = datasets.load_dataset(fmt, data_files={"rows": str(path)}, split="rows", **kw)
    except Exception as e:   # pyarrow/pandas parse errors, mixed JSON types
        if "corresponds to no data" in str(e):      # a header and no rows
            raise UsageError(f"{path} has no rows; give a non-empty file") from None
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path}: cannot read it as {path.suffix[1:].upper()} ({why}); fix the file "
                         f"(one header row, the same columns on every row)") from None
    if len(rows.column_names) == 1 and len(rows) and isinstance(rows[0][rows.column_names[0]], (list, dict)):
        key = rows.column_names[0]   # {"data": [{...}, ...]}: the rows are nested, not columns
        raise UsageError(f"{path} holds its rows nested under the key {key!r}; write one JSON object per row (JSON "
                         f"lines, or a JSON array of objects) with the text and label as keys")
    return rows


def _read_dataset(src: CustomData, split: str):
    import datasets
    local = Path(src.dataset).expanduser()
    try:
        if local.is_dir() and (local / "dataset_dict.json").is_file():
            dd = datasets.load_from_disk(str(local))
            if split not in dd:
                raise UsageError(f"--dataset {src.dataset} has no split '{split}' (it has {', '.join(dd)}); "
                                 f"pass --train-split / --validation-split")
            return dd[split]
        return datasets.load_dataset(str(local) if local.is_dir() else src.dataset, src.dataset_config, split=split)
    except UsageError:
        raise
    except ValueError as e:   # unknown split / config
        raise UsageError(f"--dataset {src.dataset}: {str(e).splitlines()[0][:200]}; check --train-split, "
                         f"--validation-split and the :CONFIG") from None
    except Exception as e:   # offline, unknown id, network errors
        raise UsageError(f"cannot load dataset '{src.dataset}' ({type(e).__name__}); check the id (or the local "
                         f"folder), or download the data and pass --train-file / --validation-file") from None


def resolve_text_columns(cfg, columns: list[str], where: str) -> tuple[str, ...]:
    if cfg.text_columns:
        cols = tuple(c.strip() for c in cfg.text_columns.split(",") if c.strip())
        if not 1 <= len(cols) <= 2:
            raise UsageError(f"--text-columns {cfg.text_columns!r} is invalid: name one text column or two "
                             f"(a pair), comma-separated")
        if len(set(cols)) != len(cols):
            raise UsageError(f"--text-columns {cfg.text_columns!r} names {cols[0]!r} twice; name it once for "
                             f"single texts, or two different columns for pairs")
        return cols
    for guess in _TEXT_GUESSES:
        if all(c in columns for c in guess):
            return guess
    raise UsageError(f"{where}: no --text-columns given and none of the usual names (text, sentence, "
                     f"sentence1/sentence2, ...) found; pass --text-columns among: {', '.join(columns)}")


def _check_columns(ds, need: tuple[str, ...], where: str) -> None:
    missing = [c for c in need if c not in ds.column_names]
    if missing:
        raise UsageError(f"{where}: no column '{missing[0]}' (columns: {', '.join(ds.column_names)}); fix "
                         f"--text-columns / --label-column or the file")
    if len(ds) == 0:
        raise UsageError(f"{where} has no rows; give a non-empty split")


def _check_texts(ds, text_cols: tuple[str, ...], where: str) -> None:
    for c in text_cols:
        for i, v in enumerate(ds[c]):
            if v is None or (isinstance(v, float) and math.isnan(v)) or str(v).strip() == "":
                raise UsageError(f"{where}, row {i + 1}: the text in column '{c}' is empty or null; fill or "
                                 f"remove the row")


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return "text"


def _label_values(ds, col: str, where: str, regression: bool) -> list:
    """The label column, checked: no nulls, one type (numbers or names); numbers as int when integral."""
    raw = ds[col]
    first_kind, first_row = None, 0
    out = []
    for i, v in enumerate(raw):
        if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
            raise UsageError(f"{where}, row {i + 1}: the label in column '{col}' is empty or null; fill or "
                             f"remove the row")
        out.append(v.strip() if isinstance(v, str) else v)
        if regression:
            continue
        k = _kind(v)
        if isinstance(v, str) and re.fullmatch(r"\s*-?\d+(\.\d*)?\s*", v):
            k = "number-as-text"      # '1' next to 'pos' in a CSV: a mix, not a name
        if first_kind is None:
            first_kind, first_row = k, i
        elif k != first_kind and {k, first_kind} != {"number", "number-as-text"}:
            raise UsageError(f"{where}: mixed label types in column '{col}': row {first_row + 1} has "
                             f"{raw[first_row]!r}, row {i + 1} has {v!r}; use one kind (all names or all "
                             f"numbers)")
    if regression:
        try:
            vals = [float(v) for v in out]
        except (TypeError, ValueError):
            bad = next(i for i, v in enumerate(out) if not _is_float(v))
            raise UsageError(f"{where}, row {bad + 1}: label {out[bad]!r} is not a number; --regression needs "
                             f"numeric targets") from None
        bad = next((i for i, v in enumerate(vals) if not math.isfinite(v)), None)
        if bad is not None:
            raise UsageError(f"{where}, row {bad + 1}: label {out[bad]!r} is not finite; fix the row")
        return vals
    if first_kind == "bool":
        return [str(v).lower() for v in out]
    if first_kind == "number":
        bad = next((i for i, v in enumerate(out) if float(v) != int(v)), None)
        if bad is not None:
            raise UsageError(f"{where}, row {bad + 1}: label {out[bad]!r} is not a class id (not an integer); "
                             f"pass --regression for numeric targets")
        return [int(v) for v in out]
    return [str(v) for v in out]


def _is_float(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _sorted_labels(values: list) -> list:
    uniq = set(values)
    if all(isinstance(v, int) for v in uniq):
        return sorted(uniq)
    if all(isinstance(v, str) and re.fullmatch(r"-?\d+", v) for v in uniq):
        return sorted(uniq, key=int)
    return sorted(str(v) for v in uniq)


def _model_labels(model: str | None) -> list[str] | None:
    """The label names, in id order, of a local classifier folder (its config.json id2label)."""
    import json
    f = Path(model).expanduser() / "config.json" if model else None
    if f is None or not f.is_file():
        return None
    id2label = json.loads(f.read_text()).get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=int)] or None


def parse_labels(text: str | None) -> list[str] | None:
    """--labels as a list; a repeated or empty name is refused (its id could never be predicted)."""
    if not text:
        return None
    labels = [s.strip() for s in str(text).split(",")]
    if "" in labels:
        raise UsageError(f"--labels {text!r} has an empty name; give every class a name, comma-separated")
    dup = next((name for i, name in enumerate(labels) if name in labels[:i]), None)
    if dup is not None:
        raise UsageError(f"--labels {text!r} names {dup!r} twice; give each class once, in id order")
    return labels


def resolve(cfg, command: str):
    """The config with the custom task's name, text columns, label set and metric filled in (the resolved values
    are what config.yaml records) and its :class:`TaskSpec`; the training split is read and checked here."""
    src = _source(cfg)
    if command in ("finetune", "distill") and not (cfg.dataset or cfg.train_file):
        raise UsageError("custom data needs --train-file (with --validation-file) or --dataset for training")
    if command != "augment" and not (cfg.dataset or cfg.validation_file):
        raise UsageError("custom data needs --validation-file (or --dataset with a --validation-split) to score "
                         "the model on")
    name = default_task_name(cfg)
    if name.replace("-", "").replace("_", "").lower() in TASKS:
        raise UsageError(f"--task {name} is a GLUE task name; name your custom task otherwise (e.g. "
                         f"--task {name}-custom), or pass the GLUE files with --data-dir")
    split = "train" if command != "evaluate" else "dev"
    rows = read_rows(src, split)
    where = src.where(split)
    text_cols = resolve_text_columns(cfg, rows.column_names, where)
    _check_columns(rows, (*text_cols, cfg.label_column), where)
    labels = parse_labels(cfg.labels)
    if not cfg.regression:
        values = _label_values(rows, cfg.label_column, where, False)
        if labels is None and command == "evaluate":
            labels = _model_labels(cfg.model)
        if labels is None:
            if command == "evaluate":
                raise UsageError("evaluate on custom data needs the label set: score a mixkd run dir (its "
                                 "config.yaml has it) or pass --labels in the model's id order")
            labels = [str(v) for v in _sorted_labels(values)]
            bad = next((lab for lab in labels if "," in lab), None)
            if bad is not None:
                raise UsageError(f"{where}: label {bad!r} contains a comma; rename it (labels are recorded "
                                 f"comma-separated)")
            if len(labels) < 2:
                raise UsageError(f"{where}: only one label ({labels[0]!r}) in column '{cfg.label_column}'; a "
                                 f"classifier needs at least two classes (or pass --regression)")
    metric = cfg.metric
    allowed = REGRESSION_METRICS if cfg.regression else CLASSIFICATION_METRICS
    if metric == "auto":
        metric = allowed[0]
    elif metric not in allowed:
        raise UsageError(f"--metric {metric} is invalid for a {'regression' if cfg.regression else 'classification'}"
                         f" task; choose one of: {', '.join(allowed)}")
    cfg = cfg.replace(task=name, text_columns=",".join(text_cols), metric=metric,
                      labels=None if cfg.regression else ",".join(labels))
    return cfg, custom_task(cfg)


def custom_task(cfg) -> TaskSpec:
    """The TaskSpec of a resolved custom config (see :func:`resolve`)."""
    text_cols = tuple(cfg.text_columns.split(","))
    metrics = REGRESSION_METRICS if cfg.regression else CLASSIFICATION_METRICS
    metrics = (cfg.metric, *[m for m in metrics if m != cfg.metric])
    labels = () if cfg.regression else tuple(parse_labels(cfg.labels))
    # the TSV layout of a back-translation file (`mixkd augment`): the text columns, then the label, with a header
    n = len(text_cols)
    return TaskSpec(cfg.task, "", "", text_cols, labels, labels, tuple(range(n)), n, n + 1, True, cfg.metric, metrics,
                    (DevSplit("", str(cfg.validation_file or ""), cfg.validation_split),), regression=cfg.regression,
                    custom=_source(cfg))


def load_custom_split(task: TaskSpec, split: str) -> tuple[Any, str, str]:
    """One split of a custom task as a Dataset with the text columns and integer/float 'label' (the GLUE
    reader's layout), checked row by row; returns (dataset, where, content id for caching)."""
    from datasets import Dataset
    src = task.custom
    rows = read_rows(src, split)
    where = src.where(split)
    _check_columns(rows, (*task.text_keys, src.label_column), where)
    _check_texts(rows, task.text_keys, where)
    values = _label_values(rows, src.label_column, where, task.regression)
    if task.regression:
        ids = values
    else:
        index = {name: i for i, name in enumerate(task.label_names)}
        ids = []
        for i, v in enumerate(values):
            if str(v) not in index:
                seen = "the training data" if split == "dev" else "the recorded label set"
                raise UsageError(f"{where}, row {i + 1}: label {v!r} is not in {seen} ({', '.join(task.label_names)})"
                                 f"; fix the row or train on data that has it")
            ids.append(index[str(v)])
    cols = {k: [str(t) for t in rows[k]] for k in task.text_keys}
    cols["label"] = ids
    return Dataset.from_dict(cols), where, rows._fingerprint


DATA_KEYS = ("train_file", "validation_file", "dataset", "train_split", "validation_split", "text_columns",
             "label_column", "labels", "regression", "metric")
_DESCRIBE = ("text_columns", "label_column", "labels", "regression", "metric")


def run_config_file(run_dir: str | None) -> Path | None:
    """config.yaml of a mixkd run dir (or of the run whose model/ folder this is); None for anything else."""
    if not run_dir:
        return None
    p = Path(run_dir).expanduser()
    for f in (p / "config.yaml", p.parent / "config.yaml" if p.name == "model" else None):
        if f is not None and f.is_file():
            return f
    return None


def run_data(run_dir: str | None) -> dict | None:
    """The task and data keys recorded for a model: its run's config.yaml, or an exported folder's
    ``task_data`` (mixkd_export.json); None when nothing is recorded."""
    import json

    import yaml
    f = run_config_file(run_dir)
    if f is not None:
        return yaml.safe_load(f.read_text()) or {}
    meta = Path(run_dir).expanduser() / "mixkd_export.json" if run_dir else None
    if meta is not None and meta.is_file():
        rec = json.loads(meta.read_text())
        data = dict(rec.get("task_data") or {})
        if not data.get("task") and rec.get("task"):   # an export of a plain model folder: the task it was checked on
            data["task"] = rec["task"]
        return data or None
    return None


def dev_config(cfg, model_dir: str):
    """(config, TaskSpec) to score the model in ``model_dir`` on its task's dev split: a custom task's files,
    columns and label set come from the model's run (see :func:`inherit_data`)."""
    cfg = inherit_data(cfg, model_dir)
    if is_custom(cfg):
        cfg = cfg.replace(data_dir=None)
    return task_for(cfg, "evaluate")


def resolve_config(cfg, command: str):
    """The config ``command`` runs, resolved once: for distill and evaluate the teacher's (or the scored model's)
    task and data where not given (its run files are read here, not in ``validate``), then validated. A config
    already resolved for ``command`` passes through untouched (the CLI resolves, the job does not again)."""
    if getattr(cfg, "resolved_for", None) == command:
        return cfg
    from .config import validate
    if command in ("distill", "evaluate"):   # the teacher's / scored run's task and data unless given
        cfg = inherit_data(cfg, cfg.teacher if command == "distill" else cfg.model)
    cfg = validate(cfg, command)
    cfg.resolved_for = command   # not a field: a replace() makes a config that is resolved again
    return cfg


def inherit_data(cfg, run_dir: str | None):
    """The data a student or an evaluation inherits from its teacher's (or the scored model's) run: the task name
    when none is given; for a custom task, its files and columns when none are given, and in any case its label set
    and label kind (the model's ids mean those labels)."""
    saved = run_data(run_dir)
    if saved is None:
        return cfg
    kw: dict[str, Any] = {}
    custom_saved = bool(saved.get("train_file") or saved.get("validation_file") or saved.get("dataset"))
    if custom_saved and cfg.task is not None and cfg.task != saved.get("task") and not is_custom(cfg) \
            and cfg.task.replace("-", "").replace("_", "").lower() in TASKS:
        raise UsageError(f"{run_dir} was trained on your own data (task {saved.get('task')!r}), not on GLUE "
                         f"{cfg.task}; drop --task to score it on its own dev data, or give other rows with "
                         f"--validation-file")
    if cfg.task is None and saved.get("task") and (custom_saved or not is_custom(cfg)):
        kw["task"] = saved["task"]
    if custom_saved and not is_custom(cfg):
        kw.update({k: saved[k] for k in DATA_KEYS if k in saved})
    elif custom_saved:
        defaults = {"text_columns": None, "label_column": "label", "labels": None, "regression": False,
                    "metric": "auto"}
        kw.update({k: saved[k] for k in _DESCRIBE if k in saved and getattr(cfg, k) == defaults[k]})
    return cfg.replace(**kw) if kw else cfg


def task_for(cfg, command: str):
    """(config, TaskSpec): a custom task resolved from its data (and registered under its name), else the GLUE
    task named by --task."""
    from .tasks import get_task, register_task
    if not is_custom(cfg):
        return cfg, get_task(cfg.task)
    for key in ("train_file", "validation_file"):
        if getattr(cfg, key):
            cfg = cfg.replace(**{key: str(Path(getattr(cfg, key)).expanduser().absolute())})
    cfg, task = resolve(cfg, command)
    return cfg, register_task(task)


def read_augment_rows(task: TaskSpec, path: str):
    """Extra training rows (``--augment-file``) of a custom task: a file with the task's own columns."""
    import dataclasses
    src = dataclasses.replace(task.custom, train_file=str(path), dataset=None)
    return load_custom_split(dataclasses.replace(task, custom=src), "train")[0]
