"""Layer 3, jobs: ``finetune``, ``distill`` and ``evaluate``, each a run folder from one config
(config.yaml, log.jsonl, checkpoints, model/, metrics.json). Imports the core and augment.
"""


def __getattr__(name):  # lazy: importing mixkd.jobs does not import torch
    if name in ("finetune", "distill", "evaluate"):
        from . import run
        return getattr(run, name)
    raise AttributeError(name)
