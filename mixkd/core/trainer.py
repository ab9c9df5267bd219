"""The training loop: a plain PyTorch loop (nanoGPT style) for fine-tuning and every distillation variant.

One step of ``sm+tmkd``: draw a mixup plan; run the student *once* over the original batch and its
mixed copies (concatenated along the batch); run the frozen teacher (eval, no grad) on the mixed
copies only; combine L_MLE, L_SM and L_TMKD by their weights. ``kd`` queries the teacher on the
original batch only, ``ft`` never; ``pkd`` is ``kd`` with both models also returning their hidden
states, for the patient loss L_PT. Which terms a variant trains, their weights and what each needs (teacher,
mixup, hidden states) come from the table in ``terms``. Checkpoints hold everything needed to resume exactly.

The step's own code waits for the GPU once: the plan is drawn on the device, loss terms are summed on the
device (read at logging time), and the one host sync per optimizer step is the NaN check after backward.
Batches come from ``batching`` (random or ``--group-by-length`` order; prefetched into pinned memory on
CUDA); the frozen teacher is held in bf16 when the step runs in bf16.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import batching, faults, losses, packing, terms as loss_terms
from .checkpoints import (append_event, read_checkpoint, repair_checkpoints, rng_state, set_rng_state, truncate_log,
                          write_checkpoint)
from .data import GlueData
from .device import autocast_for, distributed_context, resolve_device, resolve_precision
from .errors import NonFiniteLossError, UsageError
from .evaluation import dev_chance, evaluate_model, make_collator, model_inputs, predict  # noqa: F401 (re-exported)
from .metrics import above_chance
from .mixup import embeds_extras, mix_embeddings, sample_plan
from .tasks import TaskSpec, metric_key

EvalCallback = Callable[[dict[str, Any], Path], None]


def pkd_pairs(cfg, teacher: nn.Module, student: nn.Module) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs of PKD's patient loss, 1-based (hidden_states indices).

    ``--pkd-layer-map auto`` follows the student's init: ``last`` for ``--layer-strategy last``, else
    ``skip`` (PKD-Skip; with ``--layer-strategy skip`` each student layer is matched to the teacher
    layer it was copied from). A 1-layer student has no intermediate layer: no pairs, L_PT is 0 and
    pkd trains as kd.
    """
    from .models import encoder_depth
    n_t, k = encoder_depth(teacher), encoder_depth(student)
    strategy = cfg.pkd_layer_map
    if strategy == "auto":
        strategy = "last" if cfg.layer_strategy == "last" and not cfg.student_model else "skip"
    if k > n_t:
        raise UsageError(f"variant pkd matches student layers to teacher layers, but the student has {k} layers "
                         f"and the teacher {n_t}; use a student with at most {n_t} layers")
    hs, ht = getattr(student.config, "hidden_size", None), getattr(teacher.config, "hidden_size", None)
    if hs != ht:
        raise UsageError(f"variant pkd compares hidden states, but the student is {hs} wide and the teacher "
                         f"{ht}; use a student of the teacher's width (e.g. drop --student-model)")
    from .losses import pkd_layer_map
    return list(zip(range(1, k), pkd_layer_map(n_t, k, strategy)))


class Trainer:
    """Trains ``student`` on ``data`` with the loss terms of ``cfg.variant``; ``teacher`` is frozen."""

    def __init__(self, cfg, task: TaskSpec, student: nn.Module, tokenizer, data: GlueData,
                 output_dir: Path, teacher: nn.Module | None = None,
                 callbacks: list[EvalCallback] | None = None,
                 wrap_model: Callable[[nn.Module], nn.Module] | None = None):
        from .models import quiet_transformers
        quiet_transformers()
        cfg = self._with_schedule_defaults(cfg, student, data)
        self.cfg, self.task, self.data, self.tokenizer = cfg, task, data, tokenizer
        self.output_dir = Path(output_dir)
        self.ckpt_dir = self.output_dir / "checkpoints"
        self.world_size, self.rank = distributed_context()
        self.is_main = self.rank == 0
        self._place_student(student, wrap_model)
        self._set_up_terms(teacher)
        self.collator = make_collator(tokenizer)
        self._set_up_teacher_cache()
        self.callbacks = list(callbacks or [])
        self.lengths = batching.row_lengths(data.train) if cfg.group_by_length else None
        self._set_up_schedule()
        self._reset_progress()

    # --- setup ------------------------------------------------------------------------------
    @staticmethod
    def _with_schedule_defaults(cfg, student: nn.Module, data: GlueData):
        """``cfg`` with the step-aware lr and epochs filled in where unset (the Trainer used directly, not through
        jobs.run)."""
        if cfg.lr is None or cfg.epochs is None:
            from .defaults import resolve_schedule
            from .models import encoder_depth
            try:
                depth = encoder_depth(student)
            except UsageError:
                depth = None
            cfg = resolve_schedule(cfg, len(data.train), depth, distributed_context()[0])
        return cfg

    def _place_student(self, student: nn.Module, wrap_model: Callable[[nn.Module], nn.Module] | None) -> None:
        """The device, the student on it and ``model``, the module that runs the forward passes."""
        self.device = resolve_device(self.cfg.device)
        self.student = student.to(self.device)
        # ``model`` runs the forward passes: the student itself, or a DDP wrapper of it (e.g. Ray's
        # prepare_model); ``student`` is used for attribute access (embeddings) and saving.
        self.model = wrap_model(self.student) if wrap_model else self.student
        if wrap_model:
            self.device = next(self.student.parameters()).device

    def _set_up_terms(self, teacher: nn.Module | None) -> None:
        """The variant's loss terms, what they need, their weights, the frozen teacher and packing."""
        cfg = self.cfg
        self.terms = cfg.terms   # what each term needs: its row in mixkd.core.terms.TERMS
        self.needs_teacher = loss_terms.needs_teacher(self.terms)
        self.mixup, self.hidden = loss_terms.uses_mixup(self.terms), loss_terms.uses_hidden(self.terms)
        self.teacher_on_mixed = loss_terms.teacher_on_mixed(self.terms)
        self.teacher_on_originals = loss_terms.teacher_on_originals(self.terms)
        self.teacher = None
        if self.needs_teacher:
            if teacher is None:
                raise UsageError(f"variant {cfg.variant} needs a teacher; pass --teacher")
            self.teacher = teacher.to(self.device).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            if isinstance(autocast_for(self.device, cfg.precision), torch.autocast):   # the step runs in bf16
                self.teacher.to(torch.bfloat16)   # frozen: no fp32 master weights, no cast every forward
        # padding-free passes where every model of the run can be packed (--packing; mixkd.core.packing)
        self.packed, self.packing_note = packing.resolve_packing(cfg.packing, [self.student, self.teacher])
        self.weights = loss_terms.weights(cfg)
        # PKD: hidden states are requested (from student and teacher) only when L_PT is trained
        self.pkd_pairs = pkd_pairs(cfg, self.teacher, self.student) if "pt" in self.terms else None
        if self.pkd_pairs == [] and self.is_main:
            import warnings
            warnings.warn("variant pkd with a 1-layer student: no intermediate layer to match, L_PT is 0 "
                          "(the run is Hinton KD)", stacklevel=3)   # the caller of Trainer(...)

    def _set_up_teacher_cache(self) -> None:
        """kd/pkd: the teacher's outputs on the training rows, computed once (mixkd.core.teacher_cache)."""
        cfg = self.cfg
        self.teacher_cache = None
        if self.teacher_on_originals and cfg.teacher_outputs == "cache":
            from .teacher_cache import teacher_outputs
            self.teacher_cache = teacher_outputs(
                self.teacher, cfg.teacher, self.data.train, self.collator, cfg.eval_batch_size, self.device,
                "bf16" if resolve_precision(self.device, cfg.precision)[0] else "fp32", self.packed,
                hidden=self.hidden)

    def _set_up_schedule(self) -> None:
        """Steps per epoch of this rank, the total steps, the optimizer and the linear warmup schedule."""
        cfg = self.cfg
        n = math.ceil(len(self.data.train) / self.world_size)   # this rank's shard
        self.micro_per_epoch = math.ceil(n / cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum)
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self.optimizer = self._make_optimizer()
        from transformers import get_linear_schedule_with_warmup
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, int(cfg.warmup_ratio * self.total_steps), self.total_steps)

    def _reset_progress(self) -> None:
        """The progress counters (restored on resume) and the logged loss sums."""
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self._chance: dict[str, float] | None = None
        self.train_time = 0.0
        self.examples_seen = 0
        self._sums: dict[str, torch.Tensor] = {}   # loss terms summed over steps, on the device until logged
        self._sum_count = 0
        self.last_total = float("nan")             # the last step's total loss (read by its NaN check)

    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.student.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # the fused kernel (one call for all tensors) on CPU and CUDA: the per-tensor loop costs ~45 ms a step on CPU
        return torch.optim.AdamW(groups, lr=self.cfg.lr, fused=self.device.type in ("cpu", "cuda"))

    def _epoch_steps(self, epoch: int) -> list[list[list[int]]]:
        """Micro-batch index lists of this rank in one epoch, grouped by optimizer step. Seeded by (seed,
        epoch); grouped by length with ``--group-by-length`` (see :mod:`mixkd.core.batching`)."""
        order = batching.epoch_order(len(self.data.train), self.cfg.seed, epoch, self.cfg.batch_size,
                                     self.world_size, self.rank, self.lengths)
        return batching.epoch_steps(order, self.cfg.batch_size, self.cfg.grad_accum)

    # --- one step -----------------------------------------------------------------------------
    def compute_losses(self, batch: dict[str, torch.Tensor], lengths: torch.Tensor | None = None,
                       rows: list[int] | None = None) -> dict[str, torch.Tensor]:
        """The named loss terms of the variant on one micro-batch (unweighted), in the order of the table
        (mixkd.core.terms.TERMS): the forward passes the terms need fill an ``Outputs``, then each term's ``loss``
        reads it. ``lengths``: the rows' real-token counts on the host (packed runs: read from the collator's CPU
        mask before the batch moved); ``rows``: the batch's training-row indices (the teacher's cached outputs)."""
        cfg, s = self.cfg, self.student
        labels = batch["labels"]
        out = loss_terms.Outputs(cfg, self.task, labels, pkd_pairs=self.pkd_pairs)
        inputs = model_inputs(s, batch)
        if self.mixup:
            B = labels.shape[0]
            # shared by both models; a packed run draws it on the host, where the mixed rows' lengths are needed
            plan = sample_plan(B, cfg.alpha, cfg.mixup_ratio, device=None if self.packed else labels.device)
            # a mixed row is as long as the longer of its pair (the union of the two masks)
            mixed_lengths = None if lengths is None else torch.maximum(lengths[plan.index], lengths[plan.partner])
            word = s.get_input_embeddings()(batch["input_ids"])
            mixed = mix_embeddings(s, word, batch["attention_mask"], inputs.get("token_type_ids"), plan,
                                   cfg.mixup_padding, cfg.mixup_token_types)
            # one student forward over [original; mixed]
            joint = {"inputs_embeds": torch.cat([word, mixed["inputs_embeds"]]),
                     "attention_mask": torch.cat([batch["attention_mask"], mixed["attention_mask"]])}
            joint.update(embeds_extras(s, joint["attention_mask"]))
            if "token_type_ids" in mixed:
                joint["token_type_ids"] = torch.cat([inputs["token_type_ids"], mixed["token_type_ids"]])
            joint_lengths = None if lengths is None else torch.cat([lengths, mixed_lengths])
            logits_all = self._forward(s, joint, joint_lengths, self.model).logits
            out.plan, out.logits, out.mixed_logits = plan, logits_all[:B], logits_all[B:]
            if self.teacher_on_mixed:
                t = self.teacher
                with torch.no_grad():
                    t_in = model_inputs(t, batch)
                    t_word = t.get_input_embeddings()(batch["input_ids"])
                    t_mixed = mix_embeddings(t, t_word.float(), batch["attention_mask"], t_in.get("token_type_ids"),
                                             plan, cfg.mixup_padding, cfg.mixup_token_types)
                    t_mixed["inputs_embeds"] = t_mixed["inputs_embeds"].to(t_word.dtype)   # mixed in fp32
                    out.t_mixed_logits = self._forward(t, t_mixed, mixed_lengths).logits
        else:
            s_out = self._forward(s, inputs, lengths, self.model, hidden=self.hidden)
            out.logits, out.hidden = s_out.logits, (s_out.hidden_states if self.hidden else None)
        if self.teacher_on_originals:
            if self.teacher_cache is not None and rows is not None:
                out.t_logits, out.t_hidden = self.teacher_cache.rows(rows, labels.device)
            else:
                with torch.no_grad():
                    t_out = self._forward(self.teacher, model_inputs(self.teacher, batch), lengths, hidden=self.hidden)
                out.t_logits, out.t_hidden = t_out.logits, t_out.hidden_states
        return {term.name: term.loss(out) for term in loss_terms.rows(self.terms)}

    def _forward(self, model: nn.Module, inputs: dict[str, torch.Tensor], lengths: torch.Tensor | None,
                 call: nn.Module | None = None, hidden: bool = False):
        """``model``'s forward (run by ``call``: the student's DDP wrapper), packed when the run packs."""
        return packing.forward(model, inputs, self.packed, lengths, call=call, hidden_states=hidden)

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]],
                   rows: list[list[int]] | None = None) -> dict[str, torch.Tensor]:
        """Forward/backward over the step's micro-batches, then clip, step the optimizer and schedule.

        Returns each loss term and the total, averaged over the micro-batches, as 0-d float64 tensors on the
        device. The one host sync is the NaN check after backward: it reads the total, which is non-finite
        whenever a term is (before any weight is changed), and only then reads the terms to name the culprit.
        """
        self.model.train()
        n_micro = len(micro_batches)
        fault = faults.loss_fault(self.step + 1, self.terms)   # None unless MIXKD_FAULTS asks (tests/test_faults.py)
        acc = None
        for i, batch in enumerate(micro_batches):
            # packed: the rows' lengths, read from the collator's host mask before the copy (no device read)
            lengths = packing.row_lengths(batch["attention_mask"]) if self.packed else None
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            with autocast_for(self.device, self.cfg.precision):
                terms = self.compute_losses(batch, lengths, None if rows is None else rows[i])
            if fault in terms:
                terms[fault] = terms[fault] * float("nan")
            loss = losses.weighted_sum(terms, self.weights)
            names = [*terms, "total"]
            # float64: the same sums, in the same order, as Python floats would give
            values = torch.stack([v.detach().float() for v in terms.values()] + [loss.detach().float()]).double()
            acc = values / n_micro if acc is None else acc + values / n_micro
            (loss / n_micro).backward()
            self.examples_seen += int(batch["labels"].shape[0]) * self.world_size
        self.last_total = acc[-1].item()
        if not math.isfinite(self.last_total):
            name, v = next((n, v) for n, v in zip(names, acc.tolist()) if not math.isfinite(v))
            raise NonFiniteLossError(self.step + 1, name, v)
        if self.cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return dict(zip(names, acc.unbind()))

    # --- checkpoints ------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        """What checkpoints/last holds besides the weights."""
        return {
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(), "step": self.step, "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch, "best_value": self.best_value,
            "best_step": self.best_step, "best_metrics": self.best_metrics,
            "last_metrics": self.last_metrics, "train_time": self.train_time,
            "examples_seen": self.examples_seen, "total_steps": self.total_steps,
        }

    def save_checkpoint(self, which: str = "last") -> Path:
        """Weights (safetensors) + optimizer, scheduler, RNG and counters; written atomically."""
        return write_checkpoint(self.ckpt_dir, which, self.student, self.tokenizer, self._state)

    def load_checkpoint(self, path: Path) -> None:
        state = read_checkpoint(path, self.student, self.device, self.total_steps)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        for k in ("step", "epoch", "step_in_epoch", "best_value", "best_step", "best_metrics", "last_metrics",
                  "train_time", "examples_seen"):
            setattr(self, k, state[k])
        set_rng_state(state["rng"])
        # rows logged after this checkpoint (a crash between the log write and the save) are redone
        if self.is_main:
            truncate_log(self.output_dir / "log.jsonl", self.step)

    # --- eval and logging -------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        return evaluate_model(self.student, self.data, self.collator, self.cfg.eval_batch_size,
                              self.device, self.cfg.precision, by_length=self.cfg.group_by_length, packed=self.packed)

    @property
    def chance(self) -> dict[str, float]:
        """The trivial predictors' scores on the dev splits (see :func:`dev_chance`)."""
        if self._chance is None:
            self._chance = dev_chance(self.data)
        return self._chance

    def _on_eval(self) -> dict[str, Any]:
        metrics = self.evaluate()
        pkey = metric_key(self.task.primary_metric, self.data.dev_splits[0])
        primary = metrics[pkey]
        # a NaN score (e.g. Pearson of constant predictions) never counts as the best
        improved = math.isfinite(primary) and (self.best_value is None or primary > self.best_value)
        self.last_metrics = metrics
        if improved:
            self.best_value, self.best_step, self.best_metrics = primary, self.step, metrics
        row = {"step": self.step, "total_steps": self.total_steps,
               "epoch": round(self.step / self.steps_per_epoch, 4),
               "lr": self.scheduler.get_last_lr()[0],
               **{f"loss/{k}": v / max(1, self._sum_count) for k, v in self._logged_sums().items()},
               **{f"eval/{k}": v for k, v in metrics.items()},
               "primary": primary, "best_primary": self.best_value, "best_step": self.best_step,
               **{f"chance/{k}": v for k, v in self.chance.items()}, "chance_primary": self.chance[pkey],
               "above_chance": above_chance(primary, self.chance[pkey]),
               "train_time_s": round(self.train_time, 3),
               "train_examples_per_s": round(self.examples_seen / max(self.train_time, 1e-9), 2)}
        self._sums, self._sum_count = {}, 0
        if self.is_main:
            self._print_eval(row)
        last = None
        if self.is_main:   # one writer; every rank evaluates (cheap) so all agree on the best step
            with open(self.output_dir / "log.jsonl", "a") as fh:   # before the checkpoint: see load_checkpoint
                fh.write(json.dumps(row) + "\n")
            if improved:
                self.save_checkpoint("best")
            last = self.save_checkpoint("last")
        for cb in self.callbacks:
            cb(row, last)
        return row

    def _logged_sums(self) -> dict[str, float]:
        """The loss sums since the last eval, read from the device (one transfer)."""
        if not self._sums:
            return {}
        return dict(zip(self._sums, torch.stack(list(self._sums.values())).tolist()))

    def _print_eval(self, row: dict[str, Any]) -> None:
        """One line per evaluation on stderr, progress bar or not (sweeps run without bars: a teacher's
        fine-tune would otherwise show nothing for minutes)."""
        from tqdm.auto import tqdm
        loss = row.get("loss/total")
        tqdm.write(f"{self.output_dir.name}: step {row['step']}/{row['total_steps']} (epoch {row['epoch']:g}) dev "
                   f"{self.task.primary_metric} {row['primary']:.4f} (best {row['best_primary'] or float('nan'):.4f} "
                   f"at step {row['best_step']})" + ("" if loss is None else f", train loss {loss:.4f}") +
                   f", {row['train_time_s']:.0f} s training", file=sys.stderr)

    # --- the loop ---------------------------------------------------------------------------
    @property
    def final_metrics(self) -> dict[str, float]:
        """Dev metrics of the model that becomes model/ (best or last)."""
        return self.best_metrics if self.final_checkpoint == "best" else self.last_metrics

    @property
    def final_checkpoint(self) -> str:
        """'best', or 'last' when asked for or when no eval gave a finite score."""
        return "best" if self.cfg.final_model == "best" and self.best_step is not None else "last"

    def train(self, resume: bool = False, resume_from: Path | None = None) -> dict[str, Any]:
        """Run to ``total_steps``; ``resume`` continues from checkpoints/last, ``resume_from`` from
        another checkpoint folder (e.g. one handed back by Ray Train)."""
        from tqdm.auto import tqdm

        if resume_from is not None:
            self.load_checkpoint(Path(resume_from))
        elif resume:
            repair_checkpoints(self.ckpt_dir)
            self.load_checkpoint(self.ckpt_dir / "last")
        resume = resume or resume_from is not None
        if self.is_main:
            append_event(self.output_dir, "resume" if resume else "start", step=self.step,
                         total_steps=self.total_steps)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.cfg.progress and self.is_main),
                   desc=f"{self.cfg.variant} {self.task.name}", dynamic_ncols=True)
        last_row = None
        evaluated_at = self.step if resume else -1
        while self.step < self.total_steps:
            steps = self._epoch_steps(self.epoch)
            todo = steps[self.step_in_epoch:]
            batches = iter(batching.loader(self.data.train, [m for s in todo for m in s], self.collator, self.device))
            for step_batches in todo:
                t0 = time.perf_counter()
                micro = [next(batches) for _ in step_batches]
                totals = self.train_step(micro, step_batches)
                self.step_in_epoch += 1
                self.train_time += time.perf_counter() - t0
                for k, v in totals.items():
                    self._sums[k] = v if k not in self._sums else self._sums[k] + v
                self._sum_count += 1
                bar.update(1)
                bar.set_postfix(loss=f"{self.last_total:.4f}")
                end_of_epoch = self.step_in_epoch == len(steps)
                if end_of_epoch:
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                due = (self.cfg.eval_steps > 0 and self.step % self.cfg.eval_steps == 0) or \
                      (self.cfg.eval_steps == 0 and end_of_epoch) or self.step == self.total_steps
                if due:
                    last_row = self._on_eval()
                    evaluated_at = self.step
                faults.after_step()
                if self.step >= self.total_steps:
                    break
        bar.close()
        if evaluated_at != self.step:
            last_row = self._on_eval()
        return last_row or {}
