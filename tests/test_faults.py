"""Fault injection: sweeps that survive node loss, worker, teacher and driver crashes, NaN losses, torn
writes and concurrent MLflow writers, with nothing lost or recorded twice (issue 5).

Every fault is real: Ray nodes are removed from a running ray.cluster_utils.Cluster, trial workers,
teachers and the glue_sweep.py driver are SIGKILLed by PID (read from the run folder's events.jsonl),
several processes write to one SQLite store at once. ``MIXKD_FAULTS`` (mixkd/core/faults.py) only slows
steps down so a kill lands mid-run, makes a loss NaN (which cannot be caused from outside), and holds
a finished trial's last report. Marked slow: ``make test-slow`` (``pytest -m slow``) runs them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from test_sweep import (TINY_SPACE, isolate_ray_env, log_rows, mlflow_runs, sweep_cmd, trial_dirs,
                        tune_trial_count, worker_env, write_preset)

pytestmark = [pytest.mark.slow,
              # a restarted trial reports its logged evals again (for ASHA); Optuna keeps the first of each step
              pytest.mark.filterwarnings("ignore:The reported value is ignored because this `step=")]

TEACHER_KEY = "sst2-f1-s0"
# 256 SST-2 rows, batch 16: 16 steps per epoch, an eval (and checkpoint) at steps 16 and 32
KNOBS = {"epochs": 2, "lr": 1e-3, "batch_size": 16, "max_seq_length": 64, "max_eval_samples": 64}
STEP_DELAY = 0.15   # MIXKD_FAULTS step_delay: an epoch takes >= 2.4 s, the window a kill lands in


def fault_spec_dict(name: str, storage: Path, teacher_model: Path, data_dir: Path, **kw) -> dict:
    d = dict(name=name, mode="search", tasks=["sst2"], teacher_model=str(teacher_model), seeds=[0],
             data_fractions=[1.0], num_samples=3, teacher={**KNOBS, "max_steps": 8},
             base={**KNOBS, "student_layers": 2}, search_space=dict(TINY_SPACE),
             grace_period=2, reduction_factor=2,   # ASHA never stops a trial half way (2 evals)
             cpus_per_trial=1, max_failures=1, storage_path=str(storage), data_dir=str(data_dir),
             measure_latency=False)
    d.update(kw)
    return d


def fault_spec(*args, **kw):
    from mixkd.platform.spec import SweepSpec
    return SweepSpec.from_dict(fault_spec_dict(*args, **kw))


# --- what a run folder and the stores say ---------------------------------------------------------

def events(run_dir: Path) -> list[dict]:
    from mixkd.core.checkpoints import read_jsonl
    return read_jsonl(Path(run_dir) / "events.jsonl")


def of_kind(evs: list[dict], kind: str) -> list[dict]:
    return [e for e in evs if e["event"] == kind]


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / "checkpoints" / "last" / "trainer_state.pt").is_file()


def optuna_states(exp_dir: Path) -> dict[str, list[str]]:
    """{study name: [state of each trial]} of the sweep's optuna.db."""
    import optuna
    storage = f"sqlite:///{exp_dir / 'optuna.db'}"
    return {s.study_name: [t.state.name for t in optuna.load_study(study_name=s.study_name, storage=storage).trials]
            for s in optuna.get_all_study_summaries(storage=storage)}


def trial_runs_by_key(exp_dir: Path, name: str) -> tuple[dict, dict[str, list]]:
    runs = mlflow_runs(exp_dir, name)
    by_key: dict[str, list] = {}
    for r in runs["trial"]:
        by_key.setdefault(r.data.tags["mixkd.key"], []).append(r)
    return runs, by_key


def sqlite_trial_status(mlflow_db: Path) -> dict[str, str]:
    """{trial id: MLflow status} read straight from the sqlite file (read-only, fast, while a sweep runs)."""
    import sqlite3
    if not mlflow_db.is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True, timeout=1) as con:
            rows = con.execute("SELECT t.value, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                               "JOIN tags role ON role.run_uuid = r.run_uuid WHERE t.key = 'mixkd.key' "
                               "AND role.key = 'mixkd.role' AND role.value = 'trial'").fetchall()
    except sqlite3.Error:
        return {}
    return dict(rows)


def sqlite_parent_ids(mlflow_db: Path) -> list[str]:
    import sqlite3
    with sqlite3.connect(f"file:{mlflow_db}?mode=ro", uri=True, timeout=5) as con:
        return [r[0] for r in con.execute("SELECT r.run_uuid FROM runs r JOIN tags role ON role.run_uuid = r.run_uuid "
                                          "WHERE role.key = 'mixkd.role' AND role.value = 'sweep'").fetchall()]


# --- injecting faults while a sweep runs ------------------------------------------------------------

class Injector(threading.Thread):
    """Runs fault steps in the background while the sweep blocks the test's thread. Each step is
    (name, condition, action): the condition is polled until it returns something truthy, which the
    action gets. ``done`` lists the steps taken with what their condition returned."""

    def __init__(self, steps, timeout: float = 300.0, poll: float = 0.05):
        super().__init__(daemon=True, name="fault-injector")
        self.steps, self.timeout, self.poll = steps, timeout, poll
        self.done: list[tuple[str, object]] = []
        self.error: BaseException | None = None
        self.stopped = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.timeout
        try:
            for name, cond, act in self.steps:
                while not self.stopped.is_set():
                    value = cond()
                    if value:
                        act(value)
                        self.done.append((name, value))
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"fault step {name!r}: its condition never held")
                    time.sleep(self.poll)
        except BaseException as e:   # reported by check()
            self.error = e

    def check(self, n_steps: int) -> None:
        self.stopped.set()
        self.join(timeout=10)
        assert self.error is None, f"fault injector failed: {self.error!r} (done: {self.done})"
        assert len(self.done) == n_steps, f"only {len(self.done)} of {n_steps} faults were injected: {self.done}"


def kill(pid: int) -> None:
    os.kill(int(pid), signal.SIGKILL)


@contextmanager
def local_ray(faults: str, num_cpus: int = 2):
    """A local Ray instance of this test whose workers see MIXKD_FAULTS=faults."""
    import ray
    assert not ray.is_initialized(), "a Ray session from another test is still open"
    mp = pytest.MonkeyPatch()
    try:
        isolate_ray_env(mp)
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {**worker_env(), "MIXKD_FAULTS": faults}})
        yield ray
    finally:
        ray.shutdown()
        mp.undo()


# --- 1. a worker node is lost ------------------------------------------------------------------------

@contextmanager
def two_node_cluster(faults: str):
    """A head (node_a, 1 CPU) and a worker node (node_b, 1 CPU) on this machine, connected; yields
    (cluster, the worker node). Storage is the test's tmp folder, which both nodes see (one machine)."""
    import ray
    from ray.cluster_utils import Cluster
    assert not ray.is_initialized(), "a Ray session from another test is still open"
    mp = pytest.MonkeyPatch()
    cluster = None
    try:
        isolate_ray_env(mp)
        # both nodes on this machine (Ray 2.60 replaces a loopback node IP with the machine's own address,
        # and a cluster started with 127.0.0.1 then cannot be reached: see cluster/local_cluster.sh)
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"node_a": 1}, "include_dashboard": False})
        worker = cluster.add_node(num_cpus=1, resources={"node_b": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {**worker_env(), "MIXKD_FAULTS": faults}})
        yield cluster, worker
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        mp.undo()


def test_node_loss_restarts_its_trial_from_the_checkpoint(tmp_path, tiny_bert_dir, small_glue_dir):
    """Two trials run at once, one per node; the worker node is killed (all its processes, no graceful
    drain) after its trial's first checkpoint. The sweep completes: the lost trial restarts on the head
    from its checkpoint (resumed step 16, not 0), each trial has exactly one FINISHED MLflow run, and the
    Optuna study has each trial once."""
    import ray
    from mixkd.platform.driver import run_sweep
    spec = fault_spec("node-loss", tmp_path, tiny_bert_dir, small_glue_dir, num_samples=2, max_failures=1)
    trials = spec.experiment_dir / "trials"
    seen: dict = {}
    with two_node_cluster(f"step_delay={STEP_DELAY}") as (cluster, worker):
        node_b = worker.node_id

        def trial_on_b_checkpointed():
            for d in (sorted(trials.iterdir()) if trials.is_dir() else []):
                attempts = of_kind(events(d), "attempt")
                if attempts and attempts[-1]["node_id"] == node_b and has_checkpoint(d) \
                        and not (d / "metrics.json").is_file():
                    return d

        def remove_node_b(d):
            seen["dir"] = d
            seen["steps_logged"] = [r["step"] for r in log_rows(d)]
            cluster.remove_node(worker, allow_graceful=False)

        injector = Injector([("kill worker node node_b", trial_on_b_checkpointed, remove_node_b)])
        injector.start()
        summary = run_sweep(spec)
        injector.check(1)
        deadline = time.monotonic() + 60   # the GCS marks a node dead after missed health checks
        while node_b in (alive := [n["NodeID"] for n in ray.nodes() if n["Alive"]]) and time.monotonic() < deadline:
            time.sleep(1)
        assert node_b not in alive and len(alive) == 1

    victim = seen["dir"]
    evs = events(victim)
    attempts = of_kind(evs, "attempt")
    assert [e["event"] for e in evs] == ["attempt", "start", "attempt", "resume"], evs
    assert attempts[0]["node_id"] == node_b and attempts[1]["node_id"] != node_b
    resumed_step = of_kind(evs, "resume")[0]["step"]
    assert resumed_step == 16 and seen["steps_logged"] == [16], (resumed_step, seen["steps_logged"])
    assert [r["step"] for r in log_rows(victim)] == [16, 32]   # the eval at 16 is not logged twice

    assert summary["finished_trials"] == 2
    dirs = trial_dirs(spec.experiment_dir)
    assert len(dirs) == 2 and all((d / "metrics.json").is_file() for d in dirs)
    assert tune_trial_count(spec.experiment_dir / "tune" / f"search-{TEACHER_KEY}") == 2
    runs, by_key = trial_runs_by_key(spec.experiment_dir, "node-loss")
    assert len(runs["sweep"]) == 1 and runs["sweep"][0].info.status == "FINISHED"
    assert sorted(by_key) == sorted(d.name for d in dirs)
    for key, rs in by_key.items():
        assert [r.info.status for r in rs] == ["FINISHED"], (key, [r.info.status for r in rs])
    hist = runs["client"].get_metric_history(by_key[victim.name][0].info.run_id, "eval/accuracy")
    assert sorted(m.step for m in hist) == [16, 32]
    assert optuna_states(spec.experiment_dir) == {f"node-loss-search-{TEACHER_KEY}": ["COMPLETE", "COMPLETE"]}
    print(f"\nnode loss: node_b removed while trial {victim.name} ran there (evals logged {seen['steps_logged']}); "
          f"it restarted on {attempts[1]['node_ip']} from step {resumed_step}; 2 FINISHED runs, Optuna 2 COMPLETE")


# --- 2. a trial's worker process dies -----------------------------------------------------------------

def test_killed_trial_worker_is_retried_from_its_checkpoint_then_failed(tmp_path, tiny_bert_dir, small_glue_dir):
    """SIGKILL a trial's worker after its first checkpoint: Tune retries it (max_failures=1) and it resumes
    from that checkpoint; SIGKILL the retry too: the trial is FAILED in MLflow with the reason and FAIL in
    Optuna, and the sweep finishes the other trials."""
    from mixkd.platform.driver import run_sweep
    spec = fault_spec("crash", tmp_path, tiny_bert_dir, small_glue_dir, num_samples=3, max_failures=1)
    trials = spec.experiment_dir / "trials"
    seen: dict = {}

    def first_checkpoint():
        for d in (sorted(trials.iterdir()) if trials.is_dir() else []):
            if of_kind(events(d), "attempt") and has_checkpoint(d) and not (d / "metrics.json").is_file():
                return d

    def kill_first(d):
        seen["dir"] = d
        seen["pids"] = [of_kind(events(d), "attempt")[-1]["pid"]]
        kill(seen["pids"][0])

    def retry_resumed():
        evs = events(seen["dir"])
        attempts, resumes = of_kind(evs, "attempt"), of_kind(evs, "resume")
        if len(attempts) == 2 and resumes and resumes[-1]["time"] >= attempts[-1]["time"]:
            return attempts[-1]["pid"]

    def kill_retry(pid):
        seen["pids"].append(pid)
        kill(pid)

    injector = Injector([("kill the trial's worker", first_checkpoint, kill_first),
                         ("kill the retry after it resumed", retry_resumed, kill_retry)])
    with local_ray(f"step_delay={STEP_DELAY}"):
        injector.start()
        summary = run_sweep(spec)
    injector.check(2)

    victim = seen["dir"]
    evs = events(victim)
    assert [e["event"] for e in evs] == ["attempt", "start", "attempt", "resume"], evs
    assert seen["pids"][0] != seen["pids"][1]
    resumed_step = of_kind(evs, "resume")[0]["step"]
    assert resumed_step == 16, f"the retry resumed from step {resumed_step}, not from its checkpoint at 16"
    assert not (victim / "metrics.json").is_file() and not (victim / "model").exists()

    # the sweep went on: the other two trials finished
    assert summary["finished_trials"] == 2
    dirs = trial_dirs(spec.experiment_dir)
    assert len(dirs) == 3 and sum((d / "metrics.json").is_file() for d in dirs) == 2
    assert tune_trial_count(spec.experiment_dir / "tune" / f"search-{TEACHER_KEY}") == 3

    runs, by_key = trial_runs_by_key(spec.experiment_dir, "crash")
    assert len(runs["sweep"]) == 1 and runs["sweep"][0].info.status == "FINISHED"
    assert sorted(by_key) == sorted(d.name for d in dirs) and all(len(v) == 1 for v in by_key.values())
    failed = by_key[victim.name][0]
    assert failed.info.status == "FAILED"
    reason = failed.data.tags["mixkd.end_reason"]
    assert "died" in reason and "failed 2 time(s); max_failures=1" in reason, reason
    for key, (r,) in by_key.items():
        if key != victim.name:
            assert r.info.status == "FINISHED", (key, r.info.status, r.data.tags.get("mixkd.end_reason"))

    (states,) = optuna_states(spec.experiment_dir).values()
    assert sorted(states) == ["COMPLETE", "COMPLETE", "FAIL"], states
    print(f"\nworker crash: killed pids {seen['pids']} of trial {victim.name}; the retry resumed at step "
          f"{resumed_step}; MLflow: {failed.info.status} ({reason}); Optuna {sorted(states)}")


# --- 6. a NaN loss inside a trial -----------------------------------------------------------------------

def test_nan_loss_fails_the_trial_with_step_and_term_and_is_not_retried(tmp_path, tiny_bert_dir, small_glue_dir):
    """L_TMKD becomes NaN at step 3 in the first trial that gets there: that trial stops with the step and
    the term, is FAILED in MLflow, FAIL (no value, no intermediate values) in Optuna and never reported a
    score to ASHA; the NaN is deterministic, so its retry (max_failures=1) fails at once without
    training again; the other trials finish."""
    import optuna
    from mixkd.platform.driver import run_sweep
    spec = fault_spec("nan", tmp_path, tiny_bert_dir, small_glue_dir, num_samples=3, max_failures=1)
    claim = tmp_path / "nan.claim"
    with local_ray(f"step_delay=0.02,nan_step=3,nan_term=tmkd,nan_claim={claim}"):
        summary = run_sweep(spec)
    assert claim.is_file(), "no trial reached the NaN"
    dirs = trial_dirs(spec.experiment_dir)
    bad = [d for d in dirs if (d / "failed.json").is_file()]
    assert len(bad) == 1, [d.name for d in dirs]
    (bad,) = bad
    rec = json.loads((bad / "failed.json").read_text())
    assert (rec["step"], rec["term"], rec["value"]) == (3, "tmkd", "nan"), rec
    assert len(of_kind(events(bad), "attempt")) == 1, "the NaN trial was trained again"
    assert not (bad / "metrics.json").is_file() and not (bad / "log.jsonl").is_file()
    assert summary["finished_trials"] == 2 and bad.name not in {r["trial"] for r in summary["best"]}

    runs, by_key = trial_runs_by_key(spec.experiment_dir, "nan")
    assert sorted(by_key) == sorted(d.name for d in dirs) and all(len(v) == 1 for v in by_key.values())
    (r,) = by_key[bad.name]
    reason = r.data.tags["mixkd.end_reason"]
    assert r.info.status == "FAILED" and "loss term 'tmkd' is nan at step 3" in reason, (r.info.status, reason)
    assert "not retried" in reason
    assert not any(k.startswith(("final/", "eval/")) or k == "primary" for k in r.data.metrics), r.data.metrics
    assert all(by_key[d.name][0].info.status == "FINISHED" for d in dirs if d != bad)

    # Tune: the trial reported nothing (ASHA never had a score of it); its retries failed at once
    tune_dir = spec.experiment_dir / "tune" / f"search-{TEACHER_KEY}"
    (trial_tune_dir,) = [p for p in tune_dir.glob(f"run_trial_{bad.name}_*") if p.is_dir()]
    result_file = trial_tune_dir / "result.json"
    result_rows = result_file.read_text().split() if result_file.exists() else []
    assert result_rows == [], result_rows
    storage = f"sqlite:///{spec.experiment_dir / 'optuna.db'}"
    (study,) = [optuna.load_study(study_name=s.study_name, storage=storage)
                for s in optuna.get_all_study_summaries(storage=storage)]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "COMPLETE", "FAIL"]
    assert len(failed) == 1 and failed[0].values is None and failed[0].intermediate_values == {}
    print(f"\nNaN: trial {bad.name} stopped: {reason}; Optuna trial {failed[0].number} FAIL; 2 others finished")


# --- 4. the teacher's fine-tune crashes ----------------------------------------------------------------

def test_teacher_crash_leaves_no_finished_looking_teacher_and_resume_continues_it(tmp_path, tiny_bert_dir,
                                                                                   small_glue_dir):
    """SIGKILL the teacher's worker after its first checkpoint: Ray retries the task (max_failures=1) and it
    resumes from that checkpoint; SIGKILL the retry too: the sweep stops with a one-line reason, the teacher
    folder has no metrics.json or model/ (a distill refuses it), no trial ran. ``--resume`` continues the
    teacher from its checkpoint (never from scratch, never the partial model) and runs the trials."""
    from mixkd.core.errors import SweepFailed, UsageError
    from mixkd.jobs.run import distill
    from mixkd.platform.driver import run_sweep
    from conftest import tiny_cfg
    spec_d = fault_spec_dict("teacher-crash", tmp_path, tiny_bert_dir, small_glue_dir, num_samples=2, max_failures=1,
                             teacher={**KNOBS, "max_steps": 40, "eval_steps": 8})
    from mixkd.platform.spec import SweepSpec
    teacher = SweepSpec.from_dict(spec_d).experiment_dir / "teachers" / TEACHER_KEY
    seen: dict = {"pids": []}

    def attempt_checkpointed(n):
        def cond():
            evs = events(teacher)
            attempts = of_kind(evs, "attempt")
            progressed = of_kind(evs, "start" if n == 1 else "resume")
            if len(attempts) == n and has_checkpoint(teacher) and len(progressed) == 1 \
                    and progressed[-1]["time"] >= attempts[-1]["time"] and (n == 1 or log_rows(teacher)):
                return attempts[-1]["pid"]
        return cond

    def kill_teacher(pid):
        seen["pids"].append(pid)
        kill(pid)

    injector = Injector([("kill the teacher's worker", attempt_checkpointed(1), kill_teacher),
                         ("kill the retried teacher after it resumed", attempt_checkpointed(2), kill_teacher)])
    with local_ray(f"step_delay={STEP_DELAY}"):
        injector.start()
        with pytest.raises(SweepFailed) as exc:
            run_sweep(SweepSpec.from_dict(spec_d))
        injector.check(2)
        msg = str(exc.value)
        assert TEACHER_KEY in msg and "--resume" in msg and "\n" not in msg, msg
        # nothing looks finished: no completion marker, no final model, no trial started
        assert has_checkpoint(teacher)
        assert not (teacher / "metrics.json").exists() and not (teacher / "model").exists()
        trials = teacher.parent.parent / "trials"
        assert not trials.exists() or not any(trials.iterdir()), list(trials.iterdir())
        with pytest.raises(UsageError, match="unfinished"):
            distill(tiny_cfg(teacher=str(teacher), data_dir=str(small_glue_dir), student_layers=2,
                             output_dir=str(tmp_path / "student")))
        parents = sqlite_parent_ids(teacher.parent.parent / "mlflow.db")
        assert len(parents) == 1

        summary = run_sweep(SweepSpec.from_dict(spec_d), resume=True)

    evs = events(teacher)
    assert [e["event"] for e in evs] == ["attempt", "start", "attempt", "resume", "attempt", "resume"], evs
    resumed = [e["step"] for e in of_kind(evs, "resume")]
    assert all(s >= 8 and s % 8 == 0 for s in resumed) and resumed == sorted(resumed), resumed
    assert len(set(seen["pids"])) == 2
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["steps"] == 40 and (teacher / "model" / "model.safetensors").is_file()
    assert [r["step"] for r in log_rows(teacher)] == [8, 16, 24, 32, 40]   # no eval logged twice

    exp_dir = teacher.parent.parent
    assert summary["finished_trials"] == 2
    runs = mlflow_runs(exp_dir, "teacher-crash")
    assert [r.info.run_id for r in runs["sweep"]] == parents and runs["sweep"][0].info.status == "FINISHED"
    assert [r.info.status for r in runs["teacher"]] == ["FINISHED"]
    assert sorted(r.info.status for r in runs["trial"]) == ["FINISHED", "FINISHED"]
    for d in trial_dirs(exp_dir):
        assert yaml.safe_load((d / "config.yaml").read_text())["teacher"] == str(teacher)
    print(f"\nteacher crash: killed pids {seen['pids']}; the retry and the resumed sweep continued from steps "
          f"{resumed}; teacher finished at step 40; 1 teacher run, 1 parent, 2 trials FINISHED")


# --- 3. the sweep driver is killed --------------------------------------------------------------------

@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("RAY_ADDRESS", "GLUE_DIR", "PYTHONWARNINGS", "MLFLOW_TRACKING_URI", "MIXKD_FAULTS"):
        env.pop(k, None)
    env.update(worker_env())
    env.update(MIXKD_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", RAY_DEDUP_LOGS="0")
    return env


@contextmanager
def driver(cmd, env, log: Path, cwd: Path):
    """glue_sweep.py in its own session (process group): the test SIGKILLs the driver's PID alone, and on
    the way out removes what is left of the group it started (Ray's agents outlive a killed driver)."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            deadline = time.monotonic() + 3   # Ray's dashboard/runtime-env agents outlive a killed driver
            while time.monotonic() < deadline:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:   # the group is empty
                    break
                time.sleep(0.5)
            else:
                os.killpg(proc.pid, signal.SIGKILL)


def wait_for(cond, proc, log: Path, timeout: float = 300.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        assert proc.poll() is None, f"the sweep ended (rc={proc.returncode}) before {what}:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


def test_killed_driver_resumes_to_exactly_n_trials(cli_env, tmp_path, tiny_bert_dir, small_glue_dir):
    """SIGKILL glue_sweep.py (no Ctrl+C, no cleanup) twice: first after trial A finished and was recorded
    while trial B runs past its first checkpoint, then, in the resumed sweep, in the moment after B wrote
    metrics.json but before the driver recorded it. The second --resume ends with exactly 3 trials (none
    duplicated, B resumed from step 16, A and B never retrained), the same Optuna study with 3 COMPLETE
    trials, the same MLflow parent run and one FINISHED run per trial, B's recorded once."""
    n = 3
    storage = tmp_path / "storage"
    d = fault_spec_dict("driver-crash", storage, tiny_bert_dir, small_glue_dir, num_samples=n, cpus_per_trial=2)
    for k in ("storage_path", "data_dir"):
        d.pop(k)
    preset = write_preset(tmp_path / "driver-crash.yaml", d)
    cmd = sweep_cmd("--address", "local", "--preset", preset, "--storage-path", storage, "--data-dir", small_glue_dir)
    env = {**cli_env, "MIXKD_FAULTS": f"step_delay={STEP_DELAY},final_report_delay=2.5"}
    exp_dir = storage / "driver-crash"
    trials, db = exp_dir / "trials", exp_dir / "mlflow.db"

    def dirs():
        return sorted(trials.iterdir()) if trials.is_dir() else []

    # 1. kill the driver: A finished and recorded, B running with a checkpoint
    def a_recorded_b_checkpointed():
        status = sqlite_trial_status(db)
        done = [p for p in dirs() if status.get(p.name) == "FINISHED"]
        running = [p for p in dirs() if has_checkpoint(p) and not (p / "metrics.json").is_file()]
        if done and running:
            return done[0], running[0]

    t0 = time.monotonic()
    with driver(cmd, env, tmp_path / "run1.log", tmp_path) as proc:
        a, b = wait_for(a_recorded_b_checkpointed, proc, tmp_path / "run1.log", what="A recorded and B checkpointed")
        proc.send_signal(signal.SIGKILL)
    t1 = time.monotonic()
    parent = sqlite_parent_ids(db)
    assert len(parent) == 1
    b_steps_before = [r["step"] for r in log_rows(b)]
    assert b_steps_before == [16] and not (b / "metrics.json").exists()
    a_mtime = (a / "metrics.json").stat().st_mtime_ns

    # 2. resume, and kill it again once B has finished (metrics.json) but is not recorded yet
    def b_finished_unrecorded():
        return (b / "metrics.json").is_file() and sqlite_trial_status(db).get(b.name) != "FINISHED"

    with driver(cmd + ["--resume"], env, tmp_path / "run2.log", tmp_path) as proc:
        wait_for(b_finished_unrecorded, proc, tmp_path / "run2.log", what="B finished")
        proc.send_signal(signal.SIGKILL)
    assert sqlite_trial_status(db).get(b.name) == "RUNNING", "B was recorded before the kill; the window was missed"
    b_mtime = (b / "metrics.json").stat().st_mtime_ns
    t2 = time.monotonic()

    # 3. resume to the end
    proc3 = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=500, cwd=tmp_path)
    t3 = time.monotonic()
    assert proc3.returncode == 0, proc3.stdout[-3000:] + proc3.stderr[-5000:]
    assert "Traceback" not in proc3.stderr, proc3.stderr[-5000:]

    assert len(dirs()) == n and all((p / "metrics.json").is_file() for p in dirs()), [p.name for p in dirs()]
    assert tune_trial_count(exp_dir / "tune" / f"search-{TEACHER_KEY}") == n
    assert (a / "metrics.json").stat().st_mtime_ns == a_mtime and (b / "metrics.json").stat().st_mtime_ns == b_mtime
    assert [e["event"] for e in events(a)] == ["attempt", "start"]
    b_events = events(b)
    assert [e["event"] for e in b_events] == ["attempt", "start", "attempt", "resume"], b_events
    assert of_kind(b_events, "resume")[0]["step"] == 16
    assert [r["step"] for r in log_rows(b)] == [16, 32]
    assert optuna_states(exp_dir) == {f"driver-crash-search-{TEACHER_KEY}": ["COMPLETE"] * n}

    runs, by_key = trial_runs_by_key(exp_dir, "driver-crash")
    assert [r.info.run_id for r in runs["sweep"]] == parent and runs["sweep"][0].info.status == "FINISHED"
    assert len(runs["teacher"]) == 1
    assert sorted(by_key) == sorted(p.name for p in dirs())
    for key, rs in by_key.items():
        assert [r.info.status for r in rs] == ["FINISHED"], (key, [r.info.status for r in rs])
        hist = runs["client"].get_metric_history(rs[0].info.run_id, "eval/accuracy")
        assert sorted(m.step for m in hist) == [16, 32], (key, [m.step for m in hist])
    print(f"\ndriver crash: killed twice; A={a.name} kept, B={b.name} resumed at step 16 and its unrecorded finish "
          f"recorded once; {n} trials, Optuna {n} COMPLETE, parent {parent[0]} reused (runs took "
          f"{t1 - t0:.0f} s, {t2 - t1:.0f} s, {t3 - t2:.0f} s)")


# --- 5. storage: atomic checkpoints and results, a clear completion marker, concurrent MLflow writers -----

def _run_state(out: Path) -> str:
    """'finished' (metrics.json, whose model/ loads), 'resumable' (a checkpoint that loads), or 'empty';
    anything else (a torn file, a half-written model that looks final) fails the test."""
    import torch
    from safetensors.torch import load_file
    from mixkd.core.checkpoints import read_jsonl, repair_checkpoints
    if (out / "metrics.json").is_file():
        json.loads((out / "metrics.json").read_text())
        load_file(str(out / "model" / "model.safetensors"))
        return "finished"
    assert not (out / "model").exists() or not (out / "metrics.json").exists()
    repair_checkpoints(out / "checkpoints")   # what a --resume does first
    last = out / "checkpoints" / "last"
    if (last / "trainer_state.pt").is_file():
        state = torch.load(last / "trainer_state.pt", weights_only=True)
        load_file(str(last / "model.safetensors"))
        steps = [r["step"] for r in read_jsonl(out / "log.jsonl")]
        assert state["step"] in steps, (state["step"], steps)
        return "resumable"
    assert not (last / "model.safetensors").exists()
    return "empty"


def test_sigkill_at_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_bert_dir, small_glue_dir):
    """`mixkd finetune` is SIGKILLed 4 times, each at a random moment after it made progress (mid-step,
    mid-eval, mid-checkpoint write), and continued with --resume each time. After every kill the folder is either
    clearly unfinished with a loadable checkpoint, or empty; never a torn checkpoint or a result. The finished run
    equals an uninterrupted one bit for bit (weights, metrics, log)."""
    import random
    from safetensors.torch import load_file
    from mixkd.jobs.run import finetune
    from conftest import tiny_cfg
    knobs = dict(task="sst2", batch_size=16, lr=1e-3, max_seq_length=64, max_eval_samples=64, max_steps=60,
                 eval_steps=4, warmup_ratio=0.0, seed=0)   # 4 kills get at most ~12 steps each: never the end
    ref = tmp_path / "reference"
    finetune(tiny_cfg(model=str(tiny_bert_dir), data_dir=str(small_glue_dir), output_dir=str(ref), **knobs))

    out = tmp_path / "killed"
    base = [sys.executable, "-m", "mixkd", "finetune", "--model", str(tiny_bert_dir), "--data-dir", str(small_glue_dir),
            "--output-dir", str(out), "--no-progress", "--eval-batch-size", "64"] + \
        [x for k, v in knobs.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    env = {**os.environ, "MIXKD_FAULTS": "step_delay=0.05", "OMP_NUM_THREADS": "1"}
    rng = random.Random(5)
    states = []
    for i in range(4):
        resume = _run_state(out) == "resumable" if out.exists() else False
        proc = subprocess.Popen(base + (["--resume"] if resume else []), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        rows_before = len(log_rows(out)) if (out / "log.jsonl").exists() else 0
        deadline = time.monotonic() + 120
        while (len(log_rows(out)) if (out / "log.jsonl").exists() else 0) <= rows_before:   # one new eval
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.5))   # then anywhere in the next steps, eval or checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = _run_state(out)
        assert state in ("resumable", "empty"), state
        last_step = max([r["step"] for r in log_rows(out)], default=0) if (out / "log.jsonl").exists() else 0
        states.append((state, last_step))
    resume = _run_state(out) == "resumable"
    done = subprocess.run(base + (["--resume"] if resume else []), env={**env, "MIXKD_FAULTS": ""},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _run_state(out) == "finished"

    resumes = [e["step"] for e in of_kind(events(out), "resume")]
    assert resumes and all(s > 0 for s in resumes), events(out)
    a, b = load_file(str(ref / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "resumed weights differ from the reference"
    ref_m, out_m = (json.loads((p / "metrics.json").read_text()) for p in (ref, out))
    assert out_m["metrics"] == ref_m["metrics"] and out_m["steps"] == ref_m["steps"] == 60
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("train_")} for r in rows]   # noqa: E731
    assert strip(log_rows(out)) == strip(log_rows(ref))
    print(f"\nrandom SIGKILLs: states after each kill {states}; resumed from steps {resumes}; final weights, "
          f"metrics and log equal the uninterrupted run's")


def test_a_crash_inside_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, tiny_bert_dir, small_glue_dir,
                                                                          monkeypatch):
    """The two points where a checkpoint write can die: while the new files are written (a temporary
    folder: `last` is untouched) and between the two renames (`last` moved to `last.old`): the previous
    checkpoint is what --resume finds, and a torn last log line is skipped."""
    from mixkd.core import checkpoints as ck
    from mixkd.jobs.run import finetune
    from conftest import tiny_cfg
    cfg = tiny_cfg(model=str(tiny_bert_dir), data_dir=str(small_glue_dir), max_steps=12, eval_steps=4,
                   max_eval_samples=32, output_dir=str(tmp_path / "run"))
    out = Path(cfg.output_dir)

    class Crash(BaseException):   # not an Exception: nothing may catch it, like a SIGKILL
        pass

    real_replace, real_save = ck._atomic_replace_dir, ck.torch.save
    calls = {"n": 0}

    def crash_in_second_last_save(obj, path, *a, **kw):   # the 2nd 'last' checkpoint (step 8), mid-write
        if str(path).endswith("trainer_state.pt"):
            calls["n"] += 1
            if calls["n"] == 2:
                Path(path).write_bytes(b"torn")
                raise Crash()
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(ck.torch, "save", crash_in_second_last_save)
    with pytest.raises(Crash):
        finetune(cfg)
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert (out / "checkpoints" / ".last.tmp").exists()   # the torn write stayed in the temporary folder
    assert _run_state(out) == "resumable"
    import torch
    assert torch.load(out / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)["step"] == 4
    with open(out / "log.jsonl", "a") as fh:   # and a log line torn by the crash
        fh.write('{"step": 1')

    def crash_between_renames(tmp, final):
        if final.name == "last":
            final.rename(final.with_name("last.old"))
            raise Crash()
        return real_replace(tmp, final)

    monkeypatch.setattr(ck, "_atomic_replace_dir", crash_between_renames)
    with pytest.raises(Crash):
        finetune(cfg.replace(resume=True))
    monkeypatch.setattr(ck, "_atomic_replace_dir", real_replace)
    assert not (out / "checkpoints" / "last").exists() and (out / "checkpoints" / "last.old").is_dir()
    assert _run_state(out) == "resumable"   # repair put last.old back
    assert torch.load(out / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)["step"] == 4
    m = finetune(cfg.replace(resume=True))
    assert m["steps"] == 12 and _run_state(out) == "finished"
    assert [r["step"] for r in log_rows(out)] == [4, 8, 12]
    assert [e["step"] for e in of_kind(events(out), "resume")] == [4, 4]


WRITER = r"""
import os, sys, time
import mlflow   # imported before the barrier: every writer opens the store within milliseconds of the others
from mixkd.core.config import MixKDConfig
from mixkd.tracking.writer import BackgroundTracker, SweepTracker
uri, wid, ready, n_writers, n_runs, n_evals = sys.argv[1], sys.argv[2], sys.argv[3], *map(int, sys.argv[4:7])
open(os.path.join(ready, wid), "w").close()
while len(os.listdir(ready)) < n_writers:
    time.sleep(0.001)
t = BackgroundTracker(uri, "shared", sweep_id=f"sweep-{wid}", sweep_params={"writer": wid})
cfg = MixKDConfig(task="sst2", teacher="t", output_dir="o")
for i in range(n_runs):
    key = f"w{wid}-{i}"
    t.child(key, cfg, "trial")
    for step in range(1, n_evals + 1):
        t.log_eval(key, {"step": step, "primary": 0.5 + step / 100, "loss/total": 1.0 / step})
    t.submit(SweepTracker.set_parent_tag, f"last_{i}", key)
    t.finish(key, None)
t.close()
assert not t.errors, t.errors
print("ok", wid, t.parent_id)
"""


def test_concurrent_writers_never_corrupt_a_shared_sqlite_store(tmp_path):
    """6 processes (each a sweep's BackgroundTracker) open one fresh SQLite store at the same instant and
    write runs, params, evals and tags concurrently. Without the init lock, MLflow's table creation
    races (alembic 'duplicate column' / 'table already exists'); with it every write lands, once."""
    import sqlite3
    from mlflow.tracking import MlflowClient
    db = tmp_path / "shared" / "mlflow.db"
    uri = f"sqlite:///{db}"
    n_writers, n_runs, n_evals = 6, 6, 8
    ready = tmp_path / "ready"   # a barrier: each writer starts once all have imported MLflow
    ready.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, uri, str(w), str(ready), str(n_writers), str(n_runs),
                               str(n_evals)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(n_writers)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0 and o.startswith("ok"), e[-3000:]
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    client = MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name == "shared"]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("mixkd.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mixkd.role") == "trial"]
    assert len(parents) == n_writers and len(children) == n_writers * n_runs
    assert sorted(r.data.tags["mixkd.key"] for r in children) == sorted(f"w{w}-{i}" for w in range(n_writers)
                                                                          for i in range(n_runs))
    for r in children:
        assert r.info.status == "FINISHED" and len(r.data.params) > 50
        assert [m.step for m in client.get_metric_history(r.info.run_id, "primary")] == list(range(1, n_evals + 1))
    for p in parents:
        assert p.data.params["writer"] in {str(w) for w in range(n_writers)}
        assert sum(k.startswith("last_") for k in p.data.tags) == n_runs
