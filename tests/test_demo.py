"""The main job's path (`make demo` = glue_sweep.py --preset demo) end to end on a tiny model: no GLUE folder
and the hub offline, so the embedded SST-2 sample is used; ft and sm+tmkd students of two depths, each with
two student seeds on one teacher; selection under a latency budget, export, report, and the printed order:
scorecard, Pareto front with the chosen student, report, MLflow UI command."""
from __future__ import annotations

import json
import subprocess

import yaml

from test_sweep import FAST_LATENCY, REPO, cli_env, sweep_cmd, write_preset  # noqa: F401 (cli_env: fixture)

KNOBS = {"epochs": 1, "lr": 1e-3, "batch_size": 16, "max_seq_length": 32, "max_eval_samples": 64}


def test_the_demo_preset_is_valid_and_compares_ft_with_mixkd():
    from mixkd.platform.spec import SweepSpec
    spec = SweepSpec.from_yaml(REPO / "mixkd" / "platform" / "presets" / "demo.yaml").validate()
    assert spec.mode == "grid" and set(spec.grid["variant"]) == {"ft", "sm+tmkd"}
    assert set(spec.grid["student_layers"]) >= {1, 2, 3} and len(spec.student_seeds) >= 2
    assert spec.latency_budget_ms == "auto" and spec.report and spec.data_dir is None


def test_auto_budget_is_half_the_teachers_latency():
    from mixkd.platform.driver import resolve_budget
    from mixkd.platform.prepare import latency_key
    from mixkd.platform.spec import SweepSpec
    spec = SweepSpec.from_dict({"tasks": ["sst2"], "seeds": [0], "latency_budget_ms": "auto", "teacher_model": "x"})
    key = latency_key(spec.teacher_config("sst2", 1.0, 0, "/t"), "teacher")
    assert resolve_budget(spec, {key: {"objective_ms": 24.5}}) == 12.25
    spec.latency_budget_ms = 7
    assert resolve_budget(spec, {}) == 7.0


def test_demo_path_end_to_end_on_the_embedded_sample(cli_env, tmp_path, tiny_bert_dir):  # noqa: F811 (test_sweep fixture)
    preset = dict(name="tinydemo", mode="grid", tasks=["sst2"], teacher_model=str(tiny_bert_dir), seeds=[0],
                  student_seeds=[1, 2], data_fractions=[1.0], teacher=dict(KNOBS),
                  base={**KNOBS, "max_train_samples": 96},
                  grid={"variant": ["ft", "sm+tmkd"], "student_layers": [1, 2]},
                  latency_budget_ms=1000.0, latency_batch_sizes=[1], latency_protocol=FAST_LATENCY, report=True,
                  select_allow_chance=True,   # tiny random students are at chance: the plumbing is what is tested
                  cpus_per_trial=1)
    path = write_preset(tmp_path / "tinydemo.yaml", preset)
    env = {k: v for k, v in cli_env.items() if k not in ("GLUE_DIR", "HF_ENDPOINT")}
    proc = subprocess.run(sweep_cmd("--address", "local", "--preset", path, "--storage-path", tmp_path / "sweeps"),
                          env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "sst2 data from the SST-2 sample embedded in mixkd" in proc.stderr
    exp = tmp_path / "sweeps" / "tinydemo"
    # 2 variants x 2 depths x 2 student seeds, all on the one teacher and the same 96 rows
    cfgs = [yaml.safe_load((d / "config.yaml").read_text()) for d in sorted((exp / "trials").iterdir())]
    assert len(cfgs) == 8 and len(list((exp / "teachers").iterdir())) == 1
    assert sorted((c["variant"], c["student_layers"], c["seed"]) for c in cfgs) == sorted(
        (v, k, s) for v in ("ft", "sm+tmkd") for k in (1, 2) for s in (1, 2))
    assert {c["data_seed"] for c in cfgs} == {0} and {c["max_train_samples"] for c in cfgs} == {96}
    # printed in this order: scorecard, Pareto front + chosen + export, report, MLflow UI
    marks = ["Claims scorecard", "SM+TMKD beats FT", "Pareto front of sst2", "on front", "chosen:", "exported run",
             "Report:", "mlflow ui --backend-store-uri"]
    pos = [out.find(m) for m in marks]
    assert all(p >= 0 for p in pos) and pos == sorted(pos), (list(zip(marks, pos)), out[-4000:])
    sel = next(exp.glob("selected-sst2-*ms"))
    assert {"README.md", "selection.json", "pareto.png"} <= {p.name for p in sel.iterdir()}
    chosen = json.loads((sel / "selection.json").read_text())
    # the choice ran over every format this CPU has, each scored after conversion; the export is in its format
    assert {g["format"] for g in chosen["groups"]} == {"torch", "torch-int8", "onnx", "onnx-int8"}
    fmt = chosen["chosen"]["format"]
    assert list(sel.glob("*.onnx" if fmt.startswith("onnx") else "*.safetensors")), fmt
    report = exp / "report"
    assert (report / "report.html").is_file() and (report / "scorecard.png").is_file()
    md = (report / "report.md").read_text()
    assert "## Claims scorecard" in md and "SM+TMKD beats FT" in md
    # the teacher is not the paper's: its Table 1 shows our runs and the paper's side by side, no Δ
    assert "No Δ in this table" in md


def test_every_named_preset_loads_by_name():
    """`--preset NAME` finds mixkd/platform/presets/NAME.yaml (package data) from the CLI module."""
    import argparse

    from mixkd.cli.sweep import PRESETS, PRESETS_DIR, load_spec
    assert PRESETS_DIR == REPO / "mixkd" / "platform" / "presets"
    for name in PRESETS:
        assert (PRESETS_DIR / f"{name}.yaml").is_file(), name
    args = argparse.Namespace(preset="smoke", experiment_name=None)
    assert load_spec(args).name == "smoke"
