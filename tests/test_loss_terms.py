"""The loss-term table (mixkd.core.terms.TERMS) drives every place that used to name terms by hand.

(1) For each variant, its terms, whether it needs the teacher (trainer and jobs.run), what the trainer's step runs,
its weights and the search space's active knobs are what they were before the table (the values below are
today's, written down from the code before it was derived from the table). (2) A row added in a test (and a
variant using it) shows up in the config's terms and weight check, the trainer's step, jobs.run's teacher loading
and the search space. The report has no list of loss terms (it names variants: report/cells.VARIANT_LABEL), so
there is nothing there to follow the table.
"""
from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from conftest import tiny_cfg
from mixkd.core import terms as loss_terms
from mixkd.core.config import VARIANT_TERMS, VARIANTS, MixKDConfig, validate
from mixkd.core.errors import UsageError
from mixkd.platform.search_space import active

# --- today's values, hard-coded -----------------------------------------------------------------------------

TERMS = {"ft": ("mle",), "kd": ("mle", "kd"), "tmkd": ("mle", "tmkd"), "sm+tmkd": ("mle", "sm", "tmkd"),
         "pkd": ("mle", "kd", "pt")}
NEEDS_TEACHER = {"ft": False, "kd": True, "tmkd": True, "sm+tmkd": True, "pkd": True}
ORDER = ("mle", "sm", "tmkd", "kd", "pt")
WEIGHTS = {"mle": "w_mle", "sm": "a_sm", "tmkd": "a_tmkd", "kd": "a_kd", "pt": "pkd_beta"}
# the knobs search_space.active decided by the variant (and distance); every other field: always active, bt_*
# only with augment bt
TERM_KNOBS = {"w_mle", "a_sm", "a_tmkd", "a_kd", "alpha", "temperature", "pkd_beta", "pkd_layer_map"}
ACTIVE = {("ft", "mse"): {"w_mle"}, ("ft", "kl"): {"w_mle"},
          ("kd", "mse"): {"w_mle", "a_kd", "temperature"}, ("kd", "kl"): {"w_mle", "a_kd", "temperature"},
          ("tmkd", "mse"): {"w_mle", "a_tmkd", "alpha"}, ("tmkd", "kl"): {"w_mle", "a_tmkd", "alpha", "temperature"},
          ("sm+tmkd", "mse"): {"w_mle", "a_sm", "a_tmkd", "alpha"},
          ("sm+tmkd", "kl"): {"w_mle", "a_sm", "a_tmkd", "alpha", "temperature"},
          ("pkd", "mse"): {"w_mle", "a_kd", "temperature", "pkd_beta", "pkd_layer_map"},
          ("pkd", "kl"): {"w_mle", "a_kd", "temperature", "pkd_beta", "pkd_layer_map"}}
# what the step runs: (mixup forward, teacher on the mixed rows, teacher on the original rows, hidden states)
STEP = {"ft": (False, False, False, False), "kd": (False, False, True, False), "tmkd": (True, True, False, False),
        "sm+tmkd": (True, True, False, False), "pkd": (False, False, True, True)}
FIELDS = [f.name for f in fields(MixKDConfig)]


@pytest.fixture(scope="module")
def parts(tiny_teacher_run, small_glue_dir):
    from mixkd.core.data import load_glue
    from mixkd.core.models import load_classifier, load_tokenizer
    from mixkd.core.tasks import get_task
    task = get_task("sst2")
    tok = load_tokenizer(str(tiny_teacher_run))
    data = load_glue(tiny_cfg(data_dir=str(small_glue_dir), data_fraction=1.0, output_dir="unused"), task, tok)
    return task, tok, data, load_classifier(str(tiny_teacher_run), task, new_head=False)


def make_trainer(parts, tmp_path, **kw):
    from mixkd.core.models import build_student
    from mixkd.core.trainer import Trainer
    task, tok, data, teacher = parts
    cfg = validate(tiny_cfg(teacher="unused", data_fraction=1.0, batch_size=8, output_dir=str(tmp_path), **kw),
                   "distill")
    return Trainer(cfg, task, build_student(teacher, 2).requires_grad_(True), tok, data, tmp_path, teacher=teacher)


def one_step(trainer) -> dict[str, float]:
    micro = [trainer.collator(trainer.data.train.__getitems__(list(range(8))))]
    return {k: v.item() for k, v in trainer.train_step(micro).items()}


def distill_teacher(cfg):
    """The teacher jobs.run's distill trains with (None: not loaded for the variant)."""
    from mixkd.jobs.run import _distill_parts
    return _distill_parts(cfg, check_output=False)[5]


# --- (1) the table gives today's values ------------------------------------------------------------------------

def test_the_table():
    assert tuple(loss_terms.TERMS) == ORDER
    assert {n: t.weight for n, t in loss_terms.TERMS.items()} == WEIGHTS
    assert loss_terms.weight_fields() == ["w_mle", "a_sm", "a_tmkd", "a_kd", "pkd_beta"]
    assert loss_terms.knobs() == TERM_KNOBS
    assert loss_terms.condition_fields() == ["distance"]
    assert set(loss_terms.TERMS[n].weight for n in ORDER) <= set(FIELDS)
    for variant, terms in VARIANT_TERMS.items():   # every variant's terms are rows of the table
        assert all(t in loss_terms.TERMS for t in terms), variant
    assert VARIANTS == tuple(TERMS) and dict(VARIANT_TERMS) == TERMS
    cfg = MixKDConfig(w_mle=0.5, a_sm=2.0, a_tmkd=3.0, a_kd=4.0, pkd_beta=50.0)
    assert loss_terms.weights(cfg) == {"mle": 0.5, "sm": 2.0, "tmkd": 3.0, "kd": 4.0, "pt": 50.0}


@pytest.mark.parametrize("variant", TERMS)
def test_variant_terms_and_needs(variant):
    cfg = validate(MixKDConfig(task="sst2", teacher="t", output_dir="o", variant=variant), "distill")
    assert cfg.terms == TERMS[variant]
    assert loss_terms.needs_teacher(cfg.terms) == NEEDS_TEACHER[variant]
    assert (loss_terms.uses_mixup(cfg.terms), loss_terms.teacher_on_mixed(cfg.terms),
            loss_terms.teacher_on_originals(cfg.terms), loss_terms.uses_hidden(cfg.terms)) == STEP[variant]


@pytest.mark.parametrize("variant", TERMS)
@pytest.mark.parametrize("distance", ["mse", "kl"])
@pytest.mark.parametrize("augment", ["none", "bt"])
def test_active_knobs_are_todays(variant, distance, augment):
    params = {"variant": variant, "distance": distance, "augment": augment}
    for name in FIELDS:
        if name in TERM_KNOBS:
            want = name in ACTIVE[variant, distance]
        else:
            want = augment == "bt" or not name.startswith("bt_")
        assert active(name, params) == want, (name, params)
    assert {n for n in TERM_KNOBS if active(n, {})} == ACTIVE["sm+tmkd", "mse"]   # the default variant


@pytest.mark.parametrize("weight", list(WEIGHTS.values()))
def test_every_weight_is_checked(weight):
    cfg = MixKDConfig(task="sst2", teacher="t", output_dir="o")
    with pytest.raises(UsageError, match=f"--{weight.replace('_', '-')} -1.0 is invalid: loss weights must be >= 0"):
        validate(cfg.replace(**{weight: -1.0}), "distill")


@pytest.mark.parametrize("variant", TERMS)
def test_trainer_and_run_follow_the_table(parts, tmp_path, tiny_teacher_run, small_glue_dir, variant):
    trainer = make_trainer(parts, tmp_path, variant=variant)
    assert trainer.needs_teacher == NEEDS_TEACHER[variant] and (trainer.teacher is not None) == NEEDS_TEACHER[variant]
    assert (trainer.mixup, trainer.teacher_on_mixed, trainer.teacher_on_originals, trainer.hidden) == STEP[variant]
    assert (trainer.teacher_cache is not None) == STEP[variant][2]   # --teacher-outputs cache (the default)
    assert trainer.weights == {t: getattr(trainer.cfg, w) for t, w in WEIGHTS.items()}
    totals = one_step(trainer)
    assert list(totals) == [*TERMS[variant], "total"]   # the table's order
    cfg = tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant=variant, student_layers=2,
                   output_dir=str(tmp_path / "run"))
    assert (distill_teacher(cfg) is not None) == NEEDS_TEACHER[variant]


# --- (2) a row added to the table -----------------------------------------------------------------------------

def _logit_mse(o):
    """The new term: MSE between the student's and the teacher's logits on the original rows."""
    return torch.nn.functional.mse_loss(o.logits.float(), o.t_logits.float())


@pytest.fixture
def new_term(monkeypatch):
    """A term 'lmse' (teacher, original rows) weighted by a field no term used (warmup_ratio, a dummy: the config
    has no field for it) and searching weight_decay, and a variant 'lmse' training mle + lmse."""
    row = loss_terms.Term("lmse", _logit_mse, "warmup_ratio", teacher=True, knobs=("weight_decay",))
    monkeypatch.setitem(loss_terms.TERMS, "lmse", row)
    monkeypatch.setitem(VARIANT_TERMS, "lmse", ("mle", "lmse"))
    return row


def test_a_new_term_reaches_config_and_search_space(new_term):
    cfg = validate(MixKDConfig(task="sst2", teacher="t", output_dir="o", variant="lmse", warmup_ratio=0.5),
                   "distill")
    assert cfg.terms == ("mle", "lmse") and loss_terms.needs_teacher(cfg.terms)
    assert loss_terms.weights(cfg)["lmse"] == 0.5
    with pytest.raises(UsageError, match="--warmup-ratio -1.0 is invalid: loss weights must be >= 0"):
        validate(cfg.replace(warmup_ratio=-1.0), "distill")   # its weight is checked as a weight
    for name in ("warmup_ratio", "weight_decay"):   # searched for lmse only
        assert active(name, {"variant": "lmse"})
        assert not any(active(name, {"variant": v}) for v in TERMS)
    assert active("alpha", {"variant": "lmse"}) is False and active("w_mle", {"variant": "lmse"})
    import optuna

    from mixkd.platform.search_space import DefineByRun, build_space
    for variant, want in (("lmse", True), ("ft", False)):
        space = {"variant": {"type": "choice", "values": [variant]},
                 "weight_decay": {"type": "uniform", "low": 0.0, "high": 0.1}}
        if variant == "lmse":
            space = build_space(space)   # validates the new variant and finds weight_decay used
        trial = optuna.create_study().ask()
        DefineByRun(space)(trial)
        assert ("weight_decay" in trial.params) == want, (variant, trial.params)


def test_a_new_term_reaches_trainer_and_run(new_term, parts, tmp_path, tiny_teacher_run, small_glue_dir):
    trainer = make_trainer(parts, tmp_path, variant="lmse", warmup_ratio=0.5)
    assert trainer.needs_teacher and trainer.teacher_on_originals and trainer.teacher_cache is not None
    assert trainer.weights["lmse"] == 0.5
    totals = one_step(trainer)
    assert list(totals) == ["mle", "lmse", "total"]
    assert totals["lmse"] > 0
    assert totals["total"] == pytest.approx(totals["mle"] + 0.5 * totals["lmse"], rel=1e-5)
    cfg = tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant="lmse", student_layers=2,
                   output_dir=str(tmp_path / "run"))
    assert distill_teacher(cfg) is not None   # jobs.run keeps the teacher for it
    assert distill_teacher(cfg.replace(variant="ft")) is None
