"""End-to-end tests of the training loop through the Python API (mixkd.jobs.run / mixkd.core.trainer).

Tiny random BERTs (32 wide) on the small real GLUE slices; CPU only, offline.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_bert, tiny_cfg
from mixkd.core.config import MixKDConfig, validate
from mixkd.core.errors import NonFiniteLossError, UsageError
from mixkd.jobs.run import distill, finetune

# One intra-op thread: on a shared 2-core machine, 2 OpenMP threads make tiny models ~20x slower.

VARIANTS = ("ft", "kd", "tmkd", "sm+tmkd")
ACTIVE_TERMS = {"ft": {"mle"}, "kd": {"mle", "kd"}, "tmkd": {"mle", "tmkd"}, "sm+tmkd": {"mle", "sm", "tmkd"}}
ALL_TERMS = {"mle", "sm", "tmkd", "kd"}
WEIGHT_SUFFIXES = {".bin", ".pkl", ".pickle", ".pth", ".ckpt", ".h5", ".msgpack"}

# Settings under which every variant's training loss clearly drops on the 256-row SST-2 slice
# (2-layer student, 8 epochs = 128 steps, one eval row per epoch). The last row's loss is ~0.05x (ft)
# to ~0.66x (sm+tmkd) the first's with torch 2.13 on CPU; the test asks for < 0.85x.
LEARNING = dict(student_layers=2, epochs=8, eval_steps=16, lr=3e-3)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]


def read_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_weights(a), load_weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ between {a} and {b}, e.g. {different[:3]}"


LOG_RUNTIME_KEYS = {"train_time_s", "train_examples_per_s"}


def comparable(rows: list[dict]) -> list[dict]:
    """Log rows without the wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in LOG_RUNTIME_KEYS} for r in rows]


# --- the four variants end to end -------------------------------------------------------------

@pytest.fixture(scope="module", params=VARIANTS)
def variant_run(request, tmp_path_factory, tiny_teacher_run, small_glue_dir):
    variant = request.param
    out = tmp_path_factory.mktemp("variant") / variant.replace("+", "_")
    result = distill(tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant=variant,
                              output_dir=str(out), **LEARNING))
    return variant, out, result


def test_training_loss_decreases(variant_run):
    variant, run, _ = variant_run
    rows = read_log(run)
    assert len(rows) == 8, f"expected one eval row per epoch (8), got {len(rows)}"
    assert [r["step"] for r in rows] == list(range(16, 129, 16))
    first, last = rows[0]["loss/total"], rows[-1]["loss/total"]
    assert all(math.isfinite(r["loss/total"]) for r in rows)
    assert last < 0.85 * first, (
        f"{variant}: training loss did not go down: first eval row {first:.4f}, last {last:.4f}; "
        f"all: {[round(r['loss/total'], 4) for r in rows]}")
    if variant == "sm+tmkd":
        for r in rows:
            assert math.isfinite(r["loss/sm"]) and r["loss/sm"] > 0
            assert math.isfinite(r["loss/tmkd"]) and r["loss/tmkd"] >= 0


def test_log_rows_hold_every_active_term(variant_run):
    variant, run, _ = variant_run
    active = ACTIVE_TERMS[variant]
    w = dict(mle=1.0, sm=1.0, tmkd=1.0, kd=1.0)   # the default weights
    for row in read_log(run):
        logged = {k.split("/", 1)[1] for k in row if k.startswith("loss/")}
        assert logged == active | {"total"}, f"{variant} step {row['step']}: logged {sorted(logged)}"
        # the total is the weighted sum of the active terms (averaged over the same steps)
        assert row["loss/total"] == pytest.approx(sum(w[t] * row[f"loss/{t}"] for t in active), rel=1e-5)
        assert "eval/accuracy" in row and 0.0 <= row["eval/accuracy"] <= 1.0
        assert row["primary"] == row["eval/accuracy"]


def test_run_dir_layout(variant_run, tiny_teacher_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    variant, run, result = variant_run
    # config.yaml: the resolved config (subset filled in from the teacher)
    saved = MixKDConfig.from_yaml(run / "config.yaml")
    assert saved.variant == variant and saved.task == "sst2"
    assert saved.data_fraction == 1.0 and saved.student_layers == 2
    # metrics.json
    m = read_metrics(run)
    assert m == json.loads(json.dumps(result, default=str))
    assert m["task"] == "sst2" and m["variant"] == variant and m["command"] == "distill"
    assert m["primary_metric"] == "accuracy"
    assert set(m["metrics"]) == {"accuracy"}
    assert m["primary_value"] == m["metrics"]["accuracy"]
    assert isinstance(m["primary_value"], float) and 0.0 <= m["primary_value"] <= 1.0
    assert m["steps"] == 128 and m["layers"] == 2
    assert m["teacher_layers"] == 4 and m["student_layers_kept"] == [0, 1]
    assert 0 < m["params"] < m["teacher_params"]
    assert m["teacher_params"] == read_metrics(tiny_teacher_run)["params"]
    # model/: a loadable HF classifier with the task's head and a tokenizer
    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.num_labels == 2
    assert model.config.num_hidden_layers == 2
    assert sum(p.numel() for p in model.parameters()) == m["params"]
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert tok("a fine film")["input_ids"][0] == tok.cls_token_id
    assert (run / "model" / "model.safetensors").is_file()
    assert not (run / "model" / "trainer_state.pt").exists()
    # checkpoints/last: weights + trainer state
    last = run / "checkpoints" / "last"
    assert (last / "model.safetensors").is_file() and (last / "trainer_state.pt").is_file()
    # no pickled weights and no leftover temp dirs anywhere
    for p in run.rglob("*"):
        assert p.suffix not in WEIGHT_SUFFIXES, f"non-safetensors weights file {p}"
        if p.suffix == ".pt":
            assert p.name == "trainer_state.pt", f"unexpected torch pickle {p}"
        assert not p.name.endswith((".tmp", ".old")), f"leftover temp file {p}"


# --- which model runs when --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trainer_parts(tiny_teacher_run, small_glue_dir):
    from mixkd.core.data import load_glue
    from mixkd.core.models import load_classifier, load_tokenizer
    from mixkd.core.tasks import get_task

    task = get_task("sst2")
    tok = load_tokenizer(str(tiny_teacher_run))
    cfg = tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), data_fraction=1.0,
                   output_dir="unused")
    data = load_glue(cfg, task, tok)
    teacher = load_classifier(str(tiny_teacher_run), task, new_head=False)
    return task, tok, data, teacher


class CallLog:
    """Counts the top-level forward calls of a module and the batch size of each."""

    def __init__(self, module: torch.nn.Module):
        self.sizes: list[int] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, out):   # rows scored by one forward (padded or packed: one logit row per row)
        self.sizes.append(int(out.logits.shape[0]))

    def close(self):
        self.handle.remove()


@pytest.mark.parametrize("variant, mixup_ratio, grad_accum", [
    ("ft", 1, 1), ("kd", 1, 1), ("tmkd", 1, 1), ("sm+tmkd", 1, 1),
    ("sm+tmkd", 2, 1), ("tmkd", 2, 1), ("kd", 1, 2), ("sm+tmkd", 1, 2),
])
def test_teacher_and_student_calls_per_step(trainer_parts, tmp_path, variant, mixup_ratio, grad_accum):
    from mixkd.core.models import build_student
    from mixkd.core.trainer import Trainer

    task, tok, data, teacher = trainer_parts
    B = 8
    cfg = validate(tiny_cfg(teacher="unused", variant=variant, mixup_ratio=mixup_ratio, batch_size=B,
                            grad_accum=grad_accum, data_fraction=1.0, output_dir=str(tmp_path)), "distill")
    student = build_student(teacher, 2).requires_grad_(True)   # the shared teacher may be frozen already
    trainer = Trainer(cfg, task, student, tok, data, tmp_path, teacher=teacher)
    t_calls, s_calls = CallLog(teacher), CallLog(student)
    try:
        micro = [trainer.collator(data.train.__getitems__(list(range(i * B, (i + 1) * B))))
                 for i in range(grad_accum)]
        totals = trainer.train_step(micro)
    finally:
        t_calls.close()
        s_calls.close()

    assert set(totals) == ACTIVE_TERMS[variant] | {"total"}
    expected_teacher = {"ft": [], "kd": [B] * grad_accum,
                        "tmkd": [B * mixup_ratio] * grad_accum,
                        "sm+tmkd": [B * mixup_ratio] * grad_accum}[variant]
    assert t_calls.sizes == expected_teacher, (
        f"{variant}: teacher forward batch sizes {t_calls.sizes}, expected {expected_teacher}")
    if variant in ("tmkd", "sm+tmkd"):   # original + mixed rows in one student forward per micro-batch
        expected_student = [B + B * mixup_ratio] * grad_accum
    else:
        expected_student = [B] * grad_accum
    assert s_calls.sizes == expected_student, (
        f"{variant}: student forward batch sizes {s_calls.sizes}, expected {expected_student}")
    if variant == "ft":
        assert trainer.teacher is None
    assert trainer.step == 1


# --- the step on the device --------------------------------------------------------------------

def make_trainer(trainer_parts, tmp_path, teacher=None, **kw):
    from mixkd.core.models import build_student
    from mixkd.core.trainer import Trainer
    task, tok, data, shared_teacher = trainer_parts
    cfg = validate(tiny_cfg(teacher="unused", data_fraction=1.0, output_dir=str(tmp_path), **kw), "distill")
    student = build_student(shared_teacher, 2).requires_grad_(True)
    return Trainer(cfg, task, student, tok, data, tmp_path, teacher=teacher or shared_teacher)


def micro_batches(trainer, n: int, B: int = 8):
    return [trainer.collator(trainer.data.train.__getitems__(list(range(i * B, (i + 1) * B)))) for i in range(n)]


def test_mixup_plan_is_made_on_the_steps_device_once_per_micro_batch(trainer_parts, tmp_path, monkeypatch):
    import mixkd.core.trainer as trainer_module
    trainer = make_trainer(trainer_parts, tmp_path, variant="sm+tmkd", batch_size=8, grad_accum=2)
    plans = []
    real = trainer_module.sample_plan

    def spy(*args, **kw):
        plans.append((kw.get("device"), real(*args, **kw)))
        return plans[-1][1]
    monkeypatch.setattr(trainer_module, "sample_plan", spy)
    trainer.train_step(micro_batches(trainer, 2))
    assert len(plans) == 2   # one per micro-batch, shared by student, teacher and labels
    # a packed run draws it on the host, where the mixed rows' lengths are needed; a padded run on the device
    where = torch.device("cpu") if trainer.packed else trainer.device
    for device, plan in plans:
        assert torch.device(device or "cpu") == where
        assert {plan.index.device, plan.partner.device, plan.lam.device} == {where}


HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


def test_the_step_reads_from_the_device_once_per_optimizer_step(trainer_parts, tmp_path, monkeypatch):
    """Every Tensor method that brings a value to the host, called from mixkd's step code, is counted: one
    read (the NaN check's) per optimizer step of 2 micro-batches. The CPU-only plan draw (derangement,
    sample_plan's CPU path) is left out: off the CPU the plan is made by device_plan, which reads nothing
    (test_mixup's meta-device test). So is the packed layout (row_lengths, layout_of): it is built from the
    collator's host mask before the batch is copied to the device, and only its index tensors go there."""
    import sys
    trainer = make_trainer(trainer_parts, tmp_path, variant="sm+tmkd", batch_size=8, grad_accum=2)
    micro = micro_batches(trainer, 2)
    reads = []
    for name in HOST_READS:
        def counted(self, *a, _real=getattr(torch.Tensor, name), _name=name, **k):
            code = sys._getframe(1).f_code
            if "mixkd/core/" in code.co_filename and code.co_name not in ("derangement", "sample_plan",
                                                                                  "row_lengths", "layout_of"):
                reads.append((_name, code.co_name))
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    totals = trainer.train_step(micro)
    monkeypatch.undo()
    assert reads == [("item", "train_step")]
    assert set(totals) == {"mle", "sm", "tmkd", "total"}
    assert all(v.device == trainer.device and v.dim() == 0 for v in totals.values())   # still on the device
    assert float(totals["total"]) == trainer.last_total


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_teacher_is_held_in_bf16_when_the_step_runs_in_bf16(trainer_parts, tmp_path, precision, dtype):
    import copy
    teacher = copy.deepcopy(trainer_parts[3])
    trainer = make_trainer(trainer_parts, tmp_path, teacher=teacher, variant="sm+tmkd", batch_size=8,
                           precision=precision)
    assert {p.dtype for p in trainer.teacher.parameters()} == {dtype}
    assert {p.dtype for p in trainer.student.parameters()} == {torch.float32}   # fp32 master weights
    totals = trainer.train_step(micro_batches(trainer, 1))
    assert all(math.isfinite(float(v)) for v in totals.values())


# --- resume -----------------------------------------------------------------------------------

class InterruptAtFirstEval:
    def __init__(self):
        self.calls = 0

    def __call__(self, row, ckpt):
        self.calls += 1
        assert (ckpt / "trainer_state.pt").is_file()
        raise KeyboardInterrupt


def test_resume_equals_uninterrupted_run(tiny_teacher_run, small_glue_dir, tmp_path):
    # 16 steps per epoch: the run is interrupted and resumed mid-epoch, and crosses an epoch boundary.
    # epochs=1.0 (a float, as the CLI and config.yaml give it): see test_resume_accepts_api_config_with_int_values
    kw = dict(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant="sm+tmkd", student_layers=2,
              max_steps=24, eval_steps=8, final_model="last", epochs=1.0)
    a, b = tmp_path / "a", tmp_path / "b"
    ma = distill(tiny_cfg(output_dir=str(a), **kw))

    stop = InterruptAtFirstEval()
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_cfg(output_dir=str(b), **kw), callbacks=[stop])
    assert stop.calls == 1
    assert not (b / "metrics.json").exists(), "an interrupted run must not have metrics.json"
    assert not (b / "model").exists()
    assert (b / "checkpoints" / "last" / "trainer_state.pt").is_file()
    assert [r["step"] for r in read_log(b)] == [8]

    mb = distill(tiny_cfg(output_dir=str(b), resume=True, **kw))
    assert mb["steps"] == ma["steps"] == 24
    assert_same_weights(a / "model" / "model.safetensors", b / "model" / "model.safetensors")
    rows_a, rows_b = comparable(read_log(a)), comparable(read_log(b))
    assert [r["step"] for r in rows_a] == [8, 16, 24]
    assert rows_a == rows_b
    assert ma["metrics"] == mb["metrics"]
    assert ma["config_hash"] == mb["config_hash"]


def test_resume_accepts_api_config_with_int_values(tiny_teacher_run, small_glue_dir, tmp_path):
    """Resuming with the very config object that started the run must work through the Python API.

    tiny_cfg passes epochs=1 (an int, natural in Python); config.yaml stores it and reads it back as 1.0,
    so the resume check must not see a "different config".
    """
    cfg = tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant="ft", student_layers=1,
                   max_steps=4, eval_steps=2, output_dir=str(tmp_path / "run"))
    assert cfg.epochs == 1
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, callbacks=[InterruptAtFirstEval()])
    assert not (tmp_path / "run" / "metrics.json").exists()
    m = distill(cfg.replace(resume=True))
    assert m["steps"] == 4
    assert [r["step"] for r in read_log(tmp_path / "run")] == [2, 4]


# --- non-finite loss --------------------------------------------------------------------------

def test_nan_loss_names_step_and_term(tiny_teacher_run, small_glue_dir, tmp_path, monkeypatch):
    import mixkd.core.losses

    real = mixkd.core.losses.tmkd_loss
    calls = {"n": 0}

    def tmkd_nan_from_step_3(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] >= 3 else value

    monkeypatch.setattr(mixkd.core.losses, "tmkd_loss", tmkd_nan_from_step_3)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError) as info:
        distill(tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant="sm+tmkd",
                         student_layers=2, max_steps=5, output_dir=str(out)))
    err = info.value
    assert err.step == 3 and err.term == "tmkd" and math.isnan(err.value)
    assert "step 3" in str(err) and "'tmkd'" in str(err)
    assert not (out / "metrics.json").exists()


# --- determinism ------------------------------------------------------------------------------

def test_identical_ft_runs_are_identical(tiny_teacher_run, small_glue_dir, tmp_path):
    kw = dict(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant="ft", student_layers=2,
              max_steps=12, eval_steps=6, lr=3e-3)
    m1 = distill(tiny_cfg(output_dir=str(tmp_path / "r1"), **kw))
    m2 = distill(tiny_cfg(output_dir=str(tmp_path / "r2"), **kw))
    assert m1["metrics"] == m2["metrics"]
    assert m1["config_hash"] == m2["config_hash"]
    assert_same_weights(tmp_path / "r1" / "model" / "model.safetensors",
                        tmp_path / "r2" / "model" / "model.safetensors")
    assert comparable(read_log(tmp_path / "r1")) == comparable(read_log(tmp_path / "r2"))
    # and training did change the weights (the comparison is not vacuous)
    w0 = load_weights(tiny_teacher_run / "model" / "model.safetensors")
    w1 = load_weights(tmp_path / "r1" / "model" / "model.safetensors")
    k = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(w0[k], w1[k])


# --- data subsets -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def half_teacher(tmp_path_factory, tiny_bert_dir, small_glue_dir):
    out = tmp_path_factory.mktemp("half_teacher") / "run"
    finetune(tiny_cfg(model=str(tiny_bert_dir), data_dir=str(small_glue_dir), data_fraction=0.5, max_steps=2,
                      output_dir=str(out)))
    return out


def test_student_inherits_teacher_subset(half_teacher, small_glue_dir, tmp_path):
    t_data = read_metrics(half_teacher)["data"]
    assert t_data["data_fraction"] == 0.5 and t_data["train_rows_subset"] == 128

    m = distill(tiny_cfg(teacher=str(half_teacher), data_dir=str(small_glue_dir), variant="ft", student_layers=1,
                         max_steps=2, output_dir=str(tmp_path / "s")))
    assert m["data"]["data_fraction"] == 0.5
    assert m["data"]["data_seed"] == t_data["data_seed"]
    assert m["data"]["train_rows_subset"] == 128
    assert m["data"]["subset_fingerprint"] == t_data["subset_fingerprint"]
    saved = MixKDConfig.from_yaml(tmp_path / "s" / "config.yaml")
    assert saved.data_fraction == 0.5 and saved.data_seed == t_data["data_seed"]


def test_subset_mismatch_needs_explicit_permission(half_teacher, small_glue_dir, tmp_path):
    kw = dict(teacher=str(half_teacher), data_dir=str(small_glue_dir), variant="ft", student_layers=1, max_steps=2)
    with pytest.raises(UsageError) as info:
        distill(tiny_cfg(data_fraction=0.25, output_dir=str(tmp_path / "bad"), **kw))
    msg = str(info.value)
    assert "0.5" in msg and "0.25" in msg and "--allow-subset-mismatch" in msg
    assert "\n" not in msg
    assert not (tmp_path / "bad" / "metrics.json").exists()

    m = distill(tiny_cfg(data_fraction=0.25, allow_subset_mismatch=True, output_dir=str(tmp_path / "ok"), **kw))
    assert m["data"]["data_fraction"] == 0.25 and m["data"]["train_rows_subset"] == 64
    assert m["data"]["subset_fingerprint"] != read_metrics(half_teacher)["data"]["subset_fingerprint"]


# --- regression and pair tasks ----------------------------------------------------------------

@pytest.mark.parametrize("task, metrics", [("stsb", ("pearson", "spearman")), ("mrpc", ("f1", "accuracy"))])
def test_pair_and_regression_tasks_distill(task, metrics, tmp_path, minilm_dir, small_glue_dir):
    backbone = make_tiny_bert(tmp_path / "backbone", minilm_dir, seed=1)
    teacher = tmp_path / "teacher"
    tm = finetune(tiny_cfg(task=task, model=str(backbone), data_dir=str(small_glue_dir), max_steps=6,
                           output_dir=str(teacher)))
    assert tm["primary_metric"] == metrics[0]

    out = tmp_path / "student"
    m = distill(tiny_cfg(task=task, teacher=str(teacher), data_dir=str(small_glue_dir), variant="sm+tmkd",
                         student_layers=2, max_steps=6, eval_steps=3, output_dir=str(out)))
    assert m["task"] == task and m["variant"] == "sm+tmkd"
    assert m["primary_metric"] == metrics[0]
    assert set(m["metrics"]) == set(metrics)
    for name in metrics:
        v = m["metrics"][name]
        assert isinstance(v, float) and math.isfinite(v), f"{task} {name} = {v}"
        assert (-1.0 <= v <= 1.0) if task == "stsb" else (0.0 <= v <= 1.0)
    assert m["primary_value"] == m["metrics"][metrics[0]]
    rows = read_log(out)
    assert len(rows) == 2
    for r in rows:
        assert {"loss/mle", "loss/sm", "loss/tmkd", "loss/total"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("loss/mle", "loss/sm", "loss/tmkd"))
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.num_labels == (1 if task == "stsb" else 2)
