"""The Ray Tune / Optuna / MLflow layer (mixkd.platform, mixkd.platform.ray_train, experiments/glue_sweep.py).

Everything is offline and CPU-only: tiny random BERTs (conftest.make_tiny_bert) distilled on the small
GLUE slices. Ray sessions never overlap: the single-node tests share one local Ray instance (a class-scoped
fixture, shut down after the class), the resume and CLI tests run the real CLI in subprocesses that start
their own instance, and the multi-node test starts a ray.cluster_utils.Cluster of its own.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SWEEP_SCRIPT = REPO / "experiments" / "glue_sweep.py"
TEACHER_KEY = "sst2-f1-s0"          # SweepSpec.teacher_key("sst2", 1.0, 0)
TRIAL_TAGS = ("task", "variant", "student_layers", "data_fraction", "seed", "config_hash", "git_commit")

# Like /tmp/mk/tiny_sweep.py: two variants, no depth / layer-strategy / temperature / a_kd knobs.
TINY_SPACE = {"variant": {"type": "choice", "values": ["sm+tmkd", "tmkd"]}, "student_layers": None,
              "layer_strategy": None, "temperature": None, "a_kd": None}
FAST_LATENCY = {"warmup": 2, "min_iters": 5, "min_seconds": 0.2}   # the default protocol takes >= 2 s per shape
RUN_KNOBS = {"epochs": 2, "lr": 1e-3, "batch_size": 16, "max_seq_length": 64, "max_eval_samples": 64}


def worker_env() -> dict[str, str]:
    """What Ray workers need: offline mode, the session's tokenization cache, fast Ray Train reports."""
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
    if os.environ.get("MIXKD_CACHE"):
        env["MIXKD_CACHE"] = os.environ["MIXKD_CACHE"]
    return env


def isolate_ray_env(mp: pytest.MonkeyPatch) -> None:
    """In-process sessions: never attach to someone else's cluster or MLflow server; workers get worker_env()
    (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S must be set before ray.init)."""
    mp.delenv("RAY_ADDRESS", raising=False)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    for k, v in worker_env().items():
        mp.setenv(k, v)


def spec_dict(name: str, storage: Path, teacher_model: Path, data_dir: Path, **kw) -> dict:
    d = dict(name=name, mode="search", tasks=["sst2"], teacher_model=str(teacher_model), seeds=[0],
             data_fractions=[1.0], num_samples=3, teacher=dict(RUN_KNOBS),
             base={**RUN_KNOBS, "student_layers": 2}, search_space=dict(TINY_SPACE),
             # grace_period = max_t (2 evals): ASHA never stops a trial half way, so every trial finishes
             grace_period=2, reduction_factor=2, cpus_per_trial=1, storage_path=str(storage),
             data_dir=str(data_dir), latency_protocol=FAST_LATENCY)
    d.update(kw)
    return d


def make_spec(*args, **kw):
    from mixkd.platform.spec import SweepSpec
    return SweepSpec.from_dict(spec_dict(*args, **kw))


# --- reading what a sweep left behind ------------------------------------------------------------

def mlflow_runs(exp_dir: Path, experiment_name: str) -> dict[str, list]:
    """The sweep's MLflow runs from its sqlite store, by role (sweep / teacher / trial)."""
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{exp_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment_name)
    assert exp is not None, f"no MLflow experiment {experiment_name!r} in {exp_dir / 'mlflow.db'}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_role: dict[str, list] = {"sweep": [], "teacher": [], "trial": []}
    for r in runs:
        by_role.setdefault(r.data.tags.get("mixkd.role", "?"), []).append(r)
    by_role["client"] = client
    return by_role


def optuna_trials(exp_dir: Path) -> dict[str, int]:
    """{study name: number of trials} of the sweep's optuna.db; every trial must be COMPLETE."""
    import optuna
    storage = f"sqlite:///{exp_dir / 'optuna.db'}"
    counts = {}
    for summary in optuna.get_all_study_summaries(storage=storage):
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).trials
        states = [t.state.name for t in trials]
        assert set(states) == {"COMPLETE"}, f"study {summary.study_name}: trial states {states}"
        counts[summary.study_name] = len(trials)
    return counts


def tune_trial_count(tune_dir: Path) -> int:
    """Trials in the Tune experiment state (what Tuner.restore reads)."""
    states = sorted(tune_dir.glob("experiment_state-*.json"))
    assert states, f"no Tune experiment state in {tune_dir}"
    data = json.loads(states[-1].read_text())
    return len(data["trial_data"])


def trial_dirs(exp_dir: Path) -> list[Path]:
    return sorted(p for p in (exp_dir / "trials").iterdir() if p.is_dir())


def log_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]


def check_sweep_records(exp_dir: Path, name: str, n_trials: int, teacher_key: str = TEACHER_KEY,
                        data_fraction: str = "1.0") -> dict:
    """The invariants every finished n-trial search sweep must satisfy; returns the runs by role."""
    from mixkd.core.config import MixKDConfig
    runs = mlflow_runs(exp_dir, name)
    client = runs["client"]
    assert len(runs["sweep"]) == 1, f"{len(runs['sweep'])} parent runs"
    parent = runs["sweep"][0]
    assert parent.info.status == "FINISHED"
    assert len(runs["teacher"]) == 1, f"{len(runs['teacher'])} teacher runs"
    assert len(runs["trial"]) == n_trials, f"{len(runs['trial'])} trial runs, expected {n_trials}"
    for r in runs["teacher"] + runs["trial"]:
        assert r.data.tags.get("mlflow.parentRunId") == parent.info.run_id, r.data.tags

    dirs = {d.name: d for d in trial_dirs(exp_dir)}
    assert len(dirs) == n_trials, sorted(dirs)
    teacher_dir = exp_dir / "teachers" / teacher_key
    for r in runs["trial"]:
        tags, params = r.data.tags, r.data.params
        key = tags["mixkd.key"]
        assert key in dirs, f"trial run {key} has no trial folder"
        out = dirs[key]
        assert r.info.status == "FINISHED", (key, r.info.status, tags.get("mixkd.end_reason"))
        cfg = MixKDConfig.from_yaml(out / "config.yaml")
        metrics = json.loads((out / "metrics.json").read_text())
        for t in TRIAL_TAGS:
            assert tags.get(t), f"trial {key}: tag {t} missing"
        assert tags["task"] == "sst2" and tags["seed"] == "0" and tags["data_fraction"] == data_fraction
        assert tags["variant"] == cfg.variant and tags["student_layers"] == str(cfg.student_layers) == "2"
        assert "alpha" in params and "lr" in params and params["variant"] == cfg.variant
        assert cfg.teacher == str(teacher_dir)
        rows = log_rows(out)
        assert len(rows) == 2   # one eval per epoch
        for metric in ("loss/total", "eval/accuracy"):
            hist = client.get_metric_history(r.info.run_id, metric)
            assert sorted(m.step for m in hist) == [row["step"] for row in rows], \
                (f"trial {key}: {metric} history steps {sorted(m.step for m in hist)} "
                 f"vs evals {[x['step'] for x in rows]}")
        assert r.data.metrics["final/primary"] == pytest.approx(metrics["primary_value"])
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"config.yaml", "metrics.json", "log.jsonl"} <= artifacts, artifacts
        assert (out / "model" / "model.safetensors").is_file()
    return runs


def check_trial_runs_describe_their_trials(exp_dir: Path, runs: dict) -> None:
    """A trial's MLflow params and config_hash tag are those of the config the trial trained with
    (trials/<id>/config.yaml, metrics.json), so runs can be matched to folders and compared by hash."""
    from mixkd.core.config import MixKDConfig
    wrong = []
    for r in runs["trial"]:
        key, tags, params = r.data.tags["mixkd.key"], r.data.tags, r.data.params
        cfg = MixKDConfig.from_yaml(exp_dir / "trials" / key / "config.yaml")
        metrics = json.loads((exp_dir / "trials" / key / "metrics.json").read_text())
        assert cfg.config_hash() == metrics["config_hash"]
        if params["teacher"] != cfg.teacher:
            wrong.append(f"trial {key}: MLflow param teacher={params['teacher']!r}, the trial used {cfg.teacher!r}")
        if tags["config_hash"] != cfg.config_hash():
            wrong.append(f"trial {key}: MLflow tag config_hash={tags['config_hash']}, the trial's config "
                         f"(config.yaml, metrics.json) hashes to {cfg.config_hash()}")
    assert not wrong, "\n".join(wrong)


# --- single-node Ray: one local instance shared by the tests of this class -----------------------

@pytest.fixture(scope="class")
def local_ray():
    import ray
    assert not ray.is_initialized(), "a Ray session from another test is still open"
    mp = pytest.MonkeyPatch()
    try:
        isolate_ray_env(mp)
        ray.init(num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                 runtime_env={"env_vars": worker_env()}, log_to_driver=False)
        yield ray
    finally:
        ray.shutdown()
        mp.undo()


@pytest.fixture(scope="class")
def search_sweep(local_ray, tmp_path_factory, tiny_bert_dir, small_glue_dir):
    """A finished 3-trial OptunaSearch (NSGA-II on dev score and latency) + ASHA sweep with a latency
    budget every student meets (shared by the search, latency and teacher-once tests)."""
    from mixkd.platform.driver import run_sweep
    spec = make_spec("tiny-search", tmp_path_factory.mktemp("sweeps"), tiny_bert_dir, small_glue_dir,
                     latency_budget_ms=1e5, select_allow_chance=True,   # tiny random students learn little
                     select_formats="torch")   # the choice over formats: test_demo.py, test_export.py
    summary = run_sweep(spec)
    return spec, summary


class TestSingleNode:
    def test_search_sweep_nested_mlflow_runs(self, search_sweep):
        spec, summary = search_sweep
        exp_dir = spec.experiment_dir
        runs = check_sweep_records(exp_dir, "tiny-search", 3)
        parent = runs["sweep"][0]
        assert parent.data.tags["mixkd.sweep_id"] == str(exp_dir)
        assert summary["parent_run_id"] == parent.info.run_id
        assert summary["finished_trials"] == 3
        saved = json.loads((exp_dir / "summary.json").read_text())
        assert saved["finished_trials"] == 3 and saved["best"], saved
        assert {r["variant"] for r in saved["best"]} <= {"sm+tmkd", "tmkd"}
        assert (exp_dir / "sweep.yaml").is_file()
        studies = optuna_trials(exp_dir)
        assert studies == {f"tiny-search-search-{TEACHER_KEY}": 3}, studies
        assert tune_trial_count(exp_dir / "tune" / f"search-{TEACHER_KEY}") == 3
        check_trial_runs_describe_their_trials(exp_dir, runs)

    def test_latency_measured_once_per_architecture_and_logged(self, search_sweep):
        import optuna
        spec, summary = search_sweep
        exp_dir = spec.experiment_dir
        raw = json.loads((exp_dir / "latency.json").read_text())
        assert sorted(raw) == ["sst2/k2", "sst2/teacher"]          # the teacher and the one student depth
        for per_batch in raw.values():
            assert sorted(per_batch) == ["1", "32"]
            for r in per_batch.values():
                assert r["iters"] >= 5 and r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
                assert r["fingerprint"]["threads"] >= 1
        runs = mlflow_runs(exp_dir, "tiny-search")
        p90 = {k: raw[k]["1"]["p90_ms"] for k in raw}
        for r in runs["trial"]:
            assert r.data.metrics["latency/b1_s128_p90_ms"] == pytest.approx(p90["sst2/k2"])
            assert "latency/b32_s128_p50_ms" in r.data.metrics and r.data.tags["latency.device"] == "cpu"
        assert runs["teacher"][0].data.metrics["latency/b1_s128_p90_ms"] == pytest.approx(p90["sst2/teacher"])
        # latency is the second objective: a two-direction study whose trials carry both values
        study = optuna.load_study(study_name=f"tiny-search-search-{TEACHER_KEY}",
                                  storage=f"sqlite:///{exp_dir / 'optuna.db'}")
        assert len(study.directions) == 2
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert done and all(t.values[1] == pytest.approx(p90["sst2/k2"]) for t in done)
        # the best student within the budget was exported, loadable, with its card
        (sel,) = summary["selection"]
        assert "error" not in sel, sel
        out = Path(sel["out"])
        assert (out / "README.md").is_file() and (out / "selection.json").is_file()
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained(out)
        assert model.config.num_hidden_layers == 2
        best = max(summary["best"], key=lambda r: r["primary_value"])
        assert sel["score"] == pytest.approx(best["primary_value"])   # one seed: the best trial's score

    def test_teacher_trained_once_and_not_on_resume(self, search_sweep, monkeypatch, capsys):
        import mixkd.platform.prepare
        from mixkd.platform.driver import run_sweep
        from mixkd.platform.spec import SweepSpec
        spec, _ = search_sweep
        exp_dir = spec.experiment_dir
        teachers = [p for p in (exp_dir / "teachers").iterdir() if p.is_dir()]
        assert [p.name for p in teachers] == [TEACHER_KEY]
        teacher_metrics = teachers[0] / "metrics.json"
        mtime = teacher_metrics.stat().st_mtime_ns

        def must_not_finetune(cfg_dict):
            raise AssertionError("the teacher was fine-tuned again")
        monkeypatch.setattr(mixkd.platform.prepare, "_finetune_task", must_not_finetune)
        capsys.readouterr()
        again = SweepSpec.from_dict(spec.to_dict())   # what --resume with the same preset rebuilds
        summary = run_sweep(again, resume=True)
        out = capsys.readouterr().out
        assert f"teacher {TEACHER_KEY}: reusing" in out and "fine-tuning" not in out, out
        assert f"search-{TEACHER_KEY}: resuming from" in out, out
        assert teacher_metrics.stat().st_mtime_ns == mtime
        assert summary["finished_trials"] == 3
        runs = check_sweep_records(exp_dir, "tiny-search", 3)
        assert len(runs["teacher"]) == 1 and len(runs["sweep"]) == 1
        assert optuna_trials(exp_dir) == {f"tiny-search-search-{TEACHER_KEY}": 3}

    def test_grid_sweep_covers_every_cell_once(self, local_ray, tmp_path, tiny_bert_dir, small_glue_dir):
        from mixkd.core.config import MixKDConfig
        from mixkd.platform.driver import run_sweep
        grid = {"variant": ["ft", "sm+tmkd"], "student_layers": [1, 2]}
        spec = make_spec("tiny-grid", tmp_path, tiny_bert_dir, small_glue_dir, mode="grid", grid=grid,
                         search_space={})
        summary = run_sweep(spec)
        dirs = trial_dirs(spec.experiment_dir)
        assert len(dirs) == 4, [d.name for d in dirs]
        cells = []
        for d in dirs:
            assert (d / "metrics.json").is_file(), d
            cfg = MixKDConfig.from_yaml(d / "config.yaml")
            cells.append((cfg.variant, cfg.student_layers))
        assert sorted(cells) == sorted((v, n) for v in grid["variant"] for n in grid["student_layers"])
        assert summary["finished_trials"] == 4
        runs = mlflow_runs(spec.experiment_dir, "tiny-grid")
        assert len(runs["sweep"]) == 1 and len(runs["teacher"]) == 1 and len(runs["trial"]) == 4
        assert sorted((r.data.tags["variant"], int(r.data.tags["student_layers"])) for r in runs["trial"]) \
            == sorted(cells)
        assert tune_trial_count(spec.experiment_dir / "tune" / "grid") == 4

    def test_grid_computes_the_teacher_outputs_once_for_every_kd_and_pkd_trial(self, local_ray, tmp_path,
                                                                               tiny_bert_dir, small_glue_dir, capsys):
        from mixkd.platform.driver import run_sweep
        grid = {"variant": ["kd", "pkd", "ft"], "student_layers": [1, 2]}
        spec = make_spec("tiny-kd-grid", tmp_path, tiny_bert_dir, small_glue_dir, mode="grid", grid=grid,
                         search_space={}, measure_latency=False)
        summary = run_sweep(spec)
        out = capsys.readouterr().out
        assert summary["finished_trials"] == 6
        entries = sorted((spec.experiment_dir / "teachers" / TEACHER_KEY / "teacher_outputs").glob("*.safetensors"))
        assert len(entries) == 2, entries     # kd's logits, pkd's logits and hidden states: each computed once
        assert out.count("teacher outputs ") == 2 and out.count(": computed ") == 2, out
        seen = {}
        for d in trial_dirs(spec.experiment_dir):
            m = json.loads((d / "metrics.json").read_text())
            if m["variant"] == "ft":
                assert m["teacher_outputs"] is None
                continue
            assert m["teacher_outputs"]["reused"] is True, (d, m["teacher_outputs"])   # no trial computed them
            seen.setdefault(m["variant"], set()).add(m["teacher_outputs"]["entry"])
        assert {k: len(v) for k, v in seen.items()} == {"kd": 1, "pkd": 1} and seen["kd"] != seen["pkd"]

    @staticmethod
    def fake_latencies(monkeypatch, fastest: dict[int, float]):
        """Latencies as measured before the trials (stands in for measure_latencies): the teacher at 20 ms and each
        student depth k at ``fastest[k]`` ms in its fastest format (onnx-int8), its torch latency twice that."""
        import mixkd.platform.driver as driver

        def measured(spec, exp_dir, teachers):
            out = {"sst2/teacher": {"metrics": {}, "tags": {}, "objective_ms": 20.0}}
            for k, ms in fastest.items():
                out[f"sst2/k{k}"] = {"metrics": {}, "tags": {}, "objective_ms": 2 * ms, "fastest_ms": ms,
                                     "fastest_format": "onnx-int8"}
            return out
        monkeypatch.setattr(driver, "measure_latencies", measured)

    def test_search_never_trains_a_configuration_over_the_budget(self, local_ray, tmp_path, tiny_bert_dir,
                                                                  small_glue_dir, monkeypatch, capsys):
        import optuna

        from mixkd.core.config import MixKDConfig
        from mixkd.platform.driver import run_sweep
        self.fake_latencies(monkeypatch, {1: 1.0, 2: 6.0, 3: 9.0})   # budget 4 ms: only 1-layer students meet it
        space = {**TINY_SPACE, "variant": {"type": "choice", "values": ["ft"]},
                 "student_layers": {"type": "choice", "values": [1, 2, 3]}}
        spec = make_spec("tiny-budget", tmp_path, tiny_bert_dir, small_glue_dir, search_space=space, num_samples=3,
                         latency_budget_ms=4.0, select_allow_chance=True, select_formats="torch",
                         base={**RUN_KNOBS, "epochs": 1})
        summary = run_sweep(spec)
        out = capsys.readouterr().out
        layers = [MixKDConfig.from_yaml(d / "config.yaml").student_layers for d in trial_dirs(spec.experiment_dir)]
        assert layers == [1, 1, 1], layers                      # num_samples counts trials that train
        runs = mlflow_runs(spec.experiment_dir, "tiny-budget")
        assert len(runs["trial"]) == 3 and {r.data.tags["student_layers"] for r in runs["trial"]} == {"1"}
        study = optuna.load_study(study_name=f"tiny-budget-search-{TEACHER_KEY}",
                                  storage=f"sqlite:///{spec.experiment_dir / 'optuna.db'}")
        told = [t for t in study.trials if "mixkd_infeasible" in t.user_attrs]
        assert told, "the sampler never proposed a 2- or 3-layer student: the test would prove nothing"
        for t in told:   # recorded as infeasible through Optuna's constraints, with the measured latency
            assert t.params["student_layers"] in (2, 3) and t.state == optuna.trial.TrialState.COMPLETE
            assert t.values[0] == float("-inf") and t.values[1] == {2: 6.0, 3: 9.0}[t.params["student_layers"]]
            assert t.constraints == {"latency_budget_ms": t.values[1] - 4.0} and t.values[1] - 4.0 > 0
        assert all(t.params["student_layers"] == 1 for t in study.best_trials)   # the infeasible never rank
        assert summary["trials_saved_by_budget"] == len(told)
        assert f"{len(told)} configuration(s) over it were never trained" in out, out

    def test_grid_skips_cells_over_the_budget_and_says_so(self, local_ray, tmp_path, tiny_bert_dir, small_glue_dir,
                                                          monkeypatch, capsys):
        from mixkd.core.config import MixKDConfig
        from mixkd.core.errors import UsageError
        from mixkd.platform.driver import run_sweep
        self.fake_latencies(monkeypatch, {1: 1.0, 3: 9.0})
        grid = {"variant": ["ft"], "student_layers": [1, 3]}
        kw = dict(mode="grid", grid=grid, search_space={}, select_allow_chance=True, select_formats="torch",
                  base={**RUN_KNOBS, "epochs": 1})
        spec = make_spec("tiny-budget-grid", tmp_path, tiny_bert_dir, small_glue_dir, latency_budget_ms=4.0, **kw)
        summary = run_sweep(spec)
        out = capsys.readouterr().out
        assert [MixKDConfig.from_yaml(d / "config.yaml").student_layers
                for d in trial_dirs(spec.experiment_dir)] == [1]
        assert "1 grid cell(s) skipped, never trained: k3 (fastest 9 ms, onnx-int8) > 4 ms" in out, out
        assert summary["trials_saved_by_budget"] == 1
        # a budget nothing meets: one line before any trial
        spec = make_spec("tiny-budget-none", tmp_path, tiny_bert_dir, small_glue_dir, latency_budget_ms=0.5, **kw)
        with pytest.raises(UsageError, match=r"no student of sst2 meets it in any format considered \(k1 .*raise "
                                             r"--latency-budget-ms"):
            run_sweep(spec)
        assert not (spec.experiment_dir / "trials").exists() or not list((spec.experiment_dir / "trials").iterdir())

    def test_torch_trainer_two_workers_checkpoints(self, local_ray, tmp_path, tiny_teacher_run, small_glue_dir):
        from conftest import tiny_cfg
        from mixkd.platform.ray_train import fit_distributed
        out = tmp_path / "ddp"
        cfg = tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), student_layers=2,
                       max_steps=8, eval_steps=4, max_eval_samples=64, output_dir=str(out))
        result = fit_distributed(cfg, name="ddp", storage_path=str(tmp_path / "train"), workers=2, cpus=2)
        assert result.error is None, result.error
        assert result.checkpoint is not None
        with result.checkpoint.as_directory() as ckpt:
            files = set(os.listdir(ckpt))
        assert {"model.safetensors", "trainer_state.pt"} <= files, files
        assert (out / "metrics.json").is_file() and (out / "model" / "model.safetensors").is_file()
        rows = log_rows(out)
        assert [r["step"] for r in rows] == [4, 8], rows
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["steps"] == 8 and metrics["layers"] == 2


# --- the real CLI in subprocesses ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("RAY_ADDRESS", "GLUE_DIR", "PYTHONWARNINGS", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    env.update(worker_env())
    env.update(MIXKD_CACHE=str(tmp_path_factory.mktemp("sweep_cli_cache")), OMP_NUM_THREADS="1",
               RAY_DEDUP_LOGS="0")
    return env


def sweep_cmd(*args) -> list[str]:
    return [sys.executable, str(SWEEP_SCRIPT)] + [str(a) for a in args]


def write_preset(path: Path, d: dict) -> Path:
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def finished_trial_runs(mlflow_db: Path) -> set[str]:
    """Trial ids whose MLflow run the sweep driver has marked FINISHED (read straight from sqlite: fast)."""
    import sqlite3
    if not mlflow_db.is_file():
        return set()
    try:
        with sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True, timeout=1) as con:
            rows = con.execute("SELECT t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                               "JOIN tags role ON role.run_uuid = r.run_uuid WHERE t.key = 'mixkd.key' "
                               "AND role.key = 'mixkd.role' AND role.value = 'trial' AND r.status = 'FINISHED'"
                               ).fetchall()
    except sqlite3.Error:   # tables not created yet, or locked for a moment
        return set()
    return {r[0] for r in rows}


def test_interrupted_sweep_resumes_to_exactly_n_trials(cli_env, tmp_path, tiny_bert_dir, glue_dir):
    import ray
    assert not ray.is_initialized()
    n = 3
    storage = tmp_path / "storage"
    # 2% of the real SST-2 train split (1,347 rows): ~10 s per trial here, so one trial is finished and
    # recorded well before the next one is; the teacher is capped at 16 steps to keep the test short
    d = spec_dict("resume", storage, tiny_bert_dir, glue_dir, num_samples=n, cpus_per_trial=2,
                  data_fractions=[0.02], teacher={**RUN_KNOBS, "max_steps": 16})
    for k in ("storage_path", "data_dir"):   # given as flags, like a user would
        d.pop(k)
    preset = write_preset(tmp_path / "resume.yaml", d)
    cmd = sweep_cmd("--address", "local", "--preset", preset, "--storage-path", storage, "--data-dir", glue_dir)
    exp_dir = storage / "resume"
    key = "sst2-f0.02-s0"
    log1 = tmp_path / "first.log"
    with open(log1, "w") as fh:
        proc = subprocess.Popen(cmd, env=cli_env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=tmp_path)
        try:
            deadline = time.time() + 300
            # the first trial has written metrics.json and the driver has recorded it as finished
            while time.time() < deadline and proc.poll() is None:
                if list((exp_dir / "trials").glob("*/metrics.json")) and finished_trial_runs(exp_dir / "mlflow.db"):
                    break
                time.sleep(0.2)
            assert proc.poll() is None, f"the sweep ended before the interruption (rc={proc.poll()}):\n" \
                                        f"{log1.read_text()[-4000:]}"
            assert time.time() < deadline, f"no trial finished in time:\n{log1.read_text()[-4000:]}"
            os.killpg(proc.pid, signal.SIGINT)     # Ctrl+C: the driver and every process of its group
            rc1 = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    first_log = log1.read_text()
    assert "Traceback" not in first_log, first_log[-4000:]
    teacher_metrics = exp_dir / "teachers" / key / "metrics.json"
    mtime = teacher_metrics.stat().st_mtime_ns
    n_done_before = len(list((exp_dir / "trials").glob("*/metrics.json")))
    assert 1 <= n_done_before < n, f"{n_done_before} trials finished before the interruption"

    proc2 = subprocess.run(cmd + ["--resume"], env=cli_env, capture_output=True, text=True, timeout=400,
                           cwd=tmp_path)
    assert proc2.returncode == 0, proc2.stdout[-3000:] + proc2.stderr[-5000:]
    assert f"teacher {key}: reusing" in proc2.stdout
    dirs = trial_dirs(exp_dir)
    assert len(dirs) == n, [p.name for p in dirs]
    for p in dirs:
        assert len(list(p.rglob("metrics.json"))) == 1, p
    assert tune_trial_count(exp_dir / "tune" / f"search-{key}") == n
    assert teacher_metrics.stat().st_mtime_ns == mtime, "the teacher was retrained on --resume"
    assert optuna_trials(exp_dir) == {f"resume-search-{key}": n}
    # one parent, one teacher, n trial runs, one history point per eval
    check_sweep_records(exp_dir, "resume", n, teacher_key=key, data_fraction="0.02")
    # and the interrupted invocation must not have passed for a finished sweep
    assert rc1 != 0, f"the interrupted sweep exited {rc1}, as if it had finished:\n{first_log[-2500:]}"


# --- one-line usage errors: every CLI's bad input is one table in tests/test_bad_input.py --------------


# --- a 2-node local cluster ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster
    assert not ray.is_initialized(), "a Ray session from another test is still open"
    # last in the module, after the class fixture's local instance is gone; shut down at module end
    mp = pytest.MonkeyPatch()
    isolate_ray_env(mp)
    cluster = None
    try:
        import socket
        with socket.socket() as sock:   # a free dashboard port: 8265 may be held by another Ray instance
            sock.bind(("127.0.0.1", 0))
            dashboard_port = sock.getsockname()[1]
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port})
        cluster.add_node(num_cpus=1, resources={"node_b": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env={"env_vars": worker_env()}, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        mp.undo()


def test_two_node_cluster_places_trials_on_both_nodes(two_node_cluster, tmp_path, tiny_bert_dir, small_glue_dir):
    import ray
    from ray.util.state import list_actors
    from mixkd.platform.driver import run_sweep
    nodes = {n["NodeID"]: ("node_a" if "node_a" in n["Resources"] else "node_b")
             for n in ray.nodes() if n["Alive"]}
    assert sorted(nodes.values()) == ["node_a", "node_b"]
    spec = make_spec("two-node", tmp_path, tiny_bert_dir, small_glue_dir, num_samples=2, cpus_per_trial=1)
    summary = run_sweep(spec)
    assert summary["finished_trials"] == 2
    # each trial's Tune result records the pid of the actor that ran it; the state API knows its node
    pids = {}
    for res in (spec.experiment_dir / "tune" / f"search-{TEACHER_KEY}").glob("*/result.json"):
        last = json.loads(res.read_text().splitlines()[-1])
        pids[last["trial_id"]] = last["pid"]
    assert len(pids) == 2, pids
    actors = list_actors(detail=True, limit=10000, raise_on_missing_output=False)
    node_of_pid = {a.pid: a.node_id for a in actors if a.pid}
    placed = {trial: nodes.get(node_of_pid.get(pid)) for trial, pid in pids.items()}
    assert sorted(placed.values()) == ["node_a", "node_b"], (placed, [(a.class_name, a.pid, a.node_id) for a in actors])
    check_sweep_records(spec.experiment_dir, "two-node", 2)




def test_address_local_never_attaches_to_the_cluster_in_ray_address(two_node_cluster, cli_env, tmp_path):
    """`--address local` promises a fresh local instance. After `source "$(cluster/local_cluster.sh env-file)"`
    RAY_ADDRESS names a running cluster; `local` must still not attach to it."""
    code = ("from mixkd.cli.sweep import connect; import ray; where = connect('local'); ray.shutdown(); "
            "print('WHERE', where)")
    env = {**cli_env, "RAY_ADDRESS": two_node_cluster.address}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where = [line for line in proc.stdout.splitlines() if line.startswith("WHERE")]
    assert where and "local Ray instance" in where[0], proc.stdout
    assert "node_a" not in where[0] and "node_b" not in where[0], \
        f"--address local attached to the cluster in RAY_ADDRESS={two_node_cluster.address}: {where[0]}"


def test_a_grid_cell_may_name_its_student_seed(tmp_path, tiny_bert_dir, small_glue_dir):
    """The cells a grid that outlived a session still owes: each with its own seed (experiments/glue_cpu.py)."""
    from mixkd.core.errors import UsageError
    cells = [{"variant": "ft", "student_layers": 1, "student_seed": 3}, {"variant": "ft", "student_layers": 2,
                                                                         "student_seed": 1}]
    spec = make_spec("seeded", tmp_path, tiny_bert_dir, small_glue_dir, mode="grid", grid=cells,
                     search_space={}).validate()
    cfgs = [spec.student_config("sst2", 1.0, 0, "t", "o", **c) for c in cells]
    assert [(c.student_layers, c.seed, c.data_seed) for c in cfgs] == [(1, 3, 0), (2, 1, 0)]
    with pytest.raises(UsageError, match="student_seed must be an integer, and not given with student_seeds"):
        make_spec("seeded", tmp_path, tiny_bert_dir, small_glue_dir, mode="grid", grid=cells, search_space={},
                  student_seeds=[1, 2]).validate()
