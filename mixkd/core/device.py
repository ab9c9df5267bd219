"""Where a run computes: the torch.distributed context (world size, rank), the device, bf16 autocast and
the seeds."""
from __future__ import annotations

import random
from contextlib import nullcontext

import numpy as np
import torch

from .errors import UsageError


def distributed_context() -> tuple[int, int]:
    """(world size, rank) of an initialised torch.distributed group, else (1, 0)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {name} was asked for but no CUDA GPU is visible; use --device cpu or auto")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) are visible "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on GPU (auto or bf16); fp32 on CPU unless bf16 is forced (slow on AVX2 CPUs)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
