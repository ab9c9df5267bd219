"""PKD (Sun et al. 2019, "Patient Knowledge Distillation for BERT Model Compression") as variant `pkd`:
the patient loss's golden values, the PKD-Skip / PKD-Last layer maps, hidden states only when needed,
and an end-to-end tiny run whose loss goes down."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_cfg
from mixkd.core.config import VARIANT_TERMS, MixKDConfig, validate
from mixkd.core.losses import patient_loss, pkd_layer_map

B, L, H = 2, 3, 4


def student_hidden(n_layers=3):
    """hidden_states-like tuple: index 0 = embeddings, i = layer i; values sin(1+i+0.7b+0.3t+1.1h)."""
    b, t, h = torch.meshgrid(torch.arange(B), torch.arange(L), torch.arange(H), indexing="ij")
    return tuple(torch.sin(1 + i + 0.7 * b + 0.3 * t + 1.1 * h).double() for i in range(n_layers + 1))


def teacher_hidden(n_layers=6):
    b, t, h = torch.meshgrid(torch.arange(B), torch.arange(L), torch.arange(H), indexing="ij")
    return tuple((torch.cos(0.5 * j - 0.9 * b + 0.2 * t + 0.8 * h) + 0.1 * j).double() for j in range(n_layers + 1))


# golden values computed independently with numpy in float64 (normalise each [CLS] vector, mean of the
# squared differences over batch x pairs x width) and pasted as literals
PT_SKIP = 0.30270460474353816    # pairs (1, 2), (2, 4)
PT_LAST = 0.3213553158634244     # pairs (1, 4), (2, 5)
PT_ONE = 0.18818893010991009     # pair (1, 3)


@pytest.mark.parametrize("pairs, golden", [([(1, 2), (2, 4)], PT_SKIP), ([(1, 4), (2, 5)], PT_LAST),
                                           ([(1, 3)], PT_ONE)])
def test_patient_loss_golden(pairs, golden):
    assert patient_loss(student_hidden(), teacher_hidden(), pairs).item() == pytest.approx(golden, rel=1e-6)


def test_patient_loss_is_mean_of_unit_vector_distances():
    """Equivalent form: mean over batch and pairs of ||s/|s| - t/|t|||^2 / width = (2 - 2 cos) / width."""
    s, t = student_hidden(), teacher_hidden()
    pairs = [(1, 2), (2, 4)]
    cos = [torch.nn.functional.cosine_similarity(s[i][:, 0], t[j][:, 0], dim=-1) for i, j in pairs]
    want = torch.stack([(2 - 2 * c) / H for c in cos]).mean().item()
    assert patient_loss(s, t, pairs).item() == pytest.approx(want, rel=1e-6)
    assert want == pytest.approx(PT_SKIP, rel=1e-6)


def test_patient_loss_uses_cls_only_and_is_scale_invariant():
    s, t = student_hidden(), teacher_hidden()
    pairs = [(1, 2), (2, 4)]
    base = patient_loss(s, t, pairs).item()
    s2 = tuple(x.clone() for x in s)
    for x in s2:
        x[:, 1:] = 99.0                      # non-[CLS] positions do not matter
        x[:, 0] *= 7.5                       # nor the norm of the [CLS] vector
    assert patient_loss(s2, t, pairs).item() == pytest.approx(base, rel=1e-6)
    # identical directions: zero; opposite: 4 / width
    assert patient_loss(t, t, [(2, 2)]).item() == pytest.approx(0.0, abs=1e-7)
    neg = tuple(-x for x in t)
    assert patient_loss(neg, t, [(3, 3)]).item() == pytest.approx(4.0 / H, rel=1e-6)


def test_patient_loss_has_gradients_for_the_student_only():
    s = tuple(x.clone().float().requires_grad_(True) for x in student_hidden())
    t = tuple(x.float() for x in teacher_hidden())
    patient_loss(s, t, [(1, 2), (2, 4)]).backward()
    assert s[1].grad is not None and s[1].grad[:, 1:].abs().sum() == 0 and s[1].grad[:, 0].abs().sum() > 0
    assert s[0].grad is None and s[3].grad is None       # embeddings and the top layer are not matched


# --- layer maps (Sun et al. 2019, Sec. 3.2) ---------------------------------------------------------

def test_pkd_skip_and_last_maps_for_a_12_layer_teacher():
    # PKD-Skip: every N/k-th layer; PKD-Last: the k-1 layers below the top (1-based teacher layers)
    assert pkd_layer_map(12, 6, "skip") == [2, 4, 6, 8, 10]
    assert pkd_layer_map(12, 3, "skip") == [4, 8]
    assert pkd_layer_map(12, 6, "last") == [7, 8, 9, 10, 11]
    assert pkd_layer_map(12, 3, "last") == [10, 11]
    # the teacher's top layer is never matched (the logit KD covers it); one pair per student layer 1..k-1
    for k in range(1, 13):
        for strategy in ("skip", "last"):
            m = pkd_layer_map(12, k, strategy)
            assert len(m) == k - 1 and all(1 <= j < 12 for j in m) and m == sorted(set(m))


def test_pkd_skip_matches_the_skip_init():
    """With --layer-strategy skip, student layer i was copied from teacher layer round(i*N/k): PKD-Skip
    matches it to that same layer."""
    from mixkd.core.models import select_layers
    for n, k in ((12, 6), (12, 3), (12, 4), (6, 2), (6, 4), (4, 3)):
        kept = [j + 1 for j in select_layers(n, k, "skip")]          # 1-based teacher layers of the init
        assert pkd_layer_map(n, k, "skip") == kept[:-1]
        assert pkd_layer_map(n, k, "last") == [j + 1 for j in select_layers(n, k, "last")][:-1]


def test_pkd_layer_map_rejects_bad_input():
    with pytest.raises(ValueError):
        pkd_layer_map(6, 7, "skip")
    with pytest.raises(ValueError):
        pkd_layer_map(12, 3, "first")


@pytest.mark.parametrize("layer_strategy, layer_map, want", [
    ("first", "auto", [(1, 4), (2, 8)]), ("skip", "auto", [(1, 4), (2, 8)]), ("last", "auto", [(1, 10), (2, 11)]),
    ("first", "last", [(1, 10), (2, 11)]), ("last", "skip", [(1, 4), (2, 8)]),
])
def test_pkd_pairs_follow_the_student_init(layer_strategy, layer_map, want, minilm_dir, tmp_path):
    from conftest import make_tiny_bert
    from mixkd.core.models import build_student, load_classifier
    from mixkd.core.tasks import get_task
    from mixkd.core.trainer import pkd_pairs
    teacher = load_classifier(str(make_tiny_bert(tmp_path / "t12", minilm_dir, layers=12, hidden=8, num_labels=2)),
                              get_task("sst2"), new_head=False)
    student = build_student(teacher, 3, layer_strategy)
    cfg = MixKDConfig(variant="pkd", layer_strategy=layer_strategy, pkd_layer_map=layer_map, student_layers=3)
    assert pkd_pairs(cfg, teacher, student) == want


# --- config and search space ------------------------------------------------------------------------

def test_pkd_config():
    assert VARIANT_TERMS["pkd"] == ("mle", "kd", "pt")
    cfg = MixKDConfig(task="sst2", teacher="t", output_dir="o", variant="pkd")
    assert validate(cfg, "distill").terms == ("mle", "kd", "pt")
    from mixkd.core.errors import UsageError
    with pytest.raises(UsageError, match="--pkd-beta"):
        validate(cfg.replace(pkd_beta=-1.0), "distill")
    with pytest.raises(UsageError, match="--pkd-layer-map"):
        validate(cfg.replace(pkd_layer_map="first"), "distill")


def test_pkd_beta_is_searched_only_for_pkd():
    from mixkd.platform.search_space import DEFAULT_SPACE, active, build_space
    assert "pkd" in DEFAULT_SPACE["variant"]["values"] and "pkd_beta" in DEFAULT_SPACE
    assert active("pkd_beta", {"variant": "pkd"}) and active("temperature", {"variant": "pkd"})
    assert active("a_kd", {"variant": "pkd"}) and not active("alpha", {"variant": "pkd"})
    for v in ("ft", "kd", "tmkd", "sm+tmkd"):
        assert not active("pkd_beta", {"variant": v})
    build_space({"pkd_beta": {"type": "loguniform", "low": 10, "high": 1000}})
    import optuna
    from mixkd.platform.search_space import DefineByRun
    for variant, expect in (("pkd", True), ("kd", False)):
        study = optuna.create_study()
        trial = study.ask()
        DefineByRun(build_space({"variant": {"type": "choice", "values": [variant]}}))(trial)
        assert ("pkd_beta" in trial.params) == expect, (variant, trial.params)


# --- the trainer --------------------------------------------------------------------------------------

class KwargLog:
    """Records whether each top-level forward asked for hidden states."""

    def __init__(self, module):
        self.flags = []
        self.handle = module.register_forward_pre_hook(
            lambda m, a, kw: self.flags.append(bool(kw.get("output_hidden_states"))), with_kwargs=True)

    def close(self):
        self.handle.remove()


@pytest.fixture(scope="module")
def parts(tiny_teacher_run, small_glue_dir):
    from transformers import AutoTokenizer
    from mixkd.core.data import load_glue
    from mixkd.core.models import load_classifier
    from mixkd.core.tasks import get_task
    task = get_task("sst2")
    tok = AutoTokenizer.from_pretrained(str(tiny_teacher_run / "model"))
    data = load_glue(tiny_cfg(data_dir=str(small_glue_dir), data_fraction=1.0), task, tok)
    teacher = load_classifier(str(tiny_teacher_run), task, new_head=False)
    return task, tok, data, teacher


@pytest.mark.parametrize("variant", ["pkd", "kd", "sm+tmkd", "ft"])
def test_hidden_states_are_requested_only_for_pkd(variant, parts, tmp_path):
    from mixkd.core.models import build_student
    from mixkd.core.trainer import Trainer
    task, tok, data, teacher = parts
    cfg = validate(tiny_cfg(teacher="unused", variant=variant, batch_size=8, data_fraction=1.0,
                            output_dir=str(tmp_path)), "distill")
    student = build_student(teacher, 2).requires_grad_(True)
    trainer = Trainer(cfg, task, student, tok, data, tmp_path, teacher=teacher)
    s_log, t_log = KwargLog(student), KwargLog(teacher)
    try:
        totals = trainer.train_step([trainer.collator(data.train.__getitems__(list(range(8))))])
    finally:
        s_log.close()
        t_log.close()
    if variant == "pkd":
        assert s_log.flags == [True] and t_log.flags == [True]
        assert set(totals) == {"mle", "kd", "pt", "total"} and totals["pt"] > 0
        t = {k: float(v) for k, v in totals.items()}   # 0-d device tensors
        assert t["total"] == pytest.approx(t["mle"] + t["kd"] + 100.0 * t["pt"], rel=1e-5)
        assert trainer.pkd_pairs == [(1, 2)]          # 4-layer tiny teacher -> 2 layers: skip map {2}
    else:
        assert not any(s_log.flags) and not any(t_log.flags)
        assert "pt" not in totals


def test_one_layer_student_has_zero_patient_loss(parts, tmp_path):
    from mixkd.core.models import build_student
    from mixkd.core.trainer import Trainer
    task, tok, data, teacher = parts
    cfg = validate(tiny_cfg(teacher="unused", variant="pkd", student_layers=1, batch_size=8, data_fraction=1.0,
                            output_dir=str(tmp_path)), "distill")
    with pytest.warns(UserWarning, match="1-layer student"):
        trainer = Trainer(cfg, task, build_student(teacher, 1).requires_grad_(True), tok, data, tmp_path,
                          teacher=teacher)
    totals = trainer.train_step([trainer.collator(data.train.__getitems__(list(range(8))))])
    assert trainer.pkd_pairs == [] and totals["pt"] == 0.0


def test_pkd_run_end_to_end_loss_goes_down(tiny_teacher_run, small_glue_dir, tmp_path):
    from mixkd.jobs.run import distill
    out = tmp_path / "pkd"
    result = distill(tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant="pkd",
                              student_layers=2, layer_strategy="skip", epochs=8, eval_steps=16, lr=3e-3,
                              temperature=4.0, pkd_beta=10.0, output_dir=str(out),
                              # the threshold below was set on the padded path's dropout draws (packed draws are
                              # equal in distribution only; test_packing proves the two paths compute the same)
                              packing="off"))
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    for r in rows:
        assert {k for k in r if k.startswith("loss/")} == {"loss/mle", "loss/kd", "loss/pt", "loss/total"}
        assert r["loss/total"] == pytest.approx(r["loss/mle"] + r["loss/kd"] + 10.0 * r["loss/pt"], rel=1e-5)
        assert all(math.isfinite(r[k]) for k in r if k.startswith("loss/"))
    first, last = rows[0], rows[-1]
    assert last["loss/total"] < 0.85 * first["loss/total"], [round(r["loss/total"], 4) for r in rows]
    assert last["loss/pt"] < first["loss/pt"], [round(r["loss/pt"], 5) for r in rows]
    m = json.loads((out / "metrics.json").read_text())
    assert m["variant"] == "pkd" and m["pkd_layer_pairs"] == [[1, 2]] and m["layers"] == 2
    assert result["primary_metric"] == "accuracy" and 0.0 <= result["primary_value"] <= 1.0
