"""MixKD as a Ray Train function: ``train_loop_per_worker`` for ``ray.train.torch.TorchTrainer``.

Every worker runs the core trainer; Ray's ``prepare_model`` wraps the student in DDP (gloo on CPU,
NCCL on GPU) and the trainer shards each epoch's batches by rank. Once per eval (never per step:
each report blocks), every worker calls ``ray.train.report``; rank 0 attaches its
``checkpoints/last`` folder, and a restarted run resumes from ``ray.train.get_checkpoint()``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.config import MixKDConfig


def _metrics(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class FinalReportLast:
    """An eval callback that reports every eval at once except the last one, which it holds until
    :meth:`flush` (called after the run has written model/ and metrics.json). A scheduler that stops
    a trial when it reports its last eval (ASHA at max_t) would otherwise kill it before its results
    are written."""

    def __init__(self, report):
        self.report = report
        self.held = None

    def __call__(self, row: dict[str, Any], last_dir) -> None:
        if row.get("step", 0) >= row.get("total_steps", float("inf")):
            self.held = (row, last_dir)
        else:
            self.report(row, last_dir)

    def flush(self) -> None:
        if self.held is not None:
            self.report(*self.held)
            self.held = None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """``config``: {"cfg": MixKDConfig as a dict, "command": "distill" or "finetune"}."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from ..jobs.run import distill, finetune

    cfg = MixKDConfig.from_dict(config["cfg"])
    rank = ray.train.get_context().get_world_rank()
    run = distill if config.get("command", "distill") == "distill" else finetune

    extra = config.get("extra_metrics") or {}   # e.g. the sweep's latency objective

    def report(row: dict[str, Any], last_dir: Path | None) -> None:
        if rank == 0 and last_dir is not None:
            ray.train.report({**_metrics(row), **extra}, checkpoint=Checkpoint.from_directory(str(last_dir)))
        else:
            ray.train.report({**_metrics(row), **extra})

    reporter = FinalReportLast(report)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        run(cfg.replace(resume=False, overwrite=True), callbacks=[reporter],
            wrap_model=ray.train.torch.prepare_model)
    else:
        with checkpoint.as_directory() as ckpt_dir:
            run(cfg.replace(resume=False, overwrite=True), callbacks=[reporter],
                wrap_model=ray.train.torch.prepare_model, resume_from=Path(ckpt_dir))
    reporter.flush()


def worker_resources(workers: int, cpus: float, gpus: float) -> dict[str, float]:
    """Per-worker resources that, with the 0.01-CPU trial driver, fit in ``cpus`` CPUs (no deadlock)."""
    res = {"CPU": round(max(cpus - 0.01, 0.01) / workers, 4)}
    if gpus > 0:
        res["GPU"] = gpus / workers
    return res


def fit_distributed(cfg: MixKDConfig, spec=None, *, name: str, storage_path: str, command: str = "distill",
                    workers: int | None = None, cpus: float | None = None, gpus: float | None = None,
                    max_failures: int | None = None, extra_metrics: dict[str, float] | None = None):
    """Run ``cfg`` on a TorchTrainer with ``workers`` workers; inside a Tune trial, results reach Tune."""
    import ray.train
    from ray.train.torch import TorchTrainer

    workers = workers or (spec.workers_per_trial if spec else 2)
    cpus = cpus if cpus is not None else (spec.cpus_per_trial if spec else float(workers))
    gpus = gpus if gpus is not None else (spec.gpus_per_trial if spec else 0.0)
    max_failures = max_failures if max_failures is not None else (spec.max_failures if spec else 0)
    callbacks = []
    try:
        from ray.tune.integration.ray_train import TuneReportCallback
        callbacks.append(TuneReportCallback())
    except RuntimeError:   # not inside a Tune trial
        pass
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.to_dict(), "command": command, "extra_metrics": extra_metrics or {}},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0,
                                               resources_per_worker=worker_resources(workers, cpus, gpus)),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, callbacks=callbacks,
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures)),
    )
    return trainer.fit()
