"""Deployment formats (issue 14): `mixkd export` in torch / torch-int8 / onnx / onnx-int8, reloaded and checked on
the dev set, complete or absent; `mixkd evaluate` and `mixkd latency` on exports; the latency cache per format;
the budget choice over (configuration × format); the plain onnxruntime snippet of docs/deploy.md (Ship it); and the
packaged MiniLM cut to a 2-layer student exported to onnx fp32 and int8."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mixkd.cli import app as cli
from mixkd.core.errors import UsageError
from mixkd.deploy import formats as F
from mixkd.deploy import export as ship

from conftest import make_tiny_bert
from test_selection import build_store, tiny_models  # noqa: F401  (module fixture reused)

REPO = Path(__file__).resolve().parents[1]
FAST = dict(warmup=1, min_iters=3, min_seconds=0.0)


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def tiny_clf(tmp_path_factory, minilm_dir) -> Path:
    """A 2-layer random BERT sequence classifier (2 labels) with the MiniLM tokenizer."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_clf"), minilm_dir, layers=2, hidden=32, num_labels=2)


@pytest.fixture(scope="module")
def exports(tiny_clf, small_glue_dir, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for fmt in F.FORMATS:
        base, _, q = fmt.partition("-")
        out[fmt] = ship.export_model(str(tiny_clf), base, root / fmt, quantize=q or None, task="sst2",
                                     data_dir=str(small_glue_dir), threads=1, log=quiet)
    return out


# --- names --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,q,device,want", [("onnx", None, "cpu", "onnx"), ("onnx", "int8", "cpu", "onnx-int8"),
                                               ("torch", "int8", "cpu", "torch-int8"),
                                               ("torch", "none", "cuda", "torch"),
                                               ("ONNX-int8", None, "cpu", "onnx-int8")])
def test_format_names(fmt, q, device, want):
    assert F.format_name(fmt, q, device) == want


@pytest.mark.parametrize("fmt,q,device,needle", [("tflite", None, "cpu", "unknown"), ("onnx", "int4", "cpu", "int4"),
                                                 ("torch", "int8", "cuda", "no path on cuda"),
                                                 ("onnx", None, "cuda:0", "CPU provider")])
def test_bad_format_names(fmt, q, device, needle):
    with pytest.raises(UsageError, match=needle):
        F.format_name(fmt, q, device)


def test_parse_formats_default_is_what_the_device_has():
    assert F.parse_formats("all") == list(F.FORMATS)
    assert F.parse_formats("torch, onnx-int8,torch") == ["torch", "onnx-int8"]
    assert F.parse_formats(None, device="cuda") == ["torch"]


# --- export ---------------------------------------------------------------------------------------------
def test_onnx_fp32_export_reloads_and_agrees(exports):
    meta = exports["onnx"]
    out = Path(meta["out"])
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "mixkd_export.json", "model.onnx",
                                                     "tokenizer.json", "tokenizer_config.json"]
    a = meta["agreement"]
    assert a["rows"] == 64 and a["label_agreement"] >= 0.995 and a["max_abs_logit_diff"] < 1e-4
    assert meta["metrics_after"]["accuracy"] == pytest.approx(meta["metrics_before"]["accuracy"])
    assert meta["onnx"]["opset"] == 17 and meta["runtime"] == "onnxruntime" and meta["runtime_version"]
    card = (out / "README.md").read_text()
    assert "onnxruntime 1." in card and "opset" in card and "Same label as PyTorch" in card
    assert json.loads((out / "mixkd_export.json").read_text())["format"] == "onnx"
    assert not list(out.parent.glob(".onnx.tmp-*"))


def test_onnx_int8_measures_both_weight_types_and_keeps_the_better(exports):
    meta = exports["onnx-int8"]
    cands = {c["weight_type"]: c for c in meta["weight_type_candidates"]}
    assert set(cands) == {"qint8", "quint8"}
    kept = meta["quantization"]["weight_type"]
    assert cands[kept]["metrics"]["accuracy"] == max(c["metrics"]["accuracy"] for c in cands.values())
    assert meta["metrics_after"]["accuracy"] == pytest.approx(cands[kept]["metrics"]["accuracy"])
    assert "weight type" in (Path(meta["out"]) / "README.md").read_text().lower()


def test_torch_formats_are_safetensors_and_int8_quantizes_on_load(exports):
    import torch
    for fmt in ("torch", "torch-int8"):
        out = Path(exports[fmt]["out"])
        assert (out / "model.safetensors").is_file()
        assert not [p for p in out.iterdir() if p.suffix in (".bin", ".pt", ".pkl")]
    model, _, meta = F.load_exported(exports["torch-int8"]["out"])
    assert meta["quantization"]["modules"] == "nn.Linear"
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())
    assert exports["torch"]["agreement"]["max_abs_logit_diff"] == 0.0


def test_evaluate_and_latency_accept_an_export(exports, small_glue_dir, capsys, tmp_path):
    out = exports["onnx-int8"]["out"]
    assert cli.main(["evaluate", "--task", "sst2", "--model", out, "--data-dir", str(small_glue_dir)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["format"] == "onnx-int8"
    assert "accuracy" in res["chance"]
    assert res["above_chance"] == (res["primary_value"] > res["chance"]["accuracy"] + 0.01)
    assert res["primary_value"] == pytest.approx(exports["onnx-int8"]["metrics_after"]["accuracy"])
    # the export records its task: no --task needed (the exported folder here is a plain HF model's)
    assert cli.main(["evaluate", "--model", out, "--data-dir", str(small_glue_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["primary_value"] == pytest.approx(res["primary_value"])
    assert cli.main(["latency", "--model", out, "--batch-size", "1", "--seq-len", "16", "--warmup", "1",
                     "--min-iters", "3", "--min-seconds", "0", "--threads", "1", "--cache-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "onnx-int8" in text and "onnxruntime" in text


def test_failed_check_writes_nothing(tiny_clf, small_glue_dir, tmp_path, monkeypatch, capsys):
    real = ship.agreement
    monkeypatch.setattr(ship, "agreement", lambda *a: {**real(*a), "label_agreement": 0.9})
    with pytest.raises(ship.ExportCheckFailed, match="90.00%"):
        ship.export_model(str(tiny_clf), "onnx", tmp_path / "x", task="sst2", data_dir=str(small_glue_dir), log=quiet)
    assert cli.main(["export", "--model", str(tiny_clf), "--format", "onnx", "--task", "sst2", "--data-dir",
                     str(small_glue_dir), "--out", str(tmp_path / "y")]) == 1
    assert "check failed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []        # neither the folder nor a temporary one


# --- latency per format -------------------------------------------------------------------------------
def test_latency_cache_is_keyed_by_format_and_runtime(tiny_clf, tmp_path):
    kw = dict(batch_sizes=[1], seq_len=16, cache_dir=tmp_path, threads=1, **FAST)
    first = F.format_latencies(tiny_clf, "onnx", **kw)[1]
    again = F.format_latencies(tiny_clf, "onnx", **kw)[1]
    assert not first["cached"] and again["cached"] and again["cache_file"] == first["cache_file"]
    fp = first["fingerprint"]
    assert fp["runtime"] == "onnxruntime" and fp["runtime_version"] and fp["intra_op_threads"] == 1
    assert fp["format"] == "onnx" and first["format"] == "onnx"
    files = {first["cache_file"]}
    for fmt, extra in (("torch", {}), ("onnx-int8", {}), ("torch-int8", {}), ("onnx", {"threads": 2})):
        r = F.format_latencies(tiny_clf, fmt, **{**kw, **extra})[1]
        assert not r["cached"] and r["p90_ms"] > 0
        files.add(r["cache_file"])
    assert len(files) == 5                       # one cache entry per format, and per thread setting


# --- the choice over (configuration × format) ---------------------------------------------------------
def _point(group, fmt, score, lat, src):
    return {"config_group": f"{group}/{fmt}", "base_config_group": group, "label": f"{group} [{fmt}]", "format": fmt,
            "weight_type": "qint8" if fmt == "onnx-int8" else None, "best_run": {"run_id": f"r-{group}", "seed": 0},
            "n": 1, "seeds": [0], "score": score, "score_std": float("nan"), "scores": [score],
            "run_ids": [f"r-{group}"],
            "latency_ms": lat, "latency": {"p90_ms": lat}, "latency_source": "measured", "source_dir": str(src)}


def test_select_over_formats_prefers_accuracy_within_budget(tiny_clf, small_glue_dir, tmp_path, monkeypatch):
    """A faster int8 point that lost accuracy is not chosen over a slightly slower fp32 one that scores higher."""
    from mixkd.deploy import format_select
    pts = [_point("k1", "torch", 0.80, 3.0, tiny_clf), _point("k1", "onnx-int8", 0.71, 1.0, tiny_clf),
           _point("k2", "torch", 0.84, 6.0, tiny_clf), _point("k2", "onnx", 0.84, 4.5, tiny_clf),
           _point("k2", "onnx-int8", 0.79, 2.0, tiny_clf)]
    monkeypatch.setattr(format_select, "format_points", lambda *a, **k: pts)
    sel = format_select.select_over_formats([], ["torch", "onnx", "onnx-int8"], 5.0, tmp_path / "ship", task="sst2",
                                            tracking_uri=None, data_dir=str(small_glue_dir), log=quiet)
    assert sel["chosen"]["label"] == "k2 [onnx]" and sel["chosen"]["format"] == "onnx"
    assert [g["label"] for g in sel["front"]] == ["k1 [onnx-int8]", "k2 [onnx-int8]", "k1 [torch]", "k2 [onnx]"]
    out = tmp_path / "ship"
    assert {"model.onnx", "selection.json", "pareto.png", "README.md",
            "mixkd_export.json"} <= {p.name for p in out.iterdir()}
    assert "Chosen by `mixkd select`" in (out / "README.md").read_text()


def test_select_formats_end_to_end(tiny_models, small_glue_dir, tmp_path, capsys):  # noqa: F811
    store = build_store(tmp_path / "store", tiny_models)
    out = tmp_path / "ship"
    rc = cli.main(["select", "--tracking-uri", store["uri"], "--latency-budget-ms", "1000", "--out", str(out),
                   "--formats", "torch,onnx-int8", "--data-dir", str(small_glue_dir), "--threads", "1",
                   "--warmup", "1", "--min-iters", "3", "--min-seconds", "0", "--cache-dir", str(tmp_path / "lat")])
    text = capsys.readouterr().out
    assert rc == 0, text
    sel = json.loads((out / "selection.json").read_text())
    assert len(sel["groups"]) == 3 * 2 and {g["format"] for g in sel["groups"]} == {"torch", "onnx-int8"}
    assert all(g["score"] is not None and g["latency_ms"] > 0 for g in sel["groups"])
    meta = json.loads((out / "mixkd_export.json").read_text())
    assert meta["format"] == sel["chosen"]["format"] and "as " + meta["format"] in text


def test_select_refuses_an_unmeetable_budget_before_converting_anything(tiny_models,  # noqa: F811 (test_selection fixture)
                                                                        small_glue_dir, tmp_path,
                                                                        monkeypatch, capsys):
    """Latency depends on architecture and format only: a budget nothing meets is refused from the latencies, before
    a single model is converted or scored, naming the fastest point."""
    from mixkd.deploy import export as ship
    store = build_store(tmp_path / "store", tiny_models)
    converted = []
    monkeypatch.setattr(ship, "convert_and_score", lambda *a, **k: converted.append(1) or (_ for _ in ()).throw(
        AssertionError("converted a model before checking the budget")))
    rc = cli.main(["select", "--tracking-uri", store["uri"], "--latency-budget-ms", "0.0001", "--out",
                   str(tmp_path / "ship"), "--formats", "torch,onnx-int8", "--data-dir", str(small_glue_dir),
                   "--threads", "1", "--warmup", "1", "--min-iters", "3", "--min-seconds", "0", "--cache-dir",
                   str(tmp_path / "lat")])
    err = capsys.readouterr().err
    assert rc == 2 and not converted and not (tmp_path / "ship").exists()
    assert "no configuration meets the latency budget of 0.0001 ms" in err and "the fastest is" in err


# --- docs/deploy.md (the README links it): plain onnxruntime + tokenizers ----------------------------
def test_docs_ship_it_snippet_runs_without_mixkd_or_torch(exports):
    page = (REPO / "docs" / "deploy.md").read_text()
    section = page[page.index("## Ship it"):]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    assert "mixkd" not in code and "torch" not in code and len(code.strip().splitlines()) <= 20
    code = code.replace("folder = 'runs/ship'", f"folder = {exports['onnx']['out']!r}")
    guard = "import sys; sys.modules['mixkd'] = None; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
    proc = subprocess.run([sys.executable, "-c", guard + code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("[") and proc.stdout.count("[") == 4    # 2 labels, then 2 rows of logits


# --- the packaged MiniLM, cut to a 2-layer student ----------------------------------------------------
@pytest.mark.integration
def test_minilm_two_layer_student_exports_to_onnx_fp32_and_int8(minilm_dir, small_glue_dir, tmp_path):
    from mixkd.core.models import build_student, load_classifier, load_tokenizer
    from mixkd.core.tasks import get_task
    student = build_student(load_classifier(str(minilm_dir), get_task("sst2"), new_head=True), 2)
    src = tmp_path / "student"
    student.save_pretrained(src)
    load_tokenizer(str(minilm_dir)).save_pretrained(src)
    fp32 = ship.export_model(str(src), "onnx", tmp_path / "onnx", task="sst2", data_dir=str(small_glue_dir), log=quiet)
    assert fp32["agreement"]["label_agreement"] >= 0.995 and fp32["agreement"]["max_abs_logit_diff"] < 1e-3
    int8 = ship.export_model(str(src), "onnx", tmp_path / "int8", quantize="int8", task="sst2",
                             data_dir=str(small_glue_dir), log=quiet)
    assert set(int8["metrics_after"]) == set(int8["metrics_before"]) == {"accuracy"}
    assert (tmp_path / "int8" / "model.onnx").stat().st_size < 0.5 * (tmp_path / "onnx" / "model.onnx").stat().st_size
