"""experiments/glue_cpu.py on tiny models: a probe task's setting is chosen on seed 0 first (the first setting whose
ft student learns, applied to every cell), then the lr on seed 0 before the reported seeds run, each phase reuses
the first phase's teacher, each task's stores and files land where a fresh clone continues from, a
finished task is skipped, and the report reads the stores (issue 25)."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import yaml

from test_sweep import FAST_LATENCY, worker_env

REPO = Path(__file__).resolve().parents[1]


def test_glue_cpu_driver_end_to_end(tmp_path, tiny_bert_dir, small_glue_dir, monkeypatch):
    sys.path.insert(0, str(REPO / "experiments"))
    import glue_cpu
    preset = yaml.safe_load((REPO / "mixkd" / "platform" / "presets" / "glue-cpu.yaml").read_text())
    knobs = {"max_steps": 4, "eval_steps": 4, "batch_size": 16, "max_seq_length": 48, "max_eval_samples": 32}
    preset.update(tasks=["mrpc"], teacher_model=str(tiny_bert_dir), data_dir=str(small_glue_dir),
                  teacher={**preset["teacher"], **knobs}, base={**preset["base"], **knobs},
                  grid=[{"variant": "ft", "student_layers": 1}, {"variant": "sm+tmkd", "student_layers": 1}],
                  student_seeds=[1, 2], latency_protocol=FAST_LATENCY)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(preset))
    for k, v in worker_env().items():
        monkeypatch.setenv(k, v)
    results = tmp_path / "results"
    args = ["--preset", str(tmp_path / "p.yaml"), "--results", str(results), "--storage-path", str(tmp_path / "s")]
    # mrpc is a probe task; random tiny students learn nothing, so the verdicts are given: the second setting
    # (deeper) is the first that learns, and every cell then runs one layer deeper
    verdicts = iter([False, True, False])
    monkeypatch.setattr(glue_cpu, "learns", lambda score, chance, teacher: next(verdicts))
    assert glue_cpu.main(args) == 0
    setting = json.loads((results / "mrpc" / "setting.json").read_text())
    assert setting["name"] == "deeper" and setting["layers_added"] == 1 and not setting["none_learns"]
    assert [t["name"] for t in setting["tried"]] == ["default", "deeper", "longer"]
    assert [t["layers"] for t in setting["tried"]] == [glue_cpu.PROBE_DEPTH, glue_cpu.PROBE_DEPTH + 1,
                                                       glue_cpu.PROBE_DEPTH]
    assert setting["tried"][2]["epochs"] == 3 * setting["rule_epochs"]
    assert all(len(t["scores"]) == len(glue_cpu.LR_GRID) for t in setting["tried"])   # ft at both lrs, seed 0
    assert (results / "stores-probe" / "mrpc" / "mlflow.db").is_file()
    choice = json.loads((results / "mrpc" / "lr_choice.json").read_text())
    assert set(choice["chosen"]) == {"ft/2", "sm+tmkd/2"} and choice["select_seed"] == 0
    for c in choice["chosen"].values():   # the chosen lr is the better of the two on seed 0 (ties: the lower)
        best = max(c["scores"].values())
        assert c["lr"] == min(float(lr) for lr, v in c["scores"].items() if v == best)
    rows = list(csv.DictReader(open(results / "mrpc" / "runs.csv")))
    assert sorted((r["variant"], r["seed"]) for r in rows) == [("ft", "1"), ("ft", "2"), ("sm+tmkd", "1"),
                                                              ("sm+tmkd", "2")]
    for r in rows:   # every reported run used its arm's chosen lr
        assert float(r["lr"]) == choice["chosen"][f"{r['variant']}/2"]["lr"] and r["student_layers"] == "2"
    done = json.loads((results / "mrpc" / "done.json").read_text())
    assert done["runs"] == 4 and done["teacher_weights_identical_in_every_session"] is True
    assert (results / "stores" / "mrpc" / "mlflow.db").is_file()
    assert (results / "stores-lr" / "mrpc" / "mlflow.db").is_file()
    assert (results / "report" / "report.md").is_file()   # every task of the preset done: the report
    # a later start (a fresh clone with these files committed) skips the finished task and runs nothing
    os.rename(tmp_path / "s", tmp_path / "s-old")
    assert glue_cpu.main(args) == 0 and not (tmp_path / "s" / "glue-cpu-mrpc-deeper").exists()

    # a grid that outlives a session: the task's committed store holds seeds 1-2 only (as if the session ended
    # there); a fresh clone (no runs/) retrains the teacher, runs only seed 3, and keeps it in a second store
    preset["student_seeds"] = [1, 2, 3]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(preset))
    for f in ("done.json", "runs.csv"):
        (results / "mrpc" / f).unlink()
    assert glue_cpu.main(args[:-1] + [str(tmp_path / "s2")]) == 0
    assert not (tmp_path / "s2" / "glue-cpu-mrpc-probe").exists()    # the setting was committed: not redone
    assert not (tmp_path / "s2" / "glue-cpu-mrpc-lr-deeper").exists()   # nor the lr choice
    trials = list((tmp_path / "s2" / "glue-cpu-mrpc-deeper" / "trials").glob("*/metrics.json"))
    assert len(trials) == 2                                          # seed 3 of both arms, nothing else
    assert (results / "stores" / "mrpc-p2" / "mlflow.db").is_file()
    rows = list(csv.DictReader(open(results / "mrpc" / "runs.csv")))
    assert sorted(int(r["seed"]) for r in rows) == [1, 1, 2, 2, 3, 3]
    teachers = json.loads((results / "mrpc" / "teachers.json").read_text())
    assert len(teachers) == 4   # probe, lr and reported sweeps (one teacher, copied), the second session's
    done = json.loads((results / "mrpc" / "done.json").read_text())
    assert done["stores"] == ["mrpc", "mrpc-p2"] and done["runs"] == 6
    # CPU training repeats the teacher bit for bit on one CPU model
    assert done["teacher_weights_identical_in_every_session"] is True, teachers

    # the reported seeds are paired on one teacher: another CPU model (another teacher, maybe another precision)
    # does not continue them unless told to
    preset["student_seeds"] = [1, 2, 3, 4]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(preset))
    for f in ("done.json", "runs.csv"):
        (results / "mrpc" / f).unlink()
    monkeypatch.setattr(glue_cpu, "cpu_model", lambda: "Another CPU")
    assert glue_cpu.main(args[:-1] + [str(tmp_path / "s3")]) == 0
    assert not (tmp_path / "s3" / "glue-cpu-mrpc-deeper").exists() and not (results / "mrpc" / "done.json").exists()
