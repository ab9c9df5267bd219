"""Pareto front, budget choice, grouping of MLflow runs over seeds, the plot, and `mixkd select` end to end
against an MLflow SQLite store filled with synthetic runs that point at tiny saved models."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from mixkd.cli import app as cli
from mixkd.deploy import latency as L
from mixkd.core.errors import UsageError
from mixkd.deploy.selection import choose, group_runs, pareto_front, plot_pareto
from pathlib import Path

from conftest import make_tiny_bert, tiny_cfg


# --- Pareto front ------------------------------------------------------------------------------------
def P(name, score, lat):
    return {"label": name, "score": score, "latency_ms": lat}


def names(points):
    return [p["label"] for p in points]


def dominated(p, q):
    """q dominates p: >= in score, <= in latency, one strictly."""
    return (q["score"] >= p["score"] and q["latency_ms"] <= p["latency_ms"]
            and (q["score"] > p["score"] or q["latency_ms"] < p["latency_ms"]))


def test_front_basic_and_order():
    pts = [P("slow-best", 0.9, 10), P("fast", 0.7, 1), P("mid", 0.8, 5), P("dominated", 0.75, 6),
           P("slower-worse", 0.85, 20)]
    assert names(pareto_front(pts)) == ["fast", "mid", "slow-best"]


def test_front_equal_latency_keeps_only_the_best_score():
    pts = [P("a", 0.8, 2), P("b", 0.9, 2), P("c", 0.7, 1)]
    assert names(pareto_front(pts)) == ["c", "b"]


def test_front_equal_score_keeps_only_the_fastest():
    pts = [P("slow", 0.8, 3), P("fast", 0.8, 2)]
    assert names(pareto_front(pts)) == ["fast"]


def test_front_exact_duplicates_are_both_kept_in_input_order():
    pts = [P("x2", 0.8, 2), P("worse", 0.6, 3), P("x1", 0.8, 2)]
    assert names(pareto_front(pts)) == ["x2", "x1"]


def test_front_skips_missing_values():
    pts = [P("nan", float("nan"), 1), P("none", 0.9, None), P("ok", 0.5, 4)]
    assert names(pareto_front(pts)) == ["ok"]
    assert pareto_front([]) == []


def test_front_matches_definition_on_random_points():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 12)   # small integer grids: many ties and duplicates
        pts = [P(str(i), rng.randint(0, 4) / 4, rng.randint(1, 5)) for i in range(n)]
        expected = [p for p in pts if not any(dominated(p, q) for q in pts if q is not p)]
        got = pareto_front(pts)
        assert sorted(map(id, got)) == sorted(map(id, expected))
        lats = [p["latency_ms"] for p in got]
        assert lats == sorted(lats)
        shuffled = pts[:]
        rng.shuffle(shuffled)
        assert sorted(map(id, pareto_front(shuffled))) == sorted(map(id, got))   # order-independent set


# --- choice under a budget ---------------------------------------------------------------------------
GROUPS = [P("k1", 0.80, 1.0), P("k2", 0.85, 2.0), P("k2-ft", 0.83, 2.0), P("k3", 0.86, 3.5), P("k3-tie", 0.86, 3.0)]


def test_choose_best_within_budget():
    assert choose(GROUPS, 1.5)["label"] == "k1"
    assert choose(GROUPS, 2.0)["label"] == "k2"           # the budget is inclusive
    assert choose(GROUPS, 100)["label"] == "k3-tie"       # equal score: the faster one
    assert choose(GROUPS, 3.2)["label"] == "k3-tie"
    for budget in (1.0, 2.0, 3.0, 10.0):                  # the choice is always on the front
        assert choose(GROUPS, budget) in pareto_front(GROUPS)


def test_choose_exact_tie_is_deterministic():
    a, b = P("b-second", 0.9, 1.0), P("a-first", 0.9, 1.0)
    assert choose([a, b], 5)["label"] == "a-first"
    assert choose([b, a], 5)["label"] == "a-first"


def test_choose_none_feasible_names_the_fastest():
    with pytest.raises(UsageError) as e:
        choose(GROUPS, 0.5, what="p90, batch 1, seq 128")
    msg = str(e.value)
    assert "\n" not in msg
    assert "the fastest is k1 at 1.00 ms" in msg and "0.5 ms (p90, batch 1, seq 128)" in msg
    assert "--latency-budget-ms to at least 1.00" in msg


@pytest.mark.parametrize("budget", [0, -1, float("nan"), float("inf")])
def test_choose_bad_budget(budget):
    with pytest.raises(UsageError, match="--latency-budget-ms"):
        choose(GROUPS, budget)


def test_choose_needs_scored_points():
    with pytest.raises(UsageError, match="no configuration has both"):
        choose([P("x", None, 1.0)], 5)


# --- grouping of runstore rows --------------------------------------------------------------------------
def row(run_id, group, seed, score, lat=None, role="trial", k=2, variant="sm+tmkd", **extra):
    r = {"run_id": run_id, "role": role, "status": "FINISHED", "task": "sst2", "variant": variant,
         "student_layers": k, "layer_strategy": "first", "data_fraction": 1.0, "augmentation": "none", "seed": seed,
         "config_group": group, "config_hash": f"{group}-{seed}", "run_dir": None, "artifact_uri": None,
         "params": {}, "final/primary": score, "final/accuracy": score, "params_count": 1000.0 * (k or 4)}
    if lat is not None:
        r["latency/b1_s128_p90_ms"] = lat
        r["latency/b1_s128_p50_ms"] = lat / 2
    r.update(extra)
    return r


def test_group_runs_mean_std_over_seeds_and_logged_latency():
    import pandas as pd
    rows = [row("r1", "g2", 0, 0.80, 2.0), row("r2", "g2", 1, 0.90, 2.0), row("r3", "g2", 2, 0.85, 2.0),
            row("r4", "g1", 0, 0.70, 1.0, k=1),
            row("r5", "g1", 1, float("nan"), 1.0, k=1),                       # no score: left out
            row("r6", "g1", 2, 0.99, 1.0, k=1, status="FAILED"),              # unfinished: left out
            row("t1", "tg", 0, 0.95, 4.0, role="teacher", k=None)]
    groups = group_runs(pd.DataFrame(rows), percentile="p90")
    assert [g.config_group for g in groups] == ["g2", "g1"]             # by score
    g2, g1 = groups
    assert g2.n == 3 and g2.score == pytest.approx(0.85) and g2.score_std == pytest.approx(0.05)
    assert g2.best_run["run_id"] == "r2" and g2.run_ids[0] == "r2"
    lo, hi = g2.score_ci95
    assert lo < 0.85 < hi
    assert g2.latency_ms == 2.0 and g2.latency_source == "sweep" and g2.latency["p50_ms"] == 1.0
    assert g2.metrics["final/accuracy"][0] == pytest.approx(0.85)
    assert g1.n == 1 and g1.run_ids == ["r4"] and g1.score_std != g1.score_std   # NaN std for one seed
    assert g2.label.startswith("sm+tmkd k=2 first")
    p50 = group_runs(pd.DataFrame(rows), percentile="p50")
    assert {g.config_group: g.latency_ms for g in p50} == {"g2": 1.0, "g1": 0.5}
    with pytest.raises(UsageError, match="--percentile 'p95'"):
        group_runs(rows, percentile="p95")


def test_group_runs_without_latency_or_model_is_kept_without_latency():
    msgs = []
    groups = group_runs([row("r1", "g", 0, 0.8)], log=msgs.append)
    assert groups[0].latency_ms is None and "no latency" in msgs[0]


# --- plot ---------------------------------------------------------------------------------------------
def test_plot_pareto_writes_png(tmp_path):
    groups = [dict(p, score_std=0.01, scores=[p["score"] - 0.01, p["score"] + 0.01]) for p in GROUPS]
    out = plot_pareto(groups, tmp_path / "p.png", teachers=[P("teacher", 0.9, 6.0)], budget_ms=2.5,
                      chosen=groups[1], title="t")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    plot_pareto(groups[:1], tmp_path / "bare.png")             # no teacher, no budget
    assert (tmp_path / "bare.png").is_file()
    assert not list(tmp_path.glob(".*"))                      # no temp file left


# --- mixkd select end to end --------------------------------------------------------------------------
def _finish(client, run_id, run_dir, score, params_count, metrics=None):
    """What SweepTracker.finish records: final/* metrics, params_count, the run_dir tag, FINISHED."""
    for k, v in {"final/primary": score, "final/accuracy": score, "params_count": params_count,
                 **(metrics or {})}.items():
        client.log_metric(run_id, k, float(v))
    client.set_tag(run_id, "run_dir", str(run_dir))
    client.set_terminated(run_id, "FINISHED")


SPEC = [("sm+tmkd", 1, [0.70, 0.72], 1.0), ("sm+tmkd", 2, [0.80, 0.84], 2.0), ("ft", 2, [0.78, 0.76], 2.0)]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, minilm_dir):
    """Run dirs holding tiny saved classifiers (model/ with tokenizer) of 1, 2 and 4 layers."""
    root = tmp_path_factory.mktemp("tiny_models")
    models = {}
    for k in (1, 2, 4):
        make_tiny_bert(root / f"k{k}" / "model", minilm_dir, layers=k, hidden=32, num_labels=2, seed=k)
        models[k] = root / f"k{k}"
    return models


def build_store(root: Path, models: dict, spec=SPEC, teacher_latency: float | None = 4.0) -> dict:
    """An MLflow SQLite store with one mixkd sweep, written the way mixkd/tracking/writer.py writes it: a
    4-layer teacher and the ``spec`` student configurations (variant, k, scores per seed, logged p90 at
    batch 1 / seq 128 or None), each run pointing at a tiny saved model. The best seed of sm+tmkd k=2
    has no run dir on disk (a run dir on another node): its model exists only as the MLflow artifact."""
    from mlflow.tracking import MlflowClient
    from mixkd.tracking.writer import PARENT_TAG, ROLE_TAG, flat_params, run_tags
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("smoke", artifact_location=(root / "artifacts").as_uri(), tags={"mixkd": "1"})
    parent = client.create_run(exp, tags={PARENT_TAG: "smoke", ROLE_TAG: "sweep"}).info.run_id
    teacher_cfg = tiny_cfg(model=str(models[4] / "model"), output_dir=str(models[4]))

    def child(cfg, role, key):
        tags = {**run_tags(cfg, role), PARENT_TAG: "smoke", "mixkd.key": key, "mlflow.parentRunId": parent}
        rid = client.create_run(exp, run_name=key, tags=tags).info.run_id
        for k, v in flat_params(cfg).items():
            client.log_param(rid, k, v)
        return rid

    def lat_metrics(lat):
        return {} if lat is None else {"latency/b1_s128_p90_ms": lat, "latency/b1_s128_p50_ms": lat / 2,
                                       "latency/b32_s128_p90_ms": lat * 10}

    ids = {}
    tid = child(teacher_cfg, "teacher", "teacher")
    _finish(client, tid, models[4], 0.90, 40_000, lat_metrics(teacher_latency))
    client.set_tag(tid, L.LATENCY_DEVICE_TAG, "cpu")
    ids["teacher"] = tid
    for variant, k, scores, lat in spec:
        for seed, score in enumerate(scores):
            cfg = tiny_cfg(teacher=str(models[4]), variant=variant, student_layers=k, seed=seed,
                           output_dir=str(root / "runs" / f"{variant}-k{k}-s{seed}"))
            rid = child(cfg, "trial", f"{variant}-k{k}-s{seed}")
            run_dir = models[k]
            if (variant, k, seed) == ("sm+tmkd", 2, 1):
                client.log_artifacts(rid, str(models[2] / "model"), artifact_path="model")
                run_dir = root / "runs" / "gone"
            _finish(client, rid, run_dir, score, 10_000 * k, lat_metrics(lat))
            ids[(variant, k, seed)] = rid
    client.set_terminated(parent, "FINISHED")
    return {"uri": uri, "root": root, "ids": ids, "models": models}


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_models):
    """
    | group            | k | scores      | logged p90 b1 s128 |
    | sm+tmkd k=1      | 1 | 0.70, 0.72  | 1.0 ms |
    | sm+tmkd k=2      | 2 | 0.80, 0.84  | 2.0 ms |   best seed 1: model only in MLflow
    | ft k=2           | 2 | 0.78, 0.76  | 2.0 ms |   dominated
    | teacher          | 4 | 0.90        | 4.0 ms |
    """
    return build_store(tmp_path_factory.mktemp("select_store"), tiny_models)


def _select(store, tmp_path, *extra):
    out = tmp_path / "student"
    rc = cli.main(["select", "--tracking-uri", store["uri"], "--out", str(out), "--formats", "torch", *map(str, extra)])
    return rc, out


def test_select_end_to_end_exports_a_loadable_student(store, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    rc, out = _select(store, tmp_path, "--latency-budget-ms", 2.5, "--experiment", "smoke")
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "chosen: sm+tmkd k=2 first" in text and "2.00x faster than the teacher" in text
    sel = json.loads((out / "selection.json").read_text())
    ch = sel["chosen"]
    assert (ch["variant"], ch["student_layers"]) == ("sm+tmkd", 2)
    assert ch["score"] == pytest.approx(0.82) and ch["score_std"] == pytest.approx(0.0282843, rel=1e-4)
    assert ch["best_run_id"] == store["ids"][("sm+tmkd", 2, 1)] and ch["best_seed"] == 1
    assert sorted(ch["run_ids"]) == sorted([store["ids"][("sm+tmkd", 2, 0)], store["ids"][("sm+tmkd", 2, 1)]])
    assert ch["latency_ms"] == 2.0 and ch["latency_source"] == "sweep"
    assert sel["speedup_vs_teacher"] == pytest.approx(2.0)
    assert sel["teacher"]["run_ids"] == [store["ids"]["teacher"]] and sel["teacher"]["latency_ms"] == 4.0
    assert [g["variant"] + str(g["student_layers"]) for g in sel["front"]] == ["sm+tmkd1", "sm+tmkd2"]
    assert len(sel["groups"]) == 3 and sel["feasible"] and sel["config"]["variant"] == "sm+tmkd"
    # the exported model (downloaded from MLflow: its run dir is gone) and tokenizer load back
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.num_labels == 2
    assert (out / "model.safetensors").is_file() and tok("a test")["input_ids"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    for needle in ("sst2", "0.8200 ± 0.0283 (n=2)", "p90 (ms) | 2.00 | 4.00", "**2.00×**", ch["best_run_id"],
                   store["ids"]["teacher"], "variant: sm+tmkd", "parameters |", "accuracy"):
        assert needle in card, needle
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]      # no temp folder left


def test_select_over_two_stores_counts_each_run_once(store, tmp_path, capsys):
    """The same sweep's store given twice (a copy: every run appears in both): the same choice, each seed once; the
    exported model is downloaded from the store its run is in. A store that does not exist: one line, exit 2."""
    import shutil
    src = Path(store["uri"].removeprefix("sqlite:///"))
    copy = tmp_path / "copy" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copy(src, copy)
    out = tmp_path / "two"
    rc = cli.main(["select", "--tracking-uri", store["uri"], "--tracking-uri", str(copy.parent), "--out", str(out),
                   "--formats", "torch", "--latency-budget-ms", "2.5", "--experiment", "smoke"])
    assert rc == 0, capsys.readouterr().err
    ch = json.loads((out / "selection.json").read_text())["chosen"]
    assert (ch["variant"], ch["student_layers"], ch["n"]) == ("sm+tmkd", 2, 2) and len(ch["run_ids"]) == 2
    assert (out / "model.safetensors").is_file()
    capsys.readouterr()
    rc = cli.main(["select", "--tracking-uri", store["uri"], "--tracking-uri", str(tmp_path / "gone"), "--out",
                   str(tmp_path / "x"), "--formats", "torch", "--latency-budget-ms", "2.5"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "gone" in err and not (tmp_path / "x").exists()


def test_select_budget_picks_faster_student_and_none_feasible(store, tmp_path, capsys):
    rc, out = _select(store, tmp_path, "--latency-budget-ms", 1.5)
    assert rc == 0
    sel = json.loads((out / "selection.json").read_text())
    assert sel["chosen"]["student_layers"] == 1 and sel["speedup_vs_teacher"] == pytest.approx(4.0)
    capsys.readouterr()
    rc, out2 = _select(store, tmp_path / "b", "--latency-budget-ms", 0.5)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0
    assert "the fastest is sm+tmkd k=1 first" in err and "at 1.00 ms" in err and not out2.exists()
    # batch 32 uses the b32 metrics
    rc, out3 = _select(store, tmp_path / "c", "--latency-budget-ms", 15, "--batch-size", 32)
    assert rc == 0 and json.loads((out3 / "selection.json").read_text())["chosen"]["student_layers"] == 1


def test_select_remeasures_from_model_configs(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MIXKD_CACHE", str(tmp_path / "cache"))
    rc, out = _select(store, tmp_path, "--latency-budget-ms", 1e6, "--remeasure", "--seq-len", 16, "--threads", 1,
                      "--warmup", 1, "--min-iters", 3, "--min-seconds", 0)
    assert rc == 0
    sel = json.loads((out / "selection.json").read_text())
    assert sel["chosen"]["student_layers"] == 2 and sel["chosen"]["variant"] == "sm+tmkd"
    for g in sel["groups"]:
        assert g["latency_source"] in ("measured", "cache") and g["latency_ms"] > 0
        assert g["latency_fingerprint"]["threads"] == 1
    # one measurement per architecture (k=1, k=2, teacher k=4), shared by groups and seeds
    assert len(list((tmp_path / "cache" / "latency").glob("*.json"))) == 3
    assert sel["teacher"]["latency_source"] in ("measured", "cache")


@pytest.mark.parametrize("extra, message", [
    (["--latency-budget-ms", "0"], "--latency-budget-ms 0 is invalid"),
    (["--latency-budget-ms", "-3"], "--latency-budget-ms -3 is invalid"),
    (["--latency-budget-ms", "5", "--experiment", "nope"], "no mixkd experiment named 'nope'"),
    (["--latency-budget-ms", "5", "--task", "rte"], "no finished trial runs of task 'rte'"),
    (["--latency-budget-ms", "5", "--device", "tpu"], "--device 'tpu' is invalid"),
])
def test_select_bad_input_one_line_exit_2(store, tmp_path, capsys, extra, message):
    rc, out = _select(store, tmp_path, *extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("mixkd select: error: ") and message in err, err
    assert not out.exists()


def test_select_out_exists_and_missing_store(store, tmp_path, capsys):
    (tmp_path / "student").mkdir()
    rc, _ = _select(store, tmp_path, "--latency-budget-ms", 5)
    assert rc == 2 and "already exists" in capsys.readouterr().err
    rc = cli.main(["select", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--latency-budget-ms", "5",
                   "--out", str(tmp_path / "x")])
    assert rc == 2 and "not found" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()                 # the store is not created


def test_select_no_runs(tmp_path, capsys):
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(uri).create_experiment("empty", tags={"mixkd": "1"})
    capsys.readouterr()                                        # mlflow's table-creation log lines
    rc = cli.main(["select", "--tracking-uri", uri, "--latency-budget-ms", "5", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "no finished trial runs" in err


def test_select_subprocess_exit_code(store, tmp_path):
    p = subprocess.run([sys.executable, "-m", "mixkd", "select", "--tracking-uri", store["uri"], "--formats", "torch",
                        "--latency-budget-ms", "0.1", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.strip().count("\n") == 0 and "the fastest is" in p.stderr


def test_select_mixed_latency_sources_are_all_measured_here(tiny_models, tmp_path, monkeypatch, capsys):
    """One configuration without logged latency: sweep and local numbers do not compare, so all are measured here."""
    monkeypatch.setenv("MIXKD_CACHE", str(tmp_path / "cache"))
    st = build_store(tmp_path / "mixed", tiny_models, spec=[("sm+tmkd", 1, [0.70], 1.0), ("sm+tmkd", 2, [0.80], None)])
    rc, out = _select(st, tmp_path, "--latency-budget-ms", 1e6, "--threads", 1, "--warmup", 1,
                      "--min-iters", 3, "--min-seconds", 0)
    assert rc == 0
    assert "measuring all here" in capsys.readouterr().err
    sel = json.loads((out / "selection.json").read_text())
    assert {g["latency_source"] for g in sel["groups"]} <= {"measured", "cache"}
    assert sel["teacher"]["latency_source"] in ("measured", "cache") and sel["speedup_vs_teacher"] > 0
