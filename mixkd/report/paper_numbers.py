"""The MixKD paper's numbers (Liang et al., ICLR 2021, arXiv 2011.00593), as data.

Copied from ``../shared/reference/mixkd_paper.md`` (research notes on the camera-ready PDF
``kevinjliang.github.io/files/MixKD.pdf``, commit 8ea9fec; Tables 1-4 are the same in all three stored
versions). Percentages as printed (92.20 means 92.20 %). Nothing here is estimated: a value the
source does not give is ``None`` and rendered as "—".

Conventions (the paper's): MRPC and QQP are F1/Acc; CoLA would be Matthews correlation and STS-B
Pearson/Spearman (the paper runs neither); every other task is accuracy; MNLI-m is the matched dev
or test set, MNLI-mm the mismatched one.

Cell values are dicts of metric -> value using mixkd's metric names (``mixkd.core.tasks``):
``accuracy``, ``f1``, ``accuracy_mm`` (MNLI mismatched), ``matthews_correlation``, ``pearson``,
``spearman``.

Row keys ``(variant, bt, student_layers)``: variant as mixkd names it (``ft``, ``kd``, ``pkd``,
``tmkd``, ``sm+tmkd``), ``bt`` True for the "+BT" rows (German back-translation added to the
training data), ``student_layers`` the student depth k of "BERTk"; the teacher row is
``("teacher", False, None)``; rows that mixkd never runs (DistilBERT) have variant ``None``.
"""
from __future__ import annotations

PAPER = "MixKD (Liang et al., ICLR 2021, arXiv 2011.00593)"
PAPER_PDF = "http://kevinjliang.github.io/files/MixKD.pdf"
NOTES_FILE = "../shared/reference/mixkd_paper.md"

TASKS_6 = ("sst2", "mrpc", "qqp", "mnli", "qnli", "rte")


def _fa(f1, acc):
    return {"f1": f1, "accuracy": acc}


def _a(acc):
    return {"accuracy": acc}


# ---- Table 1: GLUE dev ---------------------------------------------------------------------------
def _t1(sst2, mrpc, qqp, mnli, qnli, rte):
    return {"sst2": _a(sst2), "mrpc": _fa(*mrpc), "qqp": _fa(*qqp), "mnli": _a(mnli), "qnli": _a(qnli),
            "rte": _a(rte)}


TABLE1_DEV = {
    "title": "Table 1 — GLUE dev",
    "source": "MixKD Table 1 (camera-ready PDF, commit 8ea9fec); MRPC and QQP are F1/Acc, the rest accuracy; "
              "MNLI is matched only (no MNLI-mm dev column). DistilBERT6 row quoted by the paper from Sanh et al.",
    "notes": [
        "No vanilla-KD (Hinton) dev row and no MNLI-mm dev column in the paper; the table doubles as the "
        "paper's component ablation.",
        "The teacher's RTE 77.98 is high for BERT-base (usually 66-70); reported as printed.",
        "Paper claim: on SST-2 BERT6-SM+TMKD+BT reaches 99.88% of the teacher (92.09/92.20).",
    ],
    "tasks": TASKS_6,
    "rows": [
        {"label": "BERT12 (teacher)", "key": ("teacher", False, None),
         "values": _t1(92.20, (90.53, 86.52), (88.21, 91.25), 84.12, 91.32, 77.98)},
        {"label": "DistilBERT6 (Sanh et al.)", "key": (None, False, 6), "reference_only": True,
         "values": _t1(91.3, (87.5, 82.4), (None, 88.5), 82.2, 89.2, 59.9)},
        {"label": "BERT6-FT", "key": ("ft", False, 6),
         "values": _t1(90.94, (88.54, 83.82), (87.16, 90.43), 81.28, 88.25, 66.43)},
        {"label": "BERT6-TMKD", "key": ("tmkd", False, 6),
         "values": _t1(91.63, (88.93, 83.82), (86.60, 90.27), 81.49, 88.71, 65.34)},
        {"label": "BERT6-SM+TMKD", "key": ("sm+tmkd", False, 6),
         "values": _t1(91.17, (89.30, 84.31), (87.19, 90.56), 82.02, 88.63, 65.34)},
        {"label": "BERT6-FT+BT", "key": ("ft", True, 6),
         "values": _t1(91.74, (89.60, 84.80), (87.06, 90.39), 82.10, 87.68, 67.51)},
        {"label": "BERT6-TMKD+BT", "key": ("tmkd", True, 6),
         "values": _t1(91.86, (89.52, 84.56), (87.15, 90.59), 82.17, 88.38, 69.98)},
        {"label": "BERT6-SM+TMKD+BT", "key": ("sm+tmkd", True, 6),
         "values": _t1(92.09, (89.22, 84.07), (87.57, 90.78), 82.53, 88.82, 67.87)},
        {"label": "BERT3-FT", "key": ("ft", False, 3),
         "values": _t1(87.16, (81.68, 71.08), (84.99, 88.65), 75.55, 83.98, 58.48)},
        {"label": "BERT3-TMKD", "key": ("tmkd", False, 3),
         "values": _t1(88.76, (81.62, 71.08), (83.27, 87.80), 75.73, 84.26, 58.48)},
        {"label": "BERT3-SM+TMKD", "key": ("sm+tmkd", False, 3),
         "values": _t1(88.99, (81.73, 71.08), (84.47, 88.37), 75.52, 84.24, 59.57)},
        {"label": "BERT3-FT+BT", "key": ("ft", True, 3),
         "values": _t1(88.88, (83.36, 74.26), (85.31, 88.81), 76.88, 83.67, 59.21)},
        {"label": "BERT3-TMKD+BT", "key": ("tmkd", True, 3),
         "values": _t1(89.79, (84.46, 75.74), (85.17, 89.00), 77.19, 84.68, 62.82)},
        {"label": "BERT3-SM+TMKD+BT", "key": ("sm+tmkd", True, 3),
         "values": _t1(90.37, (84.14, 75.25), (85.56, 89.09), 77.52, 84.83, 60.65)},
    ],
}

# ---- Table 2: inference speed and size ------------------------------------------------------------
TABLE2_SPEED = {
    "title": "Table 2 — inference speed and parameters",
    "source": "MixKD Table 2: SST-2, batch size 16, one NVIDIA TITAN X GPU; throughput in samples/s.",
    "setting": {"task": "sst2", "batch_size": 16, "hardware": "NVIDIA TITAN X"},
    "rows": [
        {"label": "BERT12 (teacher)", "key": ("teacher", False, None), "samples_per_s": 115, "params": 109_483_778},
        {"label": "BERT6 student", "key": ("student", False, 6), "samples_per_s": 252, "params": 66_956_546},
        {"label": "BERT3 student", "key": ("student", False, 3), "samples_per_s": 397, "params": 45_692_930},
    ],
}

# ---- Table 3: GLUE test server --------------------------------------------------------------------
def _t3(sst2, mrpc, qqp, mnli_m, mnli_mm, qnli, rte):
    return {"sst2": _a(sst2), "mrpc": _fa(*mrpc), "qqp": _fa(*qqp),
            "mnli": {"accuracy": mnli_m, "accuracy_mm": mnli_mm}, "qnli": _a(qnli), "rte": _a(rte)}


TABLE3_TEST = {
    "title": "Table 3 — GLUE test server",
    "source": "MixKD Table 3 (GLUE test server); MRPC and QQP are F1/Acc; MNLI matched and mismatched. "
              "KD and PKD rows credited to Sun et al. 2019 (PKD); BERT12 and FT rows equal the PKD paper's, "
              "i.e. copied, and these baselines do not use BT.",
    "notes": [
        "MixKD in this table is the SM+TMKD+BT variant.",
        "Cross-check: TinyBERT Table 1 (quoted in huggingface/nn_pruning analysis/plot_data.py) lists the "
        "same BERT6-PKD test numbers.",
        "On QQP and QNLI MixKD is below PKD for both student sizes.",
    ],
    "tasks": TASKS_6,
    "rows": [
        {"label": "BERT12", "key": ("teacher", False, None),
         "values": _t3(93.5, (88.9, 84.8), (71.2, 89.2), 84.6, 83.4, 90.5, 66.4)},
        {"label": "BERT6-FT", "key": ("ft", False, 6),
         "values": _t3(90.7, (85.9, 80.2), (69.2, 88.2), 80.4, 79.7, 86.7, 63.6)},
        {"label": "BERT6-KD", "key": ("kd", False, 6),
         "values": _t3(91.5, (86.2, 80.6), (70.1, 88.8), 80.2, 79.8, 88.3, 64.7)},
        {"label": "BERT6-PKD", "key": ("pkd", False, 6),
         "values": _t3(92.0, (85.0, 79.9), (70.7, 88.9), 81.5, 81.0, 89.0, 65.5)},
        {"label": "BERT6-MixKD (SM+TMKD+BT)", "key": ("sm+tmkd", True, 6),
         "values": _t3(92.5, (86.4, 81.9), (70.5, 89.1), 82.2, 81.2, 88.2, 68.3)},
        {"label": "BERT3-FT", "key": ("ft", False, 3),
         "values": _t3(86.4, (80.5, 72.6), (65.8, 86.9), 74.8, 74.3, 84.3, 55.2)},
        {"label": "BERT3-KD", "key": ("kd", False, 3),
         "values": _t3(86.9, (79.5, 71.1), (67.3, 87.6), 75.4, 74.8, 84.0, 56.2)},
        {"label": "BERT3-PKD", "key": ("pkd", False, 3),
         "values": _t3(87.5, (80.7, 72.5), (68.1, 87.8), 76.7, 76.3, 84.7, 58.2)},
        {"label": "BERT3-MixKD (SM+TMKD+BT)", "key": ("sm+tmkd", True, 3),
         "values": _t3(89.5, (83.3, 75.2), (67.2, 87.4), 77.2, 76.8, 84.4, 62.0)},
    ],
}

# ---- Fig. 1: limited data -------------------------------------------------------------------------
FIG1_LIMITED = {
    "title": "Fig. 1 — limited data (BERT3 student, accuracy %)",
    "source": "MixKD Fig. 1. Bar heights decoded from the PDF's vector drawing commands (calibrated against "
              "the gridlines; exact to the plotted precision, not printed as numbers in the paper). The text "
              "gives only the deltas FT+MixKD (w/ BT) - FT, which these bars reproduce exactly. Both teacher "
              "and student are trained on the same random subset.",
    "from_figure": True,
    "student_layers": 3,
    # columns: (task, metric) in mixkd names; MNLI-m / MNLI-mm are mnli accuracy / accuracy_mm
    "columns": (("qqp", "accuracy"), ("mnli", "accuracy"), ("mnli", "accuracy_mm"), ("qnli", "accuracy")),
    "column_labels": ("QQP", "MNLI-m", "MNLI-mm", "QNLI"),
    "metric_note": "accuracy for every column (QQP too, not F1)",
    # variant keys (variant, bt); "FT+MixKD" is the sm+tmkd variant
    "variants": ((("ft", False), "FT"), (("sm+tmkd", False), "FT+MixKD (w/o BT)"),
                 (("ft", True), "FT (w/ BT)"), (("sm+tmkd", True), "FT+MixKD (w/ BT)")),
    "values": {
        0.1: {("ft", False): (82.7, 67.5, 67.8, 79.7), ("sm+tmkd", False): (83.0, 68.4, 69.2, 80.2),
              ("ft", True): (83.8, 69.8, 70.2, 80.4), ("sm+tmkd", True): (84.7, 71.4, 72.2, 82.1)},
        0.01: {("ft", False): (74.9, 59.5, 61.2, 71.7), ("sm+tmkd", False): (75.6, 60.3, 61.9, 72.4),
               ("ft", True): (76.9, 62.2, 64.4, 73.0), ("sm+tmkd", True): (77.9, 62.9, 64.5, 75.8)},
    },
    # printed in the paper's text: FT+MixKD (w/ BT) minus FT, per column
    "text_deltas": {0.1: (2.0, 3.9, 4.4, 2.4), 0.01: (3.0, 3.4, 3.3, 4.1)},
}

# ---- Fig. 3: sensitivity --------------------------------------------------------------------------
FIG3_SENSITIVITY = {
    "title": "Fig. 3 — sensitivity (BERT3 student, BERT12 teacher, SST-2 dev accuracy %)",
    "source": "MixKD Fig. 3. Line vertices decoded from the PDF's vector drawing commands (exact to the plotted "
              "precision, not printed as numbers). The value of the other weight while one is swept is not "
              "stated. For mixup ratios 2 and 3 the paper swept alpha over {0.5, 1, 2}.",
    "from_figure": True,
    "task": "sst2", "metric": "accuracy", "student_layers": 3,
    "ft_baseline": 87.16,
    "params": {
        "a_tmkd": {"label": "α_TMKD", "x": (0.1, 0.5, 1, 2, 10),
                   "no_bt": (88.07, 88.07, 88.30, 88.53, 88.30), "bt": (89.45, 89.33, 89.33, 89.79, 89.91)},
        "a_sm": {"label": "α_SM", "x": (0.1, 0.5, 1, 2, 10),
                 "no_bt": (88.76, 88.53, 88.53, 88.19, 88.19), "bt": (89.79, 90.25, 89.91, 90.37, 90.14)},
        "mixup_ratio": {"label": "mixup ratio", "x": (1, 2, 3),
                        "no_bt": (88.76, 88.99, 88.76), "bt": (90.37, 90.71, 90.48)},
    },
    "notes": ["The paper concludes that performance is stable and that mixup ratio 1 is enough."],
}

# ---- Table 4 and Table 5 (Appendix B) -------------------------------------------------------------
TABLE4_DA = {
    "title": "Table 4 — data-augmentation comparison (BERT6, dev accuracy %)",
    "source": "MixKD Table 4; the TinyBERT DA module generated 20x the original data.",
    "columns": ("MNLI", "SST-2"),
    "rows": [("BERT6 (FT)", (81.3, 90.9)), ("+ TinyBERT DA module", (81.5, 91.3)),
             ("+ MixKD (= SM+TMKD+BT)", (82.5, 92.1))],
}

TABLE5_VARIANCE = {
    "title": "Table 5 (Appendix B) — dev mean ± std over extra seeds",
    "source": "MixKD Table 5 (Appendix B, camera-ready only); the number of seeds is not stated; MRPC is F1/Acc.",
    "columns": ("MRPC", "MNLI-m", "QNLI", "RTE"),
    "rows": [
        ("BERT6-TMKD+BT", ("89.79±0.27/85.04±0.48", "82.05±0.11", "88.42±0.06", "69.37±0.50")),
        ("BERT6-SM+TMKD+BT", ("89.64±0.38/84.43±0.36", "82.41±0.12", "88.76±0.15", "68.02±0.11")),
        ("BERT3-TMKD+BT", ("84.79±0.33/75.82±0.48", "77.16±0.03", "84.60±0.07", "62.47±0.36")),
        ("BERT3-SM+TMKD+BT", ("84.53±0.39/75.85±0.60", "77.42±0.11", "84.88±0.06", "60.83±0.18")),
    ],
}

# ---- Reference numbers practitioners compare against ---------------------------------------------
REFERENCE = {
    "title": "Reference numbers (BERT-base, DistilBERT, PKD, TinyBERT)",
    "source": "mixkd_paper.md section 6; each row names its source. Cells as printed there ('–' = not given).",
    "columns": ("Model", "Split", "SST-2", "MRPC", "QQP", "MNLI-m/mm", "QNLI", "RTE", "CoLA", "STS-B", "Source"),
    "rows": [
        ("BERT-base (MixKD teacher)", "dev", "92.20", "90.53/86.52 (F1/Acc)", "88.21/91.25", "84.12/–", "91.32",
         "77.98", "–", "–", "MixKD Table 1"),
        ("BERT-base-uncased", "dev", "92.7", "88.6", "89.6", "84.7 (README) / 86.7 (paper)", "91.8", "69.3",
         "56.3", "89.0", "huggingface/transformers examples/research_projects/distillation/README.md; "
                         "DistilBERT paper Table 1 (arXiv 1910.01108)"),
        ("DistilBERT-6 (uncased)", "dev", "91.3", "87.5", "88.5", "82.1 (README) / 82.2 (paper)", "89.2", "59.9",
         "51.3", "86.9", "same two sources"),
        ("BERT-base", "test", "93.5", "88.9/84.8", "71.2/89.2", "84.6/83.4", "90.5", "66.4", "–", "–",
         "MixKD Table 3 (from the PKD paper)"),
        ("BERT-base (TinyBERT's teacher)", "test", "93.4", "87.5", "71.1", "83.9/83.4", "90.9", "67.0", "52.8",
         "85.2", "TinyBERT Table 1 (arXiv 1909.10351), quoted in huggingface/nn_pruning analysis/plot_data.py"),
        ("BERT6-PKD", "test", "92.0", "85.0/79.9", "70.7/88.9", "81.5/81.0", "89.0", "65.5", "–", "–",
         "MixKD Table 3; matches TinyBERT Table 1"),
        ("BERT3-PKD", "test", "87.5", "80.7/72.5", "68.1/87.8", "76.7/76.3", "84.7", "58.2", "–", "–",
         "MixKD Table 3; MNLI matches airaria/TextBrewer README \"public results\""),
        ("BERT4-PKD", "test", "89.4", "82.6", "70.2", "79.9/79.3", "85.1", "62.3", "24.8", "79.8",
         "TinyBERT Table 1 (nn_pruning quote)"),
        ("DistilBERT6 (TinyBERT's re-run)", "test", "92.5", "86.9", "70.1", "82.6/81.3", "88.9", "58.4", "49.0",
         "81.3", "TinyBERT Table 1 (nn_pruning quote)"),
        ("TinyBERT4 (14.5M)", "test", "92.6", "86.4", "71.3", "82.5/81.8", "87.7", "66.6", "44.1", "80.4",
         "TinyBERT Table 1 (nn_pruning quote); SST-2, MRPC, RTE and CoLA also in henrform/DLNLP_25W_Group4 README"),
        ("TinyBERT6 (67M)", "test", "93.1", "87.3", "71.6", "84.6/83.2", "90.4", "70.0", "51.1", "83.7", "same"),
    ],
    "notes": [
        "TinyBERT test scores are F1 for MRPC and QQP, Spearman for STS-B and MCC for CoLA; averages 77.0 "
        "(TinyBERT4) and 79.4 (TinyBERT6; teacher 79.5). TinyBERT's task distillation uses its own ~20x data "
        "augmentation.",
        "BERT-PKD dev numbers were not found in the stored material.",
        "The DistilBERT paper and the HF README differ on MNLI (86.7 vs 84.7 for BERT-base; 82.2 vs 82.1 for "
        "DistilBERT); both are listed.",
        "TextBrewer README, other public MNLI dev results: DistilBERT (T6) 81.6/81.1, BERT-of-Theseus "
        "82.4/82.1, TinyBERT (T4-tiny) 82.8/82.9.",
    ],
}

ALL = {"table1": TABLE1_DEV, "table2": TABLE2_SPEED, "table3": TABLE3_TEST, "fig1": FIG1_LIMITED,
       "fig3": FIG3_SENSITIVITY, "table4": TABLE4_DA, "table5": TABLE5_VARIANCE, "reference": REFERENCE}
