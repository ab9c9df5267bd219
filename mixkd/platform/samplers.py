"""Optuna samplers that Ray Tune can pickle.

Tune pickles the searcher, sampler included, into the experiment state (``Tuner`` start-up and ``--resume``).
Optuna 5.1's genetic samplers (NSGA-II) hold a ``threading.Lock``, which pickle refuses
("cannot pickle '_thread.lock' object"), so a two-objective search (a latency budget) failed before its first
trial. These subclasses drop their locks when pickled and make fresh ones when unpickled; nothing else changes.
"""
from __future__ import annotations

import threading

import optuna

_LOCK = type(threading.Lock())
_RLOCK = type(threading.RLock())
_MARK = "_mixkd_locks"


class _PicklableLocks:
    def __getstate__(self):
        state = dict(self.__dict__)
        locks = {k: isinstance(v, _RLOCK) for k, v in state.items() if isinstance(v, (_LOCK, _RLOCK))}
        for k in locks:
            del state[k]
        state[_MARK] = locks
        return state

    def __setstate__(self, state):
        state = dict(state)
        for k, reentrant in state.pop(_MARK, {}).items():
            state[k] = threading.RLock() if reentrant else threading.Lock()
        self.__dict__.update(state)


class TPESampler(_PicklableLocks, optuna.samplers.TPESampler):
    pass


class RandomSampler(_PicklableLocks, optuna.samplers.RandomSampler):
    pass


class NSGAIISampler(_PicklableLocks, optuna.samplers.NSGAIISampler):
    pass


SAMPLERS = {"tpe": TPESampler, "random": RandomSampler, "nsga2": NSGAIISampler}
