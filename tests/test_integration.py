"""The packaged MiniLM (all-MiniLM-L6-v2, alias 'minilm-l6') end to end on a small real SST-2 slice:
fine-tune the teacher, distil a 2-layer sm+tmkd student, and score it again with `mixkd evaluate`."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import tiny_cfg
from mixkd.jobs.run import distill, finetune

pytestmark = pytest.mark.integration

# One intra-op thread: much faster than two on a shared 2-core machine.

MINILM_PARAMS = 22_713_986     # all-MiniLM-L6-v2 encoder + a 2-class head


def test_minilm_finetune_then_sm_tmkd_student(small_glue_dir, minilm_dir, tmp_path):
    common = dict(task="sst2", data_dir=str(small_glue_dir), max_seq_length=64, batch_size=16, eval_batch_size=64)
    teacher = tmp_path / "teacher"
    tm = finetune(tiny_cfg(model="minilm-l6", max_steps=10, lr=1e-4, output_dir=str(teacher), **common))
    assert (teacher / "metrics.json").is_file()
    assert tm["base_model"] == "minilm-l6" and tm["steps"] == 10
    assert tm["params"] == MINILM_PARAMS
    assert tm["layers"] == 6
    assert tm["data"]["dev_rows"] == 64 and tm["data"]["train_rows"] == 256
    assert isinstance(tm["primary_value"], float) and 0.0 <= tm["primary_value"] <= 1.0

    student = tmp_path / "student"
    sm = distill(tiny_cfg(teacher=str(teacher), variant="sm+tmkd", student_layers=2, max_steps=6, eval_steps=3,
                          lr=1e-4, output_dir=str(student), **common))
    assert (student / "metrics.json").is_file()
    assert sm["variant"] == "sm+tmkd" and sm["steps"] == 6
    assert sm["layers"] == 2 and sm["student_layers_kept"] == [0, 1]
    assert sm["teacher_layers"] == 6 and sm["teacher_params"] == MINILM_PARAMS
    assert sm["params"] < tm["params"]
    assert sm["teacher_primary_value"] == tm["primary_value"]
    assert sm["primary_metric"] == "accuracy"
    assert isinstance(sm["primary_value"], float) and 0.0 <= sm["primary_value"] <= 1.0
    rows = [json.loads(x) for x in (student / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]
    assert all(math.isfinite(r[k]) for r in rows for k in ("loss/mle", "loss/sm", "loss/tmkd", "loss/total"))

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               MIXKD_CACHE=str(tmp_path / "cli_cache"), TOKENIZERS_PARALLELISM="false")
    env.pop("GLUE_DIR", None)
    proc = subprocess.run([str(Path(sys.executable).parent / "mixkd"), "evaluate", "--task", "sst2",
                           "--model", str(student), "--data-dir", str(small_glue_dir), "--max-seq-length", "64"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ev = json.loads(proc.stdout)
    assert ev["primary_metric"] == "accuracy"
    assert ev["primary_value"] == sm["primary_value"]
    assert ev["params"] == sm["params"]
