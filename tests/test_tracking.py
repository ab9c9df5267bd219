"""The sweep's MLflow writer: ordered background writes, repair of unrecorded runs, fast store checks."""
from __future__ import annotations

import json
import pickle
import socket

import pytest

from mixkd.core.config import MixKDConfig
from mixkd.core.errors import UsageError
from mixkd.tracking.store import check_tracking_uri
from mixkd.tracking.writer import BackgroundTracker, SweepTracker


def fake_run_dir(path, score=0.75, steps=(5, 10)):
    """A finished run folder as mixkd.jobs.run writes it: config.yaml, log.jsonl, metrics.json."""
    path.mkdir(parents=True)
    cfg = MixKDConfig(task="sst2", variant="sm+tmkd", student_layers=2, teacher="t", output_dir=str(path))
    cfg.save_yaml(path / "config.yaml")
    rows = [{"step": s, "primary": score * s / steps[-1], "eval/accuracy": score * s / steps[-1], "loss/total": 1.0 / s}
            for s in steps]
    (path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "metrics.json").write_text(json.dumps({"metrics": {"accuracy": score}, "primary_value": score,
                                                   "params": 1234}))
    return cfg


def client(uri):
    from mlflow.tracking import MlflowClient
    return MlflowClient(uri)


def test_background_writes_in_order_and_nested(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = fake_run_dir(tmp_path / "t1")
    bt = BackgroundTracker(uri, "exp", sweep_id="sw1", artifact_dir=tmp_path / "art")
    assert pickle.loads(pickle.dumps(bt)) is bt           # Tune pickles its callbacks: same live tracker
    bt.child("t1", cfg, role="trial", name="trial t1")
    for row in ({"step": 5, "primary": 0.5, "loss/total": 0.2}, {"step": 10, "primary": 0.75, "loss/total": 0.1},
                {"step": 10, "primary": 0.75}):             # a resumed trial re-reports step 10: logged once
        bt.log_eval("t1", row)
    cfg.replace(lr=1e-3, epochs=14.0).save_yaml(tmp_path / "t1" / "config.yaml")   # what the step-aware rule chose
    bt.finish("t1", tmp_path / "t1", log_model=False)
    parent = bt.parent_id
    bt.close()
    assert bt.errors == []
    c = client(uri)
    runs = c.search_runs([c.get_experiment_by_name("exp").experiment_id], "tags.`mixkd.key` = 't1'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.params["student_layers"] == "2" and len(run.data.params) == len(cfg.to_dict())
    assert (run.data.params["lr"], run.data.params["epochs"]) == ("0.001", "14.0")   # the resolved numbers
    assert [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "primary")] == [(5, 0.5), (10, 0.75)]
    assert run.data.metrics["final/primary"] == 0.75 and run.data.metrics["params_count"] == 1234
    assert c.get_run(parent).info.status == "FINISHED"


def test_record_finished_repairs_once(tmp_path):
    """A trial that finished while the driver was down gets its run (with evals) once, not twice."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = fake_run_dir(tmp_path / "t2")
    tr = SweepTracker(uri, "exp", sweep_id="sw2")
    assert tr.record_finished("t2", cfg, "trial", tmp_path / "t2") is True
    tr2 = SweepTracker(uri, "exp", sweep_id="sw2")          # a resumed driver: same parent, same child
    assert tr2.parent_id == tr.parent_id
    assert tr2.record_finished("t2", cfg, "trial", tmp_path / "t2") is False
    c = client(uri)
    runs = c.search_runs([tr.experiment_id], "tags.`mixkd.key` = 't2'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(runs[0].info.run_id, "primary")] == [5, 10]


def test_failed_write_is_counted_and_others_go_on(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = fake_run_dir(tmp_path / "t3")
    bt = BackgroundTracker(uri, "exp", sweep_id="sw3")

    def boom(tracker):
        raise RuntimeError("disk full")

    bt.submit(boom)
    bt.submit(boom)
    bt.child("t3", cfg, role="trial")
    bt.finish("t3", tmp_path / "t3", log_model=False)
    assert bt.call(lambda t: t.client.get_run(t._runs["t3"]).info.status) == "FINISHED"
    bt.close()
    err = capsys.readouterr().err
    assert err.count("MLflow write failed") == 1 and "disk full" in err      # reported once per kind
    assert len(bt.errors) == 2 and "2 MLflow writes failed" in err


def test_store_that_cannot_open_is_reported_without_raising_in_callbacks(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    bt = BackgroundTracker(f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}", "exp", sweep_id="sw4")
    bt.child("x", MixKDConfig(), role="trial")              # queued; never raises in Tune's loop
    assert bt.parent_id is None and bt.failed()
    bt.close()
    assert "could not be opened" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri,needle", [
    (f"http://127.0.0.1:{_free_port()}", "no MLflow server answers"),
    ("file:///tmp/mlruns", "file store is retired"),
    ("./mlruns", "file store is retired"),
    ("sqlite://", "absolute/path"),
])
def test_check_tracking_uri_one_line(uri, needle):
    with pytest.raises(UsageError, match=needle) as e:
        check_tracking_uri(uri)
    assert "\n" not in str(e.value)


def test_check_tracking_uri_sqlite_folder_that_can_be_created(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path / 'new' / 'sub' / 'mlflow.db'}")
    assert not (tmp_path / "new").exists()                  # checking writes nothing


# --- what a driver crash can leave dangling (issue 5): closed at the end of the resumed sweep ------------

def test_close_stale_trials_after_a_driver_crash(tmp_path):
    """Trial runs still RUNNING when a sweep ends: a finished folder is left to record_finished, an
    unfinished one becomes KILLED, a run with no folder at all (Tune forgot the trial before it wrote
    anything) is KILLED and deleted, each with mixkd.end_reason."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    trials = tmp_path / "trials"
    cfg = fake_run_dir(trials / "done")
    (trials / "half").mkdir()
    t = SweepTracker(uri, "exp", sweep_id="sw")
    for key in ("done", "half", "ghost"):
        t.child(key, cfg, role="trial")
    assert t.close_stale_trials(trials) == 3
    c = client(uri)
    status = {k: c.get_run(t._runs.get(k) or t._find(f"tags.`mixkd.key` = '{k}'")).info.status
              for k in ("done", "half")}
    assert status == {"done": "RUNNING", "half": "KILLED"}
    runs = c.search_runs([t.experiment_id], run_view_type=3)   # ALL: deleted ones too
    ghost = [r for r in runs if r.data.tags.get("mixkd.key") == "ghost"]
    assert len(ghost) == 1 and ghost[0].info.lifecycle_stage == "deleted" and ghost[0].info.status == "KILLED"
    assert "never ran" in ghost[0].data.tags["mixkd.end_reason"]
    assert not [r for r in c.search_runs([t.experiment_id]) if r.data.tags.get("mixkd.key") == "ghost"]


def test_close_orphan_optuna_trials(tmp_path):
    """An Optuna trial asked for just before a driver crash stays RUNNING forever: marked FAIL, once."""
    import optuna
    from mixkd.platform.driver import close_orphan_optuna_trials
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    done = study.ask()
    study.tell(done, 1.0)
    study.ask()   # the orphan
    assert close_orphan_optuna_trials(storage, "s") == 1
    assert close_orphan_optuna_trials(storage, "s") == 0
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert "never ran" in trials[1].user_attrs["mixkd_end_reason"]
    assert close_orphan_optuna_trials(storage, "no-such-study") == 0


def test_new_sqlite_store_starts_from_the_cached_empty_store(tmp_path, monkeypatch):
    """The first store this machine creates is kept (per MLflow version) as an empty template; later new
    stores are copies of it, with their own experiments, runs, params and Default experiment location."""
    import mlflow

    monkeypatch.setenv("MIXKD_CACHE", str(tmp_path / "cache"))
    template = tmp_path / "cache" / "mlflow" / f"empty-{mlflow.__version__}.db"
    params = {f"p{i}": i for i in range(130)}   # more than one log_batch holds
    first = SweepTracker(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}", "exp-a", sweep_id="a",
                         artifact_dir=tmp_path / "a" / "art", sweep_params=params)
    assert template.is_file()
    template_runs = client(f"sqlite:///{template}").search_runs(["0"])
    assert template_runs == [] and [e.name for e in client(f"sqlite:///{template}").search_experiments()] == ["Default"]
    import sqlite3
    with sqlite3.connect(template) as db:   # a mark only a copy of the template can carry
        db.execute("CREATE TABLE mixkd_probe (x INTEGER)")

    monkeypatch.chdir(tmp_path)
    second = SweepTracker(f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}", "exp-b", sweep_id="b",
                          artifact_dir=tmp_path / "b" / "art", sweep_params=params)
    c = client(second.uri)
    with sqlite3.connect(tmp_path / "b" / "mlflow.db") as db:   # store b is a copy, not created afresh
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'mixkd_probe'").fetchall()
    assert sorted(e.name for e in c.search_experiments()) == ["Default", "exp-b"]   # nothing of store a
    assert c.get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")
    assert c.get_experiment_by_name("exp-b").artifact_location == (tmp_path / "b" / "art").as_uri()
    assert c.get_run(second.parent_id).data.params == {k: str(v) for k, v in params.items()}
    assert client(first.uri).get_run(first.parent_id).data.params == {k: str(v) for k, v in params.items()}
