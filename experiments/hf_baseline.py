"""The baseline of the race (``python experiments/bench_step.py --compare-hf``): ``ft`` and ``sm+tmkd`` written
the way a user writes them today, a Hugging Face ``Trainer`` subclass with a custom ``compute_loss``.

``sm+tmkd`` (the paper's Eq. 8) on each batch: the student on the original batch against the labels (L_MLE);
each example's word embeddings (zero at padded positions) mixed with those of a random partner of the batch,
lambda ~ Beta(alpha, alpha), under the union of the two attention masks; a second student forward on the
mixed batch against the mixed labels (L_SM); the frozen teacher on the same mixed batch, and the MSE between
the two models' logits (L_TMKD). ``ft`` is L_MLE alone. Everything else is the Trainer's own: optimizer,
schedule, data loading, and the sampler (``TrainingArguments(train_sampling_strategy="group_by_length")`` for
batches of similar length; ``group_by_length=True`` in transformers < 5).

The HF Trainer needs ``accelerate`` (``pip install accelerate``).

    from hf_baseline import DistillTrainer
    trainer = DistillTrainer(model=student, teacher=teacher, variant="sm+tmkd", args=TrainingArguments(...),
                             train_dataset=tokenized_train, processing_class=tokenizer)
    trainer.train()
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Trainer


class DistillTrainer(Trainer):
    """``Trainer`` with the ``ft`` or ``sm+tmkd`` loss of a classifier; ``teacher`` is frozen."""

    loss_is_scaled_for_ga = False   # compute_loss returns a per-batch mean: the Trainer scales it for accumulation

    def __init__(self, *args, teacher: torch.nn.Module | None = None, variant: str = "sm+tmkd", alpha: float = 0.4,
                 **kwargs):
        super().__init__(*args, **kwargs)
        if variant not in ("ft", "sm+tmkd"):
            raise ValueError(f"variant {variant!r}: use ft or sm+tmkd")
        self.variant, self.alpha = variant, alpha
        self.teacher = None
        if variant == "sm+tmkd":
            self.teacher = teacher.to(self.args.device).eval()
            self.teacher.requires_grad_(False)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = F.cross_entropy(outputs.logits, labels)
        if self.variant == "sm+tmkd":
            loss = loss + self.mixup_loss(model, inputs, labels, outputs.logits.shape[-1])
        return (loss, outputs) if return_outputs else loss

    def mixup_loss(self, model, inputs, labels, num_labels: int) -> torch.Tensor:
        """L_SM + L_TMKD on one mixed copy of the batch."""
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        n = ids.shape[0]
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((n,)).to(ids.device)
        partner = torch.randperm(n, device=ids.device)
        mixed_mask = torch.maximum(mask, mask[partner])
        lam3 = lam.view(-1, 1, 1)

        def mixed(m):   # each model mixes its own word embeddings
            e = m.get_input_embeddings()(ids) * mask.unsqueeze(-1)
            return lam3 * e + (1 - lam3) * e[partner]

        y = F.one_hot(labels, num_labels).float()
        y_mixed = lam[:, None] * y + (1 - lam[:, None]) * y[partner]
        student = self.accelerator.unwrap_model(model)
        s_logits = model(inputs_embeds=mixed(student), attention_mask=mixed_mask,
                         token_type_ids=inputs.get("token_type_ids")).logits
        loss_sm = -(y_mixed * F.log_softmax(s_logits, dim=-1)).sum(-1).mean()
        with torch.no_grad():
            t_logits = self.teacher(inputs_embeds=mixed(self.teacher), attention_mask=mixed_mask,
                                    token_type_ids=inputs.get("token_type_ids")).logits
        loss_tmkd = F.mse_loss(s_logits, t_logits)
        return loss_sm + loss_tmkd
