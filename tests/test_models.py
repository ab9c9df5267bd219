"""Teachers and students: layer selection, student construction, model/tokenizer loading errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import make_tiny_bert
from mixkd.core.errors import UsageError
from mixkd.core.models import (build_student, check_same_vocab, count_parameters, encoder_layers, load_classifier,
                          load_tokenizer, resolve_model, select_layers)
from mixkd.core.tasks import get_task

L = 6   # teacher depth of the tiny BERT used here


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, minilm_dir):
    return make_tiny_bert(tmp_path_factory.mktemp("teacher6"), minilm_dir, layers=L, hidden=32, num_labels=2,
                          seed=3)


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    from transformers import BertForSequenceClassification
    m = BertForSequenceClassification.from_pretrained(teacher_dir)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():   # larger weights: logits clearly depend on the layers kept
        for p in m.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


@pytest.fixture(scope="module")
def batch():
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102, 0, 0],
                        [101, 7592, 2088, 102, 2129, 2024, 2017, 102]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0], [1] * 8])
    tt = torch.tensor([[0] * 8, [0, 0, 0, 0, 1, 1, 1, 1]])
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


def layer_state(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in layer.state_dict().items()}


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# --- select_layers ----------------------------------------------------------------------------

def test_select_first_and_last():
    assert select_layers(12, 6, "first") == [0, 1, 2, 3, 4, 5]
    assert select_layers(12, 3, "first") == [0, 1, 2]
    assert select_layers(12, 6, "last") == [6, 7, 8, 9, 10, 11]
    assert select_layers(12, 3, "last") == [9, 10, 11]
    assert select_layers(12, 1, "last") == [11]
    assert select_layers(12, 1, "first") == [0]


def test_select_default_strategy_is_first():
    assert select_layers(12, 4) == [0, 1, 2, 3]


def test_select_skip_pkd():
    assert select_layers(12, 6, "skip") == [1, 3, 5, 7, 9, 11]
    assert select_layers(12, 3, "skip") == [3, 7, 11]
    assert select_layers(12, 4, "skip") == [2, 5, 8, 11]
    assert select_layers(12, 1, "skip") == [11]
    assert select_layers(6, 3, "skip") == [1, 3, 5]


@pytest.mark.parametrize("strategy", ["first", "skip", "last"])
@pytest.mark.parametrize("n", [1, 2, 3, 6, 12, 24])
def test_select_all_layers_returns_all(n, strategy):
    assert select_layers(n, n, strategy) == list(range(n))


@pytest.mark.parametrize("strategy", ["first", "skip", "last"])
def test_select_returns_k_increasing_valid_indices(strategy):
    for n in range(1, 25):
        for k in range(1, n + 1):
            got = select_layers(n, k, strategy)
            assert len(got) == k, (n, k, got)
            assert got == sorted(set(got)), (n, k, got)
            assert 0 <= got[0] and got[-1] <= n - 1
            if strategy in ("skip", "last"):
                assert got[-1] == n - 1, (n, k, got)


@pytest.mark.parametrize("k", [0, -1, 13, 100])
def test_select_invalid_k_raises(k):
    with pytest.raises(UsageError) as e:
        select_layers(12, k, "first")
    msg = one_line(e)
    assert str(k) in msg and "12" in msg


def test_select_unknown_strategy_raises():
    with pytest.raises(UsageError) as e:
        select_layers(12, 3, "middle")
    msg = one_line(e)
    assert "middle" in msg and "skip" in msg


# --- build_student ----------------------------------------------------------------------------

def test_full_depth_first_student_reproduces_teacher_exactly(teacher, batch):
    student = build_student(teacher, L, "first").eval()
    with torch.no_grad():
        t_out = teacher(**batch).logits
        s_out = student(**batch).logits
    assert torch.equal(s_out, t_out)


@pytest.mark.parametrize("strategy", ["skip", "last"])
def test_full_depth_any_strategy_reproduces_teacher(teacher, batch, strategy):
    student = build_student(teacher, L, strategy).eval()
    with torch.no_grad():
        assert torch.equal(student(**batch).logits, teacher(**batch).logits)


@pytest.mark.parametrize("k,strategy,keep", [(3, "first", [0, 1, 2]), (3, "skip", [1, 3, 5]),
                                             (2, "last", [4, 5]), (1, "first", [0])])
def test_k_layer_student_structure(teacher, batch, k, strategy, keep):
    student = build_student(teacher, k, strategy).eval()
    layers = encoder_layers(student)
    assert len(layers) == k
    assert student.config.num_hidden_layers == k
    assert list(student.config.mixkd_teacher_layers) == keep
    assert teacher.config.num_hidden_layers == L           # the teacher's config is untouched
    assert len(encoder_layers(teacher)) == L
    t_layers = encoder_layers(teacher)
    for new_idx, old_idx in enumerate(keep):
        s_state, t_state = layer_state(layers[new_idx]), layer_state(t_layers[old_idx])
        assert s_state.keys() == t_state.keys()
        for name in s_state:
            assert torch.equal(s_state[name], t_state[name]), (new_idx, old_idx, name)
    # per-layer indices renumbered 0..k-1 in the student, teacher's unchanged
    s_idx = [m.layer_idx for layer in layers for m in layer.modules() if hasattr(m, "layer_idx")]
    t_idx = [m.layer_idx for layer in t_layers for m in layer.modules() if hasattr(m, "layer_idx")]
    assert s_idx == list(range(k))
    assert t_idx == list(range(L))
    # embeddings, pooler and head are copied unchanged
    for name in ("bert.embeddings.word_embeddings.weight", "bert.pooler.dense.weight", "classifier.weight",
                 "classifier.bias"):
        assert torch.equal(student.state_dict()[name], teacher.state_dict()[name])
    # fewer parameters: exactly (L - k) encoder layers fewer
    per_layer = count_parameters(t_layers[0])
    assert count_parameters(student) == count_parameters(teacher) - (L - k) * per_layer
    assert count_parameters(student) < count_parameters(teacher)
    # and it runs, giving logits of the right shape that differ from the teacher's
    with torch.no_grad():
        s_out, t_out = student(**batch).logits, teacher(**batch).logits
    assert s_out.shape == t_out.shape == (2, 2)
    assert not torch.allclose(s_out, t_out, atol=1e-4)


def test_student_is_a_deep_copy(teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_student(teacher, 2, "first")
    assert encoder_layers(student)[0] is not encoder_layers(teacher)[0]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    student.config.num_labels = 5
    after = teacher.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    assert teacher.config.num_labels == 2
    assert not hasattr(teacher.config, "mixkd_teacher_layers")


def test_student_save_and_reload(teacher, batch, tmp_path):
    from transformers import AutoModelForSequenceClassification
    student = build_student(teacher, 2, "skip").eval()
    student.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert again.config.num_hidden_layers == 2
    with torch.no_grad():
        assert torch.allclose(again(**batch).logits, student(**batch).logits, atol=1e-6)


def test_build_student_invalid_k(teacher):
    with pytest.raises(UsageError) as e:
        build_student(teacher, L + 1)
    one_line(e)
    with pytest.raises(UsageError):
        build_student(teacher, 0)


def test_encoder_layers_unknown_model_raises():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(2, 2)

        @property
        def base_model(self):
            return self

    with pytest.raises(UsageError) as e:
        encoder_layers(Odd())
    assert "Odd" in one_line(e)


def test_count_parameters_simple():
    assert count_parameters(nn.Linear(3, 4)) == 3 * 4 + 4
    assert count_parameters(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1, bias=False))) == 6 + 2


# --- resolve_model / loading ------------------------------------------------------------------

def test_resolve_minilm_alias(minilm_dir):
    assert resolve_model("minilm-l6") == str(minilm_dir)
    assert (minilm_dir / "config.json").is_file()


def test_resolve_local_dir_and_run_dir(teacher_dir, tmp_path):
    assert resolve_model(str(teacher_dir)) == str(teacher_dir)
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "model" / "config.json").write_text("{}")
    assert resolve_model(str(run)) == str(run / "model")


def test_resolve_hub_id_passes_through():
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"
    assert resolve_model("google/bert_uncased_L-2_H-128_A-2") == "google/bert_uncased_L-2_H-128_A-2"


@pytest.mark.parametrize("name", ["/nonexistent/model_dir_xyz", "./no_such_model_dir", "a/b/c_missing"])
def test_resolve_missing_path_raises_naming_it(name):
    with pytest.raises(UsageError) as e:
        resolve_model(name)
    assert name in one_line(e)


def test_resolve_dir_without_config_raises(tmp_path):
    with pytest.raises(UsageError) as e:
        resolve_model(str(tmp_path))
    msg = one_line(e)
    assert str(tmp_path) in msg and "config.json" in msg


def test_load_classifier_matching_head(teacher_dir):
    m = load_classifier(str(teacher_dir), get_task("sst2"), new_head=False)
    assert m.config.num_labels == 2


@pytest.mark.parametrize("task", ["mnli", "stsb"])
def test_load_classifier_head_mismatch_raises(teacher_dir, task):
    with pytest.raises(UsageError) as e:
        load_classifier(str(teacher_dir), get_task(task), new_head=False)
    msg = one_line(e)
    assert str(teacher_dir) in msg and "2" in msg and get_task(task).name in msg


@pytest.mark.parametrize("task,n", [("mnli", 3), ("stsb", 1), ("rte", 2)])
def test_load_classifier_new_head_sizes_for_task(teacher_dir, task, n):
    m = load_classifier(str(teacher_dir), get_task(task), new_head=True)
    assert m.config.num_labels == n
    assert m.classifier.out_features == n
    if task == "stsb":
        assert m.config.problem_type == "regression"


def test_load_classifier_missing_dir_raises(tmp_path):
    with pytest.raises(UsageError) as e:
        load_classifier(str(tmp_path / "gone"), get_task("sst2"), new_head=False)
    assert str(tmp_path / "gone") in one_line(e)


# --- tokenizers -------------------------------------------------------------------------------

@pytest.fixture
def small_vocab_tokenizer(tmp_path):
    from transformers import BertTokenizerFast
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "a", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # transformers 5 ignores a vocab_file= constructor argument; from_pretrained reads vocab.txt
    tok = BertTokenizerFast.from_pretrained(str(tmp_path))
    assert tok.tokenize("hello worlds") == ["hello", "world", "##s"]
    return tok


def test_check_same_vocab_different_vocab_raises(tiny_bert_dir, small_vocab_tokenizer):
    teacher_tok = load_tokenizer(str(tiny_bert_dir))
    assert len(small_vocab_tokenizer) == 10
    with pytest.raises(UsageError) as e:
        check_same_vocab(teacher_tok, small_vocab_tokenizer, "my-student")
    msg = one_line(e)
    assert "my-student" in msg and "10" in msg


def test_check_same_vocab_same_tokenizer_passes(tiny_bert_dir, minilm_dir):
    a = load_tokenizer(str(tiny_bert_dir))
    b = load_tokenizer("minilm-l6")
    check_same_vocab(a, b, "minilm-l6")      # tiny BERTs carry the MiniLM tokenizer: no error


def test_load_tokenizer_missing_raises(tmp_path):
    with pytest.raises(UsageError):
        load_tokenizer(str(tmp_path / "nope"))


def test_load_classifier_broken_config_is_usage_error(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UsageError) as e:
        load_classifier(str(tmp_path), get_task("sst2"), new_head=False)
    assert str(tmp_path) in one_line(e)


def test_load_classifier_unknown_hub_id_offline_is_usage_error():
    import time
    t0 = time.monotonic()
    with pytest.raises(UsageError) as e:
        load_classifier("mixkd-tests/no-such-model-xyz", get_task("sst2"), new_head=True)
    msg = one_line(e)
    assert "mixkd-tests/no-such-model-xyz" in msg and "minilm-l6" in msg
    assert time.monotonic() - t0 < 20


def test_modernbert_student_cuts_its_layer_types_and_saves(minilm_dir, small_glue_dir, tmp_path):
    """ModernBERT keeps a per-layer list (layer_types: full / sliding attention). A k-layer student must carry
    the kept layers' entries, or saving its first checkpoint fails (num_hidden_layers != len(layer_types))."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, ModernBertConfig, ModernBertModel
    from conftest import tiny_cfg
    from mixkd.core.models import build_student
    from mixkd.deploy.latency import student_config
    from mixkd.jobs.run import distill, finetune
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    cfg = ModernBertConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=2, max_position_embeddings=256, global_attn_every_n_layers=3,
                           local_attention=16, pad_token_id=tok.pad_token_id, cls_token_id=tok.cls_token_id,
                           sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    types = list(cfg.layer_types)
    assert len(set(types)) == 2                                  # both kinds, so the cut is visible
    base = tmp_path / "modernbert"
    ModernBertModel(cfg).save_pretrained(base)
    tok.save_pretrained(base)
    teacher = tmp_path / "teacher"
    finetune(tiny_cfg(model=str(base), data_dir=str(small_glue_dir), max_steps=2, output_dir=str(teacher)))
    tm = AutoModelForSequenceClassification.from_pretrained(teacher / "model")
    st = build_student(tm, 2, "last")
    assert st.config.num_hidden_layers == 2 and st.config.layer_types == types[2:]
    assert student_config(teacher / "model", 2).layer_types == types[:2]
    out = tmp_path / "student"
    distill(tiny_cfg(teacher=str(teacher), data_dir=str(small_glue_dir), variant="sm+tmkd", student_layers=2,
                     max_steps=2, output_dir=str(out)))
    again = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert again.config.num_hidden_layers == 2 and again.config.layer_types == types[:2]
