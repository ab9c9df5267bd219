"""The claims scorecard: the paper's claims as contrasts, the paper's effect size beside ours.

Each claim is a contrast between two arms of runs that share a *setting* (task, teacher backbone, data
fraction and row cap, student depth): ``method - baseline`` on the task's primary dev metric (x100).

- Our effect: the mean difference over seeds with a 95% confidence interval (Student t). When both arms
  have the same seeds (at least 2 shared), the difference is paired by seed; otherwise the two arms are
  compared unpaired (Welch). An arm needs 2 runs for an unpaired interval.
- Verdict: **holds** when the interval lies above 0, **contradicted** when it lies below 0,
  **inconclusive** when it contains 0 (or cannot be computed), **no runs** when an arm is missing.
- Where an arm holds several configurations (a search sweep), the one with the most seeds is used
  (ties: the best mean), and the row says how many there were.
- The paper's effect comes from :mod:`mixkd.report.paper_numbers` for the same task and depth when the
  paper reports it, else for the nearest depth it reports (labelled, e.g. "BERT3").

Stability claims (Fig. 3) turn around: the effect is the spread (best minus worst configuration mean)
among configurations that differ only in one knob; the claim holds when the spread's interval stays
below :data:`STABLE_TOLERANCE` points and is contradicted when it lies above.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import paper_numbers as P

PRIMARY = "final/primary"
STABLE_TOLERANCE = 1.0   # points (x100): a knob whose best and worst settings differ by less is "stable"
VERDICTS = ("holds", "contradicted", "inconclusive", "no runs")

# (id, claim, paper source, method arm, baseline arm); an arm is (variant, with back-translation)
CONTRASTS = (
    ("tmkd>ft", "TMKD beats FT", "Table 1", ("tmkd", False), ("ft", False)),
    ("sm+tmkd>tmkd", "SM+TMKD beats TMKD", "Table 1", ("sm+tmkd", False), ("tmkd", False)),
    ("sm+tmkd>ft", "SM+TMKD beats FT", "Table 1", ("sm+tmkd", False), ("ft", False)),
    ("bt:ft", "+BT improves FT", "Table 1", ("ft", True), ("ft", False)),
    ("bt:tmkd", "+BT improves TMKD", "Table 1", ("tmkd", True), ("tmkd", False)),
    ("bt:sm+tmkd", "+BT improves SM+TMKD", "Table 1", ("sm+tmkd", True), ("sm+tmkd", False)),
    ("mixkd>kd", "MixKD (SM+TMKD+BT) beats KD", "Table 3", ("sm+tmkd", True), ("kd", False)),
    ("mixkd>pkd", "MixKD (SM+TMKD+BT) beats PKD", "Table 3", ("sm+tmkd", True), ("pkd", False)),
)
LIMITED = ("limited-data", "MixKD's gain over FT is larger with limited data", "Fig. 1 vs Table 1")
STABILITY = (("a_sm", "α_SM"), ("a_tmkd", "α_TMKD"), ("mixup_ratio", "mixup ratio"))


@dataclass
class Effect:
    mean: float | None = None
    lo: float | None = None
    hi: float | None = None
    n: int = 0                   # pairs (paired) or runs per arm "a/b" is in `method`
    method: str = ""             # "paired by seed (n pairs)", "Welch (n_a vs n_b runs)", ...


@dataclass
class ScoreRow:
    claim_id: str
    claim: str
    source: str
    setting: str
    paper: float | None          # the paper's effect (points), None: the paper gives none
    paper_note: str              # where the paper's number comes from
    ours: Effect = field(default_factory=Effect)
    verdict: str = "no runs"
    note: str = ""
    run_ids: list = field(default_factory=list)


@dataclass
class TrialRun:
    """A finished trial run as the scorecard groups it: its setting, its arm (variant, +BT), seed and score."""
    run_id: str
    task: str | None
    teacher: str | None
    fraction: float
    cap: int | None              # --max-train-samples (None: no cap)
    k: Any                       # student depth, as the run store holds it
    variant: str | None
    bt: bool                     # trained with back-translated data
    seed: Any
    group: Any                   # config_group: runs that differ only in seed
    score: float                 # the primary dev metric x100
    params: dict


class ContrastSetting(NamedTuple):
    """What two arms of a contrast share: task, teacher backbone, data fraction, row cap, student depth."""
    task: str | None
    teacher: str | None
    fraction: float
    cap: int | None
    k: Any


# --- statistics ------------------------------------------------------------------------------------

def _t(df: float) -> float:
    from scipy.stats import t
    return float(t.ppf(0.975, df))


def paired_effect(a: dict[Any, float], b: dict[Any, float]) -> Effect | None:
    """Mean of a[s] - b[s] over the seeds both have, with a t interval (None: fewer than 2 shared)."""
    shared = sorted(set(a) & set(b), key=str)
    if len(shared) < 2:
        return None
    d = [a[s] - b[s] for s in shared]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = _t(n - 1) * sd / math.sqrt(n)
    return Effect(mean, mean - half, mean + half, n, f"paired by seed ({n} pairs)")


def welch_effect(a: list[float], b: list[float]) -> Effect:
    """mean(a) - mean(b) with Welch's t interval (no interval when an arm has a single run)."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    eff = Effect(ma - mb, None, None, min(na, nb), f"unpaired, Welch ({na} vs {nb} runs)")
    if na < 2 or nb < 2:
        eff.method = f"unpaired ({na} vs {nb} runs: too few for an interval)"
        return eff
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0:
        eff.lo = eff.hi = eff.mean
        return eff
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    half = _t(df) * math.sqrt(se2)
    eff.lo, eff.hi = eff.mean - half, eff.mean + half
    return eff


def contrast(a: dict[Any, float], b: dict[Any, float]) -> Effect:
    """Scores by seed of the method (a) and the baseline (b): paired when possible, else Welch."""
    return paired_effect(a, b) or welch_effect(list(a.values()), list(b.values()))


def verdict(e: Effect) -> str:
    if e.lo is None or e.hi is None:
        return "inconclusive"
    if e.lo > 0:
        return "holds"
    if e.hi < 0:
        return "contradicted"
    return "inconclusive"


# --- runs -> arms ------------------------------------------------------------------------------------

def _num(v: Any) -> Any:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def trial_rows(df) -> list[TrialRun]:
    """Finished trial runs with a primary score, with the fields the scorecard groups by."""
    if df is None or df.empty or PRIMARY not in df.columns:
        return []
    rows = []
    for r in df.to_dict("records"):
        if r.get("role") != "trial" or r.get("status") != "FINISHED" or _num(r.get(PRIMARY)) is None:
            continue
        p = r.get("params") or {}
        cap = _num(p.get("max_train_samples"))
        rows.append(TrialRun(run_id=r["run_id"], task=r.get("task"), teacher=r.get("teacher_model"),
                             fraction=float(r.get("data_fraction") or 1.0), cap=None if cap is None else int(cap),
                             k=r.get("student_layers"), variant=r.get("variant"),
                             bt=(r.get("augmentation") or "none") != "none", seed=r.get("seed"),
                             group=r.get("config_group"), score=100.0 * float(r[PRIMARY]), params=p))
    return rows


def data_label(fraction, cap) -> str:
    data = "full data" if fraction >= 1 and not cap else (f"{fraction:g} of the data" if fraction < 1 else "")
    if cap:
        data = (data + ", " if data else "") + f"≤{cap:,} rows"
    return data


def setting_label(task, teacher, fraction, cap, k) -> str:
    return f"{task}, teacher {teacher}, {data_label(fraction, cap)}, {k}-layer student"


def _arm(rows: list[TrialRun], variant: str, bt: bool) -> tuple[dict, int]:
    """Scores by seed of one arm (its config with the most seeds, ties: the best mean) and the number of
    configurations the arm held."""
    groups: dict[Any, list[TrialRun]] = {}
    for r in rows:
        if r.variant == variant and r.bt == bt:
            groups.setdefault(r.group, []).append(r)
    if not groups:
        return {}, 0
    best = max(groups.values(), key=lambda g: (len({r.seed for r in g}), sum(r.score for r in g) / len(g)))
    by_seed: dict[Any, list[float]] = {}
    for r in best:
        by_seed.setdefault(r.seed, []).append(r.score)
    return {s: sum(v) / len(v) for s, v in by_seed.items()}, len(groups)


def _settings(rows: list[TrialRun]) -> dict[ContrastSetting, list[TrialRun]]:
    out: dict[ContrastSetting, list[TrialRun]] = {}
    for r in rows:
        out.setdefault(ContrastSetting(r.task, r.teacher, r.fraction, r.cap, r.k), []).append(r)
    return dict(sorted(out.items(), key=lambda kv: tuple(str(x) for x in kv[0])))


# --- the paper's effects -----------------------------------------------------------------------------

def _paper_value(table: dict, key: tuple, task: str, metric: str | None = None) -> float | None:
    metric = metric or ("f1" if task in ("mrpc", "qqp") else "accuracy")
    for row in table["rows"]:
        if row["key"] == key:
            return (row["values"].get(task) or {}).get(metric)
    return None


def paper_effect(source: str, method: tuple, baseline: tuple, task: str, k: int | None) -> tuple[float | None, str]:
    table = P.TABLE3_TEST if source == "Table 3" else P.TABLE1_DEV
    depths = sorted({row["key"][2] for row in table["rows"] if row["key"][2]})
    if task not in table["tasks"] or not depths:
        return None, f"the paper has no {task} result"
    near = min(depths, key=lambda d: (abs(d - (k or 0)), d))
    a, b = _paper_value(table, (*method, near), task), _paper_value(table, (*baseline, near), task)
    if a is None or b is None:
        return None, "not in the paper"
    where = f"{source}, BERT{near}" + ("" if near == k else f" (nearest to k={k})")
    return round(a - b, 2), where


def _paper_gain(task: str, fraction: float, capped: bool = False) -> tuple[float | None, str]:
    """The paper's gain of FT+MixKD (w/ BT) over FT at ``fraction`` (accuracy): Table 1's BERT3 on full data,
    else Fig. 1 at its nearest fraction."""
    if fraction >= 1 and not capped:
        full = [_paper_value(P.TABLE1_DEV, key, task, "accuracy") for key in (("sm+tmkd", True, 3), ("ft", False, 3))]
        return (None, "not in the paper") if None in full else (full[0] - full[1], "Table 1 (BERT3)")
    cols = [i for i, (t, m) in enumerate(P.FIG1_LIMITED["columns"]) if t == task and m == "accuracy"]
    if not cols:
        return None, f"Fig. 1 has no {task}"
    near = min(P.FIG1_LIMITED["text_deltas"], key=lambda f: abs(math.log(f) - math.log(max(fraction, 1e-6))))
    return P.FIG1_LIMITED["text_deltas"][near][cols[0]], f"Fig. 1 at {near:g}"


def _paper_limited(task: str, fraction: float, reference: float = 1.0, capped: bool = False,
                   reference_capped: bool = False) -> tuple[float | None, str]:
    """The paper's gain at ``fraction`` minus its gain at ``reference`` (full data: Table 1's BERT3)."""
    (a, wa), (b, wb) = _paper_gain(task, fraction, capped), _paper_gain(task, reference, reference_capped)
    if a is None or b is None:
        return None, wa if a is None else wb
    if wa == wb:        # both fractions fall on the same figure point: the paper does not separate them
        return None, f"the paper has no separate {fraction:g} and {reference:g} points for {task}"
    return round(a - b, 2), f"{wa} minus {wb}"


def _limited_rows(settings: dict[ContrastSetting, list[TrialRun]]) -> list[ScoreRow]:
    """The gain over FT at each smaller data size minus the gain at the largest size measured for the same task,
    teacher and depth: full data when there are runs on it, else the largest fraction (e.g. 1% vs 10%)."""
    cid, claim, source = LIMITED
    size = lambda key: (key.fraction >= 1 and not key.cap, key.fraction if not key.cap else 0.0,  # noqa: E731
                        -(key.cap or 0))
    largest: dict[tuple, ContrastSetting] = {}
    for key in settings:
        task, teacher, _, _, k = key
        if (task, teacher, k) not in largest or size(key) > size(largest[(task, teacher, k)]):
            largest[(task, teacher, k)] = key
    out = []
    for key, rows in settings.items():
        task, teacher, frac, cap, k = key
        ref_key = largest[(task, teacher, k)]
        if ref_key == key:
            continue
        ref_frac, ref_cap = ref_key.fraction, ref_key.cap
        ref_label = data_label(ref_frac, ref_cap)
        paper, where = _paper_limited(task, frac, ref_frac, bool(cap), bool(ref_cap))
        row = ScoreRow(cid, claim, source, setting_label(task, teacher, frac, cap, k) + f" vs {ref_label}",
                       paper, where)
        a_lim, b_lim = _arm(rows, "sm+tmkd", True)[0] or _arm(rows, "sm+tmkd", False)[0], _arm(rows, "ft", False)[0]
        base = settings[ref_key]
        a_ref, b_ref = _arm(base, "sm+tmkd", True)[0] or _arm(base, "sm+tmkd", False)[0], _arm(base, "ft", False)[0]
        if not a_lim or not b_lim or not a_ref or not b_ref:
            row.note = f"needs sm+tmkd and ft runs both at this data size and on {ref_label}"
            out.append(row)
            continue
        g_lim, g_ref = contrast(a_lim, b_lim), contrast(a_ref, b_ref)
        se = [(e.hi - e.mean) for e in (g_lim, g_ref) if e.hi is not None]
        mean = g_lim.mean - g_ref.mean
        row.ours = Effect(mean, None, None, min(g_lim.n, g_ref.n), "difference of the two gains")
        if len(se) == 2:   # independent runs: the half-widths add in quadrature (normal approximation)
            half = math.sqrt(se[0] ** 2 + se[1] ** 2)
            row.ours.lo, row.ours.hi = mean - half, mean + half
        row.verdict = verdict(row.ours)
        out.append(row)
    return out


# --- the scorecard -----------------------------------------------------------------------------------

def _contrast_rows(settings: dict[ContrastSetting, list[TrialRun]], cid, claim, source, method,
                   baseline) -> list[ScoreRow]:
    out = []
    for (task, teacher, frac, cap, k), rows in settings.items():
        a, na = _arm(rows, *method)
        b, nb = _arm(rows, *baseline)
        if not a and not b:
            continue
        paper, where = paper_effect(source, method, baseline, task, k)
        row = ScoreRow(cid, claim, source, setting_label(task, teacher, frac, cap, k), paper, where)
        if not a or not b:
            missing = "+BT " if not a and method[1] else ""
            row.note = f"no {missing}{(method if not a else baseline)[0]} runs in this setting"
            out.append(row)
            continue
        row.ours = contrast(a, b)
        row.verdict = verdict(row.ours)
        if max(na, nb) > 1:
            row.note = f"best-seeded of {na} vs {nb} configurations"
        row.run_ids = [r.run_id for r in rows if (r.variant, r.bt) in (method, baseline)]
        out.append(row)
    return out


def _stability_rows(settings: dict[ContrastSetting, list[TrialRun]]) -> list[ScoreRow]:
    out = []
    for param, label in STABILITY:
        src = P.FIG3_SENSITIVITY["params"][param]["no_bt"]
        paper = round(max(src) - min(src), 2)
        for (task, teacher, frac, cap, k), rows in settings.items():
            fams: dict[tuple, dict[Any, list[TrialRun]]] = {}
            for r in rows:
                rest = tuple(sorted((n, v) for n, v in r.params.items()
                                    if n not in (param, "seed", "data_seed", "teacher", "output_dir", "resume",
                                                 "overwrite", "progress", "device", "data_dir", "augment_dir")))
                fams.setdefault((r.variant, r.bt, rest), {}).setdefault(r.params.get(param), []).append(r)
            for (variant, bt, _), by_value in fams.items():
                if len(by_value) < 2:
                    continue
                means = {v: sum(r.score for r in rs) / len(rs) for v, rs in by_value.items()}
                hi_v, lo_v = max(means, key=means.get), min(means, key=means.get)
                seeds = [{r.seed: r.score for r in by_value[v]} for v in (hi_v, lo_v)]
                eff = contrast(*seeds)
                eff.method += f"; {label} {lo_v} to {hi_v}"
                row = ScoreRow(f"stable:{param}", f"scores are stable across {label}", "Fig. 3",
                               setting_label(task, teacher, frac, cap, k) + f", {variant}{'+BT' if bt else ''}",
                               paper, "Fig. 3 (BERT3, SST-2, no BT): best minus worst", eff)
                row.verdict = ("inconclusive" if eff.hi is None else "holds" if eff.hi < STABLE_TOLERANCE
                               else "contradicted" if eff.lo > STABLE_TOLERANCE else "inconclusive")
                row.note = f"spread of {len(by_value)} values; stable means below {STABLE_TOLERANCE:g} point"
                out.append(row)
        if not any(r.claim_id == f"stable:{param}" for r in out):
            out.append(ScoreRow(f"stable:{param}", f"scores are stable across {label}", "Fig. 3", "—", paper,
                                "Fig. 3 (BERT3, SST-2, no BT): best minus worst",
                                note=f"needs configurations that differ only in {param}"))
    return out


def build_scorecard(df) -> list[ScoreRow]:
    """Every claim: one row per setting where it was measured, or one 'no runs' row."""
    settings = _settings(trial_rows(df))
    out: list[ScoreRow] = []
    for cid, claim, source, method, baseline in CONTRASTS:
        rows = _contrast_rows(settings, cid, claim, source, method, baseline)
        out += rows or [ScoreRow(cid, claim, source, "—", *paper_effect(source, method, baseline, "sst2", 3))]
    limited = _limited_rows(settings)
    out += limited or [ScoreRow(*LIMITED, "—", *_paper_limited("qnli", 0.1), note="needs runs at two data sizes")]
    out += _stability_rows(settings)
    return out


def summary_counts(rows: list[ScoreRow]) -> dict[str, int]:
    return {v: sum(r.verdict == v for r in rows) for v in VERDICTS}


# --- rendering -------------------------------------------------------------------------------------

def _pm(x: float | None) -> str:
    return "—" if x is None else f"{x:+.2f}"


def ours_text(e: Effect) -> str:
    if e.mean is None:
        return "—"
    ci = f" [{e.lo:+.2f}, {e.hi:+.2f}]" if e.lo is not None else " (no CI)"
    return f"{e.mean:+.2f}{ci}"


COLUMNS = ("claim", "setting", "paper Δ", "our Δ [95% CI]", "n", "how", "verdict")


def table_rows(rows: list[ScoreRow]) -> list[list[str]]:
    out = []
    for r in rows:
        paper = _pm(r.paper) + (f" ({r.paper_note})" if r.paper_note else "")
        how = "; ".join(x for x in (r.ours.method, r.note) if x)
        out.append([r.claim, r.setting, paper, ours_text(r.ours), str(r.ours.n or "—"), how or "—", r.verdict])
    return out


def format_text(rows: list[ScoreRow], measured_only: bool = False) -> str:
    """The scorecard for a terminal: one block per claim, verdict first; ``measured_only`` leaves out the
    rows without runs (counted in one line at the end)."""
    lines, last = [], None
    shown = [r for r in rows if r.ours.mean is not None] if measured_only else rows
    for r, cells in zip(shown, table_rows(shown)):
        if r.claim != last:
            lines.append(f"{r.claim}  (paper: {r.source})")
            last = r.claim
        lines.append(f"  {r.verdict.upper():13s} {cells[1]}: ours {cells[3]}, n={cells[4]}; paper {cells[2]}")
        if cells[5] != "—":
            lines.append(f"  {'':13s} {cells[5]}")
    if len(shown) < len(rows):
        left = sorted({r.claim for r in rows if r.ours.mean is None}, key=[r.claim for r in rows].index)
        lines.append(f"not measured by these runs ({len(rows) - len(shown)} rows): " + "; ".join(left))
    counts = summary_counts(rows)
    lines.append("verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) +
                 "  (Δ in points x100 of the primary dev metric; holds = 95% CI above 0)")
    return "\n".join(lines)


def to_markdown(rows: list[ScoreRow]) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r, cells in zip(rows, table_rows(rows)):
        cells[-1] = f"**{r.verdict}**"
        out.append("| " + " | ".join(esc(c) for c in cells) + " |")
    return "\n".join(out)


def to_html(rows: list[ScoreRow]) -> str:
    import html
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr class='v-" + r.verdict.replace(" ", "-") + "'>" +
                   "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
                   for r, cells in zip(rows, table_rows(rows)))
    return f"<table class='scorecard'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_json(rows: list[ScoreRow]) -> list[dict]:
    from dataclasses import asdict
    return [asdict(r) for r in rows]


def plot(rows: list[ScoreRow]) -> bytes | None:
    """Effect sizes with their 95% CIs (ours) and the paper's effect marked, one line per measured row."""
    shown = [r for r in rows if r.ours.mean is not None]
    if not shown:
        return None
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = {"holds": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:gray"}
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(shown) + 1.4))
    for i, r in enumerate(reversed(shown)):
        e = r.ours
        if e.lo is not None:
            ax.plot([e.lo, e.hi], [i, i], color=colors.get(r.verdict, "black"), lw=2)
        ax.plot([e.mean], [i], "o", color=colors.get(r.verdict, "black"))
        if r.paper is not None:
            ax.plot([r.paper], [i], "D", mfc="none", color="tab:blue")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([f"{r.claim}\n{r.setting}" for r in reversed(shown)], fontsize=7)
    ax.set_xlabel("effect (points of the primary dev metric); ● ours with 95% CI, ◇ paper")
    ax.set_title("Claims scorecard")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
