"""Padding-free passes (mixkd.core.packing) compute what padded batches compute.

Per packed family, on tiny random models (dropout off: the padded and packed paths draw their dropout masks over
other shapes, equal in distribution only): logits of packed vs padded forwards of single sentences, sentence pairs
with segment ids and mixed rows (union masks, inputs_embeds), max |diff| <= 1e-4 in fp32, and every forward
counted through the packed attention (a test that passed with packing silently off would prove nothing). On the
real MiniLM: teacher and cut student on real SST-2 and MRPC rows. Through the trainer: one optimizer step of every
variant gives the same parameters within 1e-5, and a 20-step run the same loss curve. Families that are not packed
fall back, with the reason; ``--packing on`` refuses them.
"""
from __future__ import annotations

import copy

import pytest
import torch

from conftest import tiny_cfg
from test_families import _config

PACKED = ["bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "modernbert"]
NOT_PACKED = ["deberta-v2", "deberta-v3", "deberta", "mpnet", "longformer"]
SST2 = ["a gripping , funny and moving film", "dull", "the plot is thin but the acting carries it along nicely",
        "not bad", "an utterly forgettable , lifeless exercise in style over substance and noise"]
PAIRS = ["it works", "boring and long", "fine", "the cast is great , the script is not", "no"]


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(minilm_dir))


def _no_dropout(config):
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
                 "classifier_dropout", "seq_classif_dropout", "embedding_dropout", "mlp_dropout",
                 "classifier_dropout_prob"):
        if isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)
    return config


def _model(family, tok, dropout=False):
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(0)
    cfg = _config(family, tok)
    return AutoModelForSequenceClassification.from_config(cfg if dropout else _no_dropout(cfg))


class AttentionCalls:
    """Counts calls of the packed attention (it is looked up by name at every forward)."""

    def __init__(self, monkeypatch):
        from transformers import AttentionInterface
        import mixkd.core.packing as P
        P._register()
        self.n, real = 0, P.packed_attention

        def counted(*a, **k):
            self.n += 1
            return real(*a, **k)
        monkeypatch.setitem(AttentionInterface._global_mapping, P.ATTN_NAME, counted)


def _layers(model) -> int:
    return int(model.config.num_hidden_layers)


def _compare(model, inputs, calls, atol=1e-4, hidden=False):
    """Packed and padded forwards of ``inputs`` agree (and the packed one went through the packed attention)."""
    from mixkd.core.packing import forward, row_lengths
    before = calls.n
    with torch.no_grad():
        padded = forward(model, inputs, False, hidden_states=hidden)
        packed = forward(model, inputs, True, row_lengths(inputs["attention_mask"]), hidden_states=hidden)
    assert calls.n - before == _layers(model), "the packed forward did not run the packed attention in every layer"
    assert packed.logits.shape == padded.logits.shape
    diff = (packed.logits - padded.logits).abs().max().item()
    assert diff <= atol, diff
    if hidden:
        assert len(packed.hidden_states) == len(padded.hidden_states)
        for p, q in zip(packed.hidden_states, padded.hidden_states):
            assert (p[:, 0] - q[:, 0]).abs().max().item() <= atol
    return diff


@pytest.mark.parametrize("family", PACKED)
def test_packed_forward_equals_padded_per_family(family, tok, monkeypatch):
    from mixkd.core.mixup import MixPlan, mix_embeddings
    from mixkd.core.packing import unpacked_reason
    from mixkd.core.trainer import model_inputs
    model = _model(family, tok).eval()
    assert unpacked_reason(model) is None
    calls = AttentionCalls(monkeypatch)
    single = dict(tok(SST2, padding=True, return_tensors="pt"))
    assert single["attention_mask"].sum() < single["attention_mask"].numel()   # there is padding to remove
    _compare(model, model_inputs(model, single), calls, hidden=True)
    pairs = dict(tok(SST2, PAIRS, padding=True, return_tensors="pt"))
    inputs = model_inputs(model, pairs)
    _compare(model, inputs, calls)
    # mixed rows: lambdas and partners as a step draws them; rows as long as the longer of each pair
    plan = MixPlan(torch.arange(5), torch.tensor([3, 4, 0, 1, 2]), torch.tensor([0.9, 0.2, 0.5, 0.7, 0.05]))
    with torch.no_grad():
        word = model.get_input_embeddings()(pairs["input_ids"])
        mixed = mix_embeddings(model, word, pairs["attention_mask"], inputs.get("token_type_ids"), plan)
    _compare(model, mixed, calls)


def test_packing_changes_the_answer_when_rows_may_attend_across(tok, monkeypatch):
    """The comparison above can fail: with attention across rows (the packed sequence treated as one text) the
    logits differ by far more than the tolerance."""
    import mixkd.core.packing as P
    model = _model("bert", tok).eval()
    calls = AttentionCalls(monkeypatch)
    real = P.packed_attention

    def across(module, q, k, v, mask, scaling=None, dropout=0.0, **kw):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scaling)
        return out.transpose(1, 2), None
    from transformers import AttentionInterface
    monkeypatch.setitem(AttentionInterface._global_mapping, P.ATTN_NAME, across)
    with pytest.raises(AssertionError):
        _compare(model, dict(tok(SST2, padding=True, return_tensors="pt")), calls)
    assert real is P.packed_attention


def test_real_minilm_teacher_and_student_on_real_rows(minilm_dir, glue_dir, monkeypatch):
    """The packaged MiniLM (6 layers, 384 wide) and a 2-layer student cut from it, on real SST-2 sentences and MRPC
    pairs, single, paired and mixed: packed logits within 1e-4 of padded ones."""
    import csv
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from mixkd.core.mixup import mix_embeddings, sample_plan
    from mixkd.core.models import build_student
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(str(minilm_dir), num_labels=2).eval()
    student = build_student(teacher, 2).eval()
    sst = [r.split("\t")[0] for r in (glue_dir / "SST-2" / "train.tsv").read_text().splitlines()[1:33]]
    with open(glue_dir / "MRPC" / "train.tsv", encoding="utf-8") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:17]
    calls = AttentionCalls(monkeypatch)
    for model in (teacher, student):
        single = dict(tok(sst, padding=True, truncation=True, max_length=128, return_tensors="pt"))
        _compare(model, single, calls, hidden=True)
        pairs = dict(tok([r[3] for r in rows], [r[4] for r in rows], padding=True, truncation=True, max_length=128,
                         return_tensors="pt"))
        _compare(model, pairs, calls)
        torch.manual_seed(1)
        plan = sample_plan(16, 0.4)
        with torch.no_grad():
            word = model.get_input_embeddings()(pairs["input_ids"])
            mixed = mix_embeddings(model, word, pairs["attention_mask"], pairs["token_type_ids"], plan)
        _compare(model, mixed, calls)


# --- through the trainer --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parts(tok, small_glue_dir):
    from mixkd.core.data import load_glue
    from mixkd.core.tasks import get_task
    task = get_task("mrpc")   # sentence pairs: segment ids packed with their tokens
    data = load_glue(tiny_cfg(task="mrpc", data_dir=str(small_glue_dir), data_fraction=1.0, output_dir="x",
                              max_eval_samples=16, max_seq_length=64), task, tok)
    return task, data


def _trainer(parts, tok, tmp_path, packing, variant, family="bert", steps=1):
    from mixkd.core.config import validate
    from mixkd.core.models import build_student
    from mixkd.core.trainer import Trainer
    task, data = parts
    teacher = _model(family, tok)
    teacher.config.num_labels = 2
    student = build_student(teacher, 2).train()
    cfg = validate(tiny_cfg(task="mrpc", teacher="unused", variant=variant, batch_size=8, max_steps=steps,
                            data_fraction=1.0, output_dir=str(tmp_path), packing=packing, lr=1e-3), "distill")
    return Trainer(cfg, task, student, tok, data, tmp_path / packing, teacher=teacher)


def _params(trainer):
    return {n: p.detach().clone() for n, p in trainer.student.named_parameters()}


@pytest.mark.parametrize("variant", ["ft", "kd", "pkd", "tmkd", "sm+tmkd"])
def test_one_optimizer_step_packed_equals_padded(parts, tok, tmp_path, variant, monkeypatch):
    torch.manual_seed(0)
    padded = _trainer(parts, tok, tmp_path, "off", variant)
    packed = _trainer(parts, tok, tmp_path, "on", variant)
    assert not padded.packed and packed.packed
    batch = padded.collator(parts[1].train.__getitems__(list(range(8))))
    calls = AttentionCalls(monkeypatch)
    state = torch.get_rng_state()
    a = padded.train_step([copy.deepcopy(batch)])
    torch.set_rng_state(state)
    b = packed.train_step([copy.deepcopy(batch)])
    assert calls.n > 0
    for k in a:
        assert abs(float(a[k]) - float(b[k])) <= 1e-5, (k, float(a[k]), float(b[k]))
    pa, pb = _params(padded), _params(packed)
    worst = max((pa[n] - pb[n]).abs().max().item() for n in pa)
    assert worst <= 1e-5, worst
    moved = max((pa[n] - p0).abs().max().item() for n, p0 in _params(_trainer(parts, tok, tmp_path, "off",
                                                                                variant)).items())
    assert moved > 1e-4   # the step changed the weights: equality is not two untouched models


def test_twenty_steps_packed_and_padded_give_the_same_loss_curve(parts, tok, tmp_path):
    torch.manual_seed(0)
    curves = {}
    for packing in ("off", "on"):
        tr = _trainer(parts, tok, tmp_path, packing, "sm+tmkd", steps=20)
        torch.manual_seed(3)
        order = torch.randperm(len(parts[1].train)).tolist()
        curve = []
        for step in range(20):
            idx = [order[(step * 8 + i) % len(order)] for i in range(8)]
            curve.append(float(tr.train_step([tr.collator(parts[1].train.__getitems__(idx))])["total"]))
        curves[packing] = curve
    assert curves["off"][0] != curves["off"][-1]
    for x, y in zip(curves["off"], curves["on"]):
        assert abs(x - y) <= 1e-4 * max(1.0, abs(x)), (curves["off"], curves["on"])


@pytest.mark.parametrize("family", NOT_PACKED)
def test_families_without_a_packed_path_fall_back_with_the_reason(family, tok):
    from mixkd.core.errors import UsageError
    from mixkd.core.packing import resolve_packing, unpacked_reason
    model = _model(family, tok)
    why = unpacked_reason(model)
    assert why and "\n" not in why
    packed, note = resolve_packing("auto", [model])
    assert not packed and family.replace("-v3", "-v2") in note and why in note
    with pytest.raises(UsageError) as e:
        resolve_packing("on", [model])
    assert "--packing auto" in str(e.value)
    # one unpacked model (e.g. the teacher) keeps the whole run padded
    assert not resolve_packing("auto", [_model("bert", tok), model])[0]


def test_left_padded_rows_are_refused(tok):
    from mixkd.core.packing import row_lengths
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(ValueError, match="right-padded"):
        row_lengths(mask)


def test_a_distill_run_says_which_path_it_took(tiny_teacher_run, small_glue_dir, tmp_path, capsys):
    import json
    from mixkd.jobs.run import distill
    for packing, packed in (("auto", True), ("off", False)):
        out = tmp_path / packing
        m = distill(tiny_cfg(teacher=str(tiny_teacher_run), data_dir=str(small_glue_dir), variant="sm+tmkd",
                             student_layers=1, max_steps=2, output_dir=str(out), packing=packing))
        assert m["packed"] is packed
        err = capsys.readouterr().err
        assert ("packed batches, padding-free" in err) is packed and m["packing_resolved"] in err
        assert json.loads((out / "metrics.json").read_text())["packed"] is packed


def test_precision_auto_follows_the_cpus_native_bf16(monkeypatch):
    from mixkd.core.device import autocast_for, resolve_precision
    cpu = torch.device("cpu")
    monkeypatch.setenv("MIXKD_CPU_BF16", "1")
    bf16, why = resolve_precision(cpu, "auto")
    assert bf16 and "natively" in why and isinstance(autocast_for(cpu, "auto"), torch.autocast)
    monkeypatch.setenv("MIXKD_CPU_BF16", "0")
    bf16, why = resolve_precision(cpu, "auto")
    assert not bf16 and why.startswith("fp32") and not isinstance(autocast_for(cpu, "auto"), torch.autocast)
    assert resolve_precision(cpu, "bf16")[0] and not resolve_precision(cpu, "fp32")[0]


def test_native_bf16_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    import mixkd.core.device as D
    monkeypatch.delenv("MIXKD_CPU_BF16", raising=False)
    for flags, expected in (("fpu avx2 avx512f", ()), ("fpu avx512f avx512_bf16", ("avx512_bf16",)),
                            ("amx_bf16 amx_tile avx512_bf16", ("amx_bf16", "avx512_bf16"))):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        real = D.Path
        monkeypatch.setattr(D, "Path", lambda p, _info=info, _real=real: _info if p == "/proc/cpuinfo" else _real(p))
        D._detected_bf16_flags.cache_clear()
        assert D.cpu_bf16_flags() == expected
        monkeypatch.setattr(D, "Path", real)
    D._detected_bf16_flags.cache_clear()
