"""Where a run computes: the torch.distributed context (world size, rank), the device, bf16 autocast and
the seeds."""
from __future__ import annotations

import functools
import os
import random
from contextlib import nullcontext
from pathlib import Path

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


# CPU flags of native bf16 matrix arithmetic (Linux /proc/cpuinfo names): AVX512-BF16 (AMD Zen 4+, Intel Cooper
# Lake+) and AMX-BF16 (Intel Sapphire Rapids+). Without them bf16 is emulated and a step is ~10x slower than fp32.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def _detected_bf16_flags() -> tuple[str, ...]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:   # not Linux: ask torch's own dispatcher
        return ("avx512_bf16",) if torch.backends.cpu.get_cpu_capability() == "AVX512_BF16" else ()
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    return tuple(f for f in NATIVE_BF16_FLAGS if f in flags)


def cpu_bf16_flags() -> tuple[str, ...]:
    """The native-bf16 flags this CPU has; ``MIXKD_CPU_BF16=0`` / ``1`` overrides the detection (tests pin it)."""
    forced = os.environ.get("MIXKD_CPU_BF16", "").strip()
    if forced in ("0", "1"):
        return ("MIXKD_CPU_BF16=1",) if forced == "1" else ()
    return _detected_bf16_flags()


def resolve_precision(device: torch.device, precision: str) -> tuple[bool, str]:
    """(bf16 autocast?, why) for ``--precision`` on ``device``: auto is bf16 on CUDA and on CPUs that compute bf16
    natively (AMX or AVX512-BF16), fp32 elsewhere."""
    if precision != "auto":
        return precision == "bf16", f"{precision} (--precision {precision})"
    if device.type == "cuda":
        return True, "bf16 autocast (auto: CUDA)"
    flags = cpu_bf16_flags() if device.type == "cpu" else ()
    if flags:
        return True, f"bf16 autocast (auto: the CPU computes bf16 natively: {', '.join(flags)})"
    return False, "fp32 (auto: this CPU has no native bf16, where bf16 is ~10x slower)"


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast where :func:`resolve_precision` says so, else a no-op context."""
    if not resolve_precision(device, precision)[0]:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
