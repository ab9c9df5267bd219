"""`mixkd predict` (issue 15, part 3): label names and probabilities (or a regression score) of any classifier
mixkd saved or exported, for texts, text pairs or an input file; the same labels as `mixkd evaluate`'s model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mixkd.cli import app as cli
from mixkd.core.data import read_glue_tsv
from mixkd.core.errors import UsageError
from mixkd.core.tasks import get_task
from mixkd.deploy import export as ship
from mixkd.deploy.predict import Predictor, predict, read_inputs

from conftest import make_tiny_bert


def quiet(_msg):
    pass


def softmax(z):
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def sst2_dev(small_glue_dir) -> list[str]:
    return read_glue_tsv(small_glue_dir / "SST-2" / "dev.tsv", get_task("sst2"))["sentence"]


@pytest.fixture(scope="module")
def reference(tiny_teacher_run, small_glue_dir):
    """The dev logits of the teacher as `mixkd evaluate` computes them (same loader, tokenization, batching)."""
    _, _, _, ref = ship.load_reference(str(tiny_teacher_run), "sst2", str(small_glue_dir), max_seq_length=64)
    return ref[""][0]


@pytest.fixture(scope="module")
def onnx_export(tiny_teacher_run, small_glue_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict_exports") / "onnx"
    ship.export_model(str(tiny_teacher_run), "onnx", out, data_dir=str(small_glue_dir), threads=1, log=quiet)
    return out


def check_rows(rows, ref_logits, atol):
    assert len(rows) == len(ref_logits)
    for row, z in zip(rows, ref_logits):
        assert set(row["probabilities"]) == {"negative", "positive"}
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-9)
        assert row["label"] == ("negative", "positive")[int(z.argmax())] and row["label_id"] == int(z.argmax())
        assert list(row["probabilities"].values()) == pytest.approx(softmax(z.astype(np.float64)).tolist(), abs=atol)


def test_run_dir_predicts_evaluates_labels_and_probabilities(tiny_teacher_run, sst2_dev, reference):
    pred = Predictor(tiny_teacher_run, device="cpu")
    assert pred.max_length == 64 and pred.format == "torch" and pred.labels == ["negative", "positive"]
    check_rows(pred(sst2_dev, batch_size=7), reference, 1e-5)
    # the model/ folder alone: the run's max_seq_length is still found (config.yaml one level up)
    assert predict(tiny_teacher_run / "model", sst2_dev[:5], device="cpu") == pred(sst2_dev[:5])


def test_onnx_export_predicts_the_same(onnx_export, sst2_dev, reference):
    pred = Predictor(onnx_export, device="auto")
    assert pred.format == "onnx" and pred.max_length == 64 and str(pred.device) == "cpu"
    check_rows(pred(sst2_dev), reference, 1e-4)


def test_select_folder_reads_its_max_length(tiny_teacher_run, tmp_path, sst2_dev):
    sel = tmp_path / "ship"
    shutil.copytree(tiny_teacher_run / "model", sel)
    (sel / "selection.json").write_text(json.dumps({"config": {"max_seq_length": 48}}))
    pred = Predictor(sel, device="cpu")
    assert pred.max_length == 48
    assert pred.logits(["a film"] * 3).shape == (3, 2)


def test_cli_input_file_round_trip_keeps_order(onnx_export, small_glue_dir, sst2_dev, reference, tmp_path, capsys):
    out = tmp_path / "dev.jsonl"
    assert cli.main(["predict", "--model", str(onnx_export), "--input-file", str(small_glue_dir / "SST-2" / "dev.tsv"),
                     "--output-file", str(out), "--batch-size", "5"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == sst2_dev
    check_rows(rows, reference, 1e-4)
    # a plain text file (one example per line), reversed: the output follows the file
    txt = tmp_path / "reviews.txt"
    txt.write_text("\n".join(reversed(sst2_dev)) + "\n\n")
    assert cli.main(["predict", "--model", str(onnx_export), "--input-file", str(txt), "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == sst2_dev[::-1]
    assert [r["label"] for r in lines] == [r["label"] for r in rows][::-1]


def test_cli_texts_to_stdout(tiny_teacher_run, capsys):
    assert cli.main(["predict", "--model", str(tiny_teacher_run), "--text", "a gripping , funny film",
                     "--text", "a dull , lifeless mess", "--device", "cpu"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == ["a gripping , funny film", "a dull , lifeless mess"]
    assert all(r["label"] in ("negative", "positive") and len(r["probabilities"]) == 2 for r in lines)


@pytest.fixture(scope="module")
def pair_clf(tmp_path_factory, minilm_dir) -> Path:
    """A random 2-layer BERT classifier (an HF folder, not a mixkd run: labels LABEL_0 / LABEL_1)."""
    return make_tiny_bert(tmp_path_factory.mktemp("pair_clf"), minilm_dir, layers=2, hidden=32, num_labels=2, seed=3)


def test_pair_task_matches_evaluate(pair_clf, small_glue_dir, tmp_path):
    cols = read_glue_tsv(small_glue_dir / "MRPC" / "dev.tsv", get_task("mrpc"))
    _, _, _, ref = ship.load_reference(str(pair_clf), "mrpc", str(small_glue_dir))   # max length 128, as predict's
    pred = Predictor(pair_clf, device="cpu")
    assert pred.max_length == 128 and pred.labels == ["LABEL_0", "LABEL_1"]
    logits = pred.logits(cols["sentence1"], cols["sentence2"], batch_size=8)
    np.testing.assert_allclose(logits, ref[""][0], atol=1e-5)
    # JSON lines input with its own column names
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps({"id": i, "a": a, "b": b}) + "\n"
                         for i, (a, b) in enumerate(zip(cols["sentence1"], cols["sentence2"]))))
    texts, pairs = read_inputs(f, "a", "b")
    assert (texts, pairs) == (cols["sentence1"], cols["sentence2"])
    out = tmp_path / "pairs.out.jsonl"
    assert cli.main(["predict", "--model", str(pair_clf), "--input-file", str(f), "--text-column", "a",
                     "--text-pair-column", "b", "--output-file", str(out), "--device", "cpu"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text_pair"] for r in rows] == cols["sentence2"]
    assert [r["label_id"] for r in rows] == ref[""][0].argmax(-1).tolist()


def test_regression_model_gives_a_score(tmp_path, minilm_dir):
    reg = make_tiny_bert(tmp_path / "reg", minilm_dir, layers=1, hidden=32, num_labels=1)
    rows = predict(reg, ["a man is playing a guitar", "a cat sleeps"], ["a man plays guitar", "a dog runs"],
                   device="cpu", max_length=32)
    assert [set(r) for r in rows] == [{"score"}, {"score"}] and all(isinstance(r["score"], float) for r in rows)


def test_csv_input_default_column_and_bad_files(tmp_path):
    f = tmp_path / "tickets.csv"
    f.write_text('id,text\n1,"my order, it is late"\n2,refund please\n')
    assert read_inputs(f) == (["my order, it is late", "refund please"], None)
    with pytest.raises(UsageError, match="no column 'body'"):
        read_inputs(f, "body")
    (tmp_path / "two.csv").write_text("a,b\nx,y\n")
    with pytest.raises(UsageError, match="--text-column"):
        read_inputs(tmp_path / "two.csv")
    (tmp_path / "gap.txt").write_text("one\n\nthree\n")
    with pytest.raises(UsageError, match="gap.txt:2: empty line"):
        read_inputs(tmp_path / "gap.txt")
    (tmp_path / "null.jsonl").write_text('{"text": "ok"}\n{"text": null}\n')
    with pytest.raises(UsageError, match="row 2 has no value in column 'text'"):
        read_inputs(tmp_path / "null.jsonl")


def test_api_bad_input(tiny_teacher_run, onnx_export):
    with pytest.raises(UsageError, match="not one string"):
        predict(tiny_teacher_run, "a film")
    with pytest.raises(UsageError, match="2 text\\(s\\) but 1 text pair"):
        predict(tiny_teacher_run, ["a", "b"], ["c"])
    with pytest.raises(UsageError, match="--device 'tpu'"):
        Predictor(tiny_teacher_run, device="tpu")
    with pytest.raises(UsageError, match="runs on CPU"):
        Predictor(onnx_export, device="cuda")
    with pytest.raises(UsageError, match="--max-length 999 is more than the model's 256 positions"):
        Predictor(tiny_teacher_run, device="cpu")(["a"], max_length=999)
