"""The claims scorecard (mixkd.report.scorecard) on a synthetic MLflow store with known effects: a clear
positive contrast holds, a clear negative one is contradicted, an overlapping one is inconclusive, a
missing arm is "no runs"; the intervals equal a hand computation (paired t, Welch)."""
from __future__ import annotations

import math

import pytest
from scipy.stats import t as student_t

from test_report import Store

T = "minilm-l6"    # not the paper's teacher: the report must not put a Δ between ours and the paper's


def _trial(s, name, seed, score, variant, k, **kw):
    s.add(name, "trial", "sst2", seed, {"final/accuracy": score / 100, "final/primary": score / 100},
          variant=variant, k=k, model=T, **kw)


@pytest.fixture(scope="module")
def card_df(tmp_path_factory):
    from mixkd.tracking.runstore import load_runs
    s = Store(tmp_path_factory.mktemp("mlflow_sc") / "mlflow.db")
    s.add("teacher", "teacher", "sst2", 42, {"final/accuracy": 0.9, "final/primary": 0.9}, model=T)
    for seed, ft, sm, tm in ((1, 80.0, 85.0, 75.0), (2, 81.0, 86.0, 76.5), (3, 82.0, 87.5, 77.0)):
        _trial(s, "ft2", seed, ft, "ft", 2)
        _trial(s, "sm2", seed, sm, "sm+tmkd", 2)      # +5.0, +5.0, +5.5: holds
        _trial(s, "tm2", seed, tm, "tmkd", 2)         # -5.0, -4.5, -5.0: contradicted
    for seed, ft, sm in ((1, 80.0, 81.0), (2, 82.0, 81.0), (3, 84.0, 85.0)):
        _trial(s, "ft3", seed, ft, "ft", 3)
        _trial(s, "sm3", seed, sm, "sm+tmkd", 3)      # +1, -1, +1: inconclusive
    for seed, ft in ((1, 70.0), (2, 72.0)):
        _trial(s, "ft1", seed, ft, "ft", 1)
    for seed, sm in ((3, 75.0), (4, 78.0)):           # other seeds than ft1: unpaired (Welch)
        _trial(s, "sm1", seed, sm, "sm+tmkd", 1)
    for seed, a, b in ((1, 85.0, 85.2), (2, 86.0, 86.1), (3, 87.5, 87.4)):   # only a_sm differs: stable
        _trial(s, "sm4-a1", seed, a, "sm+tmkd", 4)
        _trial(s, "sm4-a2", seed, b, "sm+tmkd", 4, params={"a_sm": "2.0"})
    return load_runs(s.uri)


@pytest.fixture(scope="module")
def card(card_df):
    from mixkd.report.scorecard import build_scorecard
    return build_scorecard(card_df)


def _row(card, cid, k):
    rows = [r for r in card if r.claim_id == cid and r.setting.endswith(f"{k}-layer student")]
    assert len(rows) == 1, [(r.claim_id, r.setting) for r in card]
    return rows[0]


def _paired_ci(d):
    n = len(d)
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    half = student_t.ppf(0.975, n - 1) * sd / math.sqrt(n)
    return m, m - half, m + half


def test_clear_positive_effect_holds_with_the_hand_computed_ci(card):
    r = _row(card, "sm+tmkd>ft", 2)
    m, lo, hi = _paired_ci([5.0, 5.0, 5.5])
    assert r.verdict == "holds" and r.ours.n == 3 and "paired" in r.ours.method
    assert (r.ours.mean, r.ours.lo, r.ours.hi) == pytest.approx((m, lo, hi))
    assert r.paper == pytest.approx(88.99 - 87.16)          # Table 1, BERT3 (nearest to k=2) SST-2
    assert "BERT3" in r.paper_note and "nearest" in r.paper_note


def test_clear_negative_effect_is_contradicted(card):
    r = _row(card, "tmkd>ft", 2)
    m, lo, hi = _paired_ci([-5.0, -4.5, -5.0])
    assert r.verdict == "contradicted" and (r.ours.mean, r.ours.lo, r.ours.hi) == pytest.approx((m, lo, hi))


def test_overlapping_arms_are_inconclusive(card):
    r = _row(card, "sm+tmkd>ft", 3)
    assert r.verdict == "inconclusive" and r.ours.lo < 0 < r.ours.hi
    assert r.paper == pytest.approx(88.99 - 87.16) and r.paper_note == "Table 1, BERT3"


def test_unpaired_arms_use_welch(card):
    r = _row(card, "sm+tmkd>ft", 1)
    va, vb = 4.5, 2.0                                          # sample variances of [75, 78] and [70, 72]
    se2 = va / 2 + vb / 2
    df = se2 ** 2 / ((va / 2) ** 2 + (vb / 2) ** 2)
    half = student_t.ppf(0.975, df) * math.sqrt(se2)
    assert "Welch" in r.ours.method and r.ours.mean == pytest.approx(5.5)
    assert (r.ours.lo, r.ours.hi) == pytest.approx((5.5 - half, 5.5 + half))
    assert r.verdict == "inconclusive"                         # 2 vs 2 runs: the interval is wide


def test_missing_arm_is_no_runs(card):
    r = _row(card, "sm+tmkd>ft", 4)                            # sm+tmkd at k=4, no ft there
    assert r.verdict == "no runs" and r.ours.mean is None and "no ft runs" in r.note
    bt = [x for x in card if x.claim_id == "bt:sm+tmkd"]
    assert bt and all(x.verdict == "no runs" for x in bt)
    kd = [x for x in card if x.claim_id == "mixkd>kd"]
    assert len(kd) == 1 and kd[0].verdict == "no runs" and kd[0].setting == "—"
    assert kd[0].paper == pytest.approx(89.5 - 86.9)           # Table 3 BERT3 SST-2


def test_stability_claim_from_configs_that_differ_in_one_knob(card):
    r = [x for x in card if x.claim_id == "stable:a_sm" and "4-layer" in x.setting]
    assert len(r) == 1 and r[0].verdict == "holds" and r[0].ours.hi < 1.0
    assert r[0].paper == pytest.approx(88.76 - 88.19)
    other = [x for x in card if x.claim_id == "stable:mixup_ratio"]
    assert len(other) == 1 and other[0].verdict == "no runs"


def test_every_claim_appears_and_renders(card, card_df):
    from mixkd.report import scorecard as SC
    from mixkd.report.build import build_report
    ids = {r.claim_id for r in card}
    assert ids >= {"tmkd>ft", "sm+tmkd>tmkd", "sm+tmkd>ft", "bt:ft", "bt:tmkd", "bt:sm+tmkd", "mixkd>kd",
                   "mixkd>pkd", "limited-data", "stable:a_sm", "stable:a_tmkd", "stable:mixup_ratio"}
    counts = SC.summary_counts(card)
    assert counts["holds"] >= 2 and counts["contradicted"] == 1 and counts["no runs"] >= 5
    text = SC.format_text(card)
    assert "HOLDS" in text and "CONTRADICTED" in text and "verdicts:" in text
    md = SC.to_markdown(card)
    assert md.count("\n") == len(card) + 1 and "**holds**" in md
    report = build_report(card_df, figures=True)
    assert "scorecard.png" in report.figures and report.scorecard
    from mixkd.report.render import render_markdown, report_json
    assert "## Claims scorecard" in render_markdown(report)
    assert len(report_json(report)["scorecard"]) == len(card)
    # our teacher is MiniLM: Table 1 shows the paper's numbers beside ours without a Δ
    t1 = report.table("table1")
    assert all(c.delta is None for r in t1.rows for c in r.cells)


def test_limited_data_compares_with_the_largest_fraction_measured(tmp_path):
    """Without full-data runs, the limited-data claim compares each smaller fraction with the largest one (the
    repro-cpu grid: 1% vs 10%); the gain at 1% minus the gain at 10%, half-widths in quadrature; the paper's
    effect comes from Fig. 1's two points for a task it plots."""
    from mixkd.report.scorecard import build_scorecard
    from mixkd.tracking.runstore import load_runs

    s = Store(tmp_path / "mlflow.db")
    for task in ("sst2", "qnli"):
        for frac in (0.1, 0.01):    # one teacher per fraction, the same backbone: one (task, teacher, depth)
            s.add(f"{task}-teacher-{frac}", "teacher", task, 42, {"final/accuracy": 0.9, "final/primary": 0.9},
                  frac=frac, model=T)
        for seed, ft10, sm10, ft1, sm1 in ((1, 80.0, 81.0, 70.0, 73.0), (2, 81.0, 82.5, 71.0, 73.5),
                                           (3, 82.0, 83.0, 72.0, 75.5)):
            for name, frac, variant, score in (("ft10", 0.1, "ft", ft10), ("sm10", 0.1, "sm+tmkd", sm10),
                                               ("ft1", 0.01, "ft", ft1), ("sm1", 0.01, "sm+tmkd", sm1)):
                s.add(f"{task}-{name}", "trial", task, seed, {"final/accuracy": score / 100,
                                                             "final/primary": score / 100},
                      variant=variant, k=2, frac=frac, model=T)
    card = build_scorecard(load_runs(s.uri))
    rows = {r.setting.split(",")[0]: r for r in card if r.claim_id == "limited-data"}
    assert set(rows) == {"sst2", "qnli"}
    row = rows["sst2"]
    assert row.setting == f"sst2, teacher {T}, 0.01 of the data, 2-layer student vs 0.1 of the data"
    g1, g10 = [3.0, 2.5, 3.5], [1.0, 1.5, 1.0]
    m1, lo1, hi1 = _paired_ci(g1)
    m10, lo10, hi10 = _paired_ci(g10)
    assert row.ours.mean == pytest.approx(m1 - m10)
    half = math.sqrt((hi1 - m1) ** 2 + (hi10 - m10) ** 2)
    assert (row.ours.lo, row.ours.hi) == (pytest.approx(m1 - m10 - half), pytest.approx(m1 - m10 + half))
    assert row.verdict == "holds"
    assert row.paper is None and "Fig. 1 has no sst2" in row.paper_note
    # QNLI is in Fig. 1 at both points: text deltas 4.1 (1%) minus 2.4 (10%)
    assert rows["qnli"].paper == pytest.approx(1.7) and rows["qnli"].paper_note == "Fig. 1 at 0.01 minus Fig. 1 at 0.1"
