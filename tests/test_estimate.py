"""--dry-run: the plan of a sweep and its estimated cost, from a calibration of this machine, without starting Ray
(mixkd.platform.estimate)."""
from __future__ import annotations

import math

import pytest

from mixkd.platform.estimate import Calibration, DataStats, parse_resources, plan, run_seconds

CAL = Calibration(train_layer=2e-4, train_base=1e-4, mix_layer=5e-4, mix_base=1e-3, fwd_layer=5e-5, fwd_base=1e-5,
                  load_s=1.0, device="cpu", threads=1, precision="fp32", packed=True, note="fixed for the test")


def tiny_spec(tmp_path, tiny_bert_dir, small_glue_dir, **kw):
    from mixkd.platform.spec import SweepSpec
    d = dict(name="plan", mode="grid", tasks=["sst2"], teacher_model=str(tiny_bert_dir), seeds=[0],
             data_fractions=[1.0], teacher={"epochs": 2, "lr": 1e-3, "batch_size": 16, "max_seq_length": 64},
             base={"epochs": 2, "lr": 1e-3, "batch_size": 16, "max_seq_length": 64, "mixup_ratio": 1},
             grid=[{"variant": "ft", "student_layers": 1}, {"variant": "sm+tmkd", "student_layers": 2},
                   {"variant": "kd", "student_layers": 2}],
             student_seeds=[1, 2], cpus_per_trial=1, storage_path=str(tmp_path / "sweeps"),
             data_dir=str(small_glue_dir), measure_latency=False)
    d.update(kw)
    return SweepSpec.from_dict(d).validate()


def test_a_run_costs_its_tokens_at_the_calibrated_rates():
    from mixkd.core.config import MixKDConfig
    d = DataStats(rows=320, mean_tokens=10.0, mixed_mean_tokens=12.0, dev_rows=100, dev_mean_tokens=20.0)
    cfg = MixKDConfig(task="sst2", teacher="t", output_dir="o", epochs=2, lr=1e-3, batch_size=32, variant="ft")
    s, parts = run_seconds(cfg, CAL, d, layers=2, teacher_layers=6, train_rows=320)
    tokens = 20 * 32 * 10.0                               # 2 epochs of 10 steps of 32 rows of 10 tokens
    assert parts["steps"] == 20
    assert parts["student"] == pytest.approx(tokens * (1e-4 + 2 * 2e-4))
    assert parts["eval"] == pytest.approx(3 * 100 * 20.0 * (1e-5 + 2 * 5e-5))   # 2 evals + the labels report
    assert s == pytest.approx(parts["student"] + parts["eval"] + parts["fixed"])
    s_mix, p_mix = run_seconds(cfg.replace(variant="sm+tmkd"), CAL, d, 2, 6, 320)
    assert p_mix["student"] == pytest.approx(tokens * (1e-3 + 2 * 5e-4))            # the calibrated MixKD step
    _, kd = run_seconds(cfg.replace(variant="kd"), CAL, d, 2, 6, 320)
    _, live = run_seconds(cfg.replace(variant="kd", teacher_outputs="live"), CAL, d, 2, 6, 320)
    assert "teacher" not in kd and live["teacher"] == pytest.approx(tokens * (1e-5 + 6 * 5e-5))


def test_the_plan_schedules_trials_on_the_slots_the_resources_allow(tmp_path, tiny_bert_dir, small_glue_dir):
    spec = tiny_spec(tmp_path, tiny_bert_dir, small_glue_dir)
    p = plan(spec, parse_resources("cpu=2"), calibration=CAL)
    trials = [j for j in p.jobs if j.phase == "trial"]
    assert len(trials) == 6 and p.concurrency == 2
    assert [j.what.split()[2] for j in trials] == ["ft", "ft", "sm+tmkd", "sm+tmkd", "kd", "kd"]
    by = {j.phase: j for j in p.jobs if j.phase != "trial"}
    assert set(by) == {"start", "teacher", "teacher-outputs"}   # kd: the teacher's outputs once, before the trials
    # two slots, jobs in Tune's order each on the first free slot
    free = [0.0, 0.0]
    for j in trials:
        free[free.index(min(free))] += j.seconds
    expected = by["start"].seconds + by["teacher"].seconds + by["teacher-outputs"].seconds + max(free)
    assert p.wall_s == pytest.approx(expected)
    one = plan(spec, parse_resources("cpu=1"), calibration=CAL)
    assert one.concurrency == 1 and one.wall_s > p.wall_s
    assert one.device_hours == pytest.approx(p.device_hours)   # the same work, fewer at once
    assert p.device_hours == pytest.approx(sum(j.seconds for j in p.jobs if j.phase != "start") / 3600)
    assert not spec.experiment_dir.exists()                      # planning writes nothing


def test_latency_and_selection_cost_every_architecture_configuration_and_format(tmp_path, tiny_bert_dir,
                                                                               small_glue_dir, monkeypatch):
    """The latency phase times each architecture under the protocol (fp32, (batch, seq) inputs at the latency
    calibration's rates) and converts it to each format; the choice within a budget scores every configuration in
    every format (onnx-int8 with both weight types)."""
    from dataclasses import replace

    from mixkd.deploy import latency as L
    from mixkd.platform import estimate
    cal = replace(CAL, fwd32_layer=1e-4, fwd32_base=2e-5, lat1_layer=3e-5, lat1_base=1e-5, latn_layer=1e-5,
                  latn_base=5e-6, lat_seq_len=128)
    assert cal.latency_iter(1, 128, 2) == pytest.approx(128 * (1e-5 + 2 * 3e-5))
    assert cal.latency_iter(32, 128, 2) == pytest.approx(32 * 128 * (5e-6 + 2 * 1e-5))
    assert cal.forward32(1000, 2) == pytest.approx(1000 * (2e-5 + 2e-4))
    conv = {"onnx": [0.5, 1.0], "onnx-int8": [1.0, 2.0]}     # [per layer, the rest] seconds
    monkeypatch.setattr(estimate, "calibrate_conversions", lambda spec, formats: conv)
    spec = tiny_spec(tmp_path, tiny_bert_dir, small_glue_dir, measure_latency=True, latency_budget_ms=5.0,
                     latency_batch_sizes=[1, 32], select_formats=["torch", "onnx", "onnx-int8"])
    p = plan(spec, parse_resources("cpu=2"), calibration=cal)
    lat = next(j for j in p.jobs if j.phase == "latency")

    def proto(k, b):
        it = cal.latency_iter(b, 128, k)
        return L.DEFAULT_WARMUP * it + max(L.DEFAULT_MIN_SECONDS, L.DEFAULT_MIN_ITERS * it) + 0.5

    def convert(f, k):
        return conv[f][1] + k * conv[f][0]
    t = estimate._depth(str(tiny_bert_dir))
    expected = estimate.RUN_START_S + sum(cal.load_s + proto(k, 1) + proto(k, 32) for k in (t, 1, 2)) + sum(
        convert(f, k) + proto(k, 1) for f in ("onnx", "onnx-int8") for k in (1, 2))
    assert lat.seconds == pytest.approx(expected)
    sel = next(j for j in p.jobs if j.phase == "select")
    assert "3 configuration(s)" in sel.what
    d = estimate.data_stats(spec, "sst2", 1.0, 0)
    dev = {k: cal.forward32(d.dev_rows * d.dev_mean_tokens, k) for k in (1, 2)}
    other = ("onnx", "onnx-int8", "onnx-int8")
    per = sum(1.0 + dev[k] + sum(convert(f, k) + dev[k] for f in other) for k in (1, 2, 2))   # ft k1; sm+tmkd, kd k2
    second_weight_type = sum(convert("onnx-int8", k) + proto(k, 1) for k in (1, 2))
    export = convert("onnx-int8", 2)
    assert sel.seconds == pytest.approx(estimate.RUN_START_S + 2.0 + per + export + second_weight_type)


def test_a_finished_teacher_costs_nothing(tmp_path, tiny_bert_dir, small_glue_dir):
    spec = tiny_spec(tmp_path, tiny_bert_dir, small_glue_dir)
    before = next(j for j in plan(spec, parse_resources("cpu=2"), calibration=CAL).jobs if j.phase == "teacher")
    assert before.seconds > 0
    done = spec.experiment_dir / "teachers" / spec.teacher_key("sst2", 1.0, 0)
    done.mkdir(parents=True)
    (done / "metrics.json").write_text("{}")
    after = next(j for j in plan(spec, parse_resources("cpu=2"), calibration=CAL).jobs if j.phase == "teacher")
    assert after.seconds == 0 and "reused" in after.what


def test_calibration_times_the_sweeps_own_steps_once(tmp_path, tiny_bert_dir, small_glue_dir, monkeypatch):
    from mixkd.platform import estimate
    spec = tiny_spec(tmp_path, tiny_bert_dir, small_glue_dir)
    cal = estimate.calibrate(spec, "sst2", 1.0, 0, threads=1)
    assert cal.measured and cal.threads == 1 and cal.packed
    for v in (cal.train_layer, cal.mix_layer, cal.fwd_layer, cal.fwd32_layer, cal.lat1_layer, cal.latn_layer):
        assert 0 < v < 1e-2 and math.isfinite(v)
    assert cal.lat_seq_len == spec.latency_seq_len
    assert cal.mix_base + cal.mix_layer > cal.train_base + cal.train_layer   # MixKD's step costs more per token
    import mixkd.core.trainer
    monkeypatch.setattr(mixkd.core.trainer, "Trainer", None)     # a second call must not time anything
    assert estimate.calibrate(spec, "sst2", 1.0, 0, threads=1) == cal


def test_conversions_are_timed_once_per_format(tmp_path, tiny_bert_dir, small_glue_dir, monkeypatch):
    from mixkd.platform import estimate
    spec = tiny_spec(tmp_path, tiny_bert_dir, small_glue_dir)
    per = estimate.calibrate_conversions(spec, ["torch-int8", "onnx"])
    assert set(per) == {"torch-int8", "onnx"}
    assert all(layer > 0 and rest >= 0 and math.isfinite(layer + rest) for layer, rest in per.values())
    import mixkd.deploy.formats
    monkeypatch.setattr(mixkd.deploy.formats, "convert", None)     # a second call must not convert anything
    assert estimate.calibrate_conversions(spec, ["torch-int8", "onnx"]) == per


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, tiny_bert_dir, small_glue_dir, capsys):
    import ray
    import yaml

    from mixkd.cli.sweep import cli
    spec = tiny_spec(tmp_path, tiny_bert_dir, small_glue_dir)
    preset = tmp_path / "p.yaml"
    preset.write_text(yaml.safe_dump({k: v for k, v in spec.to_dict().items() if k != "custom_tasks"}))
    assert cli(["--preset", str(preset), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 trial(s) at once (1 CPU each)" in out
    for phase in ("teacher:", "teacher-outputs:", "trial: 6 job(s)"):
        assert phase in out, out
    assert "Estimated wall time:" in out and "CPU-hours (an estimate, not a measurement)" in out
    assert "calibration: " in out and "on sst2's rows" in out
    assert not ray.is_initialized() and not spec.experiment_dir.exists()


def test_a_gpu_cluster_plan_says_what_it_assumed(capsys):
    from mixkd.cli.sweep import cli
    assert cli(["--preset", "paper", "--dry-run", "--plan-resources", "cpu=64,gpu=8"]) == 0
    out = capsys.readouterr().out
    assert "8 trial(s) at once (4 CPU, 1 GPU each)" in out
    assert "not measured: assumed an A100-class GPU" in out and "GPU-hours" in out
    assert "mnli: data or tokenizer not here" in out        # MNLI is not held here: GLUE's published size
    assert "trial: 360 job(s)" in out                        # 6 tasks x 3 seeds x 5 variants x 2 augment x 2 depths
