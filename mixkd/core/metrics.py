"""Official GLUE metrics, computed with scikit-learn and scipy."""
from __future__ import annotations

import numpy as np

from .tasks import DevSplit, TaskSpec, metric_key


def _compute(name: str, preds: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import pearsonr, spearmanr   # imported here: they cost ~2 s at CLI start-up
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
    if name == "accuracy":
        return float(accuracy_score(labels, preds))
    if name == "f1":
        return float(f1_score(labels, preds))
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
