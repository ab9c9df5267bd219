"""Padding-free forward passes: the real tokens of a batch in one packed sequence, attention per row.

A padded batch (R rows of up to T tokens, mask (R, T)) is *packed*: its N real tokens are laid end to end in one
sequence (1, N), position ids restart at every row, and segment ids travel with their tokens. Every dense layer
(embeddings, Q/K/V, output projection, feed-forward, LayerNorm) then runs on N tokens instead of R x T. Attention
runs per row: :func:`packed_attention`, registered with transformers' ``AttentionInterface``, scatters the
packed queries, keys and values into (R, heads, T', d) with T' the longest real row, runs SDPA with each row's key
mask, and gathers the real positions back (the dense work is unpadded; the attention, ~5% of a small encoder's
FLOPs, is the only padded part). The classifier reads each row's first token: a forward hook on the family's
sequence module hands the head the rows' first tokens (R, 1, H), so the family's own pooler and head run unchanged.

Mixup stays where it is: mixed rows are made in the padded layout (word embeddings, union mask, :mod:`mixup`),
then packed by that mask, so a mixed row is max(len_i, len_j) tokens long, as its union mask says.

Same math, not the same bits: the padded path computes every real position exactly as here (its padded
positions are masked out of every attention and never reach the output); matmuls of other shapes sum in another
order (fp32: ~1e-6), and dropout draws its masks over other shapes (equal in distribution only).
tests/test_packing.py checks logits, one optimizer step and a short run, packed against padded, per family.

Families are packed where their attention dispatches through transformers' attention interface and their
position ids can be given (:data:`PACKED_FAMILIES`); the rest keep the padded path (:data:`UNPACKED_REASONS`).
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ATTN_NAME = "mixkd_packed"
# family (config.model_type) -> the submodule whose output is the final token sequence, before pooling and head
PACKED_FAMILIES = {"bert": "encoder", "roberta": "encoder", "xlm-roberta": "encoder", "electra": "encoder",
                   "albert": "encoder", "distilbert": "transformer", "modernbert": "final_norm"}
# families left on the padded path, and why (docs/efficiency.md's family table says the same)
UNPACKED_REASONS = {
    "deberta-v2": "its disentangled attention (relative positions) does not dispatch through transformers' attention "
                  "interface, so a packed row would attend across rows",
    "deberta": "as deberta-v2: its own relative attention, outside transformers' attention interface",
    "mpnet": "its relative position bias is computed outside transformers' attention interface",
    "longformer": "its sliding-window attention is its own kernel, outside transformers' attention interface",
}
PACKING_CHOICES = ("auto", "on", "off")


@dataclass
class Layout:
    """Where the N real tokens of R padded rows (width T) sit: row r is packed[starts[r]:starts[r] + lengths[r]].

    Built on the host from the rows' lengths (known there before the batch is copied to the device: no device
    read), its index tensors then live on the compute device."""
    rows: int
    tokens: int
    flat: torch.Tensor        # (N,) long: padded flat index r * T + t of each packed token
    starts: torch.Tensor      # (R,) long: the packed index of each row's first token
    gather: torch.Tensor      # (R, T') long: packed index of (row, t), t < T' = the longest row (clamped past a row)
    valid: torch.Tensor       # (R, T') bool: t < length of row
    positions: torch.Tensor   # (N,) long: t of each packed token
    back: torch.Tensor        # (N,) long: index r * T' + t of each packed token in the (R, T') blocks


def row_lengths(mask: torch.Tensor) -> torch.Tensor:
    """The real-token count of each row of a padded batch's ``mask`` (R, T) (read on the host: pass the collator's
    CPU mask). A row that is not a prefix (left padding, holes) is refused: the padded path counts positions from
    the start of the row, so packing it would change what the model computes."""
    m = mask.to("cpu").bool()
    lengths = m.sum(1)
    if not torch.equal(m, torch.arange(m.shape[1])[None, :] < lengths[:, None]):
        raise ValueError("packing needs right-padded rows (each row's mask a prefix); this batch is padded otherwise")
    return lengths


def layout_of(lengths: torch.Tensor, width: int, device: torch.device | str = "cpu") -> Layout:
    """The packed layout of rows of ``lengths`` (a host tensor) padded to ``width``, its tensors on ``device``."""
    lengths = lengths.to("cpu", torch.long)
    R, T = int(lengths.numel()), int(lengths.max()) if lengths.numel() else 0
    starts = torch.cumsum(lengths, 0) - lengths
    t = torch.arange(T)
    valid = t[None, :] < lengths[:, None]
    total = int(lengths.sum())
    flat = (torch.arange(R)[:, None] * width + t[None, :])[valid]
    gather = (starts[:, None] + t[None, :]).clamp(max=max(total - 1, 0))
    positions = t[None, :].expand(R, T)[valid]
    back = (torch.arange(R)[:, None] * T + t[None, :])[valid]

    def dev(x):
        return x.to(device, non_blocking=True)
    return Layout(R, total, dev(flat), dev(starts), dev(gather), dev(valid), dev(positions), dev(back))


def pack(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(R, T, ...) padded -> (1, N, ...) packed: the real positions, row after row."""
    return x.flatten(0, 1).index_select(0, layout.flat).unsqueeze(0)


_CURRENT: contextvars.ContextVar[Layout | None] = contextvars.ContextVar("mixkd_packed_layout", default=None)


def packed_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     sliding_window: int | None = None, **kwargs: Any):
    """transformers attention function over a packed sequence: (1, heads, N, d) -> (1, N, heads, d), each token
    attending to the real tokens of its own row only (``sliding_window``: ModernBERT's local layers, |i - j| < w)."""
    layout = _CURRENT.get()
    if layout is None or query.shape[0] != 1 or query.shape[2] != layout.tokens:
        raise RuntimeError("mixkd's packed attention ran outside a packed forward (mixkd.core.packing.packed_forward)")

    def rows(x):   # (1, h, N, d) -> (R, h, T', d)
        return x[0][:, layout.gather].transpose(0, 1)

    q, k, v = rows(query), rows(key), rows(value)
    mask = layout.valid[:, None, None, :]
    if sliding_window is not None:
        t = torch.arange(layout.valid.shape[1], device=query.device)
        mask = mask & ((t[:, None] - t[None, :]).abs() < sliding_window)[None, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout if module.training else 0.0,
                                         scale=scaling)
    # the real positions back, by an index built on the host (a boolean mask would make the GPU wait)
    return out.transpose(1, 2).flatten(0, 1).index_select(0, layout.back).unsqueeze(0), None


def _register() -> None:
    from transformers import AttentionInterface
    if ATTN_NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(ATTN_NAME, packed_attention)


def family(model: nn.Module) -> str:
    return str(getattr(model.config, "model_type", type(model).__name__))


def unpacked_reason(model: nn.Module) -> str | None:
    """Why ``model`` cannot be packed (None: it can)."""
    fam = family(model)
    if fam not in PACKED_FAMILIES:
        return UNPACKED_REASONS.get(fam, "mixkd has no packed path for this family (not verified)")
    if fam == "modernbert" and getattr(model.config, "classifier_pooling", "cls") != "cls":
        return "ModernBERT with mean pooling reads the padding mask in its head; only cls pooling is packed"
    if _sequence_module(model) is None:
        return f"no {PACKED_FAMILIES[fam]} module found in this {fam} model"
    return None


def _sequence_module(model: nn.Module) -> nn.Module | None:
    obj = model.base_model
    for part in PACKED_FAMILIES.get(family(model), "").split("."):
        obj = getattr(obj, part, None) if part else None
    return obj if isinstance(obj, nn.Module) else None


def _position_offset(model: nn.Module) -> int:
    """The first real token's position id: 0, or padding_idx + 1 for RoBERTa-style embeddings."""
    emb = getattr(model.base_model, "embeddings", None)
    if hasattr(emb, "create_position_ids_from_inputs_embeds") and getattr(emb, "padding_idx", None) is not None:
        return int(emb.padding_idx) + 1
    return 0


def _first_tokens(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """(1, N, H) packed -> (R, 1, H): each row's first token, what a [CLS] head reads."""
    return x[0, layout.starts].unsqueeze(1)


@contextlib.contextmanager
def _packed(model: nn.Module, layout: Layout):
    """Within: ``model`` (the HF classifier) attends per row of ``layout`` and its head sees the rows' first tokens."""
    _register()
    seq = _sequence_module(model)

    def hook(_mod, _args, out):
        if isinstance(out, torch.Tensor):
            return _first_tokens(out, layout)
        if isinstance(out, tuple):   # a plain tuple whose first element is the sequence
            return (_first_tokens(out[0], layout), *out[1:])
        out.last_hidden_state = _first_tokens(out.last_hidden_state, layout)
        return out

    handle = seq.register_forward_hook(hook)
    token = _CURRENT.set(layout)
    saved = model.config._attn_implementation
    model.config._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        model.config._attn_implementation = saved
        _CURRENT.reset(token)
        handle.remove()


def packed_forward(model: nn.Module, inputs: dict[str, torch.Tensor], lengths: torch.Tensor | None = None,
                   call: nn.Module | None = None, hidden_states: bool = False):
    """``model(**inputs)`` on a padded batch, computed packed. ``inputs``: input_ids or inputs_embeds (R, T[, H]),
    attention_mask (R, T), optionally token_type_ids (R, T) (keys the packed path does not need are dropped).
    ``lengths``: the rows' real-token counts as a host tensor (default: read from the mask, a device read off the
    CPU). ``call`` runs the forward (a DDP wrapper of ``model``; default ``model``).

    Returns the model's output with ``logits`` (R, C) and, with ``hidden_states``, ``hidden_states`` as
    (R, 1, H) tensors (each row's first token of every layer: what PKD's patient loss reads)."""
    mask = inputs["attention_mask"]
    if lengths is None:
        lengths = row_lengths(mask.cpu())
    layout = layout_of(lengths, mask.shape[1], mask.device)
    packed: dict[str, Any] = {}
    for k in ("input_ids", "inputs_embeds", "token_type_ids"):
        if k in inputs:
            packed[k] = pack(inputs[k], layout)
    packed["position_ids"] = (layout.positions + _position_offset(model)).unsqueeze(0)
    if hidden_states:
        packed["output_hidden_states"] = True
    with _packed(model, layout):
        out = (call or model)(**packed)
    if hidden_states and out.hidden_states is not None:
        out.hidden_states = tuple(h if h.shape[0] == layout.rows else _first_tokens(h, layout)
                                  for h in out.hidden_states)
    return out


def forward(model: nn.Module, inputs: dict[str, torch.Tensor], packed: bool, lengths: torch.Tensor | None = None,
            call: nn.Module | None = None, hidden_states: bool = False):
    """``model``'s forward on a padded batch, packed (:func:`packed_forward`) or as it is."""
    if packed:
        return packed_forward(model, inputs, lengths, call=call, hidden_states=hidden_states)
    return (call or model)(**inputs, **({"output_hidden_states": True} if hidden_states else {}))


def resolve_packing(choice: str, models: list[nn.Module]) -> tuple[bool, str]:
    """(pack?, the one line that says which path a run takes) for ``--packing`` over the run's models (student and
    teacher: all are packed or none). ``on`` with a model that cannot be packed is a UsageError."""
    from .errors import UsageError
    if choice == "off":
        return False, "padded batches (--packing off)"
    reasons = {family(m): r for m in models if m is not None for r in [unpacked_reason(m)] if r}
    if not reasons:
        fams = sorted({family(m) for m in models if m is not None})
        return True, f"packed batches, padding-free ({', '.join(fams)}; --packing {choice})"
    fam, why = next(iter(reasons.items()))
    if choice == "on":
        raise UsageError(f"--packing on: {fam} cannot be packed ({why}); use --packing auto (padded for this "
                         f"family) or off")
    return False, f"padded batches: {fam} is not packed ({why})"
