"""Bad input across every CLI, in one table (issue 5, item 7).

Each case runs the real command in a subprocess (`python -m mixkd ...` or experiments/glue_sweep.py) and
must give: exit code 2, exactly one line on stderr that starts with ``<prog>: error:`` and names the
problem (the case's substrings; most also name the fix), no traceback, and nothing written in the
case's working folder (no run folder, no metrics.json, no MLflow store, no report, no export).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SWEEP = str(REPO / "experiments" / "glue_sweep.py")
MIXKD = [sys.executable, "-m", "mixkd"]

# (id, argv, substrings of the one stderr line). Placeholders: {tiny} a 4-layer random BERT, {teacher} a
# finished tiny teacher run, {glue} small GLUE slices, {w} the case's (empty) working folder, {afile} a
# regular file, {emptyglue} a folder without GLUE files, {preset:NAME} a sweep preset (see PRESETS).
CASES = [
    # --- mixkd finetune / distill / evaluate
    ("finetune-misspelled-option", ["finetune", "--task", "sst2", "--lrr", "1e-3", "--output-dir", "{w}/o"],
     ["--lrr", "did you mean --lr"]),
    ("finetune-bad-number", ["finetune", "--task", "sst2", "--epochs", "two", "--output-dir", "{w}/o"], ["two"]),
    ("finetune-unknown-task", ["finetune", "--task", "sst3", "--output-dir", "{w}/o"], ["sst3"]),
    ("finetune-data-fraction-0", ["finetune", "--task", "sst2", "--data-fraction", "0", "--output-dir", "{w}/o"],
     ["--data-fraction 0.0", "(0, 1]"]),
    ("finetune-missing-glue-files", ["finetune", "--task", "sst2", "--model", "{tiny}", "--data-dir", "{emptyglue}",
                                     "--output-dir", "{w}/o"], ["SST-2", "{emptyglue}"]),
    ("finetune-missing-glue-folder", ["finetune", "--task", "sst2", "--model", "{tiny}", "--data-dir", "{w}/noglue",
                                      "--output-dir", "{w}/o"], ["noglue", "is not a directory"]),
    # no --data-dir, no $GLUE_DIR, the hub offline: only sst2 has the embedded sample
    ("finetune-no-data-source", ["finetune", "--task", "rte", "--model", "{tiny}", "--output-dir", "{w}/o"],
     ["no data for task rte", "HF_HUB_OFFLINE", "--data-dir"]),
    ("finetune-max-train-samples-0", ["finetune", "--task", "sst2", "--max-train-samples", "0",
                                      "--output-dir", "{w}/o"], ["--max-train-samples 0"]),
    ("finetune-malformed-yaml", ["finetune", "--config", "{preset:malformed}", "--output-dir", "{w}/o"],
     ["malformed.yaml"]),
    ("finetune-unwritable-output", ["finetune", "--task", "sst2", "--model", "{tiny}", "--data-dir", "{glue}",
                                    "--output-dir", "{afile}/run"], ["--output-dir", "is a file, not a folder"]),
    ("distill-bad-variant", ["distill", "--task", "sst2", "--variant", "kdd", "--teacher", "{teacher}",
                             "--output-dir", "{w}/o"], ["kdd", "choose from"]),
    ("distill-kd-without-teacher", ["distill", "--task", "sst2", "--variant", "kd", "--output-dir", "{w}/o"],
     ["--teacher is required"]),
    ("distill-student-deeper-than-teacher", ["distill", "--task", "sst2", "--teacher", "{teacher}", "--data-dir",
                                             "{glue}", "--student-layers", "9", "--output-dir", "{w}/o"],
     ["--student-layers 9", "1..4"]),
    ("distill-kl-on-regression", ["distill", "--task", "stsb", "--teacher", "{teacher}", "--distance", "kl",
                                  "--output-dir", "{w}/o"], ["--distance 'kl'", "regression"]),
    ("evaluate-missing-model", ["evaluate", "--task", "sst2", "--model", "{w}/nomodel"], ["nomodel", "does not exist"]),
    ("unknown-command", ["distil", "--task", "sst2"], ["distil"]),
    # --- mixkd sweep / glue_sweep.py
    ("sweep-misspelled-option", ["@sweep", "--num-smaples", "3"], ["--num-smaples", "did you mean --num-samples"]),
    ("sweep-bad-searcher", ["@sweep", "--searcher", "tpee"], ["tpee"]),
    ("sweep-num-samples-0", ["@sweep", "--preset", "{preset:valid}", "--num-samples", "0"], ["num_samples 0"]),
    ("sweep-data-fraction-0", ["@sweep", "--preset", "{preset:valid}", "--data-fraction", "0"], ["data fraction 0"]),
    ("sweep-empty-search-space", ["@sweep", "--preset", "{preset:empty_space}"], ["search_space is empty"]),
    ("sweep-malformed-yaml", ["@sweep", "--preset", "{preset:malformed}"], ["malformed.yaml"]),
    ("sweep-misspelled-preset-key", ["@sweep", "--preset", "{preset:misspelled}"],
     ["num_sample", "did you mean 'num_samples'"]),
    ("sweep-mse-with-temperature-search", ["@sweep", "--preset", "{preset:mse_temperature}"],
     ["temperature", "distance mse", "distance: kl"]),
    ("sweep-student-deeper-than-teacher", ["@sweep", "--preset", "{preset:deep_student}"],
     ["student_layers 6", "has 4 layers"]),
    ("sweep-latency-budget-0", ["@sweep", "--preset", "{preset:valid}", "--latency-budget-ms", "0"],
     ["--latency-budget-ms 0"]),
    ("sweep-latency-budget-negative", ["@sweep", "--preset", "{preset:valid}", "--latency-budget-ms", "-5"],
     ["--latency-budget-ms -5"]),
    ("sweep-missing-glue-files", ["@sweep", "--preset", "{preset:valid}", "--data-dir", "{emptyglue}"],
     ["missing SST-2/train.tsv"]),
    ("sweep-no-data-source", ["@sweep", "--preset", "{preset:no_data}"], ["no data for task mrpc", "--data-dir"]),
    ("sweep-unreachable-ray", ["@sweep", "--preset", "{preset:valid}", "--address", "127.0.0.1:1"],
     ["127.0.0.1:1", "ray start --head"]),
    ("sweep-malformed-ray-address", ["@sweep", "--preset", "{preset:valid}", "--address", "nohost"], ["nohost"]),
    ("sweep-unwritable-storage", ["@sweep", "--preset", "{preset:valid}", "--storage-path", "{afile}/sweeps"],
     ["--storage-path", "is a file, not a folder"]),
    ("sweep-unreachable-tracking-server", ["@sweep", "--preset", "{preset:valid}", "--tracking-uri",
                                           "http://127.0.0.1:1"], ["http://127.0.0.1:1", "no MLflow server"]),
    ("sweep-retired-file-store", ["@sweep", "--preset", "{preset:valid}", "--tracking-uri", "{w}/mlruns"],
     ["file store is retired"]),
    ("sweep-preset-missing", ["@sweep", "--preset", "nosuch"], ["nosuch", "smoke"]),
    ("sweep-storage-s3", ["@sweep", "--preset", "{preset:valid}", "--storage-path", "s3://bucket/x"],
     ["s3://bucket/x", "mount"]),
    ("sweep-existing-experiment", ["@sweep", "--preset", "{preset:valid}"], ["exists", "--resume"]),
    ("mixkd-sweep-num-samples-0", ["sweep", "--preset", "{preset:valid}", "--num-samples", "0"], ["num_samples 0"]),
    # --- mixkd latency / select / report / augment
    ("latency-missing-model", ["latency", "--model", "{w}/nomodel"], ["nomodel"]),
    ("latency-batch-size-0", ["latency", "--model", "{tiny}", "--batch-size", "0"], ["batch"]),
    ("latency-student-deeper-than-model", ["latency", "--model", "{tiny}", "--student-layers", "9"], ["9"]),
    ("latency-bad-device", ["latency", "--model", "{tiny}", "--device", "tpu"], ["tpu"]),
    ("select-latency-budget-0", ["select", "--tracking-uri", "sqlite:///{w}/mlflow.db", "--latency-budget-ms", "0",
                                 "--out", "{w}/sel"], ["budget"]),
    ("select-unreachable-tracking-server", ["select", "--tracking-uri", "http://127.0.0.1:1",
                                            "--latency-budget-ms", "5", "--out", "{w}/sel"], ["127.0.0.1:1"]),
    ("select-missing-store", ["select", "--tracking-uri", "sqlite:///{w}/nostore.db", "--latency-budget-ms", "5",
                              "--out", "{w}/sel"], ["nostore.db"]),
    ("report-misspelled-option", ["report", "--out", "{w}/rep", "--overwirte"], ["--overwirte", "did you mean --overwrite"]),
    ("report-missing-required", ["report", "--outt", "{w}/rep"], ["required: --out"]),
    ("report-unreachable-tracking-server", ["report", "--tracking-uri", "http://127.0.0.1:1", "--out", "{w}/rep"],
     ["127.0.0.1:1"]),
    # --- mixkd export and formats (issue 14)
    ("export-unknown-format", ["export", "--model", "{teacher}", "--format", "tflite", "--out", "{w}/o"],
     ["--format 'tflite' is unknown", "onnx"]),
    ("export-bad-quantize", ["export", "--model", "{teacher}", "--format", "onnx", "--quantize", "int4",
                             "--out", "{w}/o"], ["--quantize 'int4'", "int8"]),
    ("export-existing-out", ["export", "--model", "{teacher}", "--format", "onnx", "--out", "{w}"],
     ["already exists"]),
    ("export-not-a-classifier", ["export", "--model", "{tiny}", "--format", "onnx", "--out", "{w}/o"],
     ["not a sequence classifier", "BertModel"]),
    ("export-missing-model", ["export", "--model", "{w}/nomodel", "--format", "onnx", "--out", "{w}/o"],
     ["nomodel", "does not exist"]),
    ("export-weight-type-for-torch", ["export", "--model", "{teacher}", "--format", "torch", "--weight-type", "qint8",
                                      "--out", "{w}/o"], ["--weight-type", "onnx"]),
    ("latency-unknown-format", ["latency", "--model", "{tiny}", "--format", "tflite"], ["tflite"]),
    ("latency-int8-without-a-path-on-cuda", ["latency", "--model", "{tiny}", "--format", "torch", "--quantize", "int8",
                                             "--device", "cuda"], ["int8 has no path on cuda"]),
    ("select-unknown-format", ["select", "--tracking-uri", "sqlite:///{w}/mlflow.db", "--latency-budget-ms", "5",
                               "--out", "{w}/sel", "--formats", "torch,tflite"], ["tflite"]),
    # --- mixkd predict (issue 15)
    ("predict-no-input", ["predict", "--model", "{teacher}"], ["nothing to predict", "--text", "--input-file"]),
    ("predict-text-and-input-file", ["predict", "--model", "{teacher}", "--text", "a film", "--input-file",
                                     "{afile}"], ["--text or --input-file, not both"]),
    ("predict-missing-model", ["predict", "--model", "{w}/nomodel", "--text", "a film"], ["nomodel", "does not exist"]),
    ("predict-not-a-classifier", ["predict", "--model", "{tiny}", "--text", "a film"],
     ["not a sequence classifier", "BertModel"]),
    ("predict-missing-input-file", ["predict", "--model", "{teacher}", "--input-file", "{w}/nofile.csv"],
     ["nofile.csv", "does not exist"]),
    ("predict-missing-column", ["predict", "--model", "{teacher}", "--input-file", "{glue}/SST-2/dev.tsv",
                                "--text-column", "review"], ["no column 'review'", "'sentence'"]),
    ("predict-pair-count-mismatch", ["predict", "--model", "{teacher}", "--text", "a", "--text", "b", "--text-pair",
                                     "c"], ["2 text(s) but 1 text pair(s)", "one --text-pair per --text"]),
    ("predict-output-folder-missing", ["predict", "--model", "{teacher}", "--text", "a film", "--output-file",
                                       "{w}/nodir/out.jsonl"], ["nodir", "does not exist"]),
    ("augment-unknown-task", ["augment", "--task", "sst3"], ["sst3"]),
    ("augment-no-data-source", ["augment", "--task", "cola"], ["no data for task cola"]),
    ("augment-data-fraction-0", ["augment", "--task", "sst2", "--data-dir", "{glue}", "--data-fraction", "0"],
     ["0"]),
]


def _presets(d: Path, tiny: Path, glue: Path) -> dict[str, Path]:
    """Sweep presets: one valid, and one per bad case (written before the case runs)."""
    from test_sweep import TINY_SPACE
    knobs = {"epochs": 1, "batch_size": 16, "max_seq_length": 64}
    valid = dict(name="bad-input", tasks=["sst2"], teacher_model=str(tiny), seeds=[0], num_samples=2,
                 teacher=dict(knobs), base={**knobs, "student_layers": 2}, search_space=dict(TINY_SPACE),
                 cpus_per_trial=1, storage_path=str(d / "unused"), data_dir=str(glue),
                 measure_latency=True)
    from mixkd.platform.search_space import DEFAULT_SPACE
    variants = {
        "valid": valid,
        "empty_space": {**valid, "search_space": {k: None for k in DEFAULT_SPACE}},
        "misspelled": {**{k: v for k, v in valid.items() if k != "num_samples"}, "num_sample": 2},
        "mse_temperature": {**valid, "base": {**valid["base"], "distance": "mse"},
                            "search_space": {**TINY_SPACE, "temperature": {"type": "loguniform", "low": 1, "high": 4}}},
        "no_data": {**{k: v for k, v in valid.items() if k != "data_dir"}, "tasks": ["mrpc"]},
        "deep_student": {**valid, "search_space": {**TINY_SPACE, "student_layers": {"type": "choice",
                                                                                      "values": [2, 6]}}},
    }
    out = {}
    for name, spec in variants.items():
        out[name] = d / f"{name}.yaml"
        out[name].write_text(yaml.safe_dump(spec, sort_keys=False))
    out["malformed"] = d / "malformed.yaml"
    out["malformed"].write_text("name: x\nbase: {epochs: 1\n  lr: [\n")
    return out


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_bert_dir, tiny_teacher_run, small_glue_dir) -> dict:
    root = tmp_path_factory.mktemp("bad_input")
    (root / "presets").mkdir()
    (root / "emptyglue").mkdir()
    (root / "afile").write_text("not a folder\n")
    return {"tiny": str(tiny_bert_dir), "teacher": str(tiny_teacher_run), "glue": str(small_glue_dir),
            "afile": str(root / "afile"), "emptyglue": str(root / "emptyglue"), "cache": str(root / "cache"),
            "presets": {k: str(v) for k, v in _presets(root / "presets", tiny_bert_dir, small_glue_dir).items()}}


def _fill(arg: str, places: dict, w: Path) -> str:
    if arg.startswith("{preset:"):
        return places["presets"][arg[len("{preset:"):-1]]
    for k in ("tiny", "teacher", "glue", "afile", "emptyglue"):
        arg = arg.replace("{" + k + "}", places[k])
    return arg.replace("{w}", str(w))


def _existing_experiment(w: Path, places: dict) -> None:
    """An experiment folder left by an earlier sweep of the same name (refused without --resume)."""
    from mixkd.platform.sweep import SweepSpec
    spec = SweepSpec.from_yaml(places["presets"]["valid"])
    spec.storage_path = str(w / "sweeps")
    spec.validate()
    spec.experiment_dir.mkdir(parents=True)
    (spec.experiment_dir / "sweep.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))


SETUP = {"sweep-existing-experiment": _existing_experiment}   # run before the snapshot of w


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, places, tmp_path):
    name, argv, needles = case
    w = tmp_path / "w"   # the sweep presets store under it too
    w.mkdir()
    if name in SETUP:
        SETUP[name](w, places)
    before = _files(w)
    args = [_fill(a, places, w) for a in argv]
    if args[0] == "@sweep":   # the experiment folder goes under w unless the case names another storage path
        cmd, progs = [sys.executable, SWEEP, "--storage-path", str(w / "sweeps")] + args[1:], ("glue_sweep.py",)
    else:   # argparse reports unknown options and commands as the top-level parser (`mixkd: error: ...`)
        cmd, progs = MIXKD + args, (f"mixkd {args[0]}", "mixkd")
    env = dict(os.environ)
    for k in ("RAY_ADDRESS", "GLUE_DIR", "MLFLOW_TRACKING_URI", "MIXKD_FAULTS", "PYTHONWARNINGS"):
        env.pop(k, None)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MIXKD_CACHE=places["cache"])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, cwd=w)
    detail = f"\n$ {' '.join(cmd)}\nexit {proc.returncode}\nstdout: {proc.stdout[-1500:]}\nstderr: {proc.stderr[-3000:]}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr + proc.stdout, detail
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, "stderr is not one line:" + detail
    assert lines[0].startswith(tuple(f"{p}: error: " for p in progs)), detail
    for needle in needles:
        needle = _fill(needle, places, w)
        assert needle in lines[0], f"{needle!r} not in the message:" + detail
    assert _files(w) == before, f"the refused command wrote {sorted(set(_files(w)) - set(before))}" + detail


@pytest.mark.parametrize("name, visible, message", [
    ("cuda:3", 2, "only 2 CUDA GPU(s) are visible (cuda:0 to cuda:1)"),
    ("gpu0", 1, "not a device name; use auto, cpu, cuda or cuda:N"),
    ("cuda", 0, "no CUDA GPU is visible; use --device cpu or auto"),
])
def test_device_names_are_checked_where_they_are_read(name, visible, message, monkeypatch):
    """A wrong --device fails in one line at the edge, not later with a raw CUDA error."""
    import torch

    from mixkd.core.device import resolve_device
    from mixkd.core.errors import UsageError
    monkeypatch.setattr(torch.cuda, "is_available", lambda: visible > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_device(name)
    if visible:
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
