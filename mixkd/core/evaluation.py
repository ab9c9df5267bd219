"""Scoring a model on a task's dev splits: batches as the collator pads them (packed where the run packs), logits in
dataset order, the official GLUE metrics and the trivial predictors' scores beside them."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import batching, packing
from .data import GlueData
from .device import autocast_for
from .metrics import chance_metrics, glue_metrics
from .mixup import token_type_table


def model_inputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch keys ``model`` takes (drops token_type_ids for models without segment embeddings)."""
    keys = ["input_ids", "attention_mask"]
    if "token_type_ids" in batch and token_type_table(model) is not None:
        keys.append("token_type_ids")
    return {k: batch[k] for k in keys}


def make_collator(tokenizer):
    from transformers import DataCollatorWithPadding
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)


@torch.inference_mode()
def predict(model: nn.Module, dataset, collator, batch_size: int, device: torch.device,
            precision: str = "auto", by_length: bool = False, packed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of ``model`` over ``dataset`` (dynamic padding per batch), in dataset order;
    ``by_length`` batches rows of similar length together (less padding); ``packed`` computes each batch
    padding-free (:mod:`mixkd.core.packing`)."""
    was_training = model.training
    model.eval()
    order = batching.length_order(dataset) if by_length else None
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=order,
                                         collate_fn=collator, pin_memory=device.type == "cuda")
    all_logits, all_labels = [], []
    for batch in loader:
        lengths = packing.row_lengths(batch["attention_mask"]) if packed else None   # on the host, before the copy
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast_for(device, precision):
            logits = packing.forward(model, model_inputs(model, batch), packed, lengths).logits
        all_logits.append(logits.float().cpu())
        all_labels.append(batch["labels"].cpu())
    model.train(was_training)
    logits, labels = torch.cat(all_logits), torch.cat(all_labels)
    if order is not None:
        logits, labels = batching.restore_order(order, logits), batching.restore_order(order, labels)
    return logits.numpy(), labels.numpy()


def evaluate_model(model: nn.Module, data: GlueData, collator, batch_size: int, device: torch.device,
                   precision: str = "auto", by_length: bool = False, packed: bool = False) -> dict[str, float]:
    """Official GLUE metrics on every dev split of the task (``by_length``, ``packed``: see :func:`predict`)."""
    out: dict[str, float] = {}
    for split in data.dev_splits:
        logits, labels = predict(model, data.dev[split.name], collator, batch_size, device, precision, by_length,
                                 packed)
        out.update(glue_metrics(data.task, logits, labels, split))
    return out


def dev_chance(data: GlueData) -> dict[str, float]:
    """The trivial predictors' scores on every dev split (majority class, all-positive F1, a constant)."""
    out: dict[str, float] = {}
    for split in data.dev_splits:
        out.update(chance_metrics(data.task, np.asarray(data.dev[split.name]["labels"]), split))
    return out
