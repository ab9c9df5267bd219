"""mixkd: MixKD (Liang et al., ICLR 2021) distillation of BERT classifiers, with sweeps around it."""
__version__ = "0.1.0"

from .config import MixKDConfig  # noqa: E402,F401
from .errors import NonFiniteLossError, UsageError  # noqa: E402,F401


def __getattr__(name):  # lazy: importing mixkd does not import torch
    if name in ("finetune", "distill", "evaluate"):
        from . import run
        return getattr(run, name)
    raise AttributeError(name)
