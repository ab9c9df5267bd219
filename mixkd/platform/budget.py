"""A latency budget decides what trains: a configuration whose architecture is over the budget even in its fastest
deployment format (measured before any trial, :func:`mixkd.platform.prepare.measure_latencies`) never trains.

In grid mode such cells are skipped and listed in one line. In search mode :class:`BudgetedOptunaSearch` asks Optuna
for a configuration, and when its architecture cannot meet the budget it tells Optuna the trial at once, without
training it: the measured latency as the second objective, no dev score (``-inf``), the violation in ms as the
trial's constraint ``latency_budget_ms`` (Optuna's constraints, ``Trial.set_constraint``: a trial without one is
feasible, and the samplers and ``best_trials`` rank every feasible trial above every infeasible one), and
``mixkd_infeasible`` saying why. It then asks again; Tune (and MLflow)
only ever see trials that train, and ``num_samples`` counts those."""
from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from ..core.errors import UsageError
from .prepare import latency_key
from .spec import SweepSpec

CONSTRAINT = "latency_budget_ms"       # the Optuna constraint: ms over the budget (> 0: infeasible)
INFEASIBLE_ATTR = "mixkd_infeasible"


def over_budget(latency: dict[str, dict], budget: float) -> dict[str, dict[str, Any]]:
    """{latency key: {"fastest_ms", "fastest_format"}} of the student architectures no considered format brings
    within ``budget`` ms."""
    return {k: {"fastest_ms": v["fastest_ms"], "fastest_format": v["fastest_format"]}
            for k, v in latency.items() if "fastest_ms" in v and v["fastest_ms"] > budget}


def describe(infeasible: dict[str, dict], budget: float) -> str:
    return ", ".join(f"{k.split('/', 1)[1]} (fastest {v['fastest_ms']:.3g} ms, {v['fastest_format']})"
                     for k, v in sorted(infeasible.items())) + f" > {budget:g} ms"


def check_some_feasible(spec: SweepSpec, latency: dict[str, dict], infeasible: dict[str, dict],
                        budget: float) -> None:
    """One line, before any trial, when a task has no student architecture within the budget."""
    for task in spec.tasks:
        students = [k for k in latency if k.startswith(f"{task}/") and not k.endswith("/teacher")]
        if students and all(k in infeasible for k in students):
            raise UsageError(f"latency budget {budget:g} ms: no student of {task} meets it in any format considered "
                             f"({describe({k: infeasible[k] for k in students}, budget)}); raise "
                             f"--latency-budget-ms, offer shallower students (student_layers) or more formats "
                             f"(--select-formats all)")


def grid_cells_within(spec: SweepSpec, cells: list[dict], infeasible: dict[str, dict]) -> tuple[list[dict], list]:
    """The cells whose architecture can meet the budget, and the skipped ones."""
    keep, skipped = [], []
    for c in cells:
        knobs = {k: v for k, v in c.items() if k not in ("task", "data_fraction", "seed")}
        cfg = spec.student_config(c["task"], c["data_fraction"], c["seed"], "teacher", "out", **knobs)
        (skipped if latency_key(cfg) in infeasible else keep).append(c)
    return keep, skipped


class ArchitectureKey:
    """A sampled configuration's latency key (picklable: Tune saves the searcher)."""

    def __init__(self, spec: SweepSpec, task: str, fraction: float, seed: int):
        self.spec, self.group = spec, (task, fraction, seed)

    def __call__(self, params: dict[str, Any]) -> str:
        return latency_key(self.spec.student_config(*self.group, "teacher", "out", **params))


class BudgetedOptunaSearch(OptunaSearch):
    """OptunaSearch whose configurations over the latency budget are told to Optuna as infeasible, untrained."""

    MAX_DRAWS = 1000

    def __init__(self, *args, infeasible: dict[str, dict], budget: float, key: ArchitectureKey, **kwargs):
        super().__init__(*args, **kwargs)
        self.infeasible, self.budget, self.key = infeasible, budget, key
        self.skipped = 0

    def suggest(self, trial_id: str):
        for _ in range(self.MAX_DRAWS):
            params = super().suggest(trial_id)
            if params is None:
                return None
            over = self.infeasible.get(self.key(params))
            if over is None:
                return params
            ot_trial = self._ot_trials.pop(trial_id)
            ms = float(over["fastest_ms"])
            ot_trial.set_constraint(CONSTRAINT, ms - self.budget)
            ot_trial.set_user_attr(INFEASIBLE_ATTR, f"over the latency budget: fastest format {over['fastest_format']} "
                                                    f"{ms:.3g} ms > {self.budget:g} ms; not trained")
            ot_trial.set_user_attr("latency_ms", ms)
            values = [float("-inf"), ms] if isinstance(self.metric, list) else float("-inf")
            self._ot_study.tell(ot_trial, values)
            self.skipped += 1
        raise UsageError(f"the search drew {self.MAX_DRAWS} configurations in a row over the latency budget "
                         f"{self.budget:g} ms; narrow search_space.student_layers to depths that meet it")
