"""experiments/sweep_timing.py: wall time per cell from a sweep folder's run records; seeds grouped per cell,
unfinished runs (no metrics.json) left out, a missing folder exits 2 with one line."""
from __future__ import annotations

import json
import os
import sys

import yaml

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))


def _run(folder, name, *, fraction, seed, variant=None, augment="none", wall=60.0, end=1_000_000.0, score=0.8):
    d = folder / name
    d.mkdir(parents=True)
    rec = {"primary_value": score, "wall_time_s": wall, "train_time_s": wall - 5, "steps": 100,
           "train_examples_per_s": 50.0, "augmentation": augment}
    if variant:
        rec["variant"] = variant
    (d / "metrics.json").write_text(json.dumps(rec))
    (d / "config.yaml").write_text(yaml.safe_dump({"data_fraction": fraction, "seed": seed, "precision": "bf16"}))
    os.utime(d / "metrics.json", (end, end))


def test_cells_group_seeds_and_total_spans_the_runs(tmp_path, capsys):
    from sweep_timing import main

    sweep = tmp_path / "sw"
    _run(sweep / "teachers", "sst2-f0.1-s42", fraction=0.1, seed=42, wall=300, end=1000.0)
    for i, seed in enumerate((1, 2, 3)):
        _run(sweep / "trials", f"t{i}", fraction=0.1, seed=seed, variant="ft", wall=120, end=1200.0 + 120 * i)
    _run(sweep / "trials", "t9", fraction=0.1, seed=1, variant="sm+tmkd", augment="bt", wall=600, end=2000.0)
    (sweep / "trials" / "running").mkdir()          # a trial still running has no metrics.json yet
    out = tmp_path / "timing.md"
    csv_path = tmp_path / "runs.csv"
    assert main([str(sweep), "--out", str(out), "--csv", str(csv_path)]) == 0
    text = out.read_text()
    assert text == capsys.readouterr().out
    assert "| teacher sst2-f0.1-s42 | 0.1 | 100 | 5.0 | 4.9 | 50 | 80.00 |" in text
    assert "| 0.1 | ft | none | 1,2,3 | 100 | 2.0 | 6.0 | 50 |" in text
    assert "| 0.1 | sm+tmkd | bt | 1 | 100 | 10.0 | 10.0 | 50 |" in text
    # 300 + 3*120 + 600 s of runs; from the teacher's start (700) to the last end (2000)
    assert "1 teachers, 4 students; precision bf16" in text
    rows = csv_path.read_text().splitlines()
    assert rows[0].startswith("role,run,data_fraction,variant,augmentation,seed")
    assert len(rows) == 1 + 5 and rows[1].startswith("teacher,sst2-f0.1-s42,0.1,teacher,none,42,bf16,100,0.8,300")
    assert "trial,t9,0.1,sm+tmkd,bt,1,bf16,100" in rows[5]
    assert f"Sum of run wall times {1260 / 3600:.2f} h; first start to last end {1300 / 3600:.2f} h" in text


def test_not_a_sweep_folder_exits_2(tmp_path, capsys):
    from sweep_timing import main

    assert main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a folder" in err[0]
