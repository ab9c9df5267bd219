"""GLUE loading: the real files, strict parsing of fixture files, subsets, tokenization and its cache."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_cfg
from mixkd.core.data import cache_dir, load_glue, load_split, read_glue_tsv, resolve_data_dir, subset_indices
from mixkd.core.errors import UsageError
from mixkd.core.tasks import TASKS, get_task, metric_key


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def train(task, data_dir):
    return load_split(get_task(task), "train", Path(data_dir))[0]


def dev(task, data_dir, i=0):
    t = get_task(task)
    return load_split(t, "dev", Path(data_dir), t.dev_splits[i])[0]


# --- real GLUE files --------------------------------------------------------------------------

@pytest.mark.parametrize("task,n_train,n_dev", [
    ("sst2", 67349, 872), ("mrpc", 3668, 408), ("rte", 2490, 277), ("cola", 8551, 1043),
    ("stsb", 5749, 1500), ("wnli", 635, 71),
])
def test_real_row_counts(glue_dir, task, n_train, n_dev):
    tr, dv = train(task, glue_dir), dev(task, glue_dir)
    assert len(tr) == n_train
    assert len(dv) == n_dev
    spec = get_task(task)
    assert set(tr.column_names) == {*spec.text_keys, "label"}
    labels = np.asarray(tr["label"])
    if spec.regression:
        assert labels.min() >= 0 and labels.max() <= 5 and len(np.unique(labels)) > 10
    else:
        assert set(np.unique(labels).tolist()) == set(range(spec.num_labels))


def test_real_load_split_returns_source_and_content_id(glue_dir):
    ds, src, content = load_split(get_task("rte"), "train", glue_dir)
    assert src == str(glue_dir / "RTE" / "train.tsv")
    assert len(content) == 64     # sha256 of the file
    _, _, content2 = load_split(get_task("rte"), "train", glue_dir)
    assert content == content2
    _, _, content_dev = load_split(get_task("rte"), "dev", glue_dir, get_task("rte").dev_splits[0])
    assert content_dev != content


def test_real_qnli_dev_loads_train_missing_raises(glue_dir):
    assert len(dev("qnli", glue_dir)) == 5463
    with pytest.raises(UsageError) as e:
        train("qnli", glue_dir)
    msg = one_line(e)
    assert "train.tsv" in msg and "QNLI" in msg


def test_real_missing_task_folder_raises(glue_dir):
    # MNLI and QQP are not in the shared GLUE folder
    with pytest.raises(UsageError) as e:
        train("mnli", glue_dir)
    assert "MNLI" in one_line(e)


def test_real_mrpc_quotes_kept_verbatim(glue_dir):
    lines = (glue_dir / "MRPC" / "train.tsv").read_text(encoding="utf-8-sig").split("\n")
    data_lines = [line for line in lines[1:] if line]
    k = next(i for i, line in enumerate(data_lines) if '"' in line)
    fields = data_lines[k].split("\t")
    ds = train("mrpc", glue_dir)
    assert ds[k]["sentence1"] == fields[3]
    assert ds[k]["sentence2"] == fields[4]
    assert '"' in ds[k]["sentence1"] + ds[k]["sentence2"]
    # every quote character in the file's text columns survives
    n_file = sum(line.split("\t")[3].count('"') + line.split("\t")[4].count('"') for line in data_lines)
    n_ds = sum(s.count('"') for s in ds["sentence1"]) + sum(s.count('"') for s in ds["sentence2"])
    assert n_file == n_ds > 100


def test_real_cola_headerless_first_row(glue_dir):
    first = (glue_dir / "CoLA" / "train.tsv").read_text(encoding="utf-8").split("\n")[0].split("\t")
    ds = train("cola", glue_dir)
    assert ds[0]["sentence"] == first[3]
    assert ds[0]["label"] == int(first[1])
    assert ds[0]["sentence"] == "Our friends won't buy this analysis, let alone the next one we propose."
    last = (glue_dir / "CoLA" / "dev.tsv").read_text(encoding="utf-8").split("\n")[-1].split("\t")
    assert dev("cola", glue_dir)[-1]["sentence"] == last[3]   # last line without trailing newline counts


def test_real_mrpc_bom_header_does_not_leak(glue_dir):
    raw = (glue_dir / "MRPC" / "train.tsv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")          # the file really has a BOM
    second = raw.decode("utf-8-sig").split("\n")[1].split("\t")
    ds = train("mrpc", glue_dir)
    assert ds[0]["sentence1"] == second[3]
    assert ds[0]["label"] == int(second[0].lstrip("\ufeff"))
    for col in ("sentence1", "sentence2"):
        assert not any("\ufeff" in s or s in ("#1 String", "#2 String") for s in ds[col])
    dv = dev("mrpc", glue_dir)
    assert not any("\ufeff" in s for s in dv["sentence1"])


def test_real_stsb_labels_are_floats(glue_dir):
    ds = dev("stsb", glue_dir)
    first = (glue_dir / "STS-B" / "dev.tsv").read_text(encoding="utf-8").split("\n")[1].split("\t")
    assert ds[0]["label"] == pytest.approx(float(first[-1]))
    assert ds[0]["sentence1"] == first[7] and ds[0]["sentence2"] == first[8]


# --- fixture files ----------------------------------------------------------------------------

def write(root: Path, folder: str, name: str, lines: list[str], newline: str = "\n") -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    p = root / folder / name
    p.write_bytes((newline.join(lines) + newline).encode("utf-8"))
    return p


def stsb_row(i, s1, s2, score):
    return "\t".join([str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", s1, s2, score])


STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"


def test_fixture_quotes_preserved(tmp_path):
    write(tmp_path, "SST-2", "train.tsv", [
        "sentence\tlabel",
        'he said "wow" twice\t1',
        '"starts with a quote\t0',
        "ends with a quote\"\t1",
        "it 's fine\t0",
    ])
    ds = train("sst2", tmp_path)
    assert ds["sentence"] == ['he said "wow" twice', '"starts with a quote', 'ends with a quote"', "it 's fine"]
    assert ds["label"] == [1, 0, 1, 0]


def test_fixture_pair_task_quotes_and_columns(tmp_path):
    write(tmp_path, "MRPC", "train.tsv", [
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
        '1\t11\t12\tHe called " the witness " .\tA "quoted" one',
        "0\t13\t14\tplain first\tplain second",
    ])
    ds = train("mrpc", tmp_path)
    assert ds["sentence1"] == ['He called " the witness " .', "plain first"]
    assert ds["sentence2"] == ['A "quoted" one', "plain second"]
    assert ds["label"] == [1, 0]


def test_fixture_crlf_line_endings(tmp_path):
    write(tmp_path, "SST-2", "train.tsv", ["sentence\tlabel", "good\t1", "bad\t0"], newline="\r\n")
    ds = train("sst2", tmp_path)
    assert ds["sentence"] == ["good", "bad"]
    assert ds["label"] == [1, 0]


def test_fixture_malformed_row_names_file_and_line(tmp_path):
    p = write(tmp_path, "SST-2", "train.tsv", ["sentence\tlabel", "fine\t1", "no label field here", "ok\t0"])
    with pytest.raises(UsageError) as e:
        train("sst2", tmp_path)
    msg = one_line(e)
    assert f"{p}:3" in msg and "malformed" in msg


def test_fixture_malformed_pair_row(tmp_path):
    p = write(tmp_path, "RTE", "dev.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment",
                                           "1\tonly one sentence\tentailment"])
    with pytest.raises(UsageError) as e:
        dev("rte", tmp_path)
    assert f"{p}:3" in one_line(e)


def test_fixture_headerless_cola_line_numbers(tmp_path):
    p = write(tmp_path, "CoLA", "train.tsv", ["src\t1\t\tgood one .", "src\t7\t*\tbad label ."])
    with pytest.raises(UsageError) as e:
        train("cola", tmp_path)
    msg = one_line(e)
    assert f"{p}:2" in msg and "'7'" in msg
    write(tmp_path, "CoLA", "train.tsv", ["src\t1\t\tgood one .", "src\t0\t*\tbad one ."])
    ds = train("cola", tmp_path)
    assert ds["sentence"] == ["good one .", "bad one ."] and ds["label"] == [1, 0]


@pytest.mark.parametrize("task,folder,lines", [
    ("sst2", "SST-2", ["sentence\tlabel", "fine\t1", "odd\t2"]),
    ("rte", "RTE", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tentailment", "1\tc\td\tneutral"]),
    ("mrpc", "MRPC", ["q\ti1\ti2\ts1\ts2", "1\t1\t2\ta\tb", "yes\t3\t4\tc\td"]),
])
def test_fixture_label_outside_task_labels_raises(tmp_path, task, folder, lines):
    p = write(tmp_path, folder, "train.tsv", lines)
    with pytest.raises(UsageError) as e:
        train(task, tmp_path)
    msg = one_line(e)
    assert f"{p}:3" in msg and repr(lines[2].split("\t")[get_task(task).label_column]) in msg


def test_fixture_string_labels_map_in_task_order(tmp_path):
    write(tmp_path, "RTE", "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tnot_entailment",
                                         "1\tc\td\tentailment"])
    assert train("rte", tmp_path)["label"] == [1, 0]
    write(tmp_path, "WNLI", "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\t1", "1\tc\td\t0"])
    assert train("wnli", tmp_path)["label"] == [1, 0]


@pytest.mark.parametrize("lines", [["sentence\tlabel"], ["sentence\tlabel", ""], []])
def test_fixture_empty_split_raises(tmp_path, lines):
    p = tmp_path / "SST-2" / "train.tsv"
    (tmp_path / "SST-2").mkdir()
    p.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(UsageError) as e:
        train("sst2", tmp_path)
    assert str(p) in one_line(e)


def test_fixture_missing_task_folder_raises(tmp_path):
    write(tmp_path, "SST-2", "train.tsv", ["sentence\tlabel", "fine\t1"])
    with pytest.raises(UsageError) as e:
        train("mrpc", tmp_path)
    msg = one_line(e)
    assert "MRPC" in msg and str(tmp_path) in msg


def test_fixture_missing_file_in_folder_raises(tmp_path):
    write(tmp_path, "SST-2", "train.tsv", ["sentence\tlabel", "fine\t1"])
    with pytest.raises(UsageError) as e:
        dev("sst2", tmp_path)
    assert str(tmp_path / "SST-2" / "dev.tsv") in one_line(e)


@pytest.mark.parametrize("score", ["5.5", "-0.1", "abc", "nan", ""])
def test_fixture_stsb_score_out_of_range_raises(tmp_path, score):
    p = write(tmp_path, "STS-B", "train.tsv", [STSB_HEADER, stsb_row(0, "a", "b", "3.2"),
                                               stsb_row(1, "c", "d", score)])
    with pytest.raises(UsageError) as e:
        train("stsb", tmp_path)
    msg = one_line(e)
    assert f"{p}:3" in msg and "[0, 5]" in msg


def test_fixture_stsb_bounds_inclusive(tmp_path):
    write(tmp_path, "STS-B", "train.tsv", [STSB_HEADER, stsb_row(0, "a", "b", "0.000"),
                                           stsb_row(1, "c", "d", "5.000"), stsb_row(2, "e", "f", "2.5")])
    ds = train("stsb", tmp_path)
    assert ds["label"] == pytest.approx([0.0, 5.0, 2.5])
    assert ds["sentence1"] == ["a", "c", "e"] and ds["sentence2"] == ["b", "d", "f"]


def test_fixture_mnli_two_dev_splits(tmp_path):
    hdr = "\t".join(f"c{i}" for i in range(12))

    def row(p, h, y):
        return "\t".join(["0", "1", "2", "g", "x", "x", "x", "x", p, h, y, y])

    write(tmp_path, "MNLI", "dev_matched.tsv", [hdr, row("p1", "h1", "neutral")])
    write(tmp_path, "MNLI", "dev_mismatched.tsv", [hdr, row("p2", "h2", "contradiction"),
                                                   row("p3", "h3", "entailment")])
    m, mm = dev("mnli", tmp_path, 0), dev("mnli", tmp_path, 1)
    assert m["premise"] == ["p1"] and m["label"] == [1]
    assert mm["hypothesis"] == ["h2", "h3"] and mm["label"] == [2, 0]


def test_read_glue_tsv_direct_missing_file(tmp_path):
    with pytest.raises(UsageError) as e:
        read_glue_tsv(tmp_path / "x.tsv", get_task("sst2"))
    assert str(tmp_path / "x.tsv") in one_line(e)


# --- data dir resolution / hub ----------------------------------------------------------------

def test_resolve_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    assert resolve_data_dir(None) is None
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path
    with pytest.raises(UsageError) as e:
        resolve_data_dir(str(tmp_path / "missing"))
    assert "--data-dir" in one_line(e) and str(tmp_path / "missing") in str(e.value)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "gone"))
    with pytest.raises(UsageError) as e:
        resolve_data_dir(None)
    assert "$GLUE_DIR" in one_line(e)


def test_hub_path_offline_raises_usage_error(monkeypatch):
    import time
    monkeypatch.delenv("GLUE_DIR", raising=False)
    data_dir = resolve_data_dir(None)
    assert data_dir is None
    t0 = time.monotonic()
    with pytest.raises(UsageError) as e:
        load_split(get_task("sst2"), "train", data_dir)
    msg = one_line(e)
    assert "hub" in msg and "--data-dir" in msg
    assert time.monotonic() - t0 < 20


# --- subset_indices ---------------------------------------------------------------------------

def test_subset_deterministic_and_seed_dependent():
    a = subset_indices(1000, 0.1, seed=0)
    b = subset_indices(1000, 0.1, seed=0)
    c = subset_indices(1000, 0.1, seed=1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("n,frac,size", [(1000, 0.1, 100), (256, 0.1, 26), (67349, 0.01, 673), (10, 0.25, 2),
                                         (10, 0.35, 4), (5, 0.01, 1), (1, 0.5, 1), (3, 0.999, 3)])
def test_subset_size_sorted_unique(n, frac, size):
    idx = subset_indices(n, frac, seed=3)
    assert len(idx) == size == max(1, round(frac * n))
    assert np.all(np.diff(idx) > 0)                    # sorted and unique
    assert idx.min() >= 0 and idx.max() < n


@pytest.mark.parametrize("n", [1, 7, 100])
def test_subset_fraction_one_is_everything(n):
    assert np.array_equal(subset_indices(n, 1.0, seed=5), np.arange(n))


def test_subset_spreads_over_the_file():
    idx = subset_indices(10000, 0.1, seed=0)
    assert idx.min() < 500 and idx.max() > 9500


# --- load_glue --------------------------------------------------------------------------------

def cfg_(**kw):
    """tiny_cfg with data_fraction resolved as run.py does before load_glue (None -> 1.0)."""
    kw.setdefault("data_fraction", 1.0)
    return tiny_cfg(**kw)


@pytest.fixture(scope="module")
def tok(tiny_bert_dir):
    from mixkd.core.models import load_tokenizer
    return load_tokenizer(str(tiny_bert_dir))


def test_load_glue_subset_info(small_glue_dir, tok):
    cfg = cfg_(data_dir=str(small_glue_dir), data_fraction=0.1)
    d1 = load_glue(cfg, get_task("sst2"), tok)
    d2 = load_glue(cfg, get_task("sst2"), tok)
    assert d1.info["train_rows_total"] == 256
    assert d1.info["train_rows_subset"] == 26 == d1.info["train_rows"] == len(d1.train)
    assert d1.info["data_fraction"] == 0.1 and d1.info["data_seed"] == 0
    assert d1.info["subset_fingerprint"] == d2.info["subset_fingerprint"]
    assert d1.info["dev_rows"] == 64 == len(d1.dev[""])
    assert d1.info["data_source"] == str(small_glue_dir)
    assert d1.dev_splits == list(get_task("sst2").dev_splits)
    other = load_glue(cfg.replace(data_seed=1), get_task("sst2"), tok)
    assert other.info["subset_fingerprint"] != d1.info["subset_fingerprint"]
    assert other.train["labels"] != d1.train["labels"] or other.train["input_ids"] != d1.train["input_ids"]
    # the subset rows are exactly the chosen rows of the file, in file order
    raw = train("sst2", small_glue_dir)
    idx = subset_indices(256, 0.1, 0)
    assert d1.train["labels"] == [raw[int(i)]["label"] for i in idx]
    assert d1.train[0]["input_ids"] == tok(raw[int(idx[0])]["sentence"], truncation=True, max_length=64)["input_ids"]


def test_load_glue_tokenized_columns(small_glue_dir, tok):
    d = load_glue(cfg_(data_dir=str(small_glue_dir), task="mrpc", max_seq_length=32), get_task("mrpc"), tok)
    for ds in (d.train, d.dev[""]):
        assert {"input_ids", "attention_mask", "labels"} <= set(ds.column_names)
        assert "sentence1" not in ds.column_names and "label" not in ds.column_names
    assert len(d.train) == 128 and len(d.dev[""]) == 32
    assert max(len(x) for x in d.train["input_ids"]) <= 32
    row = d.train[0]
    assert row["input_ids"][0] == tok.cls_token_id and row["input_ids"].count(tok.sep_token_id) == 2
    assert 1 in row["token_type_ids"]                 # sentence pairs get segment ids


def test_load_glue_regression_labels(small_glue_dir, tok):
    d = load_glue(cfg_(data_dir=str(small_glue_dir), task="stsb", max_eval_samples=5), get_task("stsb"), tok)
    raw = dev("stsb", small_glue_dir)
    assert d.dev[""]["labels"] == pytest.approx(raw["label"][:5])
    assert isinstance(d.dev[""]["labels"][0], float)


def test_load_glue_augment_file(small_glue_dir, tok, tmp_path):
    aug = tmp_path / "bt.tsv"
    aug.write_text("sentence\tlabel\nan augmented line\t1\nanother one\t0\nthird\t1\n", encoding="utf-8")
    base = cfg_(data_dir=str(small_glue_dir), data_fraction=0.1)
    d0 = load_glue(base, get_task("sst2"), tok)
    d = load_glue(base.replace(augment_file=str(aug)), get_task("sst2"), tok)
    assert d.info["augment_rows"] == 3
    assert d.info["augment_file"] == str(aug)
    assert d.info["train_rows"] == d0.info["train_rows"] + 3 == len(d.train)
    assert d.info["train_rows_subset"] == d0.info["train_rows_subset"]
    assert d.train["labels"][-3:] == [1, 0, 1]
    assert d.train[-3]["input_ids"] == tok("an augmented line", truncation=True, max_length=64)["input_ids"]
    assert d.train["input_ids"][:-3] == d0.train["input_ids"]


def test_load_glue_bad_augment_file_raises(small_glue_dir, tok, tmp_path):
    aug = tmp_path / "bt.tsv"
    aug.write_text("sentence\tlabel\nok\t1\nbroken row\n", encoding="utf-8")
    with pytest.raises(UsageError) as e:
        load_glue(cfg_(data_dir=str(small_glue_dir), augment_file=str(aug)), get_task("sst2"), tok)
    assert f"{aug}:3" in one_line(e)


def test_load_glue_max_eval_samples(small_glue_dir, tok):
    d = load_glue(cfg_(data_dir=str(small_glue_dir), max_eval_samples=10), get_task("sst2"), tok,
                  train=False)
    assert d.train is None
    assert len(d.dev[""]) == 10 and d.info["dev_rows"] == 10
    full = load_glue(cfg_(data_dir=str(small_glue_dir)), get_task("sst2"), tok, train=False)
    assert full.dev[""]["input_ids"][:10] == d.dev[""]["input_ids"]
    big = load_glue(cfg_(data_dir=str(small_glue_dir), max_eval_samples=10_000), get_task("sst2"), tok,
                    train=False)
    assert len(big.dev[""]) == 64


def test_load_glue_tokenization_cache(small_glue_dir, tok):
    cfg = cfg_(data_dir=str(small_glue_dir), task="rte", data_fraction=0.5, max_seq_length=48)
    d1 = load_glue(cfg, get_task("rte"), tok)
    cached = sorted((cache_dir() / "tokenized").glob("*.arrow"))
    assert cached, "no tokenization cache file written"
    files = [f["filename"] for f in d1.train.cache_files]
    assert files and all(Path(f).parent == cache_dir() / "tokenized" for f in files)
    d2 = load_glue(cfg, get_task("rte"), tok)
    assert [f["filename"] for f in d2.train.cache_files] == files
    assert d2.train["input_ids"] == d1.train["input_ids"]
    assert d2.train["labels"] == d1.train["labels"]
    assert d2.dev[""]["input_ids"] == d1.dev[""]["input_ids"]
    # another length is another cache entry, with other content
    d3 = load_glue(cfg.replace(max_seq_length=16), get_task("rte"), tok)
    assert [f["filename"] for f in d3.train.cache_files] != files
    assert max(len(x) for x in d3.train["input_ids"]) <= 16 < max(len(x) for x in d1.train["input_ids"])


def test_load_glue_cache_follows_file_content(tmp_path, tok):
    write(tmp_path, "SST-2", "train.tsv", ["sentence\tlabel", "good movie\t1", "bad movie\t0"])
    write(tmp_path, "SST-2", "dev.tsv", ["sentence\tlabel", "fine\t1"])
    cfg = cfg_(data_dir=str(tmp_path))
    d1 = load_glue(cfg, get_task("sst2"), tok)
    write(tmp_path, "SST-2", "train.tsv", ["sentence\tlabel", "awful movie\t0", "great movie\t1"])
    d2 = load_glue(cfg, get_task("sst2"), tok)
    assert d2.train["labels"] == [0, 1] != d1.train["labels"]
    assert d2.train[0]["input_ids"] == tok("awful movie", truncation=True, max_length=64)["input_ids"]


def test_load_glue_hub_offline_raises_but_sst2_loads_the_embedded_sample(monkeypatch, tok):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    with pytest.raises(UsageError) as e:
        load_glue(cfg_(task="rte", data_dir=None), get_task("rte"), tok)
    assert "--data-dir" in one_line(e)
    d = load_glue(cfg_(data_dir=None, max_train_samples=300), get_task("sst2"), tok)
    assert d.info["data_source"].startswith("embedded:") and d.info["train_rows_total"] == 4000
    assert d.info["train_rows"] == 300 and d.info["dev_rows"] == 872 and d.info["max_train_samples"] == 300


# --- task table -------------------------------------------------------------------------------

@pytest.mark.parametrize("name,canon", [("SST-2", "sst2"), ("sst2", "sst2"), ("sst-2", "sst2"), ("STS-B", "stsb"),
                                        ("stsb", "stsb"), ("MNLI", "mnli"), ("CoLA", "cola"), ("qnli", "qnli")])
def test_get_task_spellings(name, canon):
    assert get_task(name).name == canon


@pytest.mark.parametrize("bad", ["sst3", "glue", "", "mnli-mm"])
def test_get_task_unknown_lists_tasks(bad):
    with pytest.raises(UsageError) as e:
        get_task(bad)
    msg = one_line(e)
    assert f"'{bad}'" in msg
    for name in TASKS:
        assert name in msg


def test_task_table():
    assert len(TASKS) == 9
    assert set(TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    mnli = get_task("mnli")
    assert len(mnli.dev_splits) == 2
    assert {s.tsv_file for s in mnli.dev_splits} == {"dev_matched.tsv", "dev_mismatched.tsv"}
    assert [metric_key("accuracy", s) for s in mnli.dev_splits] == ["accuracy", "accuracy_mm"]
    stsb = get_task("stsb")
    assert stsb.regression and stsb.num_labels == 1 and stsb.label_names == ()
    for name, spec in TASKS.items():
        assert len(spec.tsv_labels) == len(spec.label_names)
        assert spec.primary_metric in spec.metrics
        assert spec.num_labels == (1 if spec.regression else len(spec.label_names))
        if name != "mnli":
            assert len(spec.dev_splits) == 1
    assert get_task("mnli").num_labels == 3 and get_task("cola").has_header is False


# --- data source order: flag, $GLUE_DIR, the hub when reachable, the embedded SST-2 sample ---------------

@pytest.fixture
def fresh_hub_status(monkeypatch):
    """hub_status is asked once per process: clear it around each test (and restore the env it may set)."""
    from mixkd.core import data as D
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT", "GLUE_DIR"):
        monkeypatch.delenv(var, raising=False)
    D.hub_status.cache_clear()
    D._announced.clear()
    yield D
    D.hub_status.cache_clear()


def test_source_order_flag_env_hub_embedded(fresh_hub_status, tmp_path, monkeypatch, capsys):
    D = fresh_hub_status
    sst2, rte = get_task("sst2"), get_task("rte")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    flag = tmp_path / "flag"
    flag.mkdir()
    assert D.resolve_data_source(str(flag), sst2) == D.DataSource("dir", flag, f"the GLUE folder {flag} (--data-dir)")
    from_env = D.resolve_data_source(None, sst2)
    assert from_env.path == tmp_path and "$GLUE_DIR" in from_env.description
    monkeypatch.delenv("GLUE_DIR")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = D.resolve_data_source(None, sst2)
    assert src.kind == "embedded" and src.path == D.EMBEDDED_DIR and "HF_HUB_OFFLINE is set" in src.description
    with pytest.raises(UsageError) as e:
        D.resolve_data_source(None, rte)
    msg = one_line(e)
    assert "no data for task rte" in msg and "--data-dir" in msg and "sst2" in msg
    D.announce_data_source(src, sst2)
    D.announce_data_source(src, sst2)                    # once per process and task
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mixkd: sst2 data from the SST-2 sample embedded in mixkd")


def test_unreachable_hub_is_found_quickly_and_turns_offline(fresh_hub_status):
    import time
    D = fresh_hub_status
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"     # nothing listens on the discard port
    try:
        t0 = time.monotonic()
        reachable, why = D.hub_status()
        assert not reachable and "unreachable" in why and time.monotonic() - t0 < 5
        assert os.environ.get("HF_HUB_OFFLINE") == "1" and os.environ.get("HF_DATASETS_OFFLINE") == "1"
        assert D.resolve_data_source(None, get_task("sst2")).kind == "embedded"
    finally:
        for var in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ.pop(var, None)
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"   # as conftest set them


def test_reachable_hub_is_chosen_before_the_embedded_sample(fresh_hub_status):
    """A server that answers (even 404) counts as the hub being there."""
    import http.server
    import threading
    D = fresh_hub_status

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *a):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["HF_ENDPOINT"] = f"http://127.0.0.1:{server.server_port}"
    try:
        assert D.hub_status() == (True, f"http://127.0.0.1:{server.server_port} answered")
        src = D.resolve_data_source(None, get_task("rte"))
        assert src.kind == "hub" and src.path is None
    finally:
        server.shutdown()
        os.environ.pop("HF_ENDPOINT", None)
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"


def test_embedded_sample_is_real_sst2_with_the_documented_counts(glue_dir):
    from mixkd.core.data import EMBEDDED_DIR
    task = get_task("sst2")
    train = read_glue_tsv(EMBEDDED_DIR / "SST-2" / "train.tsv", task)
    dev = read_glue_tsv(EMBEDDED_DIR / "SST-2" / "dev.tsv", task)
    assert len(train["label"]) == 4000 and (train["label"].count(0), train["label"].count(1)) == (1768, 2232)
    assert len(dev["label"]) == 872 and set(dev["label"]) == {0, 1}
    full = read_glue_tsv(glue_dir / "SST-2" / "train.tsv", task)
    rows = set(zip(full["sentence"], full["label"]))
    assert all(r in rows for r in zip(train["sentence"], train["label"]))   # every row is a real SST-2 row
    assert (EMBEDDED_DIR / "SST-2" / "dev.tsv").read_bytes() == (glue_dir / "SST-2" / "dev.tsv").read_bytes()
    readme = (EMBEDDED_DIR / "README.md").read_text()
    assert "Socher" in readme and "GLUE" in readme and "4,000" in readme


def test_max_train_samples_caps_the_fraction_subset():
    full = subset_indices(1000, 1.0, 3)
    capped = subset_indices(1000, 1.0, 3, 100)
    assert len(capped) == 100 and set(capped) <= set(full) and list(capped) == sorted(capped)
    frac = subset_indices(1000, 0.5, 3)
    both = subset_indices(1000, 0.5, 3, 50)
    assert len(both) == 50 and set(both) <= set(frac)
    assert list(subset_indices(1000, 0.5, 3, 5000)) == list(frac)          # a cap above the subset: unchanged
    assert list(subset_indices(1000, 0.5, 3, 50)) == list(both)            # seeded
