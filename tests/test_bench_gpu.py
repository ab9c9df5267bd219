"""experiments/bench_gpu.py on the CPU: the --tiny smoke run writes one row per (student depth, batch) with
consistent figures, bad flags exit 2 with one line, and the peak table matches GPU names in the right order."""
from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "experiments"))


def test_tiny_cpu_run_writes_consistent_rows(tmp_path, capsys):
    from bench_gpu import TINY_STUDENTS, main

    out = tmp_path / "bench.json"
    batches = [2, 4]
    rc = main(["--device", "cpu", "--tiny", "--batch-sizes", *map(str, batches), "--warmup", "1", "--steps", "2",
               "--peak-tflops", "0.5", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    assert "precision fp32" in printed[0] and "torch" in printed[0]
    data = json.loads(out.read_text())
    assert data["meta"]["precision"] == "fp32" and data["meta"]["peak_flops"] == 0.5e12
    rows = data["rows"]
    assert [(r["student_layers"], r["batch"]) for r in rows] == [(k, b) for k in TINY_STUDENTS for b in batches]
    assert len(printed) == 2 + len(rows)   # header, column names, one line per row
    for r in rows:
        assert r["model"] == "tiny" and r["teacher_layers"] == 4 and r["seq_len"] == 16
        assert r["step_ms"] > 0
        assert math.isclose(r["tokens_per_s"], r["batch"] * r["seq_len"] / (r["step_ms"] / 1e3), rel_tol=1e-9)
        assert r["flops_per_step"] > 0
        assert math.isclose(r["achieved_tflops"], r["flops_per_step"] / (r["step_ms"] / 1e3) / 1e12, rel_tol=1e-9)
        assert math.isclose(r["mfu"], r["achieved_tflops"] / 0.5, rel_tol=1e-9)
        assert r["peak_mem_gib"] is None   # CPU
    flops = {(r["student_layers"], r["batch"]): r["flops_per_step"] for r in rows}
    # the count grows with the student's depth (its fwd+bwd) and with the batch (student and teacher)
    assert flops[(2, 4)] > flops[(1, 4)] and flops[(2, 4)] > flops[(2, 2)]
    assert all("n/a" in line for line in printed[2:])   # peak memory on the CPU


@pytest.mark.parametrize("argv", [["--models", "bert-large"], ["--batch-sizes", "0"], ["--steps", "zero"],
                                  ["--peak-tflops", "-1"]])
def test_bad_flags_exit_2_with_one_line(argv, capsys):
    from bench_gpu import main

    assert main(["--device", "cpu", "--tiny", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench_gpu.py: error:")


def test_peak_table_matches_names_in_order(monkeypatch):
    from bench_gpu import peak_flops

    cuda = torch.device("cuda")
    for name, peak in [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                       ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A10G", 70e12), ("NVIDIA A10", 125e12),
                       ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12), ("Tesla T4", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None, name=name: name)
        assert peak_flops(cuda, None)[0] == peak, name
    assert peak_flops(cuda, 100.0) == (100e12, "--peak-tflops")
    assert peak_flops(torch.device("cpu"), None)[0] is None
