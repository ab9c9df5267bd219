"""The model card (README.md) of a student exported by ``mixkd select``, rendered from its selection dict."""
from __future__ import annotations

import json
import math
from typing import Any, Mapping

import yaml


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _pm(mean: Any, std: Any, n: Any, nd: int = 4) -> str:
    if std is None or (isinstance(std, float) and not math.isfinite(std)):
        return f"{_fmt(mean, nd)} (1 seed, no std)" if n == 1 else _fmt(mean, nd)
    return f"{_fmt(mean, nd)} ± {_fmt(std, nd)} (n={n})"


def model_card(sel: Mapping[str, Any]) -> str:
    """Markdown with YAML front matter: task, dev metrics mean ± std over seeds, latency statistics and
    the hardware/software fingerprint, parameters, speed-up vs the teacher, the config, MLflow run ids."""
    ch, t = sel["chosen"], sel.get("teacher") or {}
    lines = (_card_model(sel, ch) + _card_metrics(sel, ch, t) + _card_latency(sel, ch, t)
             + _card_provenance(sel, ch, t))
    return "\n".join(lines)


def _card_model(sel: Mapping[str, Any], ch: Mapping[str, Any]) -> list[str]:
    """Front matter, how the student was chosen, how to load it, and the model's table."""
    task = sel.get("task")
    front = {"library_name": "transformers", "pipeline_tag": "text-classification",
             "tags": ["mixkd", "knowledge-distillation", "text-classification", "glue"],
             "datasets": ["nyu-mll/glue"]}
    where = sel.get("out") or "PATH"
    b, s, pct = sel["batch_size"], sel["seq_len"], sel["percentile"]
    return ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
            f"# MixKD student for GLUE {task}: {ch.get('label')}", "",
            f"Chosen by `mixkd select` as the most accurate configuration whose **{pct} latency at batch {b}, "
            f"sequence length {s} on {sel.get('device')}** is within **{sel['budget_ms']:g} ms** "
            f"({_fmt(ch.get('latency_ms'), 2)} ms). The weights are those of the best seed "
            f"(seed {ch.get('best_seed')}, run `{ch.get('best_run_id')}`) of that configuration; the scores "
            f"below are the mean ± sample std over its {ch.get('n')} seed(s).", "",
            "```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            f"model = AutoModelForSequenceClassification.from_pretrained({where!r})",
            f"tokenizer = AutoTokenizer.from_pretrained({where!r})", "```", "",
            "## Model", "",
            "| | |", "|---|---|",
            f"| task | {task} |",
            f"| variant | {ch.get('variant')} |",
            f"| student layers | {ch.get('student_layers')} (layer strategy: {ch.get('layer_strategy')}) |",
            f"| training data fraction | {ch.get('data_fraction')} |",
            f"| augmentation | {ch.get('augmentation')} |",
            f"| parameters | {sel.get('params'):,} |" if isinstance(sel.get("params"), int) else
            f"| parameters | {_fmt(sel.get('params'))} |",
            f"| teacher parameters | {sel['teacher_params']:,} |" if isinstance(sel.get("teacher_params"), int) else
            "| teacher parameters | n/a |",
            f"| config group | `{ch.get('config_group')}` |", ""]


def _card_metrics(sel: Mapping[str, Any], ch: Mapping[str, Any], t: Mapping[str, Any]) -> list[str]:
    """Dev metrics, mean ± std over seeds, every seed's primary score, and the teacher's."""
    lines = ["## Dev metrics (mean ± std over seeds)", "",
             f"Primary metric: {sel.get('primary_metric')}.", "",
             "| metric | value |", "|---|---|"]
    ci = ch.get("score_ci95")
    lines.append(f"| primary ({sel.get('primary_metric')}) | {_pm(ch.get('score'), ch.get('score_std'), ch.get('n'))}"
                 + (f", 95% CI [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "") + " |")
    for k, v in (ch.get("metrics") or {}).items():
        if k == "final/primary":
            continue
        lines.append(f"| {k.split('/', 1)[-1]} | {_pm(v[0], v[1], v[2])} |")
    lines.append(f"| per seed (primary) | {', '.join(_fmt(x) for x in ch.get('scores') or [])} |")
    if t:
        lines += ["", f"Teacher ({t.get('label')}): primary {_pm(t.get('score'), t.get('score_std'), t.get('n'))}."]
    return lines


def _card_latency(sel: Mapping[str, Any], ch: Mapping[str, Any], t: Mapping[str, Any]) -> list[str]:
    """Latency statistics of student and teacher, the speed-up, where the latency came from, the fingerprint."""
    b, s, pct = sel["batch_size"], sel["seq_len"], sel["percentile"]
    lines = ["", f"## Latency (batch {b}, sequence length {s})", "",
             "| | student | teacher |", "|---|---|---|"]
    lat, tl = ch.get("latency") or {}, t.get("latency") or {}
    for k, name in (("p50_ms", "p50 (ms)"), ("p90_ms", "p90 (ms)"), ("p99_ms", "p99 (ms)"), ("mean_ms", "mean (ms)"),
                    ("std_ms", "std (ms)"), ("throughput", "throughput (samples/s)")):
        lines.append(f"| {name} | {_fmt(lat.get(k), 2)} | {_fmt(tl.get(k), 2)} |")
    sp = sel.get("speedup_vs_teacher")
    lines += ["", f"Speed-up vs the teacher at {pct}: **{_fmt(sp, 2)}×**." if sp else
              "Speed-up vs the teacher: n/a (no teacher latency).",
              f"Latency source: {ch.get('latency_source')} (sweep = logged by the sweep, measured/cache = measured by "
              f"`mixkd latency`'s protocol on random weights of the same architecture).", ""]
    fp = ch.get("latency_fingerprint")
    if fp:
        lines += ["Hardware/software fingerprint:", "", "```json", json.dumps(fp, indent=2, sort_keys=True), "```", ""]
    else:
        lines += ["Hardware/software fingerprint: not recorded with the sweep's latency metrics "
                  "(tag `latency.fingerprint`); re-run with `--remeasure` to measure here.", ""]
    if sel.get("plot"):
        lines += [f"![accuracy vs latency]({sel['plot']})", ""]
    return lines


def _card_provenance(sel: Mapping[str, Any], ch: Mapping[str, Any], t: Mapping[str, Any]) -> list[str]:
    """The training config of the exported run and where everything came from (MLflow store, run ids)."""
    return ["## Config", "", "The training config of the exported run (MLflow params):", "", "```yaml",
            yaml.safe_dump(dict(sel.get("config") or {}), sort_keys=True).strip(), "```", "",
            "## Provenance", "",
            f"- MLflow tracking URI: `{sel.get('tracking_uri')}`, experiment `{sel.get('experiment')}`",
            f"- exported run: `{ch.get('best_run_id')}`",
            f"- runs of this configuration (seeds {ch.get('seeds')}): "
            + ", ".join(f"`{r}`" for r in ch.get("run_ids") or []),
            "- teacher runs: " + (", ".join(f"`{r}`" for r in t.get("run_ids") or []) or "none in the store"),
            f"- selected at {sel.get('created')}; `selection.json` holds the front and every configuration.", ""]


def onnx_snippet(path: str) -> str:
    """Plain onnxruntime + tokenizers code that runs an exported ONNX classifier (no mixkd, no torch)."""
    return f'''import json
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

folder = {path!r}
tok = Tokenizer.from_file(f"{{folder}}/tokenizer.json")
tok.enable_padding(pad_id=tok.token_to_id("[PAD]") or 0)
tok.enable_truncation(max_length=128)
sess = ort.InferenceSession(f"{{folder}}/model.onnx", providers=["CPUExecutionProvider"])
enc = tok.encode_batch(["a gripping , funny and moving film", "a dull , lifeless mess"])
arrays = {{"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
          "token_type_ids": [e.type_ids for e in enc]}}
feed = {{i.name: np.array(arrays[i.name], dtype=np.int64) for i in sess.get_inputs()}}
logits = sess.run(["logits"], feed)[0]
id2label = json.load(open(f"{{folder}}/config.json")).get("id2label") or {{}}
print([id2label.get(str(int(i)), int(i)) for i in logits.argmax(-1)], logits.tolist())'''


def export_card(meta: Mapping[str, Any], where: str) -> str:
    """The README.md of a ``mixkd export`` folder: format, runtime and version, opset, quantization, dev metrics
    before and after conversion, agreement with PyTorch, how to run it."""
    fmt, task, primary = meta["format"], meta.get("task"), meta.get("primary_metric")
    q, onnx, agree = meta.get("quantization") or {}, meta.get("onnx") or {}, meta.get("agreement") or {}
    before, after = meta.get("metrics_before") or {}, meta.get("metrics_after") or {}
    front = {"library_name": "onnx" if fmt.startswith("onnx") else "transformers",
             "pipeline_tag": "text-classification",
             "tags": ["mixkd", "knowledge-distillation", "text-classification", "glue", fmt]}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# GLUE {task} classifier, {fmt}", "",
             f"Exported by `mixkd export` from `{meta.get('source')}`, reloaded from this folder and checked on the "
             f"{task} dev set before it was declared done.", "",
             "| | |", "|---|---|", f"| format | {fmt} |",
             f"| runtime | {meta.get('runtime')} {meta.get('runtime_version')} |",
             f"| exporter, opset | {onnx.get('exporter', 'n/a')}, {onnx.get('opset', 'n/a')} |",
             "| quantization | " + (", ".join(f"{k}: {v}" for k, v in q.items()) if q else "none (fp32)") + " |",
             f"| parameters | {meta.get('params')} |", f"| files | {_fmt(meta.get('size_bytes'))} bytes |", "",
             f"## Dev metrics before and after conversion ({agree.get('rows')} rows)", "",
             "| metric | PyTorch fp32 | this export | delta |", "|---|---|---|---|"]
    for k, v in before.items():
        a = after.get(k)
        lines.append(f"| {k}{' (primary)' if k == primary else ''} | {_fmt(v)} | {_fmt(a)} | "
                     f"{_fmt(a - v) if isinstance(a, float) else 'n/a'} |")
    lines += ["", f"Same label as PyTorch fp32 on {agree.get('same_label')} of {agree.get('rows')} rows "
              f"({_fmt(100 * agree.get('label_agreement', float('nan')), 2)}%); max |logit difference| "
              f"{agree.get('max_abs_logit_diff', float('nan')):.2e}, "
              f"mean {agree.get('mean_abs_logit_diff', float('nan')):.2e}.", ""]
    cands = meta.get("weight_type_candidates") or []
    if cands:
        lines += ["Weight types measured (the better primary metric is kept):", "",
                  f"| weight type | {primary} | label agreement with fp32 |", "|---|---|---|"]
        lines += [f"| {c['weight_type']} | {_fmt(c['metrics'].get(primary))} | "
                  f"{_fmt(100 * c['agreement']['label_agreement'], 2)}% |" for c in cands]
        lines.append("")
    lines += ["## Run it", ""]
    if fmt.startswith("onnx"):
        lines += ["With `pip install onnxruntime tokenizers numpy` only:", "", "```python", onnx_snippet(where), "```"]
    else:
        lines += ["```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                  f"model = AutoModelForSequenceClassification.from_pretrained({where!r}).eval()",
                  f"tokenizer = AutoTokenizer.from_pretrained({where!r})"]
        if fmt == "torch-int8":
            lines += ["import torch  # the int8 model: dynamic quantization of every nn.Linear at load time",
                      "model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)"]
        lines.append("```")
    sel = meta.get("selection")
    if sel:
        lines += ["", "## Selection", "", f"Chosen by `mixkd select`: {sel}"]
    lines += ["", f"`{'mixkd_export.json'}` holds all of the above as JSON. Exported at {meta.get('created')}.", ""]
    return "\n".join(lines)
