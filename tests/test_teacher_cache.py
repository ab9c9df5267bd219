"""kd/pkd read the teacher's outputs on the training rows from a cache computed once (mixkd.core.teacher_cache):
equal to the teacher run live, reused by later runs, recomputed when damaged, keyed by what they depend on."""
from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_cfg
from mixkd.core.config import validate


@pytest.fixture(scope="module")
def parts(tiny_teacher_run, small_glue_dir):
    from mixkd.core.data import load_glue
    from mixkd.core.models import load_tokenizer
    from mixkd.core.tasks import get_task
    task = get_task("sst2")
    tok = load_tokenizer(str(tiny_teacher_run))
    data = load_glue(tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), data_fraction=1.0,
                              output_dir="unused"), task, tok)
    return task, tok, data


def make_trainer(parts, teacher_dir, out, **kw):
    from mixkd.core.models import build_student, load_classifier
    from mixkd.core.trainer import Trainer
    task, tok, data = parts
    cfg = validate(tiny_cfg(teacher=str(teacher_dir), data_fraction=1.0, output_dir=str(out), **kw), "distill")
    teacher = load_classifier(str(teacher_dir), task, new_head=False)
    torch.manual_seed(0)
    student = build_student(teacher, 2).requires_grad_(True)
    return Trainer(cfg, task, student, tok, data, out, teacher=teacher)


def fresh_teacher(copy_run, run):
    """A copy of the session's teacher without the entries other tests' kd/pkd runs left in it."""
    import shutil
    teacher_dir = copy_run(run)
    shutil.rmtree(teacher_dir / "teacher_outputs", ignore_errors=True)
    return teacher_dir


@pytest.mark.parametrize("variant, packing", [("kd", "auto"), ("kd", "off"), ("pkd", "auto"), ("pkd", "off")])
def test_cached_outputs_equal_the_teacher_run_live(parts, tiny_teacher_run, copy_run, tmp_path, variant, packing):
    teacher_dir = fresh_teacher(copy_run, tiny_teacher_run)
    tr = make_trainer(parts, teacher_dir, tmp_path / "student", variant=variant, packing=packing)
    cache = tr.teacher_cache
    assert cache is not None and not cache.reused and cache.path.parent == teacher_dir / "teacher_outputs"
    assert (cache.hidden is not None) == (variant == "pkd")
    rows = [37, 3, 250, 11, 190, 0, 64, 5]   # a shuffled batch: outputs must follow the rows, not the position
    batch = tr.collator(parts[2].train.__getitems__(rows))
    from mixkd.core.evaluation import model_inputs
    from mixkd.core.packing import row_lengths
    lengths = row_lengths(batch["attention_mask"]) if tr.packed else None
    with torch.no_grad():
        live = tr._forward(tr.teacher, model_inputs(tr.teacher, batch), lengths, hidden=variant == "pkd")
    logits, hidden = cache.rows(rows, tr.device)
    torch.testing.assert_close(logits, live.logits.float(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits, cache.rows(rows[::-1], tr.device)[0])   # the rows really differ
    if variant == "pkd":
        assert len(hidden) == len(live.hidden_states)
        for h, ref in zip(hidden, live.hidden_states):
            torch.testing.assert_close(h[:, 0], ref[:, 0].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["kd", "pkd"])
def test_a_step_with_the_cache_equals_a_live_step(parts, tiny_teacher_run, copy_run, tmp_path, variant):
    teacher_dir = fresh_teacher(copy_run, tiny_teacher_run)
    results = {}
    for mode in ("cache", "live"):
        tr = make_trainer(parts, teacher_dir, tmp_path / mode, variant=variant, teacher_outputs=mode, batch_size=8)
        assert (tr.teacher_cache is not None) == (mode == "cache")
        calls = []
        handle = tr.teacher.register_forward_hook(lambda *a: calls.append(1))
        steps = tr._epoch_steps(0)[:3]
        for step in steps:
            micro = [tr.collator(parts[2].train.__getitems__(m)) for m in step]
            terms = tr.train_step(micro, step)
        handle.remove()
        assert len(calls) == (0 if mode == "cache" else 3), f"{mode}: teacher forwards {len(calls)}"
        results[mode] = (terms, [p.detach().clone() for p in tr.student.parameters()])
    for k in results["live"][0]:
        torch.testing.assert_close(results["cache"][0][k], results["live"][0][k], atol=1e-5, rtol=1e-5)
    for a, b in zip(results["cache"][1], results["live"][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_later_run_reuses_the_entry_and_a_damaged_one_is_recomputed(parts, tiny_teacher_run, copy_run, tmp_path,
                                                                      capsys, monkeypatch):
    from mixkd.core import teacher_cache
    teacher_dir = fresh_teacher(copy_run, tiny_teacher_run)
    first = make_trainer(parts, teacher_dir, tmp_path / "a", variant="kd").teacher_cache
    computed = []
    real = teacher_cache.compute
    monkeypatch.setattr(teacher_cache, "compute", lambda *a, **k: computed.append(1) or real(*a, **k))
    second = make_trainer(parts, teacher_dir, tmp_path / "b", variant="kd", seed=5).teacher_cache
    assert second.reused and computed == [] and second.path == first.path
    torch.testing.assert_close(second.logits, first.logits, atol=0, rtol=0)

    for damage in ("flip", "truncate", "empty", "foreign"):
        raw = first.path.read_bytes()
        if damage == "flip":       # one byte of the tensor data changed: the checksum catches it
            bad = bytearray(raw)
            bad[-5] ^= 0xFF
            first.path.write_bytes(bytes(bad))
        elif damage == "truncate":
            first.path.write_bytes(raw[: len(raw) // 2])
        elif damage == "empty":
            first.path.write_bytes(b"")
        else:                      # a well-formed file of other rows
            from safetensors.torch import save_file
            save_file({"logits": torch.zeros(3, 2)}, str(first.path), metadata={"version": "1", "sha256": "x"})
        capsys.readouterr()
        again = make_trainer(parts, teacher_dir, tmp_path / damage, variant="kd").teacher_cache
        assert not again.reused, damage
        assert "damaged" in capsys.readouterr().err, damage
        torch.testing.assert_close(again.logits, first.logits, atol=1e-6, rtol=0)
        assert teacher_cache._read(first.path, len(parts[2].train)).logits.shape == first.logits.shape   # replaced
    assert len(computed) == 4
    assert not list(first.path.parent.glob(".*.tmp"))   # no temporary file left behind


def test_the_key_follows_what_the_outputs_depend_on(parts, tiny_teacher_run):
    from mixkd.core.models import load_classifier
    from mixkd.core.teacher_cache import entry_key
    task, _, data = parts
    t = load_classifier(str(tiny_teacher_run), task, new_head=False)
    base = entry_key(t, data.train, "fp32", True, False)
    assert entry_key(t, data.train, "fp32", True, False) == base
    assert entry_key(t, data.train, "bf16", True, False) != base
    assert entry_key(t, data.train, "fp32", False, False) != base
    assert entry_key(t, data.train, "fp32", True, True) != base
    assert entry_key(t, data.train.select(range(len(data.train) - 1)), "fp32", True, False) != base
    assert entry_key(t, data.train.select([1, 0, *range(2, len(data.train))]), "fp32", True, False) != base
    with torch.no_grad():
        next(t.parameters()).view(-1)[0] += 1e-3
    assert entry_key(t, data.train, "fp32", True, False) != base


def test_distill_records_the_cache_and_a_run_without_teacher_outputs_is_unchanged(tiny_teacher_run, copy_run,
                                                                                   small_glue_dir, tmp_path):
    """End to end through mixkd distill: kd with the cache reaches the same dev score as kd live; the config hash
    does not depend on the runtime field."""
    from mixkd.jobs.run import distill
    teacher_dir = fresh_teacher(copy_run, tiny_teacher_run)
    scores, hashes = {}, {}
    for mode in ("cache", "live"):
        cfg = tiny_cfg(teacher=str(teacher_dir), data_dir=str(small_glue_dir), variant="kd", student_layers=2,
                       teacher_outputs=mode, max_steps=12, output_dir=str(tmp_path / mode))
        m = distill(cfg)
        scores[mode] = m["primary_value"]
        hashes[mode] = json.loads((tmp_path / mode / "metrics.json").read_text())["config_hash"]
    assert hashes["cache"] == hashes["live"]   # a runtime field: the same run either way
    assert scores["cache"] == pytest.approx(scores["live"], abs=0.01)
    assert tiny_cfg(teacher_outputs="live").config_hash() == tiny_cfg(teacher_outputs="cache").config_hash()
    assert list((teacher_dir / "teacher_outputs").glob("*.safetensors"))
