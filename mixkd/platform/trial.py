"""One Tune trial (:func:`run_trial`, the function every trial process runs) and the one-line reason
recorded for a failed trial."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..core.atomic import write_json_atomic
from .prepare import latency_key
from .spec import SweepPlan, TrialGroup


def tune_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """A log.jsonl eval row as a Tune result (flat, numeric)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


FAILED_MARKER = "failed.json"   # a trial that stopped on a deterministic error (NaN loss): never retried


def wait_until_persisted(tune_dir: Path, trial_id: str, timeout: float = 120.0) -> bool:
    """Wait until Tune's saved experiment state (``tune/<group>/experiment_state-*.json``) lists the trial.

    A trial writes nothing before its driver has persisted it: if the driver dies, ``--resume``
    (Tuner.restore) then continues this very trial instead of leaving its folder behind and running
    another in its place (Tune saves its state every TUNE_GLOBAL_CHECKPOINT_S seconds; run_sweep
    sets 1). After ``timeout`` the trial goes on anyway (False)."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        for state in tune_dir.glob("experiment_state-*.json"):
            try:
                if trial_id in state.read_text():
                    return True
            except OSError:   # replaced while being read
                pass
        if time.monotonic() > deadline:
            print(f"trial {trial_id}: not in Tune's saved state after {timeout:.0f} s; starting anyway", flush=True)
            return False
        time.sleep(0.25)


def run_trial(config: dict[str, Any], plan: SweepPlan) -> None:
    """One Tune trial: a student run in ``trials/<trial_id>``, resumed from its checkpoint if it has one; its config
    from the sweep's plan (:meth:`SweepPlan.trial_config`, as the driver's MLflow callback resolves it).

    Nothing is written to the trial folder before Tune has saved the trial in its experiment state
    (wait_until_persisted); the wait runs in a thread while the trial imports torch and loads its
    models and data, so it costs the trial no time of its own."""
    from ray import tune

    from ..core.checkpoints import read_jsonl
    from ..core.errors import NonFiniteLossError

    trial_id = tune.get_context().get_trial_id()
    out = plan.trials_dir / trial_id
    persisted = _wait_until_persisted_in_background(plan, plan.group_of(config), trial_id)
    cfg = plan.trial_config(config, trial_id)
    lat = plan.latency.get(latency_key(cfg))
    extra = {"latency_ms": lat["objective_ms"]} if lat else {}   # NSGA-II's second objective

    def report(row: dict[str, Any]) -> None:
        tune.report({**tune_metrics(row), **extra})

    # reading is allowed before the trial is persisted; the first write waits (see _gate)
    if (out / FAILED_MARKER).is_file():   # a retry (or --resume) of a deterministic failure: fail again at once
        raise NonFiniteLossError.from_record(json.loads((out / FAILED_MARKER).read_text()))
    if (out / "metrics.json").is_file():   # finished before a driver crash: report its record again
        for row in read_jsonl(out / "log.jsonl"):
            report(row)
        return
    ckpts = out / "checkpoints"   # a checkpoint moved aside by a crash mid-save counts (the run repairs it)
    resume = any((ckpts / d / "trainer_state.pt").is_file() for d in ("last", "last.old"))
    cfg = cfg.replace(resume=resume, overwrite=not resume)
    try:
        _train(plan, cfg, trial_id, report, _gate(out, trial_id, persisted, resume, report), extra)
    except NonFiniteLossError as e:   # deterministic: a retry from the checkpoint would hit it again
        write_json_atomic(out / FAILED_MARKER, e.record())
        raise


def _wait_until_persisted_in_background(plan: SweepPlan, group: TrialGroup, trial_id: str):
    """A threading.Event set once Tune's saved state lists the trial (or the wait gave up), waited for in a thread."""
    import threading
    persisted = threading.Event()

    def wait() -> None:
        try:
            wait_until_persisted(plan.tune_dir / group.name, trial_id)
        finally:
            persisted.set()
    threading.Thread(target=wait, name="mixkd-wait-persisted", daemon=True).start()
    return persisted


def _gate(out: Path, trial_id: str, persisted, resume: bool, report):
    """The function the run calls before its first write: wait until the trial is persisted, then record the
    attempt; a resumed run reports the rows it logged before the interruption again (for ASHA)."""
    def gate() -> None:
        persisted.wait()
        import ray

        from ..core.checkpoints import append_event, read_jsonl
        ctx = ray.get_runtime_context()
        append_event(out, "attempt", trial_id=trial_id, node_id=ctx.get_node_id(),
                     node_ip=ray.util.get_node_ip_address())
        if resume:
            for row in read_jsonl(out / "log.jsonl"):
                report(row)
    return gate


def _train(plan: SweepPlan, cfg, trial_id: str, report, gate, extra: dict[str, float]) -> None:
    """The student run: in this process (one worker), or on a TorchTrainer of ``workers_per_trial`` workers."""
    if plan.spec.workers_per_trial == 1:
        from ..core import faults
        from ..jobs.run import distill
        from .ray_train import FinalReportLast
        reporter = FinalReportLast(lambda row, ckpt: report(row))
        distill(cfg, callbacks=[reporter], before_write=gate)
        faults.before_final_report()
        reporter.flush()
    else:
        from .ray_train import fit_distributed
        gate()
        fit_distributed(cfg, plan.spec, name=f"train-{trial_id}", storage_path=str(plan.train_storage),
                        extra_metrics=extra)


def trial_failure_reason(error_file: str | None, out: Path, failures: int, max_failures: int) -> str:
    """One line for ``mixkd.end_reason`` of a failed trial: the recorded NaN/inf (step and term) when
    there is one, else the last failure in Tune's error file, with how often the trial was tried."""
    if (out / FAILED_MARKER).is_file():
        try:
            return json.loads((out / FAILED_MARKER).read_text())["reason"]
        except (OSError, ValueError, KeyError):
            pass
    text = ""
    if error_file and os.path.exists(error_file):
        text = Path(error_file).read_text()
    last = text.rsplit("Failure # ", 1)[-1]
    lines = [line.strip() for line in last.splitlines()[1:] if line.strip()]
    low = last.lower()
    if "actor died" in low or "worker process has died" in low or "node" in low and "died" in low:
        import re
        kind = next((m for m in re.findall(r"ray\.exceptions\.(\w+)", last)), "ActorDiedError")
        ip = re.search(r"\bip: (\S+)", last)
        exit_detail = re.search(r"Worker exit detail: ([^.]*\.)", last)
        node = "its node died" if "node" in low and "died" in low and "worker process has died" not in low else \
            "its worker process died"
        detail = (f"the trial's process was lost: {node} ({kind}" + (f" on {ip.group(1)}" if ip else "")
                  + (f": {exit_detail.group(1)}" if exit_detail else "") + ")")
    else:
        detail = lines[-1] if lines else "error"
    return f"{detail[:1500]} (failed {failures} time(s); max_failures={max_failures})"
