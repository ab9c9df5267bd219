"""The MixKD hyperparameter search space, declared once.

Each key is a field of :class:`~mixkd.core.config.MixKDConfig`; each value is a distribution spec
(``uniform``/``loguniform`` with low/high, ``int`` with low/high, ``choice`` with values). A preset's
YAML ``search_space:`` section overrides entries by key or removes one with ``null``.

Conditional knobs follow the variant: a loss term's knobs (its row in :data:`mixkd.core.terms.TERMS`: its weight,
and e.g. alpha for the mixup terms, the temperature for ``kd`` and for ``tmkd`` with ``distance: kl``, PKD's beta
and layer map for ``pt``) are searched only for variants that train the term, ``bt_*`` settings only with
``augment: bt``. The space is turned into an Optuna define-by-run function for Tune's OptunaSearch, so
conditional knobs never waste trials.
"""
from __future__ import annotations

import copy
from dataclasses import fields
from typing import Any

from ..core import terms as loss_terms
from ..core.config import VARIANT_TERMS, MixKDConfig, validate
from ..core.errors import UsageError

# Ranges: the paper's sensitivity study (Fig. 3) covers a_sm, a_tmkd and alpha in [0.1, 10].
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "variant": {"type": "choice", "values": ["sm+tmkd", "tmkd", "kd", "pkd", "ft"]},
    "student_layers": {"type": "choice", "values": [1, 2, 3]},
    "layer_strategy": {"type": "choice", "values": ["first", "skip", "last"]},
    "alpha": {"type": "loguniform", "low": 0.1, "high": 10.0},
    "a_sm": {"type": "loguniform", "low": 0.1, "high": 10.0},
    "a_tmkd": {"type": "loguniform", "low": 0.1, "high": 10.0},
    "a_kd": {"type": "loguniform", "low": 0.1, "high": 10.0},
    "temperature": {"type": "loguniform", "low": 1.0, "high": 8.0},
    # PKD's beta: the PKD paper searched {10, 100, 500, 1000} for its mean-squared patient loss
    "pkd_beta": {"type": "loguniform", "low": 1.0, "high": 1000.0},
    "lr": {"type": "loguniform", "low": 1e-5, "high": 3e-4},
}
TYPES = ("uniform", "loguniform", "int", "choice")


def active(name: str, params: dict[str, Any]) -> bool:
    """Whether knob ``name`` matters given the (already chosen) ``params`` of a trial."""
    variant = params.get("variant", "sm+tmkd")
    terms = VARIANT_TERMS[variant]
    if name in loss_terms.knobs():   # a loss term's knob: searched when the variant trains a term that uses it
        return name in loss_terms.searched(terms, params, lambda f: getattr(MixKDConfig, f))
    if name.startswith("bt_"):   # back-translation settings matter only with --augment bt
        return params.get("augment", "none") == "bt"
    return True


def build_space(overrides: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> dict[str, dict]:
    """DEFAULT_SPACE with ``overrides`` applied (``None`` removes a knob); validated.

    ``base`` (the fixed config of the sweep) is used to check each spec's values against the
    config's own validation, so a bad range fails before any trial runs.
    """
    space = copy.deepcopy(DEFAULT_SPACE)
    names = {f.name for f in fields(MixKDConfig)}
    for key, spec in (overrides or {}).items():
        if key not in names:
            import difflib
            hint = difflib.get_close_matches(key, names, n=1)
            raise UsageError(f"search_space: '{key}' is not a config field"
                             + (f"; did you mean '{hint[0]}'?" if hint else ""))
        if spec is None:
            space.pop(key, None)
        else:
            space[key] = dict(spec)
    if not space:
        raise UsageError("search_space is empty; keep at least one knob or use grid mode")
    for key, spec in space.items():
        _check_spec(key, spec, base or {})
    for key, spec in (overrides or {}).items():   # a knob asked for that no trial would ever use
        if spec is not None and not _ever_active(key, space, base or {}):
            raise UsageError(_never_active_message(key, space, base or {}))
    return space


def _drivers() -> tuple[str, ...]:
    """The knobs that decide which others matter (see active): the variant, the fields a loss term's knob depends
    on (distance), augment."""
    return ("variant", *loss_terms.condition_fields(), "augment")


def _driver_values(name: str, space: dict, base: dict) -> list:
    spec = space.get(name)
    if spec and spec.get("type") == "choice":
        return list(spec["values"])
    return [base.get(name, getattr(MixKDConfig, name))]


def _ever_active(key: str, space: dict, base: dict) -> bool:
    import itertools
    drivers = _drivers()
    if key in drivers:
        return True
    combos = itertools.product(*(_driver_values(d, space, base) for d in drivers))
    return any(active(key, {**base, **dict(zip(drivers, c))}) for c in combos)


def _never_active_message(key: str, space: dict, base: dict) -> str:
    variants = ", ".join(map(str, _driver_values("variant", space, base)))
    distances = ", ".join(map(str, _driver_values("distance", space, base)))
    if key == "temperature":
        return (f"search_space.temperature is never used: the variants ({variants}) with distance {distances} "
                f"have no temperature (only kd, pkd and distance kl use one); drop temperature from "
                f"search_space, or set distance: kl in base (or search it)")
    return (f"search_space.{key} is never used by the variants searched ({variants}); drop it from "
            f"search_space or add a variant that uses it")


def _check_spec(key: str, spec: dict, base: dict) -> None:
    t = spec.get("type")
    if t not in TYPES:
        raise UsageError(f"search_space.{key}: type {t!r} is invalid; use one of {', '.join(TYPES)}")
    if t == "choice":
        vals = spec.get("values")
        if not isinstance(vals, list) or not vals:
            raise UsageError(f"search_space.{key}: choice needs a non-empty 'values' list")
        samples = vals
    else:
        lo, hi = spec.get("low"), spec.get("high")
        if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)) or not lo < hi:
            raise UsageError(f"search_space.{key}: {t} needs numbers low < high, got low={lo!r} high={hi!r}")
        if t == "loguniform" and lo <= 0:
            raise UsageError(f"search_space.{key}: loguniform needs low > 0, got {lo}")
        samples = [lo, hi]
    probe = {"task": "sst2", "teacher": "t", "output_dir": "o", **base}
    for v in samples:
        try:
            validate(MixKDConfig.from_dict({**probe, key: v}, source=f"search_space.{key}"), "distill")
        except UsageError as e:
            raise UsageError(f"search_space.{key}: value {v!r} is invalid ({e})") from None


class DefineByRun:
    """An Optuna define-by-run function sampling only the knobs active for the chosen variant.

    A class rather than a closure so Tune can pickle it with the searcher's state (for --resume).
    """

    def __init__(self, space: dict[str, dict], fixed: dict[str, Any] | None = None):
        self.space = space
        self.fixed = dict(fixed or {})
        drivers = _drivers()
        self.order = sorted(space, key=lambda k: (k not in drivers, k))   # variant first

    def __call__(self, trial) -> None:
        chosen: dict[str, Any] = {}
        for key in self.order:
            if not active(key, {**self.fixed, **chosen}):
                continue
            spec = self.space[key]
            t = spec["type"]
            if t == "choice":
                chosen[key] = trial.suggest_categorical(key, spec["values"])
            elif t == "int":
                chosen[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]))
            else:
                chosen[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                                  log=t == "loguniform")
        return None


def grid_cells(grid: dict[str, list] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cartesian product of a grid spec ``{field: [values]}``, in a stable order; or a list of cells as given
    (``[{variant: ft, lr: 3e-4}, {variant: sm+tmkd, lr: 1e-4}]``: settings that differ per cell; a cell may also
    name its ``student_seed``, e.g. the cells a grid that outlived a session has not finished yet)."""
    import itertools
    names = {f.name for f in fields(MixKDConfig)}
    if isinstance(grid, list):
        for i, cell in enumerate(grid):
            if not isinstance(cell, dict) or not cell:
                raise UsageError(f"grid[{i}]: give a mapping of config fields to values")
            bad = [k for k in cell if k not in names | {"student_seed"}]   # a cell may name its student seed
            if bad:
                raise UsageError(f"grid[{i}]: '{bad[0]}' is not a config field")
        return [dict(c) for c in grid]
    for k, v in grid.items():
        if k not in names:
            raise UsageError(f"grid: '{k}' is not a config field")
        if not isinstance(v, list) or not v:
            raise UsageError(f"grid.{k}: give a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
