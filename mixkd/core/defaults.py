"""Step-aware defaults: the number of epochs and the learning rate a run gets when the user names neither.

Today's usual defaults (3 epochs, lr 5e-5) come from BERT-base on full GLUE. On small data they give a few dozen
optimizer steps, and a shallow student cut from the teacher then learns nothing (it predicts one class). The rule,
chosen from the study in experiments/study_defaults.py (results and table: experiments/results/study_defaults/ and
docs/variants.md, "Defaults that learn"):

- epochs: at least ``DEFAULT_EPOCHS``, raised until the run makes ``MIN_STEPS`` optimizer steps (at most
  ``MAX_EPOCHS``);
- lr: by the depth of the model being trained (``LR_BY_DEPTH``; deeper than the table: ``LR_DEEP``).

An explicit ``--lr``, ``--epochs`` or ``--max-steps`` always wins; the resolved numbers are what config.yaml and the
MLflow params record, so a run stays reproducible without knowing the rule.
"""
from __future__ import annotations

import math

DEFAULT_EPOCHS = 3.0
MIN_STEPS = 300
MAX_EPOCHS = 40.0
LR_BY_DEPTH = {1: 3e-4, 2: 3e-4, 3: 3e-4, 4: 1e-4, 5: 1e-4, 6: 1e-4}
LR_DEEP = 5e-5          # deeper than the table (BERT-base and up): the usual fine-tuning rate; not studied here


def lr_for_depth(depth: int | None) -> float:
    """The rule's learning rate for a model of ``depth`` encoder layers (None, unknown: the deep rate)."""
    if depth is None:
        return LR_DEEP
    return LR_BY_DEPTH.get(int(depth), LR_DEEP if depth > max(LR_BY_DEPTH) else LR_BY_DEPTH[min(LR_BY_DEPTH)])


def epochs_for(train_rows: int, batch_size: int, grad_accum: int = 1, world_size: int = 1) -> float:
    """The rule's epochs for ``train_rows`` rows: DEFAULT_EPOCHS, raised (whole epochs) to reach MIN_STEPS optimizer
    steps, at most MAX_EPOCHS (steps per epoch as the trainer counts them: per rank, micro-batches / grad_accum)."""
    per_rank = math.ceil(max(1, train_rows) / max(1, world_size))
    steps_per_epoch = math.ceil(math.ceil(per_rank / batch_size) / grad_accum)
    return float(min(MAX_EPOCHS, max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))))


def resolve_schedule(cfg, train_rows: int, depth: int | None, world_size: int = 1):
    """``cfg`` with ``epochs`` and ``lr`` filled in by the rule where the user left them unset (None)."""
    kw = {}
    if cfg.epochs is None:
        kw["epochs"] = DEFAULT_EPOCHS if cfg.max_steps > 0 else epochs_for(train_rows, cfg.batch_size,
                                                                          cfg.grad_accum, world_size)
    if cfg.lr is None:
        kw["lr"] = lr_for_depth(depth)
    return cfg.replace(**kw) if kw else cfg


def describe(cfg, resolved, train_rows: int | None = None, world_size: int = 1) -> str | None:
    """One line saying which values the rule chose and why (None when the user gave both): what it says of the
    run's length is true of this run (a --max-steps cap; MAX_EPOCHS reached before MIN_STEPS on small data)."""
    parts = []
    if cfg.lr is None:
        parts.append(f"lr {resolved.lr:g} (by depth)")
    if cfg.epochs is None:
        if cfg.max_steps > 0:
            parts.append(f"--max-steps {cfg.max_steps} sets the length (epochs unused)")
        else:
            why = f"raised to reach {MIN_STEPS} optimizer steps" if resolved.epochs > DEFAULT_EPOCHS else \
                  f"reaches {MIN_STEPS} optimizer steps"
            if train_rows is not None:
                per_rank = math.ceil(max(1, train_rows) / max(1, world_size))
                steps = math.ceil(resolved.epochs * math.ceil(math.ceil(per_rank / cfg.batch_size) / cfg.grad_accum))
                if steps < MIN_STEPS:
                    why = f"capped at {MAX_EPOCHS:g}: {steps} optimizer steps, short of {MIN_STEPS} on this data"
                else:
                    why += f": {steps} steps"
            parts.append(f"epochs {resolved.epochs:g} ({why})")
    if not parts:
        return None
    return f"step-aware defaults: {'; '.join(parts)}; --epochs / --lr / --max-steps override"
