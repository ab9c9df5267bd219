"""The chance detector: each evaluation also scores the task's trivial predictors on the same dev split, and
a model that does not beat them is flagged (log.jsonl, metrics.json, MLflow, the CLI's warning line), left
out of `mixkd select` and marked in the sweep summary and the report."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from conftest import tiny_cfg
from mixkd.core.metrics import CHANCE_MARGIN, above_chance, chance_metrics, chance_warning
from mixkd.core.tasks import get_task


def _split(task):
    return get_task(task).dev_splits[0]


def test_majority_class_on_balanced_and_imbalanced_labels():
    t = get_task("sst2")
    assert chance_metrics(t, np.array([0, 1, 0, 1]), _split("sst2")) == {"accuracy": 0.5}
    assert chance_metrics(t, np.array([1, 1, 1, 0, 1, 0, 1, 1, 1, 1]), _split("sst2")) == {"accuracy": 0.8}


def test_f1_tasks_use_the_all_positive_predictor_and_mcc_is_zero():
    labels = np.array([1] * 7 + [0] * 3)                      # MRPC-like: 70% positive
    got = chance_metrics(get_task("mrpc"), labels, _split("mrpc"))
    assert got["f1"] == pytest.approx(2 * 0.7 / (1 + 0.7)) and got["accuracy"] == pytest.approx(0.7)
    cola = chance_metrics(get_task("cola"), np.array([1, 1, 0, 1]), _split("cola"))
    assert cola == {"matthews_correlation": 0.0, "accuracy": 0.75}
    mnli = get_task("mnli")
    assert chance_metrics(mnli, np.array([2, 2, 0, 1, 2]), mnli.dev_splits[1]) == {"accuracy_mm": 0.6}


def test_regression_chance_is_zero_correlation():
    assert chance_metrics(get_task("stsb"), np.array([0.5, 3.0, 4.2]), _split("stsb")) == \
        {"pearson": 0.0, "spearman": 0.0}


def test_a_constant_predictor_is_flagged_and_a_real_one_is_not():
    assert not above_chance(0.5092, 0.5092) and not above_chance(0.5092 + CHANCE_MARGIN, 0.5092)
    assert not above_chance(math.nan, 0.5)
    assert above_chance(0.79, 0.5092)
    r = {"primary_metric": "accuracy", "primary_value": 0.5092, "chance": {"accuracy": 0.5092}, "above_chance": False}
    line = chance_warning(r)
    assert "chance level" in line and "0.5092" in line and "--lr" in line and "--student-layers" in line
    assert "\n" not in line
    assert chance_warning({**r, "above_chance": True}) is None


def _constant_classifier(src, dst, cls: int):
    """The tiny BERT with a head that always predicts ``cls`` (zero weights, a large bias)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    m = AutoModelForSequenceClassification.from_pretrained(src, num_labels=2)
    with torch.no_grad():
        m.classifier.weight.zero_()
        m.classifier.bias.copy_(torch.tensor([50.0, -50.0] if cls == 0 else [-50.0, 50.0]))
    m.save_pretrained(dst)
    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    return dst


def test_runs_record_the_chance_level_and_the_cli_warns(tiny_bert_dir, small_glue_dir, tmp_path):
    from mixkd.jobs.run import evaluate, finetune
    const = _constant_classifier(tiny_bert_dir, tmp_path / "const", cls=1)
    from mixkd.core.metrics import ChanceLevelWarning
    with pytest.warns(ChanceLevelWarning, match="at chance level"):   # the Python API says it too (notebooks)
        ev = evaluate(tiny_cfg(model=str(const), data_dir=str(small_glue_dir)))
    assert ev["above_chance"] is False and ev["primary_value"] <= ev["chance"]["accuracy"]   # a constant
    # a real run: the chance level in every log.jsonl row, metrics.json consistent with the rule
    out = tmp_path / "real"
    m = finetune(tiny_cfg(model=str(tiny_bert_dir), data_dir=str(small_glue_dir), epochs=1, output_dir=str(out)))
    rows = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert all("chance/accuracy" in r and "chance_primary" in r and "above_chance" in r for r in rows)
    assert m["above_chance"] == above_chance(m["primary_value"], m["chance"]["accuracy"])
    assert json.loads((out / "metrics.json").read_text())["chance"] == m["chance"]
    # the CLI ends a chance-level run with one warning line (and exit 0: the run and its files stay)
    p = subprocess.run([sys.executable, "-m", "mixkd", "finetune", "--task", "sst2", "--model", str(const),
                        "--data-dir", str(small_glue_dir), "--lr", "1e-12", "--max-steps", "1", "--batch-size", "8",
                        "--output-dir", str(tmp_path / "cli"), "--no-progress"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    warn = [x for x in p.stderr.splitlines() if "warning:" in x]
    assert len(warn) == 1 and warn[0].startswith("mixkd finetune: warning: the model is at chance level")
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["above_chance"] is False


def test_select_never_chooses_a_configuration_at_chance():
    from mixkd.deploy.groups import group_runs

    def run(i, group, score, chance=0.5, lat=1.0):
        return {"run_id": f"r{i}", "role": "trial", "status": "FINISHED", "task": "sst2", "variant": "ft",
                "student_layers": 1, "config_group": group, "seed": i, "final/primary": score,
                "final/chance_accuracy": chance, "latency/b1_s128_p90_ms": lat}
    rows = [run(1, "fast-but-constant", 0.505, lat=1.0), run(2, "fast-but-constant", 0.509, lat=1.0),
            run(3, "real", 0.78, lat=2.0), run(4, "real", 0.80, lat=2.0)]
    said = []
    groups = group_runs(rows, log=said.append)
    assert [g.config_group for g in groups] == ["real"] and not groups[0].at_chance
    assert any("skipped" in s and "at chance level" in s for s in said)
    kept = group_runs(rows, log=said.append, keep_at_chance=True)
    assert {g.config_group: g.at_chance for g in kept} == {"real": False, "fast-but-constant": True}


def test_sweep_summary_marks_trials_at_chance(tmp_path):
    from mixkd.core.config import MixKDConfig
    from mixkd.platform.summary import format_summary, summarize
    for name, score, ok in (("t1", 0.51, False), ("t2", 0.8, True)):
        d = tmp_path / "trials" / name
        d.mkdir(parents=True)
        MixKDConfig(task="sst2", variant="ft", student_layers=1 if name == "t1" else 2, data_fraction=1.0,
                    output_dir=str(d)).save_yaml(d / "config.yaml")
        (d / "metrics.json").write_text(json.dumps({
            "task": "sst2", "variant": "ft", "layers": 1 if name == "t1" else 2, "primary_metric": "accuracy",
            "primary_value": score, "metrics": {"accuracy": score}, "params": 10, "above_chance": ok,
            "chance": {"accuracy": 0.5092}}))
    s = summarize(tmp_path)
    assert s["at_chance"] == ["t1"]
    text = format_summary(s)
    assert "AT CHANCE" in text.splitlines()[1] and "1 trial(s) at chance level" in text


def test_report_marks_cells_at_chance(tmp_path):
    from test_report import Store
    from mixkd.report.build import build_report
    from mixkd.tracking.runstore import load_runs
    s = Store(tmp_path / "mlflow.db")
    for seed, acc, ok in ((1, 0.51, 0), (2, 0.80, 1)):
        s.add("ft3", "trial", "sst2", seed, {"final/accuracy": acc, "final/primary": acc, "final/above_chance": ok,
                                             "final/chance_accuracy": 0.5092}, k=3)
    cell = build_report(load_runs(s.uri), figures=False).table("table1").cell("BERT3-FT", "SST-2")
    assert "AT CHANCE: 1 of 2 runs" in cell.note
