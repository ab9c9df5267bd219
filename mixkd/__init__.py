"""mixkd: MixKD (Liang et al., ICLR 2021) distillation of BERT classifiers, with sweeps around it.

The package is in layers, each a subpackage that imports only the layers before it:
core -> augment -> jobs -> tracking -> deploy -> platform -> report -> cli (see the README's Architecture).
"""
__version__ = "0.1.0"

from .core.config import MixKDConfig  # noqa: F401
from .core.errors import NonFiniteLossError, UsageError  # noqa: F401


def __getattr__(name):  # lazy: importing mixkd does not import torch
    if name in ("finetune", "distill", "evaluate"):
        from .jobs import run
        return getattr(run, name)
    raise AttributeError(name)
