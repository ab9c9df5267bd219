"""Golden values for each MixKD loss term on fixed small tensors.

The literal numbers were computed independently with numpy in float64 (log-softmax by hand) and
pasted here, so any change of formula (missing T^2, sum instead of mean, wrong KL direction ...)
fails a test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mixkd.core.losses import kd_loss, mle_loss, soft_label_loss, tmkd_loss, weighted_sum

# 3 samples x 2 classes
S3 = [[1.0, -0.5], [0.2, 0.3], [-1.2, 2.0]]
T3 = [[0.4, 0.1], [-0.6, 0.9], [1.5, -0.3]]
Y3 = [0, 1, 1]
# 2 samples x 3 classes
S2 = [[0.5, 1.5, -1.0], [2.0, 0.0, 0.25]]
T2 = [[1.0, 0.0, -0.5], [0.3, 1.2, -0.7]]
Y2 = [2, 0]

# literal golden values (numpy float64, see module docstring)
CE3 = 0.2952544237395846
CE2 = 1.5704429790732706
KD3_T1 = 0.9076783534120239
KD2_T1 = 0.6537680628296849
KD3_T4 = 1.1591299749650343
KD2_T4 = 0.6331675902856088
KD3_T2 = 1.094120540212054
MSE3 = 2.3833333333333333
MSE2 = 1.3304166666666666
SM2 = 1.2454429790732704     # lam = [0.3, 0.8], y_i = [2, 0], y_j = [0, 1]
REG_MLE = 0.9166666666666666  # preds [0.5, 2.0, 4.5] vs gold [1.0, 2.5, 3.0]
REG_KD = 0.18000000000000002  # preds [0.5, 2.0, 4.5] vs teacher [0.7, 1.5, 4.0]


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def np_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def np_kd(s, tch, temp):
    """T^2 * sum p_t * (log p_t - log p_s) / batch, independently in numpy."""
    ls, lt = np_log_softmax(np.asarray(s) / temp), np_log_softmax(np.asarray(tch) / temp)
    return temp * temp * float((np.exp(lt) * (lt - ls)).sum()) / len(s)


def ce_row(logits, y):
    row = np.asarray(logits, dtype=np.float64)
    return float(-np_log_softmax(row)[y])


# --- L_MLE ------------------------------------------------------------------------------------

def test_mle_ce_golden_3x2():
    assert mle_loss(t(S3), torch.tensor(Y3)).item() == pytest.approx(CE3, rel=1e-6)


def test_mle_ce_golden_2x3():
    assert mle_loss(t(S2), torch.tensor(Y2)).item() == pytest.approx(CE2, rel=1e-6)


def test_mle_ce_matches_numpy_mean_of_rows():
    want = np.mean([ce_row(S3[i], Y3[i]) for i in range(3)])
    assert mle_loss(t(S3), torch.tensor(Y3)).item() == pytest.approx(want, rel=1e-6)


def test_mle_accepts_float_labels_and_returns_scalar():
    out = mle_loss(t(S2), torch.tensor([2.0, 0.0]))
    assert out.dim() == 0
    assert out.item() == pytest.approx(CE2, rel=1e-6)


def test_mle_regression_is_mse_golden():
    preds = t([[0.5], [2.0], [4.5]])           # (N, 1) head output
    gold = t([1.0, 2.5, 3.0])
    out = mle_loss(preds, gold, regression=True)
    assert out.dim() == 0
    assert out.item() == pytest.approx(REG_MLE, rel=1e-6)


def test_mle_regression_no_broadcast_blowup():
    # (N, 1) vs (N,) must not broadcast to (N, N): that would give a different number
    preds = t([[0.5], [2.0], [4.5]])
    gold = t([1.0, 2.5, 3.0])
    broadcast = ((preds - gold) ** 2).mean().item()
    assert broadcast != pytest.approx(REG_MLE, rel=1e-3)
    assert mle_loss(preds, gold, regression=True).item() == pytest.approx(REG_MLE, rel=1e-6)


# --- L_SM -------------------------------------------------------------------------------------

def test_soft_label_golden_literal():
    lam = [0.3, 0.8]
    yi, yj = [2, 0], [0, 1]
    targets = torch.zeros(2, 3)
    for r in range(2):
        targets[r, yi[r]] += lam[r]
        targets[r, yj[r]] += 1 - lam[r]
    assert soft_label_loss(t(S2), targets).item() == pytest.approx(SM2, rel=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_soft_label_equals_lambda_weighted_ce_for_one_hot_mix(lam):
    logits = t(S2)
    yi, yj = torch.tensor([2, 0]), torch.tensor([1, 1])
    targets = lam * torch.nn.functional.one_hot(yi, 3).float() + (1 - lam) * torch.nn.functional.one_hot(yj, 3).float()
    want = lam * mle_loss(logits, yi).item() + (1 - lam) * mle_loss(logits, yj).item()
    assert soft_label_loss(logits, targets).item() == pytest.approx(want, rel=1e-6, abs=1e-7)


def test_soft_label_with_one_hot_targets_equals_ce():
    targets = torch.nn.functional.one_hot(torch.tensor(Y3), 2).float()
    assert soft_label_loss(t(S3), targets).item() == pytest.approx(CE3, rel=1e-6)


def test_soft_label_regression_is_mse():
    preds = t([[0.5], [2.0], [4.5]])
    targets = t([1.0, 2.5, 3.0])
    assert soft_label_loss(preds, targets, regression=True).item() == pytest.approx(REG_MLE, rel=1e-6)


# --- L_KD -------------------------------------------------------------------------------------

def test_kd_t1_golden():
    assert kd_loss(t(S3), t(T3), 1.0).item() == pytest.approx(KD3_T1, rel=1e-6)
    assert kd_loss(t(S2), t(T2), 1.0).item() == pytest.approx(KD2_T1, rel=1e-6)


def test_kd_t4_golden_includes_t_squared():
    got3 = kd_loss(t(S3), t(T3), 4.0).item()
    got2 = kd_loss(t(S2), t(T2), 4.0).item()
    assert got3 == pytest.approx(KD3_T4, rel=1e-6)
    assert got2 == pytest.approx(KD2_T4, rel=1e-6)
    # without the T^2 factor the value would be 16x smaller
    assert got3 / 16 != pytest.approx(KD3_T4, rel=1e-2)


@pytest.mark.parametrize("temp", [1.0, 2.0, 4.0, 0.5])
@pytest.mark.parametrize("s,tch", [(S3, T3), (S2, T2)])
def test_kd_matches_independent_numpy(s, tch, temp):
    assert kd_loss(t(s), t(tch), temp).item() == pytest.approx(np_kd(s, tch, temp), rel=1e-5)


def test_kd_numpy_reference_matches_literals():
    # the helper itself reproduces the pasted numbers (guards the reference, too)
    assert np_kd(S3, T3, 1.0) == pytest.approx(KD3_T1, rel=1e-12)
    assert np_kd(S3, T3, 4.0) == pytest.approx(KD3_T4, rel=1e-12)
    assert np_kd(S2, T2, 4.0) == pytest.approx(KD2_T4, rel=1e-12)


def test_kd_direction_is_teacher_to_student():
    # KL(p_t || p_s) != KL(p_s || p_t) for these logits: swapping the arguments changes the value
    fwd = kd_loss(t(S3), t(T3), 1.0).item()
    rev = kd_loss(t(T3), t(S3), 1.0).item()
    assert fwd == pytest.approx(KD3_T1, rel=1e-6)
    assert rev != pytest.approx(fwd, rel=1e-3)


def test_kd_zero_when_student_equals_teacher():
    assert kd_loss(t(S2), t(S2), 4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_is_mean_over_samples_not_sum():
    # duplicating the batch leaves a per-sample mean unchanged
    s = t(S3 + S3)
    tch = t(T3 + T3)
    assert kd_loss(s, tch, 1.0).item() == pytest.approx(KD3_T1, rel=1e-6)


def test_kd_regression_is_mse():
    preds = t([[0.5], [2.0], [4.5]])
    teacher = t([[0.7], [1.5], [4.0]])
    assert kd_loss(preds, teacher, 4.0, regression=True).item() == pytest.approx(REG_KD, rel=1e-6)


def test_kd_gradient_flows_to_student_only():
    s = t(S2).requires_grad_(True)
    tch = t(T2)
    kd_loss(s, tch, 2.0).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


# --- L_TMKD -----------------------------------------------------------------------------------

def test_tmkd_mse_is_mean_over_all_elements():
    assert tmkd_loss(t(S3), t(T3), "mse").item() == pytest.approx(MSE3, rel=1e-6)
    assert tmkd_loss(t(S2), t(T2), "mse").item() == pytest.approx(MSE2, rel=1e-6)
    # sum over classes / batch would be 2x (3x2) and 3x (2x3) these values
    assert tmkd_loss(t(S2), t(T2), "mse").item() != pytest.approx(3 * MSE2, rel=1e-3)


def test_tmkd_mse_ignores_temperature():
    assert tmkd_loss(t(S3), t(T3), "mse", temperature=4.0).item() == pytest.approx(MSE3, rel=1e-6)


@pytest.mark.parametrize("temp", [1.0, 4.0])
def test_tmkd_kl_equals_kd(temp):
    a = tmkd_loss(t(S3), t(T3), "kl", temperature=temp).item()
    b = kd_loss(t(S3), t(T3), temp).item()
    assert a == b
    assert a == pytest.approx(KD3_T1 if temp == 1.0 else KD3_T4, rel=1e-6)


def test_tmkd_kl_t2_golden():
    assert tmkd_loss(t(S3), t(T3), "kl", temperature=2.0).item() == pytest.approx(KD3_T2, rel=1e-6)


def test_tmkd_regression_mse():
    preds = t([[0.5], [2.0], [4.5]])
    teacher = t([[0.7], [1.5], [4.0]])
    assert tmkd_loss(preds, teacher, "mse", regression=True).item() == pytest.approx(REG_KD, rel=1e-6)
    assert tmkd_loss(preds, teacher, "kl", temperature=3.0, regression=True).item() == pytest.approx(REG_KD, rel=1e-6)


def test_tmkd_unknown_distance_raises():
    with pytest.raises(ValueError, match="cosine"):
        tmkd_loss(t(S3), t(T3), "cosine")


def test_losses_accept_half_precision_inputs():
    # bf16 autocast logits are upcast to fp32 inside every term
    s, tch = t(S3).to(torch.bfloat16), t(T3).to(torch.bfloat16)
    for v in (mle_loss(s, torch.tensor(Y3)), kd_loss(s, tch, 2.0), tmkd_loss(s, tch, "mse")):
        assert v.dtype == torch.float32 and torch.isfinite(v)


# --- weighted sum -----------------------------------------------------------------------------

def test_weighted_sum_golden():
    terms = {"mle": torch.tensor(CE3), "sm": torch.tensor(SM2), "tmkd": torch.tensor(MSE3)}
    weights = {"mle": 1.0, "sm": 0.5, "tmkd": 2.0, "kd": 7.0}   # unused weights are ignored
    # CE3 + 0.5 * SM2 + 2.0 * MSE3, computed once in float64
    assert weighted_sum(terms, weights).item() == pytest.approx(5.684642579942887, rel=1e-6)


def test_weighted_sum_zero_weight_drops_term():
    terms = {"mle": torch.tensor(1.5), "kd": torch.tensor(100.0)}
    assert weighted_sum(terms, {"mle": 1.0, "kd": 0.0}).item() == pytest.approx(1.5, rel=1e-6)


def test_weighted_sum_missing_weight_raises():
    with pytest.raises(KeyError):
        weighted_sum({"mle": torch.tensor(1.0), "sm": torch.tensor(2.0)}, {"mle": 1.0})


def test_weighted_sum_backprops_through_every_term():
    s = t(S2).requires_grad_(True)
    terms = {"mle": mle_loss(s, torch.tensor(Y2)), "tmkd": tmkd_loss(s, t(T2), "mse")}
    total = weighted_sum(terms, {"mle": 1.0, "tmkd": 1.0})
    assert total.item() == pytest.approx(CE2 + MSE2, rel=1e-6)
    total.backward()
    # d/ds of the sum = d(CE)/ds + d(MSE)/ds; check against the two separately
    g_total = s.grad.clone()
    s2 = t(S2).requires_grad_(True)
    mle_loss(s2, torch.tensor(Y2)).backward()
    g_ce = s2.grad.clone()
    s3 = t(S2).requires_grad_(True)
    tmkd_loss(s3, t(T2), "mse").backward()
    assert torch.allclose(g_total, g_ce + s3.grad, atol=1e-6)
    # MSE gradient is 2 (s - t) / numel
    assert torch.allclose(s3.grad, 2 * (t(S2) - t(T2)) / 6, atol=1e-7)
    assert math.isfinite(total.item())
