"""Fault injection for the reliability tests (tests/test_faults.py); inert unless ``MIXKD_FAULTS`` is set.

The crashes themselves are real (the tests SIGKILL trial workers, teachers, the sweep driver and whole
Ray nodes from outside); these hooks only make the timing deterministic or produce a fault that cannot
be caused from outside. ``MIXKD_FAULTS`` is a comma-separated list of ``key=value``:

    step_delay=S          sleep S seconds after every optimizer step (a window to kill a process in)
    nan_step=K            loss term ``nan_term`` (default mle) is NaN at optimizer step K, in runs that
    nan_term=T            train that term ...
    nan_claim=PATH        ... in the first run only that reaches step K (it creates PATH; others see it)
    final_report_delay=S  a sweep trial waits S seconds between writing metrics.json and reporting its
                          last result to Tune (the window in which a driver crash leaves a finished
                          trial unrecorded)

Ray workers see the variable when it is in the driver's environment before ``ray.init`` (mixkd's
sweep passes it on like the other WORKER_ENV variables).
"""
from __future__ import annotations

import os
import time
from functools import lru_cache

ENV = "MIXKD_FAULTS"


@lru_cache(maxsize=4)
def _parse(raw: str) -> dict[str, str]:
    out = {}
    for item in raw.split(","):
        if item.strip():
            key, _, value = item.partition("=")
            out[key.strip()] = value.strip()
    return out


def settings() -> dict[str, str]:
    return _parse(os.environ.get(ENV, ""))


def after_step() -> None:
    delay = settings().get("step_delay")
    if delay:
        time.sleep(float(delay))


def _claim(path: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{os.getpid()}\n")
    return True


def loss_fault(step: int, terms=("mle",)) -> str | None:
    """The loss term to turn into NaN at optimizer ``step`` (1-based) of a run training ``terms``, or None
    (also for runs without that term: ``nan_term=tmkd`` spares the teacher's fine-tune)."""
    s = settings()
    if not s.get("nan_step") or int(s["nan_step"]) != step:
        return None
    term = s.get("nan_term", "mle")
    if term not in terms:
        return None
    if s.get("nan_claim") and not _claim(s["nan_claim"]):
        return None
    return term


def before_final_report() -> None:
    delay = settings().get("final_report_delay")
    if delay:
        time.sleep(float(delay))
