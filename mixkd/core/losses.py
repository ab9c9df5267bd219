"""The MixKD loss terms (paper Eq. 3, 6, 7), Hinton KD and PKD's patient loss, as named functions
combined by weights.

    total = w_mle * L_MLE + a_sm * L_SM + a_tmkd * L_TMKD + a_kd * L_KD + pkd_beta * L_PT

Each term is a pure function of logits (hidden states for L_PT) and targets, so each has a
golden-value test. For the regression task (STS-B) cross-entropies become mean squared errors.
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


def pkd_layer_map(n_teacher: int, k: int, strategy: str = "skip") -> list[int]:
    """PKD's teacher layers (1-based) matched to student layers 1..k-1 (Sun et al. 2019, Sec. 3.2).

    ``skip`` (PKD-Skip): student layer i learns teacher layer i * N/k, i.e. every N/k-th layer
    (12 -> 6: 2, 4, 6, 8, 10; 12 -> 3: 4, 8), rounded as :func:`mixkd.core.models.select_layers` rounds
    its ``skip`` init when k does not divide N. ``last`` (PKD-Last): the k-1 layers just below the
    top, N-k+i (12 -> 6: 7..11; 12 -> 3: 10, 11). The student's top layer is not matched: the logit
    KD term covers the output.
    """
    if not 1 <= k <= n_teacher:
        raise ValueError(f"a {k}-layer student of a {n_teacher}-layer teacher")
    if strategy == "skip":
        return [round(i * n_teacher / k) for i in range(1, k)]
    if strategy == "last":
        return [n_teacher - k + i for i in range(1, k)]
    raise ValueError(f"unknown PKD layer map {strategy!r}; use skip or last")


def patient_loss(student_hidden, teacher_hidden, pairs: list[tuple[int, int]]) -> torch.Tensor:
    """L_PT, PKD's patient loss: MSE between the L2-normalised [CLS] vectors of matched layers.

    ``student_hidden`` / ``teacher_hidden``: the models' ``hidden_states`` tuples (index 0 is the
    embedding output, index i the output of layer i); ``pairs``: (student layer, teacher layer),
    1-based. The mean runs over batch, matched layers and hidden units, as in the PKD reference code
    (``F.mse_loss`` of normalised (batch, layers, width) tensors), so pkd_beta is on its scale.
    """
    if not pairs:
        raise ValueError("patient_loss needs at least one matched layer pair")
    s = torch.stack([student_hidden[i][:, 0] for i, _ in pairs], dim=1).float()
    t = torch.stack([teacher_hidden[j][:, 0] for _, j in pairs], dim=1).float()
    return F.mse_loss(F.normalize(s, p=2, dim=-1), F.normalize(t, p=2, dim=-1))


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """torchdistill-style high-level loss: sum of weight * term over the named terms."""
    return sum(weights[name] * value for name, value in terms.items())
