"""Official GLUE metrics, computed with scikit-learn and scipy, and the chance level of each: what a trivial
predictor scores on the same dev split (a model that does not beat it learned nothing)."""
from __future__ import annotations

import math

import numpy as np

from .tasks import DevSplit, TaskSpec, metric_key


def _compute(name: str, preds: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import pearsonr, spearmanr   # imported here: they cost ~2 s at CLI start-up
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    if name == "accuracy":
        return float(accuracy_score(labels, preds))
    if name == "f1":
        return float(f1_score(labels, preds))
    if name == "macro_f1":
        return float(f1_score(labels, preds, average="macro", zero_division=0))
    if name == "matthews_correlation":
        return float(matthews_corrcoef(labels, preds))
    if name == "pearson":
        return float(pearsonr(preds, labels)[0])
    if name == "spearman":
        return float(spearmanr(preds, labels)[0])
    raise KeyError(name)


def glue_metrics(task: TaskSpec, logits: np.ndarray, labels: np.ndarray, split: DevSplit) -> dict[str, float]:
    """All of ``task``'s metrics for one dev split; keys get the split suffix (MNLI: ``accuracy_mm``)."""
    preds = logits.reshape(-1) if task.regression else logits.argmax(-1)
    return {metric_key(m, split): _compute(m, preds, labels) for m in task.metrics}


CHANCE_MARGIN = 0.01   # a score must beat the trivial predictor by more than 1 point (of 100) to count


def chance_metrics(task: TaskSpec, labels: np.ndarray, split: DevSplit) -> dict[str, float]:
    """Each metric of the best constant predictor on these labels: for every metric, the best score any single
    class predicted for all rows reaches (accuracy: the majority class; F1: all positive; macro-F1: the class that
    scores best; Matthews correlation 0), and for regression a constant (the mean: correlation 0)."""
    if task.regression:
        return {metric_key(m, split): 0.0 for m in task.metrics}
    labels = np.asarray(labels).astype(int)
    constants = [np.full_like(labels, c) for c in range(max(task.num_labels, int(labels.max()) + 1))]
    out = {}
    for m in task.metrics:
        if m == "matthews_correlation":
            out[metric_key(m, split)] = 0.0            # any constant prediction
        else:
            out[metric_key(m, split)] = max(_compute(m, preds, labels) for preds in constants)
    return out


def per_class_metrics(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support of every class, by label name (classification only)."""
    from sklearn.metrics import precision_recall_fscore_support
    ids = list(range(task.num_labels))
    p, r, f, n = precision_recall_fscore_support(labels, logits.argmax(-1), labels=ids, zero_division=0)
    return {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(n[i])}
            for i, name in enumerate(task.label_names)}


def above_chance(value: float, chance: float) -> bool:
    """The score beats the trivial predictor by more than CHANCE_MARGIN (NaN never does)."""
    return math.isfinite(value) and value > chance + CHANCE_MARGIN


class ChanceLevelWarning(UserWarning):
    """A finished run or evaluation that does not beat the trivial predictor (the Python API's counterpart of the
    CLI's warning line: notebooks see it too)."""


def warn_if_at_chance(result: dict) -> None:
    msg = chance_warning(result)
    if msg:
        import warnings
        warnings.warn(msg.removeprefix("warning: "), ChanceLevelWarning, stacklevel=3)


def chance_warning(result: dict) -> str | None:
    """One line for a finished run (its metrics.json) that does not beat the trivial predictor, else None."""
    if result.get("above_chance", True):
        return None
    key = result["primary_metric"]
    return (f"warning: the model is at chance level on the dev set ({key} {result['primary_value']:.4f}; a constant "
            f"predictor scores {result['chance'][key]:.4f}): it learned nothing useful; train it longer (--epochs, "
            f"--max-steps), with another --lr, or use a deeper student (--student-layers)")
