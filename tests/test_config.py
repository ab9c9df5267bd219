"""MixKDConfig: loading from dicts/YAML, type coercion, hashing and validation (one-line UsageErrors)."""
from __future__ import annotations

import re

import pytest

from mixkd.core.config import RUNTIME_FIELDS, VARIANT_TERMS, VARIANTS, MixKDConfig, validate
from mixkd.core.errors import UsageError


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert msg.strip(), "empty message"
    return msg


@pytest.fixture
def distill_cfg(tmp_path):
    """A valid distill config: every validate() case below changes one field of it."""
    cfg = MixKDConfig(task="sst2", teacher=str(tmp_path / "teacher"), output_dir=str(tmp_path / "out"))
    validate(cfg, "distill")      # sanity: the base is valid
    return cfg


# --- from_dict --------------------------------------------------------------------------------

def test_from_dict_unknown_key_did_you_mean():
    with pytest.raises(UsageError) as e:
        MixKDConfig.from_dict({"task": "sst2", "alfa": 0.4})
    msg = one_line(e)
    assert "'alfa'" in msg and "did you mean 'alpha'" in msg


@pytest.mark.parametrize("key,hint", [("temprature", "temperature"), ("student_layer", "student_layers"),
                                      ("a_tmdk", "a_tmkd")])
def test_from_dict_other_typos(key, hint):
    with pytest.raises(UsageError) as e:
        MixKDConfig.from_dict({key: 1})
    assert f"did you mean '{hint}'" in one_line(e)


def test_from_dict_unknown_key_without_match_and_source():
    with pytest.raises(UsageError) as e:
        MixKDConfig.from_dict({"zzzqqq": 1}, source="my.yaml")
    msg = one_line(e)
    assert msg.startswith("my.yaml:") and "'zzzqqq'" in msg and "--help" in msg


def test_from_dict_coerces_strings():
    cfg = MixKDConfig.from_dict({"alpha": "0.2", "student_layers": "4", "epochs": 2, "progress": "no",
                                 "overwrite": "true", "mixup_ratio": 3.0, "task": "rte", "data_fraction": "0.5",
                                 "data_seed": None})
    assert cfg.alpha == 0.2 and isinstance(cfg.alpha, float)
    assert cfg.student_layers == 4 and isinstance(cfg.student_layers, int)
    assert cfg.epochs == 2.0 and isinstance(cfg.epochs, float)
    assert cfg.progress is False and cfg.overwrite is True
    assert cfg.mixup_ratio == 3 and isinstance(cfg.mixup_ratio, int)
    assert cfg.data_fraction == 0.5 and cfg.data_seed is None
    assert cfg.task == "rte"
    assert cfg.a_sm == 1.0           # untouched defaults


@pytest.mark.parametrize("key,value,flag,typ", [
    ("alpha", "abc", "--alpha", "float"),
    ("student_layers", 2.5, "--student-layers", "int"),
    ("student_layers", "three", "--student-layers", "int"),
    ("progress", "maybe", "--progress", "bool"),
    ("data_fraction", "ten percent", "--data-fraction", "float"),
    ("max_eval_samples", "many", "--max-eval-samples", "int"),
    ("temperature", [1, 2], "--temperature", "float"),
    ("batch_size", {"a": 1}, "--batch-size", "int"),
])
def test_from_dict_coercion_errors_name_the_flag(key, value, flag, typ):
    with pytest.raises(UsageError) as e:
        MixKDConfig.from_dict({key: value}, source="cfg.yaml")
    msg = one_line(e)
    assert flag in msg and typ in msg and "cfg.yaml" in msg
    assert repr(value) in msg


# --- YAML -------------------------------------------------------------------------------------

def test_from_yaml_malformed(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("task: sst2\nalpha: [0.4\nlr: 1e-5\n")
    with pytest.raises(UsageError) as e:
        MixKDConfig.from_yaml(p)
    msg = one_line(e)
    assert str(p) in msg and "YAML" in msg
    assert re.search(r"line \d+", msg)


@pytest.mark.parametrize("text,kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_from_yaml_non_mapping(tmp_path, text, kind):
    p = tmp_path / "list.yaml"
    p.write_text(text)
    with pytest.raises(UsageError) as e:
        MixKDConfig.from_yaml(p)
    msg = one_line(e)
    assert str(p) in msg and "mapping" in msg and kind in msg


def test_from_yaml_missing_file(tmp_path):
    with pytest.raises(UsageError) as e:
        MixKDConfig.from_yaml(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in one_line(e)


def test_from_yaml_unknown_key_names_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("task: sst2\nalfa: 0.3\n")
    with pytest.raises(UsageError) as e:
        MixKDConfig.from_yaml(p)
    msg = one_line(e)
    assert str(p) in msg and "did you mean 'alpha'" in msg


def test_from_yaml_empty_file_is_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert MixKDConfig.from_yaml(p) == MixKDConfig()


def test_yaml_round_trip(tmp_path):
    cfg = MixKDConfig(task="mrpc", alpha=0.3, student_layers=2, variant="tmkd", data_fraction=0.25,
                      output_dir=str(tmp_path / "o"), progress=False)
    p = tmp_path / "cfg.yaml"
    cfg.save_yaml(p)
    again = MixKDConfig.from_yaml(p)
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()


# --- config_hash ------------------------------------------------------------------------------

def test_config_hash_stable_and_format():
    a = MixKDConfig(task="sst2", alpha=0.4)
    b = MixKDConfig(task="sst2", alpha=0.4)
    assert a.config_hash() == b.config_hash()
    assert re.fullmatch(r"[0-9a-f]{12}", a.config_hash())


def test_config_hash_changes_with_alpha_and_other_settings():
    base = MixKDConfig(task="sst2")
    h = base.config_hash()
    assert base.replace(alpha=0.5).config_hash() != h
    assert base.replace(task="rte").config_hash() != h
    assert base.replace(variant="kd").config_hash() != h
    assert base.replace(student_layers=4).config_hash() != h
    assert base.replace(seed=1).config_hash() != h


@pytest.mark.parametrize("field,value", [("output_dir", "/tmp/elsewhere"), ("overwrite", True), ("resume", True),
                                         ("progress", False), ("device", "cpu"), ("data_dir", "/data/glue")])
def test_config_hash_ignores_runtime_fields(field, value):
    assert field in RUNTIME_FIELDS
    base = MixKDConfig(task="sst2", output_dir="/tmp/a")
    assert base.replace(**{field: value}).config_hash() == base.config_hash()


# --- validate ---------------------------------------------------------------------------------

BAD_VALUES = [
    ("alpha", 0.0, "--alpha"),
    ("alpha", -0.4, "--alpha"),
    ("temperature", 0.0, "--temperature"),
    ("temperature", -1.0, "--temperature"),
    ("a_sm", -1.0, "--a-sm"),
    ("a_tmkd", -0.5, "--a-tmkd"),
    ("a_kd", -2.0, "--a-kd"),
    ("w_mle", -0.1, "--w-mle"),
    ("student_layers", 0, "--student-layers"),
    ("data_fraction", 0.0, "--data-fraction"),
    ("data_fraction", 1.5, "--data-fraction"),
    ("data_fraction", -0.1, "--data-fraction"),
    ("variant", "mixkd", "--variant"),
    ("distance", "cosine", "--distance"),
    ("layer_strategy", "middle", "--layer-strategy"),
    ("mixup_padding", "mean", "--mixup-padding"),
    ("mixup_ratio", 0, "--mixup-ratio"),
    ("max_seq_length", 4, "--max-seq-length"),
    ("batch_size", 0, "--batch-size"),
    ("lr", 0.0, "--lr"),
    ("warmup_ratio", 1.0, "--warmup-ratio"),
    ("device", "tpu", "--device"),
    ("max_eval_samples", 0, "--max-eval-samples"),
]


@pytest.mark.parametrize("field,value,flag", BAD_VALUES)
def test_validate_rejects_bad_values(distill_cfg, field, value, flag):
    with pytest.raises(UsageError) as e:
        validate(distill_cfg.replace(**{field: value}), "distill")
    msg = one_line(e)
    assert flag in msg and repr(value) in msg


def test_validate_accepts_zero_weights_and_boundary_fraction(distill_cfg):
    cfg = distill_cfg.replace(a_sm=0.0, a_tmkd=0.0, a_kd=0.0, w_mle=0.0, data_fraction=1.0, student_layers=1)
    assert validate(cfg, "distill") == cfg
    assert validate(distill_cfg.replace(data_fraction=1e-3), "distill").data_fraction == 1e-3


def test_validate_unknown_variant_lists_choices(distill_cfg):
    with pytest.raises(UsageError) as e:
        validate(distill_cfg.replace(variant="mixkd"), "distill")
    msg = one_line(e)
    for v in VARIANTS:
        assert v in msg


def test_validate_kl_distance_on_regression_task(distill_cfg):
    with pytest.raises(UsageError) as e:
        validate(distill_cfg.replace(task="stsb", distance="kl"), "distill")
    msg = one_line(e)
    assert "stsb" in msg and "mse" in msg
    # STS-B with mse, and kl on a classification task, are fine
    validate(distill_cfg.replace(task="STS-B", distance="mse"), "distill")
    validate(distill_cfg.replace(distance="kl", temperature=4.0), "distill")


def test_validate_distill_requires_teacher(distill_cfg):
    with pytest.raises(UsageError) as e:
        validate(distill_cfg.replace(teacher=None), "distill")
    assert "--teacher" in one_line(e)


@pytest.mark.parametrize("command", ["distill", "finetune"])
@pytest.mark.parametrize("value", [None, ""])
def test_validate_requires_output_dir(distill_cfg, command, value):
    with pytest.raises(UsageError) as e:
        validate(distill_cfg.replace(output_dir=value), command)
    assert "--output-dir" in one_line(e)


def test_validate_evaluate_needs_no_output_dir_or_teacher():
    cfg = MixKDConfig(task="sst2", model="minilm-l6")
    assert validate(cfg, "evaluate") is cfg


def test_validate_requires_task():
    with pytest.raises(UsageError) as e:
        validate(MixKDConfig(output_dir="/tmp/x"), "finetune")
    assert "--task" in one_line(e)


def test_validate_unknown_task():
    with pytest.raises(UsageError) as e:
        validate(MixKDConfig(task="sst3", output_dir="/tmp/x"), "finetune")
    assert "sst3" in one_line(e)


def test_validate_missing_augment_file(distill_cfg, tmp_path):
    missing = tmp_path / "bt_missing.tsv"
    with pytest.raises(UsageError) as e:
        validate(distill_cfg.replace(augment_file=str(missing)), "distill")
    msg = one_line(e)
    assert "--augment-file" in msg and str(missing) in msg
    present = tmp_path / "bt.tsv"
    present.write_text("sentence\tlabel\nx\t1\n")
    validate(distill_cfg.replace(augment_file=str(present)), "distill")


@pytest.mark.parametrize("variant", ["sm+tmkd", "kd", "tmkd", "ft"])
def test_finetune_forces_variant_ft(tmp_path, variant):
    cfg = MixKDConfig(task="sst2", output_dir=str(tmp_path), variant=variant)
    out = validate(cfg, "finetune")
    assert out.variant == "ft"
    assert out.terms == ("mle",)
    assert cfg.variant == variant          # the caller's config is not mutated


def test_distill_keeps_variant(distill_cfg):
    for v in VARIANTS:
        assert validate(distill_cfg.replace(variant=v), "distill").variant == v


def test_variant_terms():
    assert VARIANT_TERMS["sm+tmkd"] == ("mle", "sm", "tmkd")
    assert MixKDConfig(variant="kd").terms == ("mle", "kd")
    assert MixKDConfig().variant == "sm+tmkd" and MixKDConfig().alpha == 0.4
    assert MixKDConfig().distance == "mse" and MixKDConfig().student_layers == 3


def test_resolved_data_seed():
    assert MixKDConfig(seed=7).resolved_data_seed == 7
    assert MixKDConfig(seed=7, data_seed=3).resolved_data_seed == 3
    assert MixKDConfig(seed=7, data_seed=0).resolved_data_seed == 0


def test_validate_rejects_non_finite_numbers(distill_cfg):
    """`--alpha nan` (or `alpha: .nan` in YAML) coerces fine; validate must still reject it, since
    NaN compares False with every bound (alpha=nan later crashes in Beta with a traceback,
    alpha=inf silently gives lambda ~ 1e-38, lr=nan trains to NaN)."""
    coerced = MixKDConfig.from_dict({"alpha": "nan"})
    assert coerced.alpha != coerced.alpha          # NaN gets through coercion
    accepted = []
    cases = [(f, v) for f in ("alpha", "temperature", "lr", "w_mle", "a_sm", "a_tmkd", "a_kd")
             for v in (float("nan"), float("inf"))] + [("epochs", float("nan"))]
    for field, value in cases:
        try:
            validate(distill_cfg.replace(**{field: value}), "distill")
        except UsageError as e:
            assert "\n" not in str(e) and "--" + field.replace("_", "-") in str(e)
        else:
            accepted.append(f"{field}={value}")
    assert not accepted, f"validate() accepted non-finite values: {', '.join(accepted)}"


def test_a_config_is_resolved_once_and_validate_reads_no_file(tiny_teacher_run, monkeypatch):
    """distill inherits the teacher's task and data: resolve_config reads the teacher's run files once; the job that
    receives the resolved config (the CLI resolves first) does not read them again, and validate reads none."""
    from mixkd.core import custom_data
    from mixkd.core.config import MixKDConfig, validate
    reads = []
    real = custom_data.run_data
    monkeypatch.setattr(custom_data, "run_data", lambda d: reads.append(d) or real(d))
    cfg = MixKDConfig(teacher=str(tiny_teacher_run), output_dir="o")          # no --task: the teacher's
    resolved = custom_data.resolve_config(cfg, "distill")
    assert resolved.task == "sst2" and len(reads) == 1
    assert custom_data.resolve_config(resolved, "distill") is resolved and len(reads) == 1
    n = len(reads)
    custom_data.resolve_config(resolved.replace(teacher=str(tiny_teacher_run)), "distill")   # a changed config: anew
    assert len(reads) == n + 1
    reads.clear()
    validate(resolved.replace(), "distill")
    assert reads == []
