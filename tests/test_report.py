"""mixkd.tracking.runstore, mixkd.report and `mixkd report` on an MLflow store filled with synthetic runs.

The runs carry the tags, params and metrics that mixkd.tracking writes (a parent 'sweep' run, nested
'teacher' and 'trial' runs), with known values, so every cell of the report can be checked.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from mixkd.report import paper_numbers as P
from mixkd.core.errors import UsageError

EXP = "ablation"


def _teacher_dir(task, frac):
    return f"/runs/teachers/{task}-f{frac}"


class Store:
    def __init__(self, path: Path):
        from mlflow.tracking import MlflowClient
        self.uri = f"sqlite:///{path}"
        self.client = MlflowClient(self.uri)
        self.exp_id = self.client.create_experiment(EXP, tags={"mixkd": "1"})
        self.parent = self.client.create_run(self.exp_id,
                                             tags={"mixkd.role": "sweep", "mixkd.sweep_id": "s1"}).info.run_id
        self.ids: dict[str, list[str]] = {}

    def add(self, name, role, task, seed, metrics, variant="ft", k=None, frac=1.0, aug="none", group=None,
            status="FINISHED", params=None, model="bert-base-uncased"):
        from mlflow.entities import Metric, Param
        tags = {"mixkd.role": role, "mixkd.sweep_id": "s1", "mlflow.parentRunId": self.parent, "task": task,
                "variant": variant, "data_fraction": str(frac), "seed": str(seed), "augmentation": aug,
                "config_hash": f"{name}-{seed}", "config_group": group or name, "git_commit": "abc"}
        p = {"task": task, "variant": variant, "seed": str(seed), "data_fraction": str(frac), "a_sm": "1.0",
             "a_tmkd": "1.0", "mixup_ratio": "1", "alpha": "0.4", "model": model, "teacher": "None"}
        if role == "trial":
            tags.update(student_layers=str(k), layer_strategy="first")
            p.update(student_layers=str(k), teacher=_teacher_dir(task, frac))
        else:
            tags["run_dir"] = _teacher_dir(task, frac)
        p.update(params or {})
        run_id = self.client.create_run(self.exp_id, run_name=name, tags=tags).info.run_id
        self.client.log_batch(run_id, metrics=[Metric(k_, float(v), 0, 1) for k_, v in metrics.items()],
                              params=[Param(k_, v) for k_, v in p.items()])
        self.client.set_terminated(run_id, status=status)
        self.ids.setdefault(name, []).append(run_id)
        return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = Store(tmp_path_factory.mktemp("mlflow") / "mlflow.db")
    # teachers (one per task and data fraction); SST-2 with two seeds and latency
    for seed, acc in ((1, 0.92), (2, 0.93)):
        s.add("teacher-sst2", "teacher", "sst2", seed, {"final/accuracy": acc, "final/primary": acc,
                                                         "params_count": 109_483_778,
                                                         "latency/b1_s128_p90_ms": 10.0})
    for task, frac in (("mrpc", 1.0), ("mnli", 1.0), ("cola", 1.0), ("qqp", 0.1)):
        s.add(f"teacher-{task}-{frac}", "teacher", task, 1, {}, frac=frac)
    # Table 1 cells
    for seed, acc in ((1, 0.90), (2, 0.92)):
        s.add("ft6-sst2", "trial", "sst2", seed, {"final/accuracy": acc, "final/primary": acc,
                                                  "params_count": 66_956_546, "latency/b1_s128_p90_ms": 5.0},
              k=6)
    s.add("smtmkd3-mrpc", "trial", "mrpc", 1, {"final/f1": 0.85, "final/accuracy": 0.80, "final/primary": 0.85},
          variant="sm+tmkd", k=3)
    for seed, acc in ((1, 0.91), (2, 0.90)):
        s.add("smtmkd3bt-sst2", "trial", "sst2", seed, {"final/accuracy": acc, "final/primary": acc},
              variant="sm+tmkd", k=3, aug="bt-de")
    for seed, acc in ((1, 0.84), (2, 0.86)):   # config A: mean 85
        s.add("tmkd6-A", "trial", "sst2", seed, {"final/accuracy": acc, "final/primary": acc}, variant="tmkd", k=6)
    s.add("tmkd6-B", "trial", "sst2", 1, {"final/accuracy": 0.88, "final/primary": 0.88}, variant="tmkd", k=6)
    s.add("tmkd3-failed", "trial", "sst2", 1, {"final/accuracy": 0.99, "final/primary": 0.99}, variant="tmkd", k=3,
          status="FAILED")
    s.add("kd6-mnli", "trial", "mnli", 1, {"final/accuracy": 0.80, "final/accuracy_mm": 0.81, "final/primary": 0.80},
          variant="kd", k=6)
    s.add("ft2-cola", "trial", "cola", 1, {"final/matthews_correlation": 0.30, "final/accuracy": 0.7,
                                           "final/primary": 0.30}, k=2)
    # Fig. 1 (10% QQP) and Fig. 3 (a_sm sweep, SST-2, BERT3, no BT)
    s.add("ft3-qqp-10", "trial", "qqp", 1, {"final/f1": 0.75, "final/accuracy": 0.80, "final/primary": 0.75},
          k=3, frac=0.1)
    s.add("smtmkd3-asm0.1", "trial", "sst2", 1, {"final/accuracy": 0.88, "final/primary": 0.88}, variant="sm+tmkd",
          k=3, params={"a_sm": "0.1"})
    s.add("smtmkd3-asm2", "trial", "sst2", 1, {"final/accuracy": 0.885, "final/primary": 0.885}, variant="sm+tmkd",
          k=3, params={"a_sm": "2.0"})
    return s


@pytest.fixture(scope="module")
def df(store):
    from mixkd.tracking.runstore import load_runs
    return load_runs(store.uri)


@pytest.fixture(scope="module")
def report(df):
    from mixkd.report.build import build_report
    return build_report(df, figures=False)


# ---- runstore -------------------------------------------------------------------------------------
def test_load_runs_one_row_per_child_with_typed_tags(store, df):
    assert len(df) == sum(len(v) for v in store.ids.values())          # the parent 'sweep' run is not a row
    assert set(df["role"]) == {"trial", "teacher"}
    assert set(df["experiment"]) == {EXP} and set(df["parent_run_id"]) == {store.parent}
    row = df[df["run_id"] == store.ids["ft6-sst2"][0]].iloc[0]
    assert row["student_layers"] == 6 and isinstance(row["student_layers"], int)
    assert row["seed"] == 1 and isinstance(row["seed"], int)
    assert row["data_fraction"] == 1.0 and isinstance(row["data_fraction"], float)
    assert row["variant"] == "ft" and row["layer_strategy"] == "first" and row["augmentation"] == "none"
    assert row["config_group"] == "ft6-sst2" and row["params"]["a_sm"] == "1.0"
    assert row["final/accuracy"] == pytest.approx(0.90) and row["latency/b1_s128_p90_ms"] == 5.0
    # the trial's teacher is found by its run dir
    assert row["teacher_model"] == "bert-base-uncased"
    assert row["teacher_run_id"] in store.ids["teacher-sst2"]
    teacher = df[df["run_id"] == store.ids["teacher-sst2"][0]].iloc[0]
    assert teacher["student_layers"] is None and teacher["role"] == "teacher"
    assert df[df["run_id"] == store.ids["ft3-qqp-10"][0]].iloc[0]["data_fraction"] == 0.1
    # a metric a run did not log is NaN
    assert math.isnan(df[df["run_id"] == store.ids["smtmkd3-mrpc"][0]].iloc[0]["params_count"])


def test_load_runs_by_experiment_name(store, df):
    from mixkd.tracking.runstore import load_runs
    assert len(load_runs(store.uri, EXP)) == len(df)


def test_aggregate_mean_std_n_over_seeds(df):
    from mixkd.tracking.runstore import aggregate
    trials = df[(df["role"] == "trial") & (df["task"] == "sst2") & (df["status"] == "FINISHED")]
    agg = aggregate(trials, by=["variant", "student_layers", "config_group"], metric="final/accuracy")
    row = agg[agg["config_group"] == "ft6-sst2"].iloc[0]
    assert row["mean"] == pytest.approx(0.91) and row["std"] == pytest.approx(math.sqrt(2e-4)) and row["n"] == 2
    assert len(row["run_ids"]) == 2 and sorted(row["seeds"]) == [1, 2] and row["student_layers"] == 6
    single = agg[agg["config_group"] == "tmkd6-B"].iloc[0]
    assert single["n"] == 1 and math.isnan(single["std"])
    # a group key that is None (teachers have no depth) is kept, not dropped
    agg2 = aggregate(df[df["task"] == "sst2"], by=["role", "student_layers"], metric="final/accuracy")
    assert None in list(agg2["student_layers"])


def test_load_runs_errors(store, tmp_path):
    from mixkd.tracking.runstore import load_runs
    with pytest.raises(UsageError, match=r"no mixkd experiment named 'nope'.*available: ablation"):
        load_runs(store.uri, "nope")
    missing = tmp_path / "missing.db"
    with pytest.raises(UsageError, match="not found"):
        load_runs(f"sqlite:///{missing}")
    assert not missing.exists()                       # never creates a store
    with pytest.raises(UsageError, match="not found"):
        load_runs(str(tmp_path / "no-such-folder"))


def test_sqlite_file_that_is_not_an_mlflow_store_is_left_alone(tmp_path):
    import sqlite3
    from mixkd.tracking.runstore import load_runs
    db = tmp_path / "optuna.db"
    con = sqlite3.connect(db)
    con.execute("create table studies (id integer)")
    con.commit()
    con.close()
    with pytest.raises(UsageError, match="not an MLflow tracking store"):
        load_runs(f"sqlite:///{db}")
    con = sqlite3.connect(db)
    assert [r[0] for r in con.execute("select name from sqlite_master where type='table'")] == ["studies"]
    con.close()


def test_store_without_mixkd_experiments(tmp_path):
    from mlflow.tracking import MlflowClient
    from mixkd.tracking.runstore import load_runs
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    MlflowClient(uri).create_experiment("not-mixkd")
    with pytest.raises(UsageError, match="no mixkd experiments"):
        load_runs(uri)


# ---- report tables --------------------------------------------------------------------------------
def _t1(report):
    t = report.table("table1")
    assert "bert-base-uncased" in t.title and "100%" in t.title
    return t


def test_table1_cells_mean_std_paper_delta(report, store):
    t = _t1(report)
    assert t.columns[:6] == ["SST-2", "MRPC (F1/Acc)", "QQP (F1/Acc)", "MNLI-m", "QNLI", "RTE"]
    c = t.cell("BERT6-FT", "SST-2")
    assert c.mean == pytest.approx([91.0]) and c.std == pytest.approx([math.sqrt(2)]) and c.n == 2
    assert c.paper == [90.94] and c.delta == pytest.approx([0.06])
    assert sorted(r for _, r in c.runs) == sorted(store.ids["ft6-sst2"])
    assert c.ours_text() == "91.00 ± 1.41 (n=2)" and c.delta_text() == "+0.06"
    m = t.cell("BERT3-SM+TMKD", "MRPC (F1/Acc)")              # F1/Acc, n = 1: no std
    assert m.mean == pytest.approx([85.0, 80.0]) and m.paper == [81.73, 71.08]
    assert m.delta == pytest.approx([3.27, 8.92]) and m.ours_text() == "85.00 / 80.00 (n=1)"
    bt = t.cell("BERT3-SM+TMKD+BT", "SST-2")                   # augmentation tag -> the +BT row
    assert bt.mean == pytest.approx([90.5]) and bt.paper == [90.37] and bt.n == 2
    teacher = t.cell("BERT12 (teacher)", "SST-2")
    assert teacher.mean == pytest.approx([92.5]) and teacher.paper == [92.20] and teacher.n == 2


def test_table1_best_config_missing_cells_and_extra_rows(report):
    t = _t1(report)
    best = t.cell("BERT6-TMKD", "SST-2")                       # config B (88) beats A (mean 85)
    assert best.mean == pytest.approx([88.0]) and best.n == 1 and best.note == "best of 2 configs"
    failed = t.cell("BERT3-TMKD", "SST-2")                     # only a FAILED run: no value
    assert not failed.has_run and failed.ours_text() == "no run" and failed.paper == [88.76]
    assert not t.cell("BERT6-FT", "RTE").has_run
    sm = t.cell("BERT3-SM+TMKD", "SST-2")                     # the two Fig. 3 runs (a_sm 0.1 and 2)
    assert sm.mean == pytest.approx([88.5]) and sm.note == "best of 2 configs"
    distil = [r for r in t.rows if r.label.startswith("DistilBERT6")][0]
    assert distil.paper_only and not any(c.has_run for c in distil.cells)
    assert distil.cells[2].paper == [None, 88.5] and distil.cells[2].paper_text() == "—/88.50"
    # our task outside the paper gets its own column (CoLA: Matthews), our depth its own row
    assert "CoLA (MCC)" in t.columns
    extra = t.cell("BERT2-FT", "CoLA (MCC)")
    assert extra.mean == pytest.approx([30.0]) and extra.paper is None
    assert [r for r in t.rows if r.label == "BERT2-FT"][0].ours_only


def test_limited_data_runs_get_their_own_table1(report):
    keys = [t.key for t in report.tables if t.key.startswith("table1")]
    assert keys == ["table1", "table1_2"]
    t = report.table("table1_2")
    assert "10%" in t.title
    c = t.cell("BERT3-FT", "QQP (F1/Acc)")
    assert c.mean == pytest.approx([75.0, 80.0])
    # another setting than the paper's: both numbers side by side, labelled, and no Δ between them
    assert c.paper is not None and c.delta is None and c.delta_text() == ""
    assert any(n.startswith("No Δ in this table") for n in t.notes) and "full data" in t.paper_label


def test_table3_dev_next_to_test(report):
    t = report.table("table3")
    assert t.columns == ["SST-2", "MRPC (F1/Acc)", "QQP (F1/Acc)", "MNLI-m", "MNLI-mm", "QNLI", "RTE"]
    assert t.ours_label == "ours (dev)" and t.paper_label == "paper (test)"
    assert any("dev" in n and "test" in n for n in t.notes)
    kd_m, kd_mm = t.cell("BERT6-KD", "MNLI-m"), t.cell("BERT6-KD", "MNLI-mm")
    assert kd_m.mean == pytest.approx([80.0]) and kd_m.paper == [80.2]
    assert kd_mm.mean == pytest.approx([81.0]) and kd_mm.paper == [79.8]
    mix = t.cell("BERT3-MixKD (SM+TMKD+BT)", "SST-2")
    assert mix.mean == pytest.approx([90.5]) and mix.paper == [89.5] and mix.paper_text() == "89.5"
    assert not t.cell("BERT6-PKD", "SST-2").has_run and t.cell("BERT6-PKD", "SST-2").paper == [92.0]


def test_table2_params_and_speedup(report):
    t = report.table("table2")
    assert "b1_s128_p90_ms" in t.columns
    teacher = t.rows[0]
    assert teacher.cells[0].mean == pytest.approx([109_483_778]) and teacher.cells[0].delta == [0]
    six = [r for r in t.rows if r.label.startswith("BERT6 student")][0]
    assert six.cells[0].mean == pytest.approx([66_956_546]) and six.cells[0].paper == [66_956_546]
    assert six.cells[2].mean == pytest.approx([2.0]) and six.cells[2].paper == [2.19]
    assert six.cells[t.columns.index("b1_s128_p90_ms")].mean == pytest.approx([5.0])
    assert not six.cells[1].has_run and six.cells[1].paper == [252]     # samples/s: paper only
    three = [r for r in t.rows if r.label.startswith("BERT3 student")][0]
    assert not three.cells[0].has_run and three.cells[0].paper == [45_692_930]


def test_table2_says_latency_missing(df):
    from mixkd.report.build import build_report
    no_lat = df.drop(columns=[c for c in df.columns if c.startswith("latency/")])
    t = build_report(no_lat, figures=False).table("table2")
    assert any("Latency missing" in n for n in t.notes)
    assert all(not r.cells[2].has_run for r in t.rows)


def test_fig1_and_fig3_cells(report):
    f1 = report.table("fig1")
    assert f1.columns[:4] == ["QQP", "MNLI-m", "MNLI-mm", "QNLI"]
    c = f1.cell("10% · BERT3 FT", "QQP")                          # Fig. 1 is accuracy, also for QQP
    assert c.mean == pytest.approx([80.0]) and c.paper == [82.7] and c.delta == pytest.approx([-2.7])
    assert not f1.cell("1% · BERT3 FT+MixKD (w/ BT)", "QNLI").has_run
    assert f1.cell("1% · BERT3 FT+MixKD (w/ BT)", "QNLI").paper == [75.8]
    asm = report.table("fig3_a_sm")
    a01 = asm.cell("α_SM = 0.1", "w/o BT")
    assert a01.mean == pytest.approx([88.0]) and a01.paper == [88.76]
    assert asm.cell("α_SM = 2", "w/o BT").mean == pytest.approx([88.5])
    assert asm.cell("α_SM = 1", "w/ BT").mean == pytest.approx([90.5])   # the two BT runs have a_sm 1
    assert not asm.cell("α_SM = 10", "w/ BT").has_run and asm.cell("α_SM = 10", "w/ BT").paper == [90.14]
    ratio = report.table("fig3_mixup_ratio")
    assert ratio.cell("mixup ratio = 2", "w/ BT").paper == [90.71]


def test_empty_store_report_marks_every_cell(df):
    from mixkd.report.build import build_report
    r = build_report(df.iloc[:0], figures=False)
    t = r.table("table1")
    assert all(not c.has_run for row in t.rows for c in row.cells)
    assert t.cell("BERT6-FT", "SST-2").paper == [90.94]


# ---- rendering and the command ---------------------------------------------------------------------
def _md_row(md: str, section: str, label: str) -> list[str]:
    part = md.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in part.splitlines() if line.startswith(f"| {label} |")]
    assert lines, f"no row {label!r} in {section!r}"
    return [c.strip() for c in re.split(r"(?<!\\)\|", lines[0])[1:-1]]


def test_markdown_cells(report, store):
    from mixkd.report.render import render_markdown
    md = render_markdown(report)
    header = _md_row(md, "Table 1", "Model")
    row = _md_row(md, "Table 1", "BERT6-FT")
    sst2 = row[header.index("SST-2")]
    assert "91.00 ± 1.41 (n=2)" in sst2 and "paper 90.94" in sst2 and "Δ +0.06" in sst2
    for rid in store.ids["ft6-sst2"]:
        assert f"#/experiments/{store.exp_id}/runs/{rid}" in sst2
    assert row[header.index("RTE")] == "no run<br>paper 66.43"
    mrpc = _md_row(md, "Table 1", "BERT3-SM+TMKD")[header.index("MRPC (F1/Acc)")]
    assert "85.00 / 80.00 (n=1)" in mrpc and "paper 81.73/71.08" in mrpc and "Δ +3.27/+8.92" in mrpc
    t3 = _md_row(md, "Table 3", "BERT6-KD")
    assert any("80.00 (n=1)" in c and "paper (test) 80.2" in c for c in t3)


def test_report_command_writes_self_contained_html(store, tmp_path, capsys, recwarn):
    from mixkd.cli.app import main
    out = tmp_path / "rep"
    assert main(["report", "--tracking-uri", store.uri, "--out", str(out), "--mlflow-ui-url", "http://ui:5000/"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.md", "report.html", "report.json", "fig1_limited_data.png", "fig3_sensitivity.png",
            "table2_speed_params.png"} <= names
    assert any(n.startswith("pareto") and n.endswith(".png") for n in names)
    html = (out / "report.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<link" not in html and "<script" not in html
    assert f'href="http://ui:5000/#/experiments/{store.exp_id}/runs/{store.ids["ft6-sst2"][0]}"' in html
    assert "91.00 ± 1.41 (n=2)" in html and "no run" in html and "Claims scorecard" in html
    printed = capsys.readouterr()
    assert "claims scorecard:" in printed.out
    assert "Warning" not in printed.err and "warn" not in printed.err.lower(), printed.err   # nothing leaks
    assert not [str(w.message) for w in recwarn if "matplotlib" in w.filename], [str(w.message) for w in recwarn]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rep")]      # no temp dirs left
    # an existing --out is refused without --overwrite (one line, exit 2) and replaced with it
    capsys.readouterr()
    assert main(["report", "--tracking-uri", store.uri, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    (out / "stale.txt").write_text("x")
    assert main(["report", "--tracking-uri", store.uri, "--out", str(out), "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "report.md").is_file()


@pytest.mark.parametrize("bad,match", [("experiment", "no mixkd experiment named 'zzz'"), ("store", "not found")])
def test_report_command_bad_input_one_line_exit_2(store, tmp_path, capsys, bad, match):
    from mixkd.cli.app import main
    out = tmp_path / "rep"
    argv = (["--tracking-uri", store.uri, "--experiment", "zzz"] if bad == "experiment"
            else ["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"])
    assert main(["report", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mixkd report: error:") and match in err
    assert not out.exists() and not (tmp_path / "none.db").exists()


def test_make_report_script_help():
    import subprocess
    import sys
    script = Path(__file__).resolve().parents[1] / "experiments" / "make_report.py"
    r = subprocess.run([sys.executable, str(script), "--out", "/nonexistent/x", "--tracking-uri", "/nonexistent"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("make_report.py: error:")
    assert len(r.stderr.strip().splitlines()) == 1


# ---- the paper's numbers ---------------------------------------------------------------------------
def test_fig1_bars_reproduce_the_papers_printed_deltas():
    f = P.FIG1_LIMITED
    for frac, deltas in f["text_deltas"].items():
        got = [round(a - b, 1) for a, b in zip(f["values"][frac][("sm+tmkd", True)], f["values"][frac][("ft", False)])]
        assert got == list(deltas)


NOTES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "mixkd_paper.md"


def _md_table(title: str) -> dict[str, list[str]]:
    sec = NOTES.read_text().split(title, 1)[1]
    rows = {}
    for line in sec.splitlines()[1:]:
        if line.startswith("###"):
            break
        if line.startswith("| ") and not line.startswith(("| Model", "|---")):
            cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _flat(values: dict, tasks, mnli_mm=False) -> list[list[float | None]]:
    out = []
    for t in tasks:
        d = values[t]
        if "f1" in d:
            out.append([d["f1"], d["accuracy"]])
        else:
            out.append([d["accuracy"]])
            if t == "mnli" and mnli_mm:
                out.append([d["accuracy_mm"]])
    return out


@pytest.mark.skipif(not NOTES.is_file(), reason="reference notes not present")
def test_table1_and_table3_match_the_reference_notes():
    parse = lambda cells: [[None if x == "—" else float(x) for x in c.split("/")] for c in cells]  # noqa: E731
    t1 = _md_table("### Table 1")
    for r in P.TABLE1_DEV["rows"]:
        assert parse(t1[r["label"].replace("(Sanh", "(from Sanh")]) == _flat(r["values"], P.TASKS_6), r["label"]
    t3 = _md_table("### Table 3")
    for r in P.TABLE3_TEST["rows"]:
        assert parse(t3[r["label"].replace(" (SM+TMKD+BT)", "")]) == _flat(r["values"], P.TASKS_6, True), r["label"]


# --- several stores (sweeps run on other days or machines, reported together) -------------------------------
def test_report_over_several_stores_counts_a_run_once(store, df, tmp_path, capsys):
    """Two stores: a copy of the fixture's store (every run appears twice, same run ids) and a second sweep that
    recorded one of the same computations again (another run id) plus one new run. The merge holds each run once."""
    import shutil
    from mixkd.cli.app import main
    from mixkd.tracking.runstore import load_runs
    copy = tmp_path / "a" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copy(store.uri.removeprefix("sqlite:///"), copy)
    other = Store(tmp_path / "b" / "mlflow.db")
    other.add("ft6-sst2", "trial", "sst2", 1, {"final/accuracy": 0.90, "final/primary": 0.90}, k=6)   # again
    other.add("ft6-sst2", "trial", "sst2", 3, {"final/accuracy": 0.94, "final/primary": 0.94}, k=6)   # new seed
    merged = load_runs([store.uri, str(copy.parent), str(tmp_path / "b")])
    assert len(merged) == len(df) + 1 and merged["run_id"].is_unique
    ft6 = merged[(merged["config_group"] == "ft6-sst2")]
    assert sorted(ft6["seed"]) == [1, 2, 3]
    # a folder of stores stands for each of them
    assert len(load_runs(str(tmp_path))) == len(df) + 1
    # the report takes --tracking-uri several times; its Table 1 cell averages the three seeds
    out = tmp_path / "rep"
    assert main(["report", "--tracking-uri", store.uri, "--tracking-uri", str(tmp_path / "b"), "--out", str(out)]) == 0
    assert "92.00 ± 2.00 (n=3)" in (out / "report.md").read_text()
    # a store that does not exist: one line, exit 2, nothing written
    capsys.readouterr()
    assert main(["report", "--tracking-uri", store.uri, "--tracking-uri", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "rep2")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope" in err and "not found" in err and not (tmp_path / "rep2").exists()


def test_a_run_cut_short_in_one_store_and_finished_in_another_counts_as_finished(tmp_path):
    """A grid that outlives a session: its first store holds a trial the session's end left RUNNING, a later store
    the same computation finished. Whatever the order of the stores, the merge keeps the finished one."""
    from mixkd.tracking.runstore import load_runs
    first, later = Store(tmp_path / "a" / "mlflow.db"), Store(tmp_path / "b" / "mlflow.db")
    first.add("ft6-rte", "trial", "rte", 1, {}, k=6, status="RUNNING")
    first.add("ft6-rte", "trial", "rte", 2, {"final/accuracy": 0.6, "final/primary": 0.6}, k=6)
    later.add("ft6-rte", "trial", "rte", 1, {"final/accuracy": 0.7, "final/primary": 0.7}, k=6)
    for order in ([tmp_path / "a", tmp_path / "b"], [tmp_path / "b", tmp_path / "a"]):
        merged = load_runs([str(p) for p in order])
        rows = merged[merged["task"] == "rte"].sort_values("seed")
        assert list(rows["seed"]) == [1, 2] and list(rows["status"]) == ["FINISHED", "FINISHED"], rows
