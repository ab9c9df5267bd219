"""The MixKD loss terms (paper Eq. 3, 6, 7 and Hinton KD), as named functions combined by weights.

    total = w_mle * L_MLE + a_sm * L_SM + a_tmkd * L_TMKD + a_kd * L_KD

Each term is a pure function of logits and targets, so each has a golden-value test. For the
regression task (STS-B) cross-entropies become mean squared errors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def mle_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool = False) -> torch.Tensor:
    """L_MLE: cross-entropy with the gold labels on original data (MSE for regression)."""
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels.long())


def soft_label_loss(logits: torch.Tensor, targets: torch.Tensor, regression: bool = False) -> torch.Tensor:
    """L_SM: cross-entropy of the student on mixed inputs against the mixed labels y'.

    With one-hot y, this equals lambda * CE(y_i) + (1 - lambda) * CE(y_j).
    """
    if regression:
        return F.mse_loss(logits.squeeze(-1).float(), targets.float())
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
            regression: bool = False) -> torch.Tensor:
    """Hinton KD: T^2 * KL(softmax(t / T) || softmax(s / T)), averaged over samples.

    Regression outputs have no softmax: the distance is then MSE between the two predictions.
    """
    s, t = student_logits.float(), teacher_logits.float()
    if regression:
        return F.mse_loss(s, t)
    T = float(temperature)
    return F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), reduction="batchmean",
                    log_target=True) * (T * T)


def tmkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, distance: str = "mse",
              temperature: float = 1.0, regression: bool = False) -> torch.Tensor:
    """L_TMKD: distance between student and frozen teacher on the same mixed input.

    ``mse``: mean squared error between logits, averaged over samples and classes (the paper's choice);
    ``kl``: temperature-scaled KD as in :func:`kd_loss`.
    """
    if distance == "mse":
        return F.mse_loss(student_logits.float(), teacher_logits.float())
    if distance == "kl":
        return kd_loss(student_logits, teacher_logits, temperature, regression)
    raise ValueError(f"unknown distance {distance!r}")


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """torchdistill-style high-level loss: sum of weight * term over the named terms."""
    return sum(weights[name] * value for name, value in terms.items())
