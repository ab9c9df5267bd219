"""mixkd.platform.samplers: every sampler a search can use survives pickle (as Ray Tune stores the searcher), its
locks come back as fresh working locks, and an unpickled sampler proposes what the original would have."""
from __future__ import annotations

import pickle

import optuna
import pytest

from mixkd.platform.samplers import SAMPLERS


def _study(sampler, directions):
    return optuna.create_study(directions=directions, sampler=sampler)


def _run(study, n, two):
    def objective(trial):
        x = trial.suggest_float("x", -1, 1)
        return (x * x, abs(x - 0.5)) if two else x * x
    study.optimize(objective, n_trials=n)
    return [t.params["x"] for t in study.trials]


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_sampler_pickles_and_proposes_the_same(kind):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    two = kind == "nsga2"
    directions = ["minimize", "minimize"] if two else ["minimize"]
    sampler = SAMPLERS[kind](seed=3)
    assert isinstance(sampler, getattr(optuna.samplers, SAMPLERS[kind].__name__))
    copy = pickle.loads(pickle.dumps(sampler))          # before any trial: what Tuner start-up pickles
    assert _run(_study(sampler, directions), 6, two) == _run(_study(copy, directions), 6, two)
    used = pickle.loads(pickle.dumps(sampler))          # after trials: what --resume pickles
    for name, value in vars(sampler).items():
        if "lock" in type(value).__name__.lower():
            fresh = vars(used)[name]
            assert fresh is not value and fresh.acquire(blocking=False)
            fresh.release()
