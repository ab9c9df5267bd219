"""Mixup on word embeddings: partner sampling, lambda sampling, mixed model inputs and mixed labels."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_bert
from mixkd.core.mixup import (MixPlan, derangement, device_derangement, device_plan, mix_embeddings, mix_labels,
                              mixed_inputs, sample_plan)


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_clf(tmp_path_factory, minilm_dir):
    """A 2-layer, 32-wide random BertForSequenceClassification (3 labels) in eval mode."""
    from transformers import BertForSequenceClassification
    path = make_tiny_bert(tmp_path_factory.mktemp("mixup_bert"), minilm_dir, layers=2, hidden=32, num_labels=3,
                          seed=1)
    model = BertForSequenceClassification.from_pretrained(path)
    model.eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # the default init (std 0.02) makes a tiny random BERT's logits nearly input-independent;
        # larger weights make every check below sensitive to the input it is given
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        # a random BERT's [PAD] row (padding_idx) is all zeros; a pretrained one is not
        assert model.config.pad_token_id == 0
        model.bert.embeddings.word_embeddings.weight[0].copy_(torch.randn(32, generator=g))
    return model


def pair_batch():
    """4 sentence-pair rows, length 9: rows 0-2 unpadded, row 3 padded after 6 tokens.
    ids: [CLS]=101, [SEP]=102, [PAD]=0; ordinary word ids are arbitrary vocab entries."""
    cls, sep, pad = 101, 102, 0
    rows = [
        [cls, 2023, 2003, 1037, sep, 2178, 6251, 2182, sep],
        [cls, 7592, 2088, sep, 2129, 2024, 2017, 2651, sep],
        [cls, 1045, 2066, 4937, 2015, sep, 2053, 2123, sep],
        [cls, 3899, sep, 4937, 2003, sep, pad, pad, pad],
    ]
    tt = [
        [0, 0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1, 1],
        [0, 0, 0, 0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 0, 0, 0],
    ]
    mask = [[1] * 9, [1] * 9, [1] * 9, [1] * 6 + [0] * 3]
    return {"input_ids": torch.tensor(rows), "token_type_ids": torch.tensor(tt),
            "attention_mask": torch.tensor(mask)}


def plan(index, partner, lam):
    return MixPlan(torch.tensor(index), torch.tensor(partner), torch.tensor(lam, dtype=torch.float32))


# --- derangement ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", range(2, 51))
def test_derangement_has_no_fixed_point_and_is_permutation(n):
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        p = derangement(n, g)
        assert p.dtype == torch.int64 and p.shape == (n,)
        assert sorted(p.tolist()) == list(range(n)), (n, seed)
        assert not (p == torch.arange(n)).any(), (n, seed, p.tolist())


def test_derangement_n1_is_identity():
    assert derangement(1).tolist() == [0]
    assert derangement(1, torch.Generator().manual_seed(3)).tolist() == [0]


def test_derangement_n2_is_swap():
    for seed in range(10):
        assert derangement(2, torch.Generator().manual_seed(seed)).tolist() == [1, 0]


def test_derangement_deterministic_for_generator_seed_and_varies():
    a = derangement(20, torch.Generator().manual_seed(7))
    b = derangement(20, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    others = {tuple(derangement(20, torch.Generator().manual_seed(s)).tolist()) for s in range(10)}
    assert len(others) > 5


def test_derangement_without_generator_uses_global_rng():
    torch.manual_seed(0)
    a = derangement(10)
    torch.manual_seed(0)
    b = derangement(10)
    assert torch.equal(a, b)
    assert not (a == torch.arange(10)).any()


# --- sample_plan ------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [1, 3])
def test_sample_plan_shapes_and_partners(ratio):
    B = 7
    torch.manual_seed(0)
    p = sample_plan(B, alpha=0.4, ratio=ratio)
    assert len(p) == B * ratio
    assert p.index.shape == p.partner.shape == p.lam.shape == (B * ratio,)
    assert torch.equal(p.index, torch.arange(B).repeat(ratio))
    for r in range(ratio):
        chunk = p.partner[r * B:(r + 1) * B]
        assert sorted(chunk.tolist()) == list(range(B))
        assert not (chunk == torch.arange(B)).any()
    assert not (p.partner == p.index).any()
    assert ((p.lam >= 0) & (p.lam <= 1)).all()


def test_sample_plan_ratio3_rounds_use_different_partners():
    torch.manual_seed(0)
    p = sample_plan(16, alpha=0.4, ratio=3)
    rounds = [tuple(p.partner[i * 16:(i + 1) * 16].tolist()) for i in range(3)]
    assert len(set(rounds)) == 3


@pytest.mark.parametrize("alpha", [0.4, 2.0])
def test_sample_plan_lambda_matches_beta_moments(alpha):
    torch.manual_seed(123)
    p = sample_plan(1000, alpha=alpha, ratio=20)   # 20,000 lambdas
    lam = p.lam.double()
    assert ((lam >= 0) & (lam <= 1)).all()
    want_var = 1.0 / (4 * (2 * alpha + 1))          # Var of Beta(a, a)
    assert lam.mean().item() == pytest.approx(0.5, abs=0.015)
    assert lam.var().item() == pytest.approx(want_var, rel=0.05)


def test_sample_plan_alpha_04_is_u_shaped():
    # Beta(0.4, 0.4) puts more mass near 0 and 1 than in the middle
    torch.manual_seed(5)
    lam = sample_plan(2000, alpha=0.4, ratio=5).lam
    edges = ((lam < 0.1) | (lam > 0.9)).float().mean().item()
    middle = ((lam > 0.4) & (lam < 0.6)).float().mean().item()
    assert edges > 2 * middle


def test_sample_plan_reproducible_from_the_global_seed():
    """Plans (partners and lambdas) come from the global RNG the trainer seeds and checkpoints."""
    torch.manual_seed(42)
    a = sample_plan(8, alpha=0.4, ratio=2)
    torch.manual_seed(42)
    b = sample_plan(8, alpha=0.4, ratio=2)
    c = sample_plan(8, alpha=0.4, ratio=2)
    assert torch.equal(a.index, b.index)
    assert torch.equal(a.partner, b.partner)
    assert torch.equal(a.lam, b.lam)
    assert not torch.equal(a.lam, c.lam)


# --- mix_embeddings ---------------------------------------------------------------------------

def word_embeds(model, batch):
    return model.get_input_embeddings()(batch["input_ids"]).detach()


@pytest.mark.parametrize("token_types", ["mix", "first"])
def test_lambda_one_zero_padding_gives_original_with_zeroed_pads(tiny_clf, token_types):
    b = pair_batch()
    e = word_embeds(tiny_clf, b)
    pl = plan([0, 1, 2, 3], [3, 2, 3, 0], [1.0, 1.0, 1.0, 1.0])
    out = mix_embeddings(tiny_clf, e, b["attention_mask"], None, pl, padding="zero", token_types=token_types)
    want = e * b["attention_mask"].unsqueeze(-1)
    assert torch.equal(out["inputs_embeds"], want)
    assert torch.equal(out["inputs_embeds"][3, 6:], torch.zeros(3, e.shape[-1]))
    assert "token_type_ids" not in out            # no segment ids given -> none returned


def test_lambda_one_pad_padding_keeps_pad_embedding(tiny_clf):
    b = pair_batch()
    e = word_embeds(tiny_clf, b)
    pl = plan([0, 1, 2, 3], [3, 3, 3, 0], [1.0, 1.0, 1.0, 1.0])
    out = mix_embeddings(tiny_clf, e, b["attention_mask"], b["token_type_ids"], pl, padding="pad",
                         token_types="first")
    assert torch.equal(out["inputs_embeds"], e)
    pad_vec = tiny_clf.get_input_embeddings().weight[0].detach()
    for pos in range(6, 9):
        assert torch.equal(out["inputs_embeds"][3, pos], pad_vec)
    assert torch.equal(out["token_type_ids"], b["token_type_ids"])


def test_lambda_zero_gives_partner(tiny_clf):
    b = pair_batch()
    e = word_embeds(tiny_clf, b)
    pl = plan([0, 1, 2], [2, 0, 1], [0.0, 0.0, 0.0])
    out = mix_embeddings(tiny_clf, e, b["attention_mask"], None, pl, padding="zero")
    assert torch.equal(out["inputs_embeds"], e[[2, 0, 1]])


def test_attention_mask_is_union(tiny_clf):
    b = pair_batch()
    e = word_embeds(tiny_clf, b)
    m = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 1],
                      [1, 1, 1, 1, 0, 0, 0, 0, 0],
                      [1, 1, 1, 1, 1, 1, 1, 0, 0],
                      [1, 1, 0, 0, 0, 0, 0, 0, 0]])
    pl = plan([0, 1, 2, 3, 1, 3], [1, 2, 3, 0, 3, 1], [0.3, 0.6, 0.2, 0.9, 0.5, 0.1])
    for padding in ("zero", "pad"):
        out = mix_embeddings(tiny_clf, e, m, None, pl, padding=padding)
        want = torch.maximum(m[pl.index], m[pl.partner])
        assert torch.equal(out["attention_mask"], want)
    assert out["attention_mask"][4].tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert out["attention_mask"][1].tolist() == [1, 1, 1, 1, 1, 1, 1, 0, 0]


def test_zero_padding_position_where_i_is_padded_is_scaled_partner(tiny_clf):
    b = pair_batch()
    e = word_embeds(tiny_clf, b)
    lam = 0.3
    pl = plan([3], [0], [lam])                   # i = row 3 (padded from 6), j = row 0 (full)
    out = mix_embeddings(tiny_clf, e, b["attention_mask"], None, pl, padding="zero")
    x = out["inputs_embeds"][0]
    assert torch.allclose(x[6:], (1 - lam) * e[0, 6:], atol=1e-7, rtol=0)
    assert torch.allclose(x[:6], lam * e[3, :6] + (1 - lam) * e[0, :6], atol=1e-7, rtol=0)
    assert out["attention_mask"][0].tolist() == [1] * 9
    # with 'pad' the [PAD] embedding takes part instead
    out_pad = mix_embeddings(tiny_clf, e, b["attention_mask"], None, pl, padding="pad")
    pad_vec = tiny_clf.get_input_embeddings().weight[0].detach()
    assert torch.allclose(out_pad["inputs_embeds"][0, 6:], lam * pad_vec + (1 - lam) * e[0, 6:], atol=1e-7, rtol=0)
    assert not torch.allclose(out_pad["inputs_embeds"][0, 6:], x[6:])


def test_general_lambda_is_elementwise_interpolation(tiny_clf):
    b = pair_batch()
    e = word_embeds(tiny_clf, b)
    lams = [0.25, 0.7, 0.5]
    pl = plan([0, 1, 2], [1, 2, 0], lams)
    out = mix_embeddings(tiny_clf, e, b["attention_mask"], None, pl, padding="zero")
    for r, (i, j) in enumerate([(0, 1), (1, 2), (2, 0)]):
        assert torch.allclose(out["inputs_embeds"][r], lams[r] * e[i] + (1 - lams[r]) * e[j], atol=1e-7, rtol=0)


def test_token_types_mix_vs_first(tiny_clf):
    b = pair_batch()
    e = word_embeds(tiny_clf, b)
    table = tiny_clf.bert.embeddings.token_type_embeddings.weight.detach()
    seg = table[b["token_type_ids"]]                 # (4, T, H)
    lam = 0.5
    pl = plan([0], [1], [lam])                       # rows 0 and 1 differ in segment ids at positions 4
    mix = mix_embeddings(tiny_clf, e, b["attention_mask"], b["token_type_ids"], pl, token_types="mix")
    first = mix_embeddings(tiny_clf, e, b["attention_mask"], b["token_type_ids"], pl, token_types="first")
    # what the model adds to inputs_embeds is table[token_type_ids]: compare word+segment sums
    eff_mix = mix["inputs_embeds"][0] + table[mix["token_type_ids"][0]]
    eff_first = first["inputs_embeds"][0] + table[first["token_type_ids"][0]]
    assert torch.allclose(eff_mix, lam * (e[0] + seg[0]) + (1 - lam) * (e[1] + seg[1]), atol=1e-6)
    assert torch.allclose(eff_first, lam * (e[0] + e[1]) + seg[0], atol=1e-6)
    assert torch.equal(mix["token_type_ids"], torch.zeros(1, 9, dtype=torch.long))
    assert torch.equal(first["token_type_ids"], b["token_type_ids"][[0]])
    assert not torch.allclose(eff_mix[4], eff_first[4], atol=1e-3)   # row 0 seg 0, row 1 seg 1 at pos 4
    assert torch.allclose(eff_mix[0], eff_first[0], atol=1e-6)        # both seg 0 at [CLS]


@pytest.mark.parametrize("token_types", ["mix", "first"])
@pytest.mark.parametrize("padding", ["zero", "pad"])
def test_lambda_one_mixed_forward_matches_original_forward(tiny_clf, token_types, padding):
    b = pair_batch()
    pl = plan([0, 1, 2, 3], [1, 2, 0, 3], [1.0, 1.0, 1.0, 1.0])   # padded row 3 paired with itself
    with torch.no_grad():
        ref = tiny_clf(**b).logits
        kw = mixed_inputs(tiny_clf, b, pl, padding=padding, token_types=token_types)
        got = tiny_clf(**kw).logits
    assert set(kw) == {"inputs_embeds", "attention_mask", "token_type_ids"}
    # non-padded rows of equal length: same logits
    assert torch.allclose(got[:3], ref[:3], atol=1e-5, rtol=0), (got[:3], ref[:3])
    # the padded row, mixed with itself, keeps its own mask, so it matches too
    assert torch.equal(kw["attention_mask"][3], b["attention_mask"][3])
    assert torch.allclose(got[3], ref[3], atol=1e-5, rtol=0)
    # the check is not vacuous: the rows' logits differ from each other
    assert (ref[:3] - ref[:3].mean(0)).abs().max() > 1e-2


def test_lambda_one_padded_row_sees_union_mask(tiny_clf):
    # with a full-length partner, even lambda = 1 unmasks the padded positions (mask union),
    # so with zero padding the padded row's logits change
    b = pair_batch()
    pl = plan([3], [0], [1.0])
    with torch.no_grad():
        ref = tiny_clf(**b).logits
        kw = mixed_inputs(tiny_clf, b, pl, padding="zero", token_types="mix")
        got = tiny_clf(**kw).logits
    assert kw["attention_mask"][0].tolist() == [1] * 9
    assert torch.equal(kw["inputs_embeds"][0, 6:], torch.zeros(3, 32))
    assert not torch.allclose(got[0], ref[3], atol=1e-4)


def test_mixed_forward_differs_when_lambda_below_one(tiny_clf):
    b = pair_batch()
    pl = plan([0, 1, 2], [1, 2, 0], [0.5, 0.5, 0.5])
    with torch.no_grad():
        ref = tiny_clf(**b).logits
        got = tiny_clf(**mixed_inputs(tiny_clf, b, pl)).logits
    assert not torch.allclose(got, ref[:3], atol=1e-4)


def test_mixed_inputs_uses_models_own_embeddings_and_is_differentiable(tiny_clf):
    b = pair_batch()
    pl = plan([0, 1], [1, 0], [0.4, 0.6])
    kw = mixed_inputs(tiny_clf, b, pl)
    assert kw["inputs_embeds"].shape == (2, 9, 32)
    assert kw["inputs_embeds"].requires_grad      # gradients reach the student's embedding table
    e = word_embeds(tiny_clf, b)
    direct = mix_embeddings(tiny_clf, e, b["attention_mask"], b["token_type_ids"], pl)
    assert torch.allclose(kw["inputs_embeds"].detach(), direct["inputs_embeds"], atol=1e-7)


# --- mix_labels -------------------------------------------------------------------------------

def test_mix_labels_classification_rows_sum_to_one():
    labels = torch.tensor([0, 2, 1, 2])
    pl = plan([0, 1, 2, 3], [1, 2, 3, 0], [0.3, 0.75, 0.5, 0.1])
    y = mix_labels(labels, pl, num_labels=3, regression=False)
    assert y.shape == (4, 3)
    assert torch.allclose(y.sum(-1), torch.ones(4), atol=1e-6)
    assert torch.allclose(y[0], torch.tensor([0.3, 0.0, 0.0]) + torch.tensor([0.0, 0.0, 0.7]), atol=1e-6)
    assert torch.allclose(y[1], torch.tensor([0.0, 0.25, 0.75]), atol=1e-6)
    assert torch.allclose(y[3], torch.tensor([0.9, 0.0, 0.1]), atol=1e-6)


def test_mix_labels_lambda_one_is_one_hot_of_yi():
    labels = torch.tensor([1, 0, 1, 1])
    pl = plan([0, 1, 2, 3], [1, 0, 3, 1], [1.0] * 4)
    y = mix_labels(labels, pl, num_labels=2, regression=False)
    assert torch.equal(y, F.one_hot(labels, 2).float())
    pl0 = plan([0, 1, 2, 3], [1, 0, 3, 1], [0.0] * 4)
    assert torch.equal(mix_labels(labels, pl0, 2, False), F.one_hot(labels[[1, 0, 3, 1]], 2).float())


def test_mix_labels_same_class_stays_one_hot():
    labels = torch.tensor([1, 1])
    y = mix_labels(labels, plan([0, 1], [1, 0], [0.37, 0.81]), 2, False)
    assert torch.allclose(y, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), atol=1e-6)


def test_mix_labels_regression():
    labels = torch.tensor([1.0, 4.5, 2.0])
    pl = plan([0, 1, 2, 0], [1, 2, 0, 2], [0.2, 0.5, 1.0, 0.0])
    y = mix_labels(labels, pl, num_labels=1, regression=True)
    assert y.shape == (4,)
    want = torch.tensor([0.2 * 1.0 + 0.8 * 4.5, 0.5 * 4.5 + 0.5 * 2.0, 2.0, 2.0])
    assert torch.allclose(y, want, atol=1e-6)
    assert y.dtype == torch.float32


def test_mix_labels_with_ratio_plan():
    labels = torch.tensor([0, 1, 2])
    torch.manual_seed(0)
    p = sample_plan(3, alpha=0.4, ratio=3)
    y = mix_labels(labels, p, 3, False)
    assert y.shape == (9, 3)
    assert torch.allclose(y.sum(-1), torch.ones(9), atol=1e-6)
    lam = p.lam
    assert torch.allclose(y[torch.arange(9), labels[p.index]], lam, atol=1e-6)


# --- the plan on the step's device ------------------------------------------------------------

def test_sample_plan_on_the_cpu_is_drawn_as_before():
    """device=cpu (the trainer's CPU step) takes the CPU path: the same draws as without a device."""
    torch.manual_seed(5)
    a = sample_plan(8, alpha=0.4, ratio=2)
    torch.manual_seed(5)
    b = sample_plan(8, alpha=0.4, ratio=2, device=torch.device("cpu"))
    assert all(torch.equal(x, y) for x, y in zip((a.index, a.partner, a.lam), (b.index, b.partner, b.lam)))


@pytest.mark.parametrize("n", range(1, 10))
def test_device_derangement_has_no_fixed_point_and_is_permutation(n):
    torch.manual_seed(n)
    for _ in range(300):
        p = device_derangement(n, torch.device("cpu"))
        assert sorted(p.tolist()) == list(range(n))
        if n > 1:
            assert not (p == torch.arange(n)).any(), p


@pytest.mark.parametrize("drawn", [[0, 1, 2, 3, 4], [0, 2, 1, 4, 3], [3, 1, 0, 2, 4], [1, 0, 3, 4, 2]])
def test_device_derangement_repairs_every_number_of_fixed_points(drawn, monkeypatch):
    """The drawn permutation is forced (all, one, two, no fixed points); the repair is a derangement."""
    inverse = torch.empty(5)
    inverse[torch.tensor(drawn)] = torch.arange(5.0)   # argsort(inverse) == drawn
    monkeypatch.setattr(torch, "rand", lambda n, device=None: inverse.clone())
    p = device_derangement(5, torch.device("cpu"))
    assert sorted(p.tolist()) == list(range(5)) and not (p == torch.arange(5)).any(), p
    moved = [i for i in range(5) if drawn[i] == i]
    keep = [i for i in range(5) if i not in moved]
    if len(moved) != 1:   # two or more fixed points are rotated among themselves; the others stay
        assert [p[i].item() for i in keep] == [drawn[i] for i in keep]


def test_device_plan_lambda_is_beta_and_partners_differ():
    torch.manual_seed(0)
    p = device_plan(1000, alpha=0.4, ratio=20, device=torch.device("cpu"))
    assert p.lam.shape == p.index.shape == p.partner.shape == (20_000,)
    assert ((p.lam >= 0) & (p.lam <= 1)).all()
    assert p.lam.mean().item() == pytest.approx(0.5, abs=0.01)
    assert p.lam.var().item() == pytest.approx(1 / (4 * (2 * 0.4 + 1)), abs=0.01)
    assert (p.partner != p.index).all()


def test_plan_and_mixing_off_the_cpu_read_nothing_back_to_the_host(tiny_clf):
    """On the meta device no value exists: any read to the host (.item(), bool(), nonzero, a CPU copy)
    would fail, so drawing the plan and mixing inputs and labels there proves the step needs no sync."""
    import copy
    model = copy.deepcopy(tiny_clf).to("meta")
    batch = {k: v.to("meta") for k, v in pair_batch().items()}
    plan = sample_plan(4, alpha=0.4, ratio=2, device="meta")
    assert {plan.index.device.type, plan.partner.device.type, plan.lam.device.type} == {"meta"}
    word = model.get_input_embeddings()(batch["input_ids"])
    out = mix_embeddings(model, word, batch["attention_mask"], batch["token_type_ids"], plan)
    assert out["inputs_embeds"].shape == (8, 9, 32) and out["inputs_embeds"].device.type == "meta"
    y = mix_labels(torch.tensor([0, 1, 2, 1], device="meta"), plan, 3, regression=False)
    assert y.shape == (8, 3) and y.device.type == "meta"
