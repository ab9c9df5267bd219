"""Predictions of a saved classifier on new text: ``mixkd predict`` and :func:`predict`.

Any model mixkd saved loads here: a run dir (its ``model/``), a ``model/`` folder, a ``mixkd select`` or
``mixkd export`` folder in any format (torch, torch-int8, onnx, onnx-int8, through
:func:`mixkd.deploy.formats.load_exported`), or a local Hugging Face sequence-classification folder
(safetensors weights; remote code only with ``trust_remote_code=True``).

Each prediction is ``{"label": NAME, "label_id": I, "probabilities": {NAME: p, ...}}`` (softmax of the logits,
names from the model config's ``id2label``) or, for a regression model (``num_labels == 1``), ``{"score": x}``.
Texts are tokenized in batches the way mixkd trains (truncation to ``max_length``; a text pair as the
tokenizer's pair encoding) and the model runs in fp32. ``max_length`` defaults to the run's
``max_seq_length`` (from ``config.yaml`` beside the model, ``mixkd_export.json`` or ``selection.json``), else 128.
"""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..core.errors import UsageError
from . import formats as deploy_formats

DEFAULT_MAX_LENGTH = 128
DEFAULT_BATCH_SIZE = 32
DEVICES = ("cpu", "cuda", "auto")
TEXT_COLUMNS = ("text", "sentence")   # tried in this order when no text column is named
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------
def _positive(flag: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{flag} {value} is invalid; use a positive integer")
    return value


def _run_config(folder: Path) -> dict | None:
    """config.yaml of the run a model folder belongs to (the run dir of a run's model/), if any."""
    import yaml
    from ..core.custom_data import run_config_file
    f = run_config_file(str(folder))   # the same lookup the data inheritance uses
    try:
        cfg = yaml.safe_load(f.read_text()) if f is not None else None
    except (OSError, yaml.YAMLError):
        cfg = None
    return cfg if isinstance(cfg, dict) else None


def trained_texts(folder: Path, meta: dict | None) -> tuple[str, int] | None:
    """(task, texts per example: 1 or 2) the model was trained on, where a mixkd file beside it says so (an export's
    mixkd_export.json, a run's config.yaml); None for a plain HF folder."""
    from ..core.tasks import get_task, is_glue
    rec = meta if meta and meta.get("task") else _run_config(folder)
    if not rec or not rec.get("task"):
        return None
    cols = rec.get("text_columns") or (rec.get("task_data") or {}).get("text_columns")
    if cols:
        return str(rec["task"]), len(str(cols).split(","))
    return (str(rec["task"]), len(get_task(rec["task"]).text_keys)) if is_glue(rec["task"]) else None


def _run_max_length(folder: Path, meta: dict | None) -> int | None:
    """The ``max_seq_length`` the model was trained or exported with, if a mixkd file beside it says so."""
    if meta and meta.get("max_seq_length"):
        return int(meta["max_seq_length"])
    cfg = _run_config(folder)
    if isinstance(cfg, dict) and isinstance(cfg.get("max_seq_length"), int):
        return cfg["max_seq_length"]
    sel = folder / "selection.json"             # a `mixkd select` folder (torch)
    try:
        value = (json.loads(sel.read_text()).get("config") or {}).get("max_seq_length") if sel.is_file() else None
    except (OSError, ValueError, AttributeError):
        value = None
    return int(float(value)) if value not in (None, "", "None") else None


def _classifier_folder(model: str) -> Path:
    """The HF folder of a mixkd run dir, its ``model/``, a select folder or an HF folder; UsageError for a
    missing folder or one that does not hold a sequence classifier."""
    from ..core.models import resolve_model
    p = Path(model).expanduser()
    if not p.is_dir():
        what = "is a file, not a model folder" if p.exists() else "does not exist"
        raise UsageError(f"--model {model} {what}; give a mixkd run dir, its model/, a `mixkd export` or "
                         f"`mixkd select` folder, or a local HF classifier folder")
    path = Path(resolve_model(str(p)))
    try:
        archs = list(json.loads((path / "config.json").read_text()).get("architectures") or [])
    except (OSError, ValueError, AttributeError):
        raise UsageError(f"{path / 'config.json'} is not a valid model config (JSON); save the model again") from None
    if not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise UsageError(f"--model {model} is not a sequence classifier (architectures: {', '.join(archs) or 'none'}); "
                         f"predict with a fine-tuned classifier: a mixkd run dir, its model/ or an export")
    return path


class Predictor:
    """A loaded classifier, callable on texts (and text pairs): ``Predictor(dir)(["a film"]) -> [dict]``.

    ``device``: cpu, cuda (or cuda:N) or auto (CUDA when visible; ONNX and int8 exports always run on CPU).
    ``threads``: ONNX Runtime intra-op threads for onnx exports (default: torch's)."""

    def __init__(self, model_dir: str | os.PathLike, device: str = "auto", trust_remote_code: bool = False,
                 threads: int | None = None):
        model = str(model_dir)
        if str(device).split(":")[0] not in DEVICES:
            raise UsageError(f"--device {device!r} is invalid; use cpu, cuda (or cuda:N) or auto")
        folder = Path(model).expanduser()
        self.meta = deploy_formats.read_export_meta(folder) if folder.is_dir() else None
        self.path = folder if self.meta is not None else _classifier_folder(model)   # checked before torch loads
        from ..core.device import resolve_device
        from ..core.models import quiet_transformers
        quiet_transformers()
        if self.meta is not None:
            self.format = str(self.meta.get("format"))
            runs_on_cpu = deploy_formats.is_onnx(self.format) or deploy_formats.is_int8(self.format)
            if runs_on_cpu and str(device).startswith("cuda"):
                raise UsageError(f"--model {model} is an export in format {self.format}, which runs on CPU; "
                                 f"use --device cpu or auto")
            self.device = resolve_device("cpu" if runs_on_cpu else device)
            self.model, self.tokenizer, _ = deploy_formats.load_exported(folder, threads)
        else:
            self.format = "torch"
            self.device = resolve_device(device)
            self.model, self.tokenizer = self._load_torch(trust_remote_code)
        if not deploy_formats.is_onnx(self.format):
            self.model = self.model.to(self.device)
        self.model.eval()
        self.config = self.model.config
        # torch models of a packed family run their batches padding-free (same logits, less work)
        from ..core.packing import unpacked_reason
        self.packed = not deploy_formats.is_onnx(self.format) and unpacked_reason(self.model) is None
        self.num_labels = int(self.config.num_labels)
        id2label = {int(k): str(v) for k, v in (getattr(self.config, "id2label", None) or {}).items()}
        self.labels = [id2label.get(i, f"LABEL_{i}") for i in range(self.num_labels)]
        self.max_length = _run_max_length(self.path, self.meta) or DEFAULT_MAX_LENGTH
        self.trained = trained_texts(self.path, self.meta)   # (task, texts per example) where known

    def check_shape(self, text_pairs) -> None:
        """A model trained on pairs is given pairs, one trained on single texts is not (where that is known)."""
        if self.trained is None:
            return
        task, n = self.trained
        if n == 2 and text_pairs is None:
            raise UsageError(f"{self.path} was trained on sentence pairs ({task}); give a --text-pair for every "
                             f"--text (an input file: --text-pair-column)")
        if n == 1 and text_pairs is not None:
            raise UsageError(f"{self.path} was trained on single texts ({task}); drop --text-pair / "
                             f"--text-pair-column")

    def _load_torch(self, trust_remote_code: bool):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from ..core.weights import check_weights
        check_weights(self.path)
        try:
            tok = AutoTokenizer.from_pretrained(str(self.path), trust_remote_code=trust_remote_code)
            model = AutoModelForSequenceClassification.from_pretrained(
                str(self.path), trust_remote_code=trust_remote_code, use_safetensors=True)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load the classifier in {self.path} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160]}); it needs a tokenizer and safetensors weights "
                             f"(model.safetensors), and --trust-remote-code for a model with its own code") from None
        return model, tok

    def check_max_length(self, max_length: int) -> int:
        """``max_length`` if this model's position embeddings reach that far, else UsageError."""
        _positive("--max-length", max_length)
        limit = getattr(self.config, "max_position_embeddings", None)
        if isinstance(limit, int) and max_length > limit:
            raise UsageError(f"--max-length {max_length} is more than the model's {limit} positions; "
                             f"use --max-length {min(limit, 512)} or less")
        return max_length

    def logits(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None):
        """The model's logits (rows in input order) as a float32 numpy array of shape (len(texts), num_labels)."""
        import numpy as np
        import torch
        from ..core.packing import forward as packing_forward
        from ..core.trainer import model_inputs
        texts, text_pairs = check_texts(texts, text_pairs)
        self.check_shape(text_pairs)
        batch_size = _positive("--batch-size", batch_size)
        max_length = self.check_max_length(self.max_length if max_length is None else max_length)
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                pair = None if text_pairs is None else text_pairs[i:i + batch_size]
                enc = self.tokenizer(texts[i:i + batch_size], pair, truncation=True, max_length=max_length,
                                     padding=True, return_tensors="pt")
                batch = {k: v.to(self.device) for k, v in enc.items()}
                logits = packing_forward(self.model, model_inputs(self.model, batch), self.packed).logits
                out.append(logits.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.num_labels), dtype=np.float32)

    def __call__(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None) -> list[dict[str, Any]]:
        return self.rows(self.logits(texts, text_pairs, batch_size, max_length))

    def rows(self, logits) -> list[dict[str, Any]]:
        """One prediction per row of ``logits``: label, label id and the probability of every label (softmax),
        or the score of a regression model."""
        import numpy as np
        if self.num_labels == 1:
            return [{"score": float(v)} for v in logits[:, 0]]
        z = logits.astype(np.float64)
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return [{"label": self.labels[int(r.argmax())], "label_id": int(r.argmax()),
                 "probabilities": dict(zip(self.labels, map(float, r)))} for r in p]


def check_texts(texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> tuple[list[str], list[str] | None]:
    """Texts (and pairs) as lists of strings; UsageError for a bare string, a non-string or a count mismatch."""
    if isinstance(texts, str):
        raise UsageError("texts must be a list of strings, not one string; wrap it: [text]")
    texts = list(texts)
    pairs = None if text_pairs is None else list(text_pairs)
    if pairs is not None and len(pairs) != len(texts):
        raise UsageError(f"{len(texts)} text(s) but {len(pairs)} text pair(s); give one --text-pair per --text, "
                         f"in the same order (or none)")
    for name, seq in (("text", texts), ("text pair", pairs or [])):
        bad = next((i for i, t in enumerate(seq) if not isinstance(t, str)), None)
        if bad is not None:
            raise UsageError(f"{name} {bad + 1} is {type(seq[bad]).__name__}, not a string; give text")
        # training refuses empty texts, and so does predict: a prediction for nothing would look like an answer
        empty = next((i for i, t in enumerate(seq) if not t.strip()), None)
        if empty is not None:
            raise UsageError(f"{name} {empty + 1} is empty; give it text or leave that example out")
    return texts, pairs


def predict(model_dir: str | os.PathLike, texts: Sequence[str], text_pairs: Sequence[str] | None = None, *,
            batch_size: int = DEFAULT_BATCH_SIZE, max_length: int | None = None, device: str = "auto",
            trust_remote_code: bool = False, threads: int | None = None) -> list[dict[str, Any]]:
    """Predictions of the classifier in ``model_dir`` for ``texts`` (and ``text_pairs``), in input order (see the
    module doc for what ``model_dir`` may be and what a prediction holds)."""
    check_texts(texts, text_pairs)
    return Predictor(model_dir, device, trust_remote_code, threads)(texts, text_pairs, batch_size, max_length)


# --------------------------------------------------------------------------------------------------
# input and output files
# --------------------------------------------------------------------------------------------------
def _records(path: Path) -> tuple[list[str], list[dict]]:
    """(columns, rows) of a CSV / TSV (header row) or JSON lines file (one object per line; also a JSON array)."""
    suffix = path.suffix.lower()
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"--input-file {path} is not UTF-8 text; save it as UTF-8") from None
    if suffix in TABLE_SUFFIXES:    # TSV as GLUE writes it: no quoting; CSV: standard quoting
        quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
        reader = csv.DictReader(raw.splitlines(), delimiter=TABLE_SUFFIXES[suffix], quoting=quoting)
        rows = list(reader)
        return list(reader.fieldnames or []), rows
    stripped = raw.strip()
    if stripped.startswith("["):
        try:
            rows = json.loads(stripped)
        except ValueError as e:
            raise UsageError(f"--input-file {path} is not valid JSON ({e}); write one JSON object per line") from None
        lines = list(enumerate(rows, start=1))
    else:
        lines = []
        for n, line in enumerate(raw.splitlines(), start=1):
            if line.strip():
                try:
                    lines.append((n, json.loads(line)))
                except ValueError as e:
                    raise UsageError(f"{path}:{n}: not a JSON object ({e}); write one JSON object per line") from None
    for n, row in lines:
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{n}: a JSON {type(row).__name__}, not an object; "
                             f"write {{\"text\": ...}} per line")
    columns = list(dict.fromkeys(k for _, r in lines for k in r))
    return columns, [r for _, r in lines]


def _column(path: Path, columns: list[str], name: str | None, flag: str) -> str:
    if name is not None:
        if name not in columns:
            raise UsageError(f"--input-file {path} has no column {name!r} ({flag}); its columns: "
                             f"{', '.join(map(repr, columns)) or 'none'}")
        return name
    found = [c for c in TEXT_COLUMNS if c in columns] or (columns if len(columns) == 1 else [])
    if not found:
        raise UsageError(f"--input-file {path}: which column holds the text? name it with --text-column "
                         f"(its columns: {', '.join(map(repr, columns)) or 'none'})")
    return found[0]


def read_inputs(path: str | os.PathLike, text_column: str | None = None,
                text_pair_column: str | None = None) -> tuple[list[str], list[str] | None]:
    """(texts, text pairs or None) of an input file, in file order: a text file (``.txt`` or any other suffix)
    holds one text per line; a CSV / TSV (with a header row) or JSON lines file holds a column of texts
    (``text_column``, default ``text`` or ``sentence`` or its only column) and optionally of pairs."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"--input-file {path} {'is a folder, not a file' if p.is_dir() else 'does not exist'}; "
                         f"give a text file (one example per line) or a CSV, TSV or JSON lines file")
    if p.suffix.lower() not in (*TABLE_SUFFIXES, *JSON_SUFFIXES):
        if text_column or text_pair_column:
            raise UsageError(f"--input-file {path} is plain text (one example per line): it has no columns; "
                             f"give a .csv, .tsv or .jsonl file for --text-column / --text-pair-column")
        try:
            lines = p.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"--input-file {path} is not UTF-8 text; save it as UTF-8") from None
        while lines and not lines[-1].strip():
            lines.pop()
        blank = next((i for i, t in enumerate(lines) if not t.strip()), None)
        if blank is not None:
            raise UsageError(f"{path}:{blank + 1}: empty line; every line is one example (remove it, or use a "
                             f"CSV/JSONL file for empty texts)")
        if not lines:
            raise UsageError(f"--input-file {path} is empty; give one example per line")
        return lines, None
    columns, rows = _records(p)
    if not rows:
        raise UsageError(f"--input-file {path} has no rows; give a header row and one example per row")
    tcol = _column(p, columns, text_column, "--text-column")
    pcol = None if text_pair_column is None else _column(p, columns, text_pair_column, "--text-pair-column")
    out: list[list[str]] = [[], []]
    for n, row in enumerate(rows, start=1):
        for col, dst in ((tcol, out[0]), (pcol, out[1])):
            if col is None:
                continue
            v = row.get(col)
            if not isinstance(v, str):
                raise UsageError(f"{path}: row {n} has {'no' if v is None else type(v).__name__} value in column "
                                 f"{col!r}; every row needs a text there")
            dst.append(v)
    return out[0], (out[1] if pcol is not None else None)


def check_output_file(path: str | os.PathLike) -> Path:
    """``--output-file``: a file in an existing folder (it is replaced when it exists)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UsageError(f"--output-file {path} is a folder; give a file name, e.g. {Path(path) / 'predictions.jsonl'}")
    if not p.parent.is_dir():
        raise UsageError(f"--output-file {path}: the folder {p.parent} does not exist; create it first")
    return p


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> None:
    """JSON lines to ``path`` via a temporary sibling, so the file is complete or untouched."""
    p = Path(path).expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
