"""Every common encoder family as teacher and student (issue 15, part 2).

For each family a tiny random backbone (32 wide, 2 heads, 4 layers, the MiniLM WordPiece vocabulary so the
same token ids work everywhere) is fine-tuned on small MRPC slices (sentence pairs: segment ids where the
family has segment embeddings), then distilled with sm+tmkd into k = 1 and 2 layers and with pkd into 2. The
student's model/ must reload with AutoModelForSequenceClassification (no missing or unexpected weights, k layers
in its config, per-layer config lists cut with the layers) and evaluate. Teachers are shared across k.
"""
from __future__ import annotations

import pytest

from conftest import tiny_cfg

H, HEADS, LAYERS = 32, 2, 4


def _config(family: str, tok):
    """A tiny random config of ``family`` over the MiniLM tokenizer's ids."""
    import transformers as tf
    ids = dict(vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id)
    bert_like = dict(hidden_size=H, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=2 * H,
                     max_position_embeddings=256, **ids)
    if family == "bert":
        return tf.BertConfig(**bert_like)
    if family in ("roberta", "xlm-roberta"):   # one segment embedding, as roberta-base / xlm-roberta-base
        cls = tf.RobertaConfig if family == "roberta" else tf.XLMRobertaConfig
        return cls(**{**bert_like, "max_position_embeddings": 258}, type_vocab_size=1,
                   bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id)
    if family == "distilbert":
        return tf.DistilBertConfig(dim=H, n_layers=LAYERS, n_heads=HEADS, hidden_dim=2 * H,
                                   max_position_embeddings=256, **ids)
    if family == "albert":   # one shared layer applied num_hidden_layers times; factorised embeddings
        return tf.AlbertConfig(embedding_size=16, **bert_like)
    if family == "deberta-v2":   # segment embeddings, absolute positions
        return tf.DebertaV2Config(type_vocab_size=2, **bert_like)
    if family == "deberta-v3":   # the v3 checkpoints' layout: relative attention only, no segments
        return tf.DebertaV2Config(type_vocab_size=0, position_biased_input=False, relative_attention=True,
                                  pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm", share_att_key=True,
                                  position_buckets=64, max_relative_positions=-1, **bert_like)
    if family == "electra":
        return tf.ElectraConfig(embedding_size=16, **bert_like)
    if family == "modernbert":   # a per-layer list: layer_types (full / sliding attention)
        return tf.ModernBertConfig(hidden_size=H, intermediate_size=2 * H, num_hidden_layers=LAYERS,
                                   num_attention_heads=HEADS, max_position_embeddings=256,
                                   global_attn_every_n_layers=3, local_attention=16, cls_token_id=tok.cls_token_id,
                                   sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                                   eos_token_id=tok.sep_token_id, **ids)
    if family == "deberta":   # v1 (deberta-base): relative attention, no segments
        return tf.DebertaConfig(type_vocab_size=0, position_biased_input=False, relative_attention=True,
                                pos_att_type=["c2p", "p2c"], **bert_like)
    if family == "mpnet":   # all-mpnet-base-v2: relative position bias, no segments
        return tf.MPNetConfig(**{**bert_like, "max_position_embeddings": 258})
    if family == "longformer":   # a per-layer list: attention_window
        return tf.LongformerConfig(**{**bert_like, "max_position_embeddings": 258}, attention_window=[4, 8, 4, 8],
                                   type_vocab_size=1)
    raise AssertionError(family)


FAMILIES = ["bert", "roberta", "xlm-roberta", "distilbert", "albert", "deberta-v2", "deberta-v3", "electra",
            "modernbert", "deberta", "mpnet", "longformer"]
PER_LAYER = {"modernbert": "layer_types", "longformer": "attention_window"}   # family -> its per-layer config list


def _glue(small_glue_dir) -> dict:
    return dict(task="mrpc", data_dir=str(small_glue_dir), max_eval_samples=16, max_seq_length=48)


@pytest.fixture(scope="module", params=FAMILIES)
def family_teacher(request, tmp_path_factory, minilm_dir, small_glue_dir):
    """(family, teacher run dir, teacher config): the family's tiny backbone fine-tuned for 2 steps."""
    import torch
    from transformers import AutoModel, AutoTokenizer
    from mixkd.jobs.run import finetune
    family = request.param
    root = tmp_path_factory.mktemp(family)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    torch.manual_seed(0)
    cfg = _config(family, tok)
    AutoModel.from_config(cfg).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    finetune(tiny_cfg(model=str(root / "base"), max_steps=2, output_dir=str(root / "teacher"),
                      **_glue(small_glue_dir)))
    return family, root / "teacher", cfg


@pytest.mark.parametrize("variant,k,strategy", [("sm+tmkd", 1, "first"), ("sm+tmkd", 2, "skip"), ("pkd", 2, "first")])
def test_family_distils_saves_reloads_and_evaluates(family_teacher, variant, k, strategy, small_glue_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification
    from mixkd.jobs.run import distill, evaluate
    family, teacher, tcfg = family_teacher
    out = tmp_path / "student"
    m = distill(tiny_cfg(teacher=str(teacher), variant=variant, student_layers=k, layer_strategy=strategy,
                         max_steps=2, output_dir=str(out), **_glue(small_glue_dir)))
    assert m["layers"] == k and m["teacher_layers"] == LAYERS and m["steps"] == 2
    if variant == "pkd":   # hidden states matched: student layer 1 to teacher layer 2 (PKD-Skip of 4 -> 2)
        assert [list(p) for p in m["pkd_layer_pairs"]] == [[1, 2]], m["pkd_layer_pairs"]
    student, info = AutoModelForSequenceClassification.from_pretrained(out / "model", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], (family, info)
    assert student.config.num_hidden_layers == k and student.config.model_type == tcfg.model_type
    if family in PER_LAYER:
        full, keep = getattr(tcfg, PER_LAYER[family]), student.config.mixkd_teacher_layers
        assert getattr(student.config, PER_LAYER[family]) == [full[i] for i in keep]
    ev = evaluate(tiny_cfg(model=str(out), **_glue(small_glue_dir)))
    assert ev["params"] == m["params"] and 0.0 <= ev["primary_value"] <= 1.0


SEGMENTS = {"bert", "albert", "deberta-v2", "electra"}   # families whose tiny config has segment embeddings


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(minilm_dir))


def _classifier(family: str, tok, **overrides):
    import torch
    from transformers import AutoModelForSequenceClassification
    torch.manual_seed(0)
    cfg = _config(family, tok)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return AutoModelForSequenceClassification.from_config(cfg).eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_mixup_goes_through_each_familys_own_embeddings(family, tok):
    """lambda = 1 reproduces the model's own forward on input ids (segment ids where the family has segment
    embeddings, none where it has not or has a single one: RoBERTa, XLM-R, Longformer)."""
    import torch
    from mixkd.core.mixup import MixPlan, mix_embeddings, token_type_table
    from mixkd.core.trainer import model_inputs
    model = _classifier(family, tok)
    assert (token_type_table(model) is not None) == (family in SEGMENTS)
    batch = dict(tok(["a gripping film", "the plot is thin"], ["it works", "boring"], padding=True,
                     return_tensors="pt"))
    batch["attention_mask"][:] = 1   # no padding: the union of two masks is each mask
    plan = MixPlan(torch.arange(2), torch.tensor([1, 0]), torch.ones(2))
    inputs = model_inputs(model, batch)
    assert ("token_type_ids" in inputs) == (family in SEGMENTS)
    with torch.no_grad():
        word = model.get_input_embeddings()(batch["input_ids"])
        mixed = mix_embeddings(model, word, batch["attention_mask"], inputs.get("token_type_ids"), plan)
        torch.testing.assert_close(model(**mixed).logits, model(**inputs).logits, atol=1e-5, rtol=1e-4)


def test_generic_per_layer_cut_keeps_global_lists(tok):
    """Any list as long as num_hidden_layers is cut with the layers, except lists that are not per layer
    (DeBERTa's pos_att_type of a 2-layer model)."""
    from transformers import DebertaV2Config, LongformerConfig
    from mixkd.core.models import cut_config
    cfg = cut_config(LongformerConfig(num_hidden_layers=4, attention_window=[2, 4, 6, 8]), [1, 3])
    assert cfg.num_hidden_layers == 2 and cfg.attention_window == [4, 8]
    cfg = cut_config(DebertaV2Config(num_hidden_layers=2, pos_att_type=["p2c", "c2p"]), [1])
    assert cfg.num_hidden_layers == 1 and cfg.pos_att_type == ["p2c", "c2p"]


def test_a_config_that_does_not_round_trip_is_refused_before_training(tok, monkeypatch):
    """The ModernBERT crash (num_hidden_layers != len(layer_types) at the first checkpoint) cannot come back for any
    family: build_student saves and reloads the student's config first and refuses, in one line, one that fails."""
    import mixkd.core.models as models
    from mixkd.core.errors import UsageError

    def cut_layers_only(config, keep):   # the old cut: per-layer lists left at the teacher's length
        config.num_hidden_layers = len(keep)
        return config
    monkeypatch.setattr(models, "cut_config", cut_layers_only)
    with pytest.raises(UsageError) as e:
        models.build_student(_classifier("modernbert", tok), 2)
    msg = str(e.value)
    assert "\n" not in msg and "modernbert student" in msg and "--student-model" in msg, msg


def test_modernbert_student_skipping_layer_0_is_what_it_reloads_as(tok, tmp_path):
    """ModernBERT's layer 0 has no attention norm: a student whose first layer was the teacher's layer 3 is rebuilt
    from its config (the norm dropped), so the model that trains is the model that reloads."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from mixkd.core.models import build_student
    student = build_student(_classifier("modernbert", tok), 1, "last").eval()
    student.save_pretrained(tmp_path)
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = tok(["a gripping film"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(again(**ids).logits, student(**ids).logits)


def _refused(model) -> str:
    from mixkd.core.errors import UsageError
    from mixkd.core.models import build_student
    with pytest.raises(UsageError) as e:
        build_student(model, 1)
    msg = str(e.value)
    assert "\n" not in msg and "--student-model" in msg and "ALBERT" in msg and "ModernBERT" in msg, msg
    return msg


def test_decoders_encoder_decoders_and_unknown_layouts_are_refused(tok):
    import transformers as tf
    small = dict(vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id)
    gpt2 = tf.GPT2ForSequenceClassification(tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, **small))
    assert "decoder-only" in _refused(gpt2)
    bart = tf.BartForSequenceClassification(tf.BartConfig(d_model=32, encoder_layers=2, decoder_layers=2,
                                                          encoder_attention_heads=2, decoder_attention_heads=2,
                                                          encoder_ffn_dim=64, decoder_ffn_dim=64, **small))
    assert "encoder-decoder" in _refused(bart)
    funnel = tf.FunnelForSequenceClassification(tf.FunnelConfig(d_model=32, n_head=2, d_head=16, d_inner=64,
                                                                block_sizes=[1, 1], **small))
    assert "no encoder layer list" in _refused(funnel)


def test_distill_refuses_a_decoder_teacher_in_one_line_before_writing(tok, tmp_path):
    """`mixkd distill --teacher <a GPT-2 classifier>`: exit 2, one line, nothing written."""
    import os
    import subprocess
    import sys
    import transformers as tf
    teacher = tmp_path / "gpt2"
    cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=tok.vocab_size, pad_token_id=tok.pad_token_id,
                        num_labels=2)
    tf.GPT2ForSequenceClassification(cfg).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    out = tmp_path / "student"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mixkd", "distill", "--task", "sst2", "--teacher", str(teacher),
                           "--output-dir", str(out)], env=env, capture_output=True, text=True, timeout=180)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("mixkd distill: error: ") and "gpt2: decoder-only" in lines[0], lines[0]
    assert "--student-model" in lines[0] and not out.exists()
