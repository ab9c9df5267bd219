"""Mixup on word embeddings (the paper's Eq. 4), fed to HF models through ``inputs_embeds``.

One *plan* (partner index and lambda per mixed sample) is drawn per step and applied to every
model that needs the mixed input, each with its own embedding tables: the student's (which train)
and the frozen teacher's. Choices the paper leaves open are explicit options:

* ``padding="zero"`` (paper: "zero-padded to a common length"): a padded position contributes a
  zero vector, so x'_t = (1 - lambda) x_j,t where x_i is shorter. ``"pad"`` mixes the [PAD]
  token's embedding instead.
* The attention mask of a mixed sample is the union of the two masks.
* ``token_types="mix"`` mixes the segment embeddings with the same lambda (so the mixed sample is
  lambda * (word + segment)_i + (1 - lambda) * (word + segment)_j); ``"first"`` keeps example i's
  segment ids. Position embeddings are identical for both examples, so mixing them is a no-op.
* The partner of example i is a different example of the same batch (a random derangement), which
  the paper allows ("one extra random sample from the training data").

On a GPU the plan is drawn on the device, without reading anything back to the host (no stream sync),
and both models and the label mixing use it there; on the CPU it is drawn as it always was.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MixPlan:
    index: torch.Tensor    # (M,) row of example i in the batch
    partner: torch.Tensor  # (M,) row of its partner j
    lam: torch.Tensor      # (M,) lambda of example i

    def __len__(self) -> int:
        return int(self.index.numel())


def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random permutation with no fixed point (identity for n == 1)."""
    perm = torch.randperm(n, generator=generator)
    if n < 2:
        return perm
    fixed = (perm == torch.arange(n)).nonzero().flatten()
    if len(fixed) >= 2:            # rotate the fixed points among themselves
        perm[fixed] = fixed.roll(1)
    elif len(fixed) == 1:          # swap the single fixed point with another position
        i = int(fixed[0])
        j = int(torch.randint(n - 1, (1,), generator=generator))
        j = j + (j >= i)
        perm[i], perm[j] = perm[j].clone(), perm[i].clone()
    return perm


def device_derangement(n: int, device: torch.device) -> torch.Tensor:
    """A random derangement made on ``device`` by tensor operations alone (nothing is read back to the host):
    :func:`derangement`'s repair of fixed points, for every case at once."""
    perm = torch.rand(n, device=device).argsort()
    if n < 2:
        return perm
    pos = torch.arange(n, device=device)
    fixed = perm == pos
    count = fixed.sum()
    # two or more fixed points: the k-th takes the (k-1)-th's value (rotated among themselves)
    fixed_first = torch.argsort(torch.where(fixed, pos, pos + n))          # fixed positions, in order, first
    prev = fixed_first[(fixed.cumsum(0) - 2).remainder(count.clamp(min=1))]
    perm = torch.where(fixed & (count >= 2), prev, perm)
    # exactly one fixed point i: swap it with a random other position j
    i = fixed.long().argmax().view(1)
    j = torch.randint(n - 1, (1,), device=device)
    j = j + (j >= i).long()
    pi, pj = perm.gather(0, i), perm.gather(0, j)
    one = count == 1
    return perm.scatter(0, torch.cat([i, j]), torch.cat([torch.where(one, pj, pi), torch.where(one, pi, pj)]))


def device_plan(batch_size: int, alpha: float, ratio: int, device: torch.device) -> MixPlan:
    """:func:`sample_plan` made on ``device`` without a host sync; lambda = X / (X + Y), X, Y ~ Gamma(alpha)."""
    conc = torch.full((2, batch_size * ratio), float(alpha), device=device)
    g = torch.distributions.Gamma(conc, torch.ones_like(conc), validate_args=False).sample()
    index = torch.arange(batch_size, device=device).repeat(ratio)
    partner = torch.cat([device_derangement(batch_size, device) for _ in range(ratio)])
    return MixPlan(index, partner, g[0] / (g[0] + g[1]))


def sample_plan(batch_size: int, alpha: float, ratio: int = 1, device: torch.device | str | None = None) -> MixPlan:
    """``ratio`` mixed samples per original: each round pairs every example with a new partner.

    Partners and lambdas come from torch's global RNG (the device's RNG off the CPU), which the trainer
    seeds and checkpoints, so a resumed run draws the same plans as an uninterrupted one. Off the CPU
    the plan is made on ``device`` (:func:`device_plan`).
    """
    if device is not None and torch.device(device).type != "cpu":
        return device_plan(batch_size, alpha, ratio, torch.device(device))
    beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    index = torch.arange(batch_size).repeat(ratio)
    partner = torch.cat([derangement(batch_size) for _ in range(ratio)])
    lam = beta.sample((batch_size * ratio,))
    return MixPlan(index, partner, lam)


def token_type_table(model: nn.Module) -> nn.Embedding | None:
    """The segment embedding table, or None where the model has none (DistilBERT, ModernBERT, DeBERTa-v3) or
    a single row (RoBERTa, XLM-R: segment ids from another tokenizer would index past it)."""
    emb = getattr(model.base_model, "embeddings", None)
    table = getattr(emb, "token_type_embeddings", None)
    return table if isinstance(table, nn.Embedding) and table.num_embeddings > 1 else None


@functools.lru_cache(maxsize=None)
def _takes_global_attention(model_class: type) -> bool:
    """Once per model class (not every step): does its forward take ``global_attention_mask``?"""
    return "global_attention_mask" in inspect.signature(model_class.forward).parameters


def embeds_extras(model: nn.Module, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs a model needs beside ``inputs_embeds`` that it would otherwise derive from ``input_ids``:
    Longformer's classifier puts global attention on the first token."""
    if not _takes_global_attention(type(model)):
        return {}
    glob = torch.zeros_like(attention_mask)
    glob[:, 0] = 1
    return {"global_attention_mask": glob}


def mix_embeddings(model: nn.Module, word_embeds: torch.Tensor, attention_mask: torch.Tensor,
                   token_type_ids: torch.Tensor | None, plan: MixPlan, padding: str = "zero",
                   token_types: str = "mix") -> dict[str, torch.Tensor]:
    """Mixed model inputs for ``plan``, given the batch's word embeddings under ``model``.

    Returns kwargs for ``model(**kwargs)``: inputs_embeds (M, T, H), attention_mask (M, T) and,
    for models with segment embeddings, token_type_ids (M, T).
    """
    idx, par = plan.index.to(word_embeds.device), plan.partner.to(word_embeds.device)
    lam = plan.lam.to(word_embeds.device, word_embeds.dtype).view(-1, 1, 1)
    e = word_embeds
    table = token_type_table(model)
    out_tt = None
    if table is not None and token_type_ids is not None:
        if token_types == "mix":
            # add segment embeddings here, relative to segment 0, which the model then adds back
            e = e + table(token_type_ids) - table.weight[0]
            out_tt = torch.zeros_like(token_type_ids[idx])
        else:
            out_tt = token_type_ids[idx]
    if padding == "zero":
        e = e * attention_mask.unsqueeze(-1).to(e.dtype)
    mixed = lam * e[idx] + (1.0 - lam) * e[par]
    mask = torch.maximum(attention_mask[idx], attention_mask[par])
    out = {"inputs_embeds": mixed, "attention_mask": mask, **embeds_extras(model, mask)}
    if out_tt is not None:
        out["token_type_ids"] = out_tt
    return out


def mixed_inputs(model: nn.Module, batch: dict[str, torch.Tensor], plan: MixPlan,
                 padding: str = "zero", token_types: str = "mix") -> dict[str, torch.Tensor]:
    """Embed ``batch`` with ``model``'s own word embeddings and mix it by ``plan``."""
    word = model.get_input_embeddings()(batch["input_ids"])
    return mix_embeddings(model, word, batch["attention_mask"], batch.get("token_type_ids"), plan,
                          padding, token_types)


def mix_labels(labels: torch.Tensor, plan: MixPlan, num_labels: int, regression: bool) -> torch.Tensor:
    """y' = lambda * y_i + (1 - lambda) * y_j; one-hot rows (M, C) for classification, (M,) for regression."""
    lam = plan.lam.to(labels.device)
    idx, par = plan.index.to(labels.device), plan.partner.to(labels.device)
    if regression:
        y = labels.float()
        return lam * y[idx] + (1 - lam) * y[par]
    y = F.one_hot(labels.long(), num_labels).float()
    return lam[:, None] * y[idx] + (1 - lam[:, None]) * y[par]
