"""Bad input across every CLI, in one table (issue 5, item 7).

Each case runs the real command in a subprocess (`python -m mixkd ...` or experiments/glue_sweep.py) and
must give: exit code 2, exactly one line on stderr that starts with ``<prog>: error:`` and names the
problem (the case's substrings; most also name the fix), no traceback, and nothing written in the
case's working folder (no run folder, no metrics.json, no MLflow store, no report, no export).
"""
from __future__ import annotations

import json
import os
import shutil
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
    ("sweep-plan-resources-malformed", ["@sweep", "--dry-run", "--plan-resources", "gpus=8"],
     ["--plan-resources 'gpus=8'", "cpu=64,gpu=8"]),
    ("sweep-plan-resources-without-dry-run", ["@sweep", "--plan-resources", "cpu=8"],
     ["--plan-resources", "--dry-run"]),
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
    ("report-misspelled-option", ["report", "--out", "{w}/rep", "--overwirte"],
     ["--overwirte", "did you mean --overwrite"]),
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
    ("finetune-json-rows-nested", ["finetune", "--model", "{tiny}", "--train-file", "{data}/nested.json",
                                   "--validation-file", "{data}/good.csv", "--output-dir", "{w}/o"],
     ["nested.json", "nested under the key 'data'", "one JSON object per row"]),
    ("evaluate-own-data-model-as-glue", ["evaluate", "--model", "{customrun}", "--task", "sst2"],
     ["trained on your own data (task 'reviews')", "not on GLUE sst2", "drop --task"]),
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
    # --- a damaged weights file, wherever a model is read (issue 24, class 1): {cut} half of model.safetensors,
    # {junk} its header overwritten, {stub} 3 bytes; one line naming the file, before anything is written
    ("evaluate-truncated-weights", ["evaluate", "--task", "sst2", "--model", "{cut}", "--data-dir", "{glue}"],
     ["damaged weights file", "model.safetensors", "truncated"]),
    ("predict-truncated-weights", ["predict", "--model", "{cut}", "--text", "a film"],
     ["damaged weights file", "truncated"]),
    ("predict-junk-weights", ["predict", "--model", "{junk}", "--text", "a film"], ["damaged weights file"]),
    ("export-truncated-weights", ["export", "--model", "{cut}", "--format", "onnx", "--out", "{w}/o"],
     ["damaged weights file", "truncated"]),
    ("export-stub-weights", ["export", "--model", "{stub}", "--format", "torch", "--out", "{w}/o"],
     ["damaged weights file", "3 bytes"]),
    ("distill-truncated-teacher", ["distill", "--task", "sst2", "--teacher", "{cut}", "--data-dir", "{glue}",
                                   "--output-dir", "{w}/o"], ["damaged weights file", "truncated"]),
    ("distill-junk-teacher", ["distill", "--task", "sst2", "--teacher", "{junk}", "--data-dir", "{glue}",
                              "--output-dir", "{w}/o"], ["damaged weights file", "header"]),
    ("finetune-truncated-backbone", ["finetune", "--task", "sst2", "--model", "{cutbase}", "--data-dir", "{glue}",
                                     "--output-dir", "{w}/o"], ["damaged weights file", "truncated"]),
    # --- ambiguity accepted silently before (class 2): a repeated header column, label or text column
    ("finetune-csv-repeats-a-column", ["finetune", "--model", "{tiny}", "--train-file", "{data}/dup_header.csv",
                                       "--validation-file", "{data}/good.csv", "--output-dir", "{w}/o"],
     ["dup_header.csv", "'review' twice"]),
    ("finetune-tsv-repeats-a-column", ["finetune", "--model", "{tiny}", "--train-file", "{data}/dup_header.tsv",
                                       "--validation-file", "{data}/good.csv", "--output-dir", "{w}/o"],
     ["dup_header.tsv", "'label' twice"]),
    ("finetune-labels-repeat-a-name", ["finetune", "--model", "{tiny}", "--train-file", "{data}/good.csv",
                                       "--validation-file", "{data}/good.csv", "--text-columns", "review",
                                       "--labels", "bad,good,good,ok", "--output-dir", "{w}/o"],
     ["--labels", "'good' twice"]),
    ("finetune-labels-empty-name", ["finetune", "--model", "{tiny}", "--train-file", "{data}/good.csv",
                                    "--validation-file", "{data}/good.csv", "--text-columns", "review",
                                    "--labels", "bad,,good", "--output-dir", "{w}/o"], ["--labels", "empty name"]),
    ("finetune-text-columns-repeat", ["finetune", "--model", "{tiny}", "--train-file", "{data}/good.csv",
                                      "--validation-file", "{data}/good.csv", "--text-columns", "review,review",
                                      "--output-dir", "{w}/o"], ["--text-columns", "'review' twice"]),
    # --- messages that name the real cause (class 6): bytes that are not UTF-8, a ragged row, with their line
    ("finetune-csv-not-utf8", ["finetune", "--model", "{tiny}", "--train-file", "{data}/latin1.csv",
                               "--validation-file", "{data}/good.csv", "--output-dir", "{w}/o"],
     ["latin1.csv:3", "not UTF-8", "save the file as UTF-8"]),
    ("finetune-csv-ragged-row", ["finetune", "--model", "{tiny}", "--train-file", "{data}/ragged.csv",
                                 "--validation-file", "{data}/good.csv", "--output-dir", "{w}/o"],
     ["ragged.csv:4", "3 fields where the header has 2"]),
    ("finetune-tsv-ragged-row", ["finetune", "--model", "{tiny}", "--train-file", "{data}/ragged.tsv",
                                 "--validation-file", "{data}/good.csv", "--output-dir", "{w}/o"],
     ["ragged.tsv:3", "1 fields where the header has 2"]),
    # --- a model used against its shape (class 3); empty texts refused as training refuses them
    ("predict-pair-model-without-pairs", ["predict", "--model", "{pairrun}", "--text", "He left."],
     ["trained on sentence pairs (mrpc)", "--text-pair"]),
    ("predict-pair-model-file-without-pairs", ["predict", "--model", "{pairrun}", "--input-file", "{data}/good.csv",
                                               "--text-column", "review"], ["sentence pairs", "--text-pair-column"]),
    ("predict-single-model-with-pairs", ["predict", "--model", "{teacher}", "--text", "a", "--text-pair", "b"],
     ["trained on single texts (sst2)", "drop --text-pair"]),
    ("predict-empty-text", ["predict", "--model", "{teacher}", "--text", "a film", "--text", "  "],
     ["text 2 is empty"]),
    # --- unfinished runs are never read as results (class 4)
    ("predict-unfinished-run", ["predict", "--model", "{unfinished}", "--text", "a film"],
     ["unfinished run", "--resume"]),
    ("predict-unfinished-runs-model", ["predict", "--model", "{unfinished}/model", "--text", "a film"],
     ["unfinished run", "--resume"]),
    ("evaluate-unfinished-run", ["evaluate", "--task", "sst2", "--model", "{unfinished}", "--data-dir", "{glue}"],
     ["unfinished run", "--resume"]),
    ("export-unfinished-run", ["export", "--model", "{unfinished}", "--format", "torch", "--out", "{w}/o"],
     ["unfinished run", "--resume"]),
    ("distill-unfinished-teacher", ["distill", "--task", "sst2", "--teacher", "{unfinished}", "--data-dir", "{glue}",
                                    "--output-dir", "{w}/o"], ["unfinished", "--resume"]),
    # --- advice that works when followed (class 6): users write Hugging Face's names
    ("finetune-config-key-typo", ["finetune", "--config", "{data}/typo.yaml", "--output-dir", "{w}/o"],
     ["unknown key 'learnig_rate'", "did you mean 'learning_rate'"]),
    ("finetune-hf-flag-typo", ["finetune", "--task", "sst2", "--learnig-rate", "1e-4", "--output-dir", "{w}/o"],
     ["--learnig-rate", "did you mean --learning-rate"]),
    ("finetune-config-alias-and-name-disagree", ["finetune", "--config", "{data}/both.yaml", "--output-dir", "{w}/o"],
     ["'learning_rate' and 'lr' are the same setting"]),
    ("augment-out-not-tsv", ["augment", "--task", "sst2", "--data-dir", "{glue}", "--out", "{w}/bt.csv"],
     ["--out", "bt.csv", "name the file .tsv"]),
    ("finetune-cuda-without-gpu", ["finetune", "--task", "sst2", "--model", "{tiny}", "--data-dir", "{glue}",
                                   "--device", "cuda", "--output-dir", "{w}/o"], ["no CUDA GPU is visible"]),
    ("finetune-subset-below-a-batch", ["finetune", "--task", "sst2", "--model", "{tiny}", "--data-dir", "{glue}",
                                       "--data-fraction", "0.01", "--output-dir", "{w}/o"],
     ["--data-fraction 0.01 leaves 3 training row(s), fewer than one batch", "--batch-size"]),
    ("finetune-subset-of-one-class", ["finetune", "--task", "sst2", "--model", "{tiny}", "--data-dir", "{glue}",
                                      "--max-train-samples", "3", "--batch-size", "2", "--data-seed", "{oneclassseed}",
                                      "--output-dir", "{w}/o"], ["all of one class", "--data-seed"]),
    ("finetune-json-rows-nested", ["finetune", "--model", "{tiny}", "--train-file", "{data}/nested.json",
                                   "--validation-file", "{data}/good.csv", "--output-dir", "{w}/o"],
     ["nested.json", "nested under the key 'data'", "one JSON object per row"]),
    ("evaluate-own-data-model-as-glue", ["evaluate", "--model", "{customrun}", "--task", "sst2"],
     ["trained on your own data (task 'reviews')", "not on GLUE sst2", "drop --task"]),
    ("select-unknown-format", ["select", "--tracking-uri", "{w}/none", "--latency-budget-ms", "5", "--formats",
                               "torch,tflite", "--out", "{w}/o"], ["--formats", "'tflite'", "torch,torch-int8,onnx"]),
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
    damaged = {}
    for name, damage in (("cut", lambda b: b[:len(b) // 2]), ("junk", lambda b: b[:8] + b"\xff" * 64 + b[72:]),
                         ("stub", lambda b: b[:3])):
        run = root / name
        shutil.copytree(tiny_teacher_run, run)
        weights = run / "model" / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
        damaged[name] = str(run)
    shutil.copytree(tiny_bert_dir, root / "cutbase")
    base = root / "cutbase" / "model.safetensors"
    base.write_bytes(base.read_bytes()[:-100])
    damaged["cutbase"] = str(root / "cutbase")
    shutil.copytree(tiny_teacher_run, root / "unfinished")          # mid-training: no metrics.json yet
    (root / "unfinished" / "metrics.json").unlink()
    shutil.copytree(tiny_teacher_run, root / "pairrun")             # a run recorded as a sentence-pair task
    run_cfg = yaml.safe_load((root / "pairrun" / "config.yaml").read_text())
    (root / "pairrun" / "config.yaml").write_text(yaml.safe_dump({**run_cfg, "task": "mrpc"}))
    data = root / "data"
    data.mkdir()
    rows = "".join(f"{t},{label}\n" for t, label in [("a gripping film", "good"), ("dull", "bad"),
                                                   ("fine work", "good"), ("a mess", "bad")])
    (data / "good.csv").write_text("review,label\n" + rows)
    (data / "dup_header.csv").write_text("review,review,label\n" + "".join(f"x,{r}" for r in rows.splitlines(True)))
    (data / "dup_header.tsv").write_text("sentence\tlabel\tlabel\n" + "a film\tgood\tbad\n")
    (data / "latin1.csv").write_bytes(("review,label\n" + rows).replace("dull", "d\u00e9j\u00e0 vu").encode("latin-1"))
    (data / "ragged.csv").write_text("review,label\na film,good\nbad,bad\nnot, that, good\n")
    (data / "ragged.tsv").write_text("sentence\tlabel\na film\tgood\nno label here\n")
    (data / "nested.json").write_text(json.dumps({"data": [{"text": "a film", "label": "good"},
                                                           {"text": "dull", "label": "bad"}]}))
    (data / "typo.yaml").write_text("task: sst2\nlearnig_rate: 1.0e-4\n")
    (data / "both.yaml").write_text("task: sst2\nlearning_rate: 1.0e-4\nlr: 3.0e-4\n")
    damaged["oneclassseed"] = str(_one_class_seed(small_glue_dir))
    shutil.copytree(tiny_teacher_run, root / "customrun")           # a run recorded as trained on your own data
    (root / "customrun" / "config.yaml").write_text(yaml.safe_dump({
        **run_cfg, "task": "reviews", "train_file": str(data / "good.csv"), "validation_file": str(data / "good.csv"),
        "text_columns": "review", "labels": "bad,good"}))
    damaged["customrun"] = str(root / "customrun")
    damaged["unfinished"], damaged["pairrun"], damaged["data"] = (str(root / "unfinished"), str(root / "pairrun"),
                                                                   str(data))
    return {**damaged, "tiny": str(tiny_bert_dir), "teacher": str(tiny_teacher_run), "glue": str(small_glue_dir),
            "afile": str(root / "afile"), "emptyglue": str(root / "emptyglue"), "cache": str(root / "cache"),
            "presets": {k: str(v) for k, v in _presets(root / "presets", tiny_bert_dir, small_glue_dir).items()}}


def _one_class_seed(glue: Path) -> int:
    """A --data-seed whose 3-row subset of the small SST-2 slice holds one class only (found, not assumed)."""
    from mixkd.core.data import subset_indices
    labels = [line.split("\t")[-1] for line in (glue / "SST-2" / "train.tsv").read_text().splitlines()[1:]]
    return next(seed for seed in range(1000)
                if len({labels[i] for i in subset_indices(len(labels), 1.0, seed, 3)}) == 1)


def _fill(arg: str, places: dict, w: Path) -> str:
    if arg.startswith("{preset:"):
        return places["presets"][arg[len("{preset:"):-1]]
    for k in ("tiny", "teacher", "glue", "afile", "emptyglue", "cutbase", "cut", "junk", "stub", "unfinished",
              "pairrun", "data", "oneclassseed", "customrun"):
        arg = arg.replace("{" + k + "}", places[k])
    return arg.replace("{w}", str(w))


def _existing_experiment(w: Path, places: dict) -> None:
    """An experiment folder left by an earlier sweep of the same name (refused without --resume)."""
    from mixkd.platform.spec import SweepSpec
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
    detail = (f"\n$ {' '.join(cmd)}\nexit {proc.returncode}\nstdout: {proc.stdout[-1500:]}\n"
              f"stderr: {proc.stderr[-3000:]}")
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr + proc.stdout, detail
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
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


def _advice(message: str) -> str | None:
    import re
    m = re.search(r"did you mean '?(-{0,2}[\w-]+)'?", message)
    return m.group(1) if m else None


@pytest.mark.parametrize("case", [c for c in CASES if any("did you mean" in n for n in c[2])], ids=lambda c: c[0])
def test_following_the_advice_leads_elsewhere(case, places, tmp_path):
    """Each "did you mean X?" is followed (the flag or key replaced by X) and must get past that error: parsed and
    validated in process (nothing runs), the same message or a circular one would fail here."""
    import contextlib
    import io
    name, argv, needles = case
    advice = _advice(" ".join(needles))
    import re
    bad = next(n for n in needles if "did you mean" not in n)
    bad = re.findall(r"'([^']+)'", bad)[0] if "'" in bad else bad   # "unknown key 'x'" -> x
    w = tmp_path / "w"
    w.mkdir()
    args = [_fill(a, places, w) for a in argv]
    if args[0] == "@sweep":
        args = ["sweep", *args[1:]]
    cfg_file = next((a for a in args if a.endswith((".yaml", ".yml"))), None)
    if cfg_file and bad not in args:           # a key in a YAML file: fix the file
        fixed = w / "fixed.yaml"
        fixed.write_text(Path(cfg_file).read_text().replace(bad, advice))
        args = [str(fixed) if a == cfg_file else a for a in args]
    else:
        args = [advice if a == bad else a for a in args]
    from mixkd.cli.app import build_parser, config_from_args
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            parsed = build_parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{name}: following the advice {advice!r} still fails to parse: {err.getvalue()}")
    if parsed.command in ("finetune", "distill", "evaluate"):
        from mixkd.core.custom_data import resolve_config
        resolve_config(config_from_args(parsed), parsed.command)   # raises UsageError if the advice led nowhere
    elif parsed.command == "sweep" and parsed.preset.endswith(".yaml"):
        from mixkd.platform.spec import SweepSpec
        SweepSpec.from_yaml(parsed.preset)                     # the preset's keys now load
