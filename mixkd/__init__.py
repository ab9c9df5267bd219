"""mixkd: MixKD (Liang et al., ICLR 2021) distillation of BERT classifiers, with sweeps around it.

The package is in layers, each a subpackage that imports only the layers before it:
core -> augment -> jobs -> tracking -> deploy -> platform -> report -> cli (see the README's Architecture).
"""
__version__ = "0.1.0"

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

from .core.config import MixKDConfig  # noqa: E402,F401
from .core.errors import NonFiniteLossError, UsageError  # noqa: E402,F401

# Modules that lived directly under mixkd/ before the layers (0.1.0): ``import mixkd.latency`` and
# ``from mixkd.selection import select`` keep working, with a DeprecationWarning naming the new home.
MOVED = {
    "errors": "core.errors", "atomic": "core.atomic", "faults": "core.faults", "config": "core.config",
    "tasks": "core.tasks", "data": "core.data", "models": "core.models", "mixup": "core.mixup",
    "losses": "core.losses", "metrics": "core.metrics", "trainer": "core.trainer", "run": "jobs.run",
    "runstore": "tracking.runstore", "latency": "deploy.latency", "modelcard": "deploy.modelcard",
    "selection": "deploy.selection", "ray_train": "platform.ray_train", "search_space": "platform.search_space",
    "sweep": "platform.sweep", "paper_numbers": "report.paper_numbers", "sweep_cli": "cli.sweep",
    "latency_cli": "cli.latency", "select_cli": "cli.select", "augment_cli": "cli.augment", "report_cli": "cli.report",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old flat module name to the module in its layer (the same module object)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(__name__ + ".") and fullname[len(__name__) + 1:] in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"{__name__}.{MOVED[spec.name[len(__name__) + 1:]]}"
        warnings.warn(f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name):  # lazy: importing mixkd does not import torch
    if name in ("finetune", "distill", "evaluate"):
        from .jobs import run
        return getattr(run, name)
    raise AttributeError(name)
