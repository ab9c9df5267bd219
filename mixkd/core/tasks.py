"""The GLUE task table: what each task's files hold and how it is scored.

Modelled on HF run_glue's task -> keys table, extended with the original GLUE TSV layout
(column positions, header or not) so the same table drives the local loader and the hub loader.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UsageError


@dataclass(frozen=True)
class DevSplit:
    name: str          # our name for the split, used as a metric-key suffix (primary split: "")
    tsv_file: str      # file name in the GLUE folder
    hub_split: str     # split name in nyu-mll/glue


@dataclass(frozen=True)
class TaskSpec:
    name: str                      # canonical name, e.g. "sst2"
    folder: str                    # GLUE folder name, e.g. "SST-2"
    hub_config: str                # nyu-mll/glue config name
    text_keys: tuple[str, ...]     # 1 or 2 text fields
    label_names: tuple[str, ...]   # class names in label-id order (hub order); () for regression
    tsv_labels: tuple[str, ...]    # how each class is written in the TSV, same order
    text_columns: tuple[int, ...]  # column index of each text key in the TSV
    label_column: int              # column index of the label (negative counts from the end)
    min_columns: int               # a data row must have at least this many fields
    has_header: bool
    primary_metric: str
    metrics: tuple[str, ...]
    dev_splits: tuple[DevSplit, ...]
    regression: bool = False
    custom: Any = None             # a custom task's data source (custom_data.CustomData); None for GLUE

    @property
    def num_labels(self) -> int:
        return 1 if self.regression else len(self.label_names)


def _dev(file="dev.tsv", hub="validation", name=""):
    return (DevSplit(name, file, hub),)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("cola", "CoLA", "cola", ("sentence",), ("unacceptable", "acceptable"), ("0", "1"),
                 (3,), 1, 4, False, "matthews_correlation", ("matthews_correlation", "accuracy"), _dev()),
        TaskSpec("sst2", "SST-2", "sst2", ("sentence",), ("negative", "positive"), ("0", "1"),
                 (0,), 1, 2, True, "accuracy", ("accuracy",), _dev()),
        TaskSpec("mrpc", "MRPC", "mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                 ("0", "1"), (3, 4), 0, 5, True, "f1", ("f1", "accuracy"), _dev()),
        TaskSpec("stsb", "STS-B", "stsb", ("sentence1", "sentence2"), (), (),
                 (7, 8), -1, 10, True, "pearson", ("pearson", "spearman"), _dev(), regression=True),
        TaskSpec("qqp", "QQP", "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"),
                 ("0", "1"), (3, 4), 5, 6, True, "f1", ("f1", "accuracy"), _dev()),
        TaskSpec("mnli", "MNLI", "mnli", ("premise", "hypothesis"),
                 ("entailment", "neutral", "contradiction"), ("entailment", "neutral", "contradiction"),
                 (8, 9), -1, 12, True, "accuracy", ("accuracy",),
                 (DevSplit("", "dev_matched.tsv", "validation_matched"),
                  DevSplit("mm", "dev_mismatched.tsv", "validation_mismatched"))),
        TaskSpec("qnli", "QNLI", "qnli", ("question", "sentence"), ("entailment", "not_entailment"),
                 ("entailment", "not_entailment"), (1, 2), 3, 4, True, "accuracy", ("accuracy",), _dev()),
        TaskSpec("rte", "RTE", "rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"),
                 ("entailment", "not_entailment"), (1, 2), 3, 4, True, "accuracy", ("accuracy",), _dev()),
        TaskSpec("wnli", "WNLI", "wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"),
                 ("0", "1"), (1, 2), 3, 4, True, "accuracy", ("accuracy",), _dev()),
    ]
}

# Spellings users type: "SST-2", "sst-2", "STS-B", "MNLI" ...
_ALIASES = {t.folder.lower().replace("-", ""): t.name for t in TASKS.values()}


_CUSTOM: dict[str, TaskSpec] = {}   # custom tasks built in this process (custom_data.custom_task)


def register_task(task: TaskSpec) -> TaskSpec:
    """Make a custom task known to :func:`get_task` by its name in this process."""
    _CUSTOM[task.name] = task
    return task


def is_glue(name: str) -> bool:
    key = str(name).lower().replace("-", "").replace("_", "")
    return _ALIASES.get(key, key) in TASKS


def task_name(name: str) -> str:
    """The canonical name of a GLUE task ('SST-2' -> 'sst2'); any other name as given (a custom task)."""
    return get_task(name).name if is_glue(name) else str(name)


def primary_metric_of(name: str, params: dict | None = None) -> str:
    """The primary metric of a task by name: GLUE's official one, else the recorded ``metric`` param of a run of
    the custom task (its config's resolved --metric)."""
    if is_glue(name):
        return get_task(name).primary_metric
    if name in _CUSTOM:
        return _CUSTOM[name].primary_metric
    params = params or {}
    metric = str(params.get("metric") or "auto")
    if metric in ("auto", "None"):    # logged before the run resolved it: the kind's first metric
        metric = "pearson" if str(params.get("regression")).lower() == "true" else "accuracy"
    return metric


def get_task(name: str) -> TaskSpec:
    if name in _CUSTOM:
        return _CUSTOM[name]
    key = str(name).lower().replace("-", "").replace("_", "")
    key = _ALIASES.get(key, key)
    if key not in TASKS:
        raise UsageError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}, or give your own data with "
                         f"--train-file/--validation-file or --dataset")
    return TASKS[key]


def metric_key(metric: str, split: DevSplit) -> str:
    """Metric name for a dev split: 'accuracy' for the primary split, 'accuracy_mm' for MNLI-mm."""
    return f"{metric}_{split.name}" if split.name else metric
