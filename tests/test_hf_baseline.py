"""The race's baseline (experiments/hf_baseline.py): a Hugging Face Trainer with the ft / sm+tmkd loss trains
a tiny student for a few steps, with and without HF's length-grouped sampler."""
from __future__ import annotations

import math
import sys

import pytest
import torch

from conftest import REPO, tiny_cfg

import accelerate  # noqa: F401  (in the test extra: no silent skip when it is missing)
sys.path.insert(0, str(REPO / "experiments"))


@pytest.mark.parametrize("variant, grouped", [("ft", False), ("sm+tmkd", True)])
def test_hf_baseline_trains(variant, grouped, tiny_teacher_run, small_glue_dir, tmp_path):
    from hf_baseline import DistillTrainer
    from transformers import TrainingArguments

    from mixkd.core.data import load_glue
    from mixkd.core.models import build_student, load_classifier, load_tokenizer
    from mixkd.core.tasks import get_task

    task = get_task("sst2")
    tok = load_tokenizer(str(tiny_teacher_run))
    data = load_glue(tiny_cfg(data_dir=str(small_glue_dir), data_fraction=1.0), task, tok)
    teacher = load_classifier(str(tiny_teacher_run), task, new_head=False)
    student = build_student(teacher, 2).requires_grad_(True)
    before = student.classifier.weight.detach().clone()
    kw = {"train_sampling_strategy": "group_by_length"} if grouped else {}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, max_steps=3, learning_rate=1e-3,
                             use_cpu=True, report_to="none", disable_tqdm=True, save_strategy="no", logging_steps=1,
                             **kw)
    trainer = DistillTrainer(model=student, teacher=teacher, variant=variant, args=args, train_dataset=data.train,
                             processing_class=tok)
    calls = []
    if variant == "sm+tmkd":   # the teacher runs once per step, on the mixed batch
        handle = teacher.register_forward_pre_hook(lambda m, a, k: calls.append(k["inputs_embeds"].shape[0]),
                                                   with_kwargs=True)
    out = trainer.train()
    assert out.global_step == 3 and math.isfinite(out.training_loss)
    assert not torch.equal(before, student.classifier.weight.detach())
    if variant == "sm+tmkd":
        handle.remove()
        assert calls == [16, 16, 16]
        assert all(not p.requires_grad for p in teacher.parameters())
