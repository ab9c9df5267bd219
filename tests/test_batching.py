"""Length-grouped batches (``--group-by-length``): the order of an epoch (reproducible, every row once,
similar lengths per batch, DDP shards), resume in the middle of an epoch, and evaluation in length order."""
from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import tiny_cfg
from mixkd.core import batching
from mixkd.jobs.run import distill


def sst2_like_lengths(n: int, seed: int = 0) -> list[int]:
    """Token counts shaped like SST-2's: median ~10, a long tail past 50."""
    rng = np.random.default_rng(seed)
    return np.clip(np.round(rng.lognormal(np.log(10), 0.7, n)), 3, 66).astype(int).tolist()


def padded_len(batches: list[list[int]], lengths) -> float:
    """Mean length a batch is padded to (its longest row)."""
    return float(np.mean([max(lengths[i] for i in b) for b in batches]))


def micro_batches(order: list[int], bs: int) -> list[list[int]]:
    return [m for step in batching.epoch_steps(order, bs, 1) for m in step]


# --- the order of an epoch --------------------------------------------------------------------

@pytest.mark.parametrize("grouped", [False, True])
def test_order_is_reproducible_for_a_seed_and_changes_with_seed_and_epoch(grouped):
    lengths = sst2_like_lengths(1000)
    kw = dict(n=1000, batch_size=32, lengths=lengths if grouped else None)
    a = batching.epoch_order(seed=3, epoch=0, **kw)
    assert a == batching.epoch_order(seed=3, epoch=0, **kw)
    assert a != batching.epoch_order(seed=4, epoch=0, **kw)
    assert a != batching.epoch_order(seed=3, epoch=1, **kw)


def test_random_order_is_the_seeded_permutation_of_before():
    """Without grouping the order is what the trainer always drew: runs without the flag are unchanged."""
    g = torch.Generator().manual_seed(7 * 100_003 + 2)
    assert batching.epoch_order(500, seed=7, epoch=2, batch_size=16) == torch.randperm(500, generator=g).tolist()


@pytest.mark.parametrize("n, bs", [(1000, 32), (1003, 32), (37, 8), (5, 32)])
def test_every_row_once_per_epoch(n, bs):
    lengths = sst2_like_lengths(n)
    for epoch in range(3):
        order = batching.epoch_order(n, seed=0, epoch=epoch, batch_size=bs, lengths=lengths)
        assert sorted(order) == list(range(n))
        sizes = [len(m) for m in micro_batches(order, bs)]
        assert all(s == bs for s in sizes[:-1]) and 0 < sizes[-1] <= bs   # only the last one may be partial


def test_batches_hold_rows_of_similar_length():
    n, bs = 4000, 32
    lengths = sst2_like_lengths(n)
    grouped = micro_batches(batching.epoch_order(n, 0, 0, bs, lengths=lengths), bs)
    shuffled = micro_batches(batching.epoch_order(n, 0, 0, bs), bs)
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in grouped]
    random_spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in shuffled]
    assert np.median(spread) <= 1 and np.mean(spread) < 0.2 * np.mean(random_spread)
    assert padded_len(grouped, lengths) < 0.6 * padded_len(shuffled, lengths)
    # and the batches are not handed out longest first (the order of the batches is shuffled)
    maxima = [max(lengths[i] for i in b) for b in grouped]
    assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)
    # partners are drawn within a batch, so they too are of similar length (see mixup.sample_plan)


def test_batches_differ_from_epoch_to_epoch():
    n, bs = 2000, 32
    lengths = sst2_like_lengths(n)
    sets = [{frozenset(b) for b in micro_batches(batching.epoch_order(n, 0, e, bs, lengths=lengths), bs)}
            for e in range(2)]
    assert len(sets[0] & sets[1]) < 0.1 * len(sets[0])


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("n, world", [(2000, 2), (2001, 2), (2003, 3), (2000, 4)])
def test_ddp_shards_are_disjoint_and_cover_the_rows(n, world, grouped):
    bs = 16
    lengths = sst2_like_lengths(n)
    shards = [batching.epoch_order(n, 0, 0, bs, world_size=world, rank=r, lengths=lengths if grouped else None)
              for r in range(world)]
    per_rank = math.ceil(n / world)
    assert [len(s) for s in shards] == [per_rank] * world   # as many micro-batches on every rank
    seen = Counter(i for s in shards for i in s)
    assert set(seen) == set(range(n))                        # covering
    pad = per_rank * world - n                               # rows repeated to even the shards out
    assert sum(c - 1 for c in seen.values()) == pad and max(seen.values()) <= 2
    if pad == 0:
        assert all(not set(a) & set(b) for k, a in enumerate(shards) for b in shards[k + 1:])   # disjoint
    if grouped:   # the ranks' i-th micro-batches are shares of one global batch: the same length range
        def spread(shards):
            steps = zip(*[micro_batches(s, bs) for s in shards])
            return np.mean([max(lengths[i] for b in st for i in b) - min(lengths[i] for b in st for i in b)
                            for st in steps])
        shuffled = [batching.epoch_order(n, 0, 0, bs, world_size=world, rank=r) for r in range(world)]
        assert spread(shards) < 0.3 * spread(shuffled)


def test_trainer_draws_grouped_batches_and_shards_them(trainer_setup):
    """The trainer's own epoch plan: grouped by the real token counts, every row once, DDP-sharded."""
    trainer, data = trainer_setup
    lengths = batching.row_lengths(data.train)
    assert trainer.lengths == lengths
    steps = trainer._epoch_steps(0)
    micro = [m for s in steps for m in s]
    assert sorted(i for m in micro for i in m) == list(range(len(data.train)))
    trainer.lengths = None
    random_micro = [m for s in trainer._epoch_steps(0) for m in s]
    trainer.lengths = lengths
    assert padded_len(micro, lengths) < 0.8 * padded_len(random_micro, lengths)
    trainer.world_size = 2
    try:
        shards = []
        for rank in range(2):
            trainer.rank = rank
            shards.append([i for s in trainer._epoch_steps(0) for m in s for i in m])
    finally:
        trainer.world_size, trainer.rank = 1, 0
    assert sorted(shards[0] + shards[1]) == list(range(len(data.train)))   # 256 rows: no padding


@pytest.fixture(scope="module")
def trainer_setup(tiny_teacher_run, small_glue_dir, tmp_path_factory):
    from mixkd.core.config import validate
    from mixkd.core.data import load_glue
    from mixkd.core.models import build_student, load_classifier, load_tokenizer
    from mixkd.core.tasks import get_task
    from mixkd.core.trainer import Trainer

    task = get_task("sst2")
    tok = load_tokenizer(str(tiny_teacher_run))
    out = tmp_path_factory.mktemp("grouped")
    cfg = validate(tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), data_fraction=1.0,
                            variant="sm+tmkd", group_by_length=True, output_dir=str(out)), "distill")
    data = load_glue(cfg, task, tok)
    teacher = load_classifier(str(tiny_teacher_run), task, new_head=False)
    return Trainer(cfg, task, build_student(teacher, 2), tok, data, out, teacher=teacher), data


# --- resume -----------------------------------------------------------------------------------

def test_grouped_run_resumes_exactly_mid_epoch(tiny_teacher_run, small_glue_dir, tmp_path):
    from test_trainer import InterruptAtFirstEval, assert_same_weights, comparable, read_log

    # 16 steps per epoch: interrupted and resumed mid-epoch (step 8), then across the epoch boundary
    kw = dict(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant="sm+tmkd", student_layers=2,
              max_steps=24, eval_steps=8, final_model="last", epochs=1.0, group_by_length=True)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ma = distill(tiny_cfg(output_dir=str(a), **kw))
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_cfg(output_dir=str(b), **kw), callbacks=[InterruptAtFirstEval()])
    assert [r["step"] for r in read_log(b)] == [8]
    mb = distill(tiny_cfg(output_dir=str(b), resume=True, **kw))
    assert_same_weights(a / "model" / "model.safetensors", b / "model" / "model.safetensors")
    assert comparable(read_log(a)) == comparable(read_log(b))
    assert ma["metrics"] == mb["metrics"] and mb["steps"] == 24
    # the flag is recorded and changes what is trained (another order than the default's)
    assert json.loads((a / "metrics.json").read_text())["config_hash"] == ma["config_hash"]
    mc = distill(tiny_cfg(output_dir=str(c), **{**kw, "group_by_length": False}))
    assert mc["config_hash"] != ma["config_hash"]
    assert comparable(read_log(c)) != comparable(read_log(a))


# --- evaluation in length order ---------------------------------------------------------------

def test_restore_order_puts_rows_back():
    order = [3, 0, 2, 1]
    values = torch.tensor([[30.0], [0.0], [20.0], [10.0]])
    assert batching.restore_order(order, values).flatten().tolist() == [0.0, 10.0, 20.0, 30.0]


def test_length_order_is_longest_first_and_stable():
    ds = {"input_ids": [[1] * 3, [1] * 5, [1] * 3, [1] * 9]}
    assert batching.length_order(ds) == [3, 1, 0, 2]


def test_eval_in_length_order_gives_the_same_predictions_in_dataset_order(trainer_setup):
    from mixkd.core.trainer import evaluate_model, predict

    trainer, data = trainer_setup
    dev = data.dev[data.dev_splits[0].name]
    dev_lengths = batching.row_lengths(dev)
    assert len(set(dev_lengths)) > 5   # the order really changes
    args = (trainer.student, dev, trainer.collator, 16, torch.device("cpu"), "fp32")
    logits, labels = predict(*args)
    s_logits, s_labels = predict(*args, by_length=True)
    assert np.array_equal(labels, s_labels) and np.array_equal(labels, np.asarray(dev["labels"]))
    np.testing.assert_allclose(s_logits, logits, rtol=1e-4, atol=1e-5)
    assert np.array_equal(s_logits.argmax(-1), logits.argmax(-1))
    m = evaluate_model(trainer.student, data, trainer.collator, 16, torch.device("cpu"), "fp32")
    assert evaluate_model(trainer.student, data, trainer.collator, 16, torch.device("cpu"), "fp32", by_length=True) == m
