"""The Python API: ``finetune(cfg)``, ``distill(cfg)``, ``evaluate(cfg)``.

A run's output dir holds ``config.yaml`` (resolved config), ``log.jsonl`` (one row per eval with
every loss term), ``checkpoints/{last,best}``, ``model/`` (save_pretrained + tokenizer) and, written
last and atomically, ``metrics.json``. A dir without metrics.json is an unfinished run.
"""
from __future__ import annotations

import json
import platform
import sys
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..core.atomic import write_json_atomic
from ..core.config import MixKDConfig, check_writable_dir
from ..core.custom_data import resolve_config
from ..core.data import GlueData, announce_data_source, check_subset, load_glue
from ..core.errors import UsageError
from ..core.metrics import above_chance, warn_if_at_chance
from ..core.models import (build_student, check_same_vocab, count_parameters, encoder_depth, load_classifier,
                     load_tokenizer)
from ..core.custom_data import task_for
from ..core.tasks import TaskSpec, metric_key, task_name
from ..core.terms import needs_teacher, teacher_on_originals
from ..core.checkpoints import repair_checkpoints
from ..core.device import resolve_device, resolve_precision, seed_everything
from ..core.trainer import EvalCallback, Trainer, dev_chance, evaluate_model, make_collator

RESULT_FILES = ("config.yaml", "metrics.json", "log.jsonl", "model", "checkpoints")


def check_output_dir(cfg: MixKDConfig) -> Path:
    """Refuse to clobber a finished run; tell how to continue an interrupted one."""
    out = Path(cfg.output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir '{out}' is a file; choose a directory")
    repair_checkpoints(out / "checkpoints")   # a crash mid-save can leave checkpoints/last.old only
    finished = (out / "metrics.json").is_file()
    has_ckpt = (out / "checkpoints" / "last" / "trainer_state.pt").is_file()
    if cfg.resume:
        if finished and not cfg.overwrite:
            raise UsageError(f"'{out}' holds a finished run; nothing to resume (use --overwrite to retrain)")
        if not has_ckpt:
            raise UsageError(f"--resume: no checkpoint in '{out}/checkpoints/last'; start without --resume")
        saved = MixKDConfig.from_yaml(out / "config.yaml")
        if saved.config_hash() != cfg.config_hash():
            raise UsageError(f"--resume: the config differs from the interrupted run's ({saved.config_hash()} vs "
                             f"{cfg.config_hash()}); resume with the same flags or pass --overwrite")
    elif finished and not cfg.overwrite:
        raise UsageError(f"'{out}' holds a finished run (metrics.json); pass --overwrite to replace it "
                         f"or choose another --output-dir")
    elif has_ckpt and not cfg.overwrite:
        raise UsageError(f"'{out}' holds an interrupted run; pass --resume to continue it or --overwrite "
                         f"to start over")
    return out


def _clear_results(out: Path) -> None:
    for name in RESULT_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _teacher_run(teacher: str) -> tuple[dict | None, dict | None]:
    """The config and metrics of a mixkd teacher run dir (None, None for a plain HF model dir)."""
    p = Path(teacher).expanduser()
    cfg_file, met_file = p / "config.yaml", p / "metrics.json"
    if cfg_file.is_file() and not met_file.is_file() and ((p / "checkpoints").is_dir() or (p / "model").is_dir()):
        raise UsageError(f"teacher run '{teacher}' is unfinished (no metrics.json); finish it with "
                         f"`mixkd finetune ... --resume` first")   # an interrupted run: never use its partial weights
    if not (p / "model").is_dir() or not cfg_file.is_file():
        return None, None
    return MixKDConfig.from_yaml(cfg_file).to_dict(), json.loads(met_file.read_text())


def _resolve_subset(cfg: MixKDConfig, tcfg: dict | None) -> MixKDConfig:
    """Fill data_fraction/data_seed/max_train_samples: the teacher's subset for distill, else the full
    set (capped by --max-train-samples) and --seed."""
    if tcfg is None:
        return cfg.replace(data_fraction=1.0 if cfg.data_fraction is None else cfg.data_fraction,
                           data_seed=cfg.resolved_data_seed)
    t_frac, t_seed, t_max = tcfg["data_fraction"], tcfg["data_seed"], tcfg.get("max_train_samples")
    frac = t_frac if cfg.data_fraction is None else cfg.data_fraction
    seed = t_seed if cfg.data_seed is None else cfg.data_seed
    cap = t_max if cfg.max_train_samples is None else cfg.max_train_samples
    if (frac, seed, cap) != (t_frac, t_seed, t_max) and not cfg.allow_subset_mismatch:
        def rows(f, s, m):
            return f"data_fraction={f} (data_seed={s}" + (f", max_train_samples={m})" if m else ")")
        raise UsageError(f"the teacher was trained on {rows(t_frac, t_seed, t_max)} but this run asks for "
                         f"{rows(frac, seed, cap)}; drop --data-fraction/--data-seed/--max-train-samples to use the "
                         f"teacher's subset or pass --allow-subset-mismatch")
    return cfg.replace(data_fraction=frac, data_seed=seed, max_train_samples=cap)


def _data_config(cfg: MixKDConfig) -> MixKDConfig:
    """The config the data loader sees: with ``--augment bt``, the cached back-translation of the run's
    subset as its augment file (generated first on a cache miss). The run's own config keeps
    ``augment: bt`` (its hash and tags do not depend on where the cache lives)."""
    if cfg.augment != "bt":
        return cfg
    from ..augment.backtranslate import bt_file_for_config
    return cfg.replace(augment_file=str(bt_file_for_config(cfg).path))


def _environment() -> dict[str, Any]:
    import transformers
    return {"mixkd": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _depth(model) -> int | None:
    """The encoder depth for metrics; the config's layer count for a model mixkd could not cut."""
    try:
        return encoder_depth(model)
    except UsageError:
        return getattr(model.config, "num_hidden_layers", None)


def _train(cfg: MixKDConfig, command: str, task: TaskSpec, student, tokenizer, data: GlueData,
           teacher=None, extra: dict | None = None, callbacks: list[EvalCallback] | None = None,
           wrap_model=None, resume_from: Path | None = None) -> dict:
    from ..core.device import distributed_context
    is_main = distributed_context()[1] == 0
    out = Path(cfg.output_dir).expanduser()
    if is_main:
        if resume_from is None:
            check_output_dir(cfg)
        if data.source is not None:   # after every check: bad input stays a one-line error
            announce_data_source(data.source, task)
        if (extra or {}).get("defaults_rule"):
            print(f"mixkd: {extra['defaults_rule']}", file=sys.stderr, flush=True)
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume and resume_from is None:
            _clear_results(out)
        if not (out / "config.yaml").is_file():
            cfg.save_yaml(out / "config.yaml")
    trainer = Trainer(cfg, task, student, tokenizer, data, out, teacher=teacher, callbacks=callbacks,
                      wrap_model=wrap_model)
    precision = resolve_precision(trainer.device, cfg.precision)[1]
    if is_main:
        print(f"mixkd: {precision}; {trainer.packing_note}", file=sys.stderr, flush=True)
    t0 = time.time()
    trainer.train(resume=cfg.resume, resume_from=resume_from)
    if not is_main:   # rank 0 writes the results
        return {"task": task.name, "variant": cfg.variant, "metrics": trainer.final_metrics}
    # model/: the best (or last) checkpoint, written next to its final name then renamed
    src = out / "checkpoints" / trainer.final_checkpoint
    tmp = out / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
    tokenizer.save_pretrained(tmp)
    if (out / "model").exists():
        shutil.rmtree(out / "model")
    tmp.rename(out / "model")
    final_metrics = trainer.final_metrics
    primary = metric_key(task.primary_metric, data.dev_splits[0])
    metrics = {
        "command": command, "task": task.name, "variant": cfg.variant, "augmentation": cfg.augmentation,
        "primary_metric": primary, "primary_value": final_metrics[primary], "metrics": final_metrics,
        "chance": trainer.chance, "above_chance": above_chance(final_metrics[primary], trainer.chance[primary]),
        "final_model": cfg.final_model, "best_step": trainer.best_step, "steps": trainer.step,
        "params": count_parameters(student), "layers": _depth(student),
        "train_time_s": round(trainer.train_time, 2), "wall_time_s": round(time.time() - t0, 2),
        "train_examples_per_s": round(trainer.examples_seen / max(trainer.train_time, 1e-9), 2),
        "config_hash": cfg.config_hash(), "data": data.info, "device": str(trainer.device),
        "precision_resolved": precision, "packing_resolved": trainer.packing_note, "packed": trainer.packed,
        "teacher_outputs": None if trainer.teacher_cache is None else {   # kd/pkd: mixkd.core.teacher_cache
            "entry": str(trainer.teacher_cache.path) if trainer.teacher_cache.path else None,
            "reused": trainer.teacher_cache.reused},
        **_labels_report(task, out / "model", data, cfg, trainer.device),
        "environment": _environment(), **(extra or {}),
    }
    write_json_atomic(out / "metrics.json", metrics)
    warn_if_at_chance(metrics)
    return metrics


def _schedule(cfg: MixKDConfig, data: GlueData, depth: int | None) -> tuple[MixKDConfig, str | None]:
    """Epochs and lr by the step-aware rule where the user named neither (mixkd.core.defaults), and the one line
    that says so (None when the user named both), printed once the run's checks have passed."""
    from ..core.defaults import describe, resolve_schedule
    from ..core.device import distributed_context
    resolved = resolve_schedule(cfg, len(data.train), depth, distributed_context()[0])
    return resolved, describe(cfg, resolved, len(data.train), distributed_context()[0])


def _packs(cfg: MixKDConfig, model) -> bool:
    """Whether ``model``'s batches run packed under ``--packing`` (mixkd.core.packing)."""
    from ..core.packing import resolve_packing
    return resolve_packing(cfg.packing, [model])[0]


def _labels_report(task: TaskSpec, model_dir: Path, data: GlueData, cfg: MixKDConfig, device) -> dict:
    """A classifier's label names in id order and, per class, precision / recall / F1 on the primary dev split
    (the saved model reloaded, so this also checks that model/ loads)."""
    if task.regression:
        return {}
    from ..core.metrics import per_class_metrics
    from ..core.trainer import predict
    # the run's own model/, before its metrics.json marks it finished
    model = load_classifier(str(model_dir), task, new_head=False, finished_only=False).to(device)
    split = data.dev_splits[0]
    tok = load_tokenizer(str(model_dir), finished_only=False)
    logits, labels = predict(model, data.dev[split.name], make_collator(tok),
                             cfg.eval_batch_size, device, cfg.precision, packed=_packs(cfg, model))
    return {"labels": list(task.label_names), "per_class": per_class_metrics(task, logits, labels)}


def finetune(cfg: MixKDConfig, callbacks: list[EvalCallback] | None = None, wrap_model=None,
             resume_from: Path | None = None) -> dict:
    """Fine-tune ``cfg.model`` on ``cfg.task`` (the teacher step)."""
    cfg = _resolve_subset(resolve_config(cfg, "finetune"), None)
    resolve_device(cfg.device)   # a device that is not there: refused before any data is read or file written
    if resume_from is None:
        check_writable_dir(cfg.output_dir, "--output-dir")   # before loading anything
    cfg, task = task_for(cfg, "finetune")
    seed_everything(cfg.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    data = load_glue(_data_config(cfg), task, tokenizer)
    check_subset(data, cfg)
    seed_everything(cfg.seed)
    model = load_classifier(cfg.model, task, new_head=True, trust_remote_code=cfg.trust_remote_code)
    cfg, rule = _schedule(cfg, data, _depth(model))
    return _train(cfg, "finetune", task, model, tokenizer, data, extra={"base_model": cfg.model, "defaults_rule": rule},
                  callbacks=callbacks, wrap_model=wrap_model, resume_from=resume_from)


def distill(cfg: MixKDConfig, callbacks: list[EvalCallback] | None = None, wrap_model=None,
            resume_from: Path | None = None, before_write=None) -> dict:
    """Distil the fine-tuned ``cfg.teacher`` into a student with ``cfg.variant``.

    ``before_write()``, if given, is called once the models and data are loaded, before anything is
    written to the output dir (a sweep trial waits there until Tune has saved it: see
    mixkd.platform.trial.run_trial)."""
    cfg, task, student, tokenizer, data, teacher, extra = _distill_parts(cfg, check_output=resume_from is None)
    if before_write is not None:
        before_write()
    return _train(cfg, "distill", task, student, tokenizer, data, teacher=teacher, extra=extra, callbacks=callbacks,
                  wrap_model=wrap_model, resume_from=resume_from)


def teacher_outputs(cfg: MixKDConfig) -> dict:
    """The kd/pkd teacher outputs a ``distill`` of ``cfg`` reads, found or computed now (mixkd.core.teacher_cache):
    a sweep calls this once per (teacher, training set) before its trials, which then find them. Writes nothing
    but the cache entry."""
    import tempfile

    from ..core.trainer import Trainer
    cfg, task, student, tokenizer, data, teacher, _ = _distill_parts(cfg, check_output=False)
    if teacher is None or not teacher_on_originals(cfg.terms):
        return {"cached": False}
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg.replace(output_dir=tmp), task, student, tokenizer, data, Path(tmp), teacher=teacher)
        cache = trainer.teacher_cache
    return {"cached": cache is not None, "path": str(cache.path) if cache and cache.path else None,
            "reused": bool(cache and cache.reused), "rows": len(data.train)}


def _distill_parts(cfg: MixKDConfig, check_output: bool):
    """What a distill trains with, checked: (resolved cfg, task, student, tokenizer, data, teacher or None, extra)."""
    cfg = resolve_config(cfg, "distill")
    resolve_device(cfg.device)   # a device that is not there: refused before any data is read or file written
    if check_output:
        check_writable_dir(cfg.output_dir, "--output-dir")   # before loading anything
    cfg, task = task_for(cfg, "distill")
    tcfg, tmetrics = _teacher_run(cfg.teacher)
    if tcfg is not None and task_name(tcfg["task"]) != task.name:
        raise UsageError(f"teacher '{cfg.teacher}' was fine-tuned on {tcfg['task']}, not {task.name}; "
                         f"use a teacher of the same task")
    cfg = _resolve_subset(cfg, tcfg)
    seed_everything(cfg.seed)
    t_tok = load_tokenizer(cfg.teacher, cfg.trust_remote_code)
    teacher = load_classifier(cfg.teacher, task, new_head=False, trust_remote_code=cfg.trust_remote_code)
    # cutting a student needs the teacher's layer list (refuses decoders, encoder-decoders, unknown layouts)
    teacher_layers = _depth(teacher) if cfg.student_model else encoder_depth(teacher)
    if cfg.student_model:
        tokenizer = load_tokenizer(cfg.student_model, cfg.trust_remote_code)
        check_same_vocab(t_tok, tokenizer, cfg.student_model)
        student = load_classifier(cfg.student_model, task, new_head=True, trust_remote_code=cfg.trust_remote_code)
        kept = None
    else:
        if cfg.student_layers > teacher_layers:
            raise UsageError(f"--student-layers {cfg.student_layers} is invalid: the teacher has "
                             f"{teacher_layers} layers; use 1..{teacher_layers}")
        tokenizer = t_tok
        student = build_student(teacher, cfg.student_layers, cfg.layer_strategy)
        kept = student.config.mixkd_teacher_layers
    data = load_glue(_data_config(cfg), task, tokenizer)
    check_subset(data, cfg)
    if tmetrics and "subset_fingerprint" in tmetrics.get("data", {}) and not cfg.allow_subset_mismatch:
        if tmetrics["data"]["subset_fingerprint"] != data.info["subset_fingerprint"]:
            raise UsageError("the student's training subset differs from the teacher's although the fraction and "
                             "seed match (the train file changed?); check --data-dir")
    extra = {"teacher": str(cfg.teacher), "teacher_params": count_parameters(teacher),
             "teacher_layers": teacher_layers, "student_layers_kept": kept,
             "student_model": cfg.student_model, "teacher_primary_value": (tmetrics or {}).get("primary_value")}
    if cfg.variant == "pkd":   # (student layer, teacher layer) pairs of the patient loss, 1-based
        from ..core.trainer import pkd_pairs
        extra["pkd_layer_pairs"] = pkd_pairs(cfg, teacher, student)
    if not needs_teacher(cfg.terms):
        del teacher
        teacher = None
    cfg, extra["defaults_rule"] = _schedule(cfg, data, _depth(student))
    return cfg, task, student, tokenizer, data, teacher, extra


def evaluate(cfg: MixKDConfig) -> dict:
    """GLUE dev metrics of a saved model (a run dir, an HF dir, a hub id or the alias)."""
    cfg = resolve_config(cfg, "evaluate")
    resolve_device(cfg.device)
    cfg, task = task_for(cfg, "evaluate")
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    model = load_classifier(cfg.model, task, new_head=False, trust_remote_code=cfg.trust_remote_code)
    data = load_glue(cfg, task, tokenizer, train=False)
    device = resolve_device(cfg.device)
    metrics = evaluate_model(model.to(device), data, make_collator(tokenizer), cfg.eval_batch_size, device,
                             cfg.precision, packed=_packs(cfg, model))
    result = scored(task, cfg.model, metrics, data, params=count_parameters(model))
    warn_if_at_chance(result)
    return result


def scored(task: TaskSpec, model: str, metrics: dict[str, float], data: GlueData, **extra) -> dict:
    """What ``evaluate`` reports for dev ``metrics``: the primary metric and the chance level beside them."""
    primary = metric_key(task.primary_metric, data.dev_splits[0])
    chance = dev_chance(data)
    return {"task": task.name, "model": model, **extra, "primary_metric": primary, "primary_value": metrics[primary],
            "metrics": metrics, "chance": chance, "above_chance": above_chance(metrics[primary], chance[primary]),
            "data": data.info}
