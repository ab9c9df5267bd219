"""Which training rows make each batch and in which order (``--group-by-length``), how batches reach the
device, and evaluation in length order.

The order of an epoch is a pure function of (seed, epoch, the rows' lengths, world size, rank): a resumed
run computes it again and skips the steps it has done, so it continues exactly.

* Random (the default): a seeded permutation of the rows, cut into micro-batches.
* ``--group-by-length``: the same permutation is cut into mega-batches (50 global batches, fewer for small
  sets so that there are at least 4, as the Hugging Face sampler does); each is sorted by length (ties keep
  their random order) and cut into global batches (batch size x world size rows), and the full global
  batches of the epoch are shuffled (a partial last one stays last). A batch then holds rows of similar
  length, so it pads little, and a mixup partner, drawn from the same batch, is of similar length too.
  Every row is still seen exactly once per epoch.
* DDP: the permutation is padded to a multiple of the world size by wrapping around, and rank r takes
  every world-size-th row from r on. With grouping that is the r-th share of each global batch, so the
  ranks' i-th micro-batches hold rows of the same length range and every rank gets as many as without.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

MEGABATCH = 50        # global batches per mega-batch (the Hugging Face LengthGroupedSampler's default)
LOADER_WORKERS = 2    # CUDA only: collating processes ...
PREFETCH = 4          # ... and the batches each keeps ready


def row_lengths(dataset) -> list[int]:
    """Token count of every row of a tokenized dataset (its ``input_ids``)."""
    return [len(ids) for ids in dataset["input_ids"]]


def group_by_length(perm: list[int], lengths: Sequence[int], window: int, generator: torch.Generator) -> list[int]:
    """``perm`` reordered so that each run of ``window`` consecutive rows has similar lengths (see above)."""
    mult = max(1, min(len(perm) // (window * 4), MEGABATCH))
    mega = mult * window
    windows = []
    for start in range(0, len(perm), mega):
        chunk = sorted(perm[start:start + mega], key=lambda i: -lengths[i])   # stable: ties stay random
        windows += [chunk[j:j + window] for j in range(0, len(chunk), window)]
    full = [w for w in windows if len(w) == window]
    rest = [i for w in windows if len(w) < window for i in w]   # at most one partial window, the last
    return [i for k in torch.randperm(len(full), generator=generator).tolist() for i in full[k]] + rest


def epoch_order(n: int, seed: int, epoch: int, batch_size: int, world_size: int = 1, rank: int = 0,
                lengths: Sequence[int] | None = None) -> list[int]:
    """The rows this rank trains on in ``epoch``, in order; grouped by length when ``lengths`` is given."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    if world_size > 1:   # equal shards (padded by wrapping around)
        perm = perm + perm[:(-len(perm)) % world_size]
    if lengths is not None:
        perm = group_by_length(perm, lengths, batch_size * world_size, g)
    return perm[rank::world_size] if world_size > 1 else perm


def epoch_steps(order: list[int], batch_size: int, grad_accum: int) -> list[list[list[int]]]:
    """``order`` cut into micro-batches, grouped by optimizer step."""
    micro = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [micro[i:i + grad_accum] for i in range(0, len(micro), grad_accum)]


def loader(dataset, batches: list[list[int]], collate, device: torch.device) -> torch.utils.data.DataLoader:
    """The micro-batches ``batches`` (index lists), collated, in order. On CUDA they are collated by worker
    processes ahead of time into pinned memory (so the copy to the GPU does not block); elsewhere on the
    main thread when asked for, exactly as ``collate(dataset.__getitems__(idx))``. The loader's own seed
    comes from a private generator: the global RNG, which draws the mixup plans, is left alone."""
    cuda = device.type == "cuda"
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate, pin_memory=cuda,
                                       num_workers=LOADER_WORKERS if cuda else 0,
                                       prefetch_factor=PREFETCH if cuda else None, generator=torch.Generator())


def length_order(dataset) -> list[int]:
    """Row indices, longest first (ties in row order): evaluation batches of similar length."""
    return np.argsort(-np.asarray(row_lengths(dataset)), kind="stable").tolist()


def restore_order(order: list[int], values: torch.Tensor) -> torch.Tensor:
    """Rows computed in ``order`` put back in dataset order."""
    out = torch.empty_like(values)
    out[torch.as_tensor(order, dtype=torch.long)] = values
    return out
