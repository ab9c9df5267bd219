"""Step-aware defaults (issue 17): the committed rule's values, explicit flags always winning, and the resolved
numbers recorded where a run is reproduced from (config.yaml, metrics.json)."""
from __future__ import annotations

import json

import pytest

from conftest import tiny_cfg

from mixkd.core import defaults as D
from mixkd.core.config import MixKDConfig


def test_epochs_reach_the_minimum_number_of_optimizer_steps():
    assert (D.DEFAULT_EPOCHS, D.MIN_STEPS, D.MAX_EPOCHS) == (3.0, 300, 40.0)       # the committed rule
    assert D.epochs_for(673, 32) == 14.0          # SST-2 1%: 22 steps per epoch -> 14 epochs, 308 steps
    assert D.epochs_for(6734, 32) == 3.0          # SST-2 10%: 211 steps per epoch, 3 epochs already reach 300
    assert D.epochs_for(67349, 32) == 3.0         # full data: never fewer than 3 epochs
    assert D.epochs_for(10, 32) == 40.0           # tiny data: capped
    assert D.epochs_for(673, 32, grad_accum=2) == 28.0 and D.epochs_for(673, 32, world_size=2) == 28.0


def test_learning_rate_by_depth():
    assert [D.lr_for_depth(k) for k in (1, 2, 3)] == [3e-4, 3e-4, 3e-4]
    assert D.lr_for_depth(6) == 1e-4 and D.lr_for_depth(12) == 5e-5 and D.lr_for_depth(None) == 5e-5


def test_explicit_flags_always_win():
    cfg = MixKDConfig(task="sst2", lr=2e-5, epochs=1.0)
    assert D.resolve_schedule(cfg, 673, 2) == cfg and D.describe(cfg, cfg) is None
    only_lr = D.resolve_schedule(MixKDConfig(task="sst2", lr=2e-5), 673, 2)
    assert (only_lr.lr, only_lr.epochs) == (2e-5, 14.0)
    steps = D.resolve_schedule(MixKDConfig(task="sst2", max_steps=50), 673, 1)
    assert steps.max_steps == 50 and steps.lr == 3e-4        # --max-steps decides the length; lr still by depth
    auto = D.resolve_schedule(MixKDConfig(task="sst2"), 673, 2)
    assert (auto.lr, auto.epochs) == (3e-4, 14.0)
    line = D.describe(MixKDConfig(), auto, 673)
    assert "lr 0.0003 (by depth)" in line and "epochs 14 (raised to reach 300 optimizer steps: 308 steps)" in line
    # what the line says of the run's length is true of it: a --max-steps cap, or too little data for 300 steps
    capped = MixKDConfig(max_steps=50)
    assert "--max-steps 50 sets the length" in D.describe(capped, D.resolve_schedule(capped, 673, 2), 673)
    small = D.resolve_schedule(MixKDConfig(), 64, 2)
    assert "capped at 40: 80 optimizer steps, short of 300" in D.describe(MixKDConfig(), small, 64)
    assert "300 optimizer steps" not in D.describe(capped, D.resolve_schedule(capped, 673, 2), 673)


def test_a_run_records_the_resolved_numbers(tiny_teacher_run, small_glue_dir, tmp_path, capsys):
    from mixkd.jobs.run import distill
    out = tmp_path / "s"
    m = distill(tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant="ft", student_layers=1,
                         output_dir=str(out), epochs=None, lr=None, max_train_samples=64, allow_subset_mismatch=True))
    saved = MixKDConfig.from_yaml(out / "config.yaml")
    assert (saved.lr, saved.epochs) == (3e-4, 40.0)              # 64 rows, batch 16: 4 steps per epoch, capped
    assert m["steps"] == 160 and "epochs 40 (capped at 40: 160 optimizer steps, short of 300" in m["defaults_rule"]
    assert "step-aware defaults" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["defaults_rule"] == m["defaults_rule"]
    # explicit flags: nothing chosen, nothing said
    m2 = distill(tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant="ft", student_layers=1,
                          output_dir=str(tmp_path / "s2"), epochs=1, lr=1e-3))
    assert m2["defaults_rule"] is None and MixKDConfig.from_yaml(tmp_path / "s2" / "config.yaml").lr == 1e-3


def test_validate_accepts_unset_and_refuses_bad_explicit_values():
    from mixkd.core.config import validate
    from mixkd.core.errors import UsageError
    validate(MixKDConfig(task="sst2", output_dir="x"), "finetune")
    with pytest.raises(UsageError, match="--lr"):
        validate(MixKDConfig(task="sst2", output_dir="x", lr=0.0), "finetune")
    with pytest.raises(UsageError, match="--epochs"):
        validate(MixKDConfig(task="sst2", output_dir="x", epochs=0.0), "finetune")
