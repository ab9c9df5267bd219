"""The real command line (`mixkd` console script / `python -m mixkd`), run in subprocesses, offline."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

import mixkd

# The session fixtures (tiny teacher, tiny BERT) train in this process: one intra-op thread is ~20x
# faster than two on a shared 2-core machine. The subprocesses get OMP_NUM_THREADS=1.

MIXKD_SCRIPT = Path(sys.executable).parent / "mixkd"


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("GLUE_DIR", "PYTHONWARNINGS", "TOKENIZERS_PARALLELISM"):   # no data default, no warning filters:
        env.pop(k, None)                                                   # stderr is what a user would see
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MIXKD_CACHE=str(tmp_path_factory.mktemp("cli_cache")),
               OMP_NUM_THREADS="1")   # one thread: fast on a shared machine; no effect on the results
    return env


def run_cli(env: dict[str, str], *args, module: bool = False, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mixkd"] if module else [str(MIXKD_SCRIPT)]
    return subprocess.run(cmd + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, f"exit code {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"stderr is not exactly one line:\n{proc.stderr}"
    line = lines[0]
    assert line.startswith("mixkd"), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in error line: {line}"
    return line


# --- small GLUE folders with one defect each ----------------------------------------------------

def glue_copy(src: Path, dst: Path) -> Path:
    (dst / "SST-2").mkdir(parents=True)
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(src / "SST-2" / name, dst / "SST-2" / name)
    return dst


def edit_lines(path: Path, fn: Callable[[list[str]], list[str]]) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    path.write_text("\n".join(fn(lines)), encoding="utf-8")


def malformed_row(lines):       # line 3 of train.tsv loses its tab and label
    lines[2] = "a row without any tab separated label"
    return lines


def bad_label(lines):           # line 4 of train.tsv gets label 2
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\t2"
    return lines


def header_only(lines):
    return [lines[0], ""]


def make_small_vocab_student(path: Path) -> Path:
    """A tiny BERT classifier whose tokenizer has a 40-token vocabulary (not the teacher's)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer
    path.mkdir(parents=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + \
        "the a an film movie good bad is was and of to it this that not very funny dull story".split() + \
        [f"w{i}" for i in range(16)]
    (path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(str(path / "vocab.txt"))
    model = BertForSequenceClassification(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=2))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@dataclass
class Case:
    id: str
    override: dict            # flag -> value, on top of the command's base flags
    needles: tuple[str, ...]  # substrings the one error line must hold
    setup: Callable[[Path, dict], dict] | None = None   # (case dir, paths) -> more overrides
    finished_out: bool = False   # the output dir holds a finished run (its metrics.json must not change)
    extra: list = field(default_factory=list)
    # data errors go through `finetune` (it reads the data before loading any model: a faster subprocess)
    command: str = "distill"


def _bad_glue(edit_file: str, fn):
    def setup(d: Path, paths: dict) -> dict:
        g = glue_copy(paths["glue"], d / "glue")
        edit_lines(g / "SST-2" / edit_file, fn)
        return {"--data-dir": g}
    return setup


def _empty_glue(d: Path, paths: dict) -> dict:
    (d / "glue").mkdir()
    return {"--data-dir": d / "glue"}


def _small_vocab(d: Path, paths: dict) -> dict:
    return {"--student-model": make_small_vocab_student(d / "small_vocab")}


def _finished_out(d: Path, paths: dict) -> dict:
    out = d / "finished"
    shutil.copytree(paths["teacher"], out)
    return {"--output-dir": out}


BAD_INPUTS = [
    Case("unknown-task", {"--task": "sst3"}, ("unknown task 'sst3'", "sst2")),
    Case("missing-data-dir", {"--data-dir": "/nonexistent"}, ("--data-dir", "/nonexistent", "not a directory"),
         command="finetune"),
    Case("missing-task-folder", {}, ("no SST-2/ folder",), setup=_empty_glue, command="finetune"),
    Case("malformed-row", {}, ("train.tsv:3", "malformed row"), setup=_bad_glue("train.tsv", malformed_row),
         command="finetune"),
    Case("empty-split", {}, ("dev.tsv", "no data rows"), setup=_bad_glue("dev.tsv", header_only), command="finetune"),
    Case("label-outside-set", {}, ("train.tsv:4", "label '2'"), setup=_bad_glue("train.tsv", bad_label),
         command="finetune"),
    Case("alpha-0", {"--alpha": "0"}, ("--alpha", "alpha > 0")),
    Case("temperature-negative", {"--temperature": "-1"}, ("--temperature", "-1")),
    Case("a-sm-negative", {"--a-sm": "-1"}, ("--a-sm", "-1", ">= 0")),
    Case("student-layers-0", {"--student-layers": "0"}, ("--student-layers 0",)),
    Case("student-layers-too-many", {"--student-layers": "99"}, ("--student-layers 99", "4 layers")),
    Case("data-fraction-0", {"--data-fraction": "0"}, ("--data-fraction", "(0, 1]")),
    Case("data-fraction-1.5", {"--data-fraction": "1.5"}, ("--data-fraction", "1.5", "(0, 1]")),
    Case("vocab-mismatch", {}, ("vocabulary", "small_vocab"), setup=_small_vocab),
    Case("finished-output-dir", {}, ("finished run", "--overwrite"), setup=_finished_out, finished_out=True),
    Case("misspelled-flag", {}, ("--alpah",), extra=["--alpah", "0.5"]),
    # the did-you-mean hint must point at the flag that was meant, not at the top-level --help
    Case("misspelled-flag-hint", {}, ("--alpah", "did you mean --alpha?"), extra=["--alpah", "0.5"]),
]


@pytest.fixture(scope="module")
def bad_input_results(cli_env, tmp_path_factory, tiny_teacher_run, tiny_bert_dir, small_glue_dir):
    """Run every bad-input case through the CLI (a few at a time) and keep the results by case id."""
    root = tmp_path_factory.mktemp("bad_inputs")
    paths = {"teacher": tiny_teacher_run, "glue": small_glue_dir}
    jobs = {}
    for case in BAD_INPUTS:
        d = root / case.id
        d.mkdir()
        flags = {"--task": "sst2", "--data-dir": small_glue_dir, "--output-dir": d / "out", "--max-steps": "1",
                 "--max-seq-length": "64", "--batch-size": "16"}
        if case.command == "distill":
            flags.update({"--teacher": tiny_teacher_run, "--student-layers": "2"})
        else:
            flags["--model"] = tiny_bert_dir
        if case.setup:
            flags.update(case.setup(d, paths))
        flags.update(case.override)
        out = Path(flags["--output-dir"])
        before = (out / "metrics.json").read_bytes() if case.finished_out else None
        args = [case.command] + [x for k, v in flags.items() for x in (k, v)] + case.extra
        args.append("--no-progress")
        jobs[case.id] = (args, out, before)

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {cid: pool.submit(run_cli, cli_env, *args) for cid, (args, _, _) in jobs.items()}
        return {cid: (fut.result(), jobs[cid][1], jobs[cid][2]) for cid, fut in futures.items()}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c.id for c in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(bad_input_results, case):
    proc, out, before = bad_input_results[case.id]
    assert_one_line_error(proc, *case.needles)
    assert proc.stdout == ""
    if case.finished_out:
        assert (out / "metrics.json").read_bytes() == before, "a finished run's metrics.json was changed"
    else:
        assert not (out / "metrics.json").exists()


# --- everything else -------------------------------------------------------------------------

def test_help(cli_env):
    proc = run_cli(cli_env, "--help")
    assert proc.returncode == 0, proc.stderr
    for cmd in ("finetune", "distill", "evaluate"):
        assert cmd in proc.stdout
    sub = run_cli(cli_env, "distill", "--help")
    assert sub.returncode == 0, sub.stderr
    for flag in ("--teacher", "--variant", "--alpha", "--a-sm", "--student-layers", "--resume", "--overwrite"):
        assert flag in sub.stdout


def test_version(cli_env):
    proc = run_cli(cli_env, "--version", module=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"mixkd {mixkd.__version__}"


def test_config_file_with_flags_overriding_it_and_overwrite(cli_env, copy_run, tiny_teacher_run, tiny_bert_dir,
                                                            small_glue_dir, tmp_path):
    """`finetune --config FILE --flag ... --overwrite` into a finished run's dir (one subprocess, two checks):
    flags win over the file, the file over the defaults; --overwrite replaces the finished run entirely."""
    run = copy_run(tiny_teacher_run)
    assert json.loads((run / "metrics.json").read_text())["steps"] == 32
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "task": "sst2", "model": str(tiny_bert_dir), "data_dir": str(small_glue_dir), "max_seq_length": 64,
        "batch_size": 8, "eval_batch_size": 64, "max_steps": 5, "lr": 0.002, "seed": 3, "warmup_ratio": 0.0,
        "progress": False, "output_dir": str(tmp_path / "not_this_one")}))
    proc = run_cli(cli_env, "finetune", "--config", cfg_file, "--max-steps", "2", "--seed", "7",
                   "--output-dir", run, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert printed["steps"] == 2 and printed["task"] == "sst2"
    assert not (tmp_path / "not_this_one").exists()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["max_steps"] == 2 and saved["seed"] == 7              # flags win
    assert saved["batch_size"] == 8 and saved["lr"] == 0.002           # the file's values
    assert saved["model"] == str(tiny_bert_dir) and saved["warmup_ratio"] == 0.0
    assert saved["epochs"] == 3.0                                      # the config default
    # --overwrite: metrics, log and model are the new run's only
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert metrics["data"]["train_rows_subset"] == 256
    assert metrics["primary_value"] == printed["primary_value"]
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2], "log.jsonl still holds the replaced run's rows"
    assert (run / "model" / "model.safetensors").is_file()
    assert metrics["config_hash"] != json.loads((tiny_teacher_run / "metrics.json").read_text())["config_hash"]


def test_evaluate_reproduces_run_metrics(cli_env, tiny_teacher_run, small_glue_dir, tmp_path):
    out_file = tmp_path / "eval.json"
    proc = run_cli(cli_env, "evaluate", "--task", "sst2", "--model", tiny_teacher_run,
                   "--data-dir", small_glue_dir, "--output", out_file)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    metrics = json.loads((tiny_teacher_run / "metrics.json").read_text())
    assert result["primary_metric"] == metrics["primary_metric"] == "accuracy"
    assert result["primary_value"] == metrics["primary_value"]
    assert result["metrics"] == metrics["metrics"]
    assert result["params"] == metrics["params"]
    assert json.loads(out_file.read_text()) == result


def _finetune_args(out: Path, tiny_bert_dir: Path, glue: Path, *extra) -> list:
    return ["finetune", "--task", "sst2", "--model", tiny_bert_dir, "--data-dir", glue, "--output-dir", out,
            "--max-steps", "2", "--max-seq-length", "64", "--batch-size", "16", "--no-progress", *extra]


def test_interrupted_run_needs_resume(cli_env, copy_run, tiny_teacher_run, tiny_bert_dir, small_glue_dir):
    run = copy_run(tiny_teacher_run)
    (run / "metrics.json").unlink()        # checkpoints but no metrics.json: an interrupted run
    state = (run / "checkpoints" / "last" / "trainer_state.pt").read_bytes()
    proc = run_cli(cli_env, *_finetune_args(run, tiny_bert_dir, small_glue_dir))
    assert_one_line_error(proc, "interrupted run", "--resume")
    assert not (run / "metrics.json").exists()
    assert (run / "checkpoints" / "last" / "trainer_state.pt").read_bytes() == state
