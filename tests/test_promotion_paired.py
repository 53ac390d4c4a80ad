"""The paired comparison of two model versions on the same held-out images (issue 13, fair comparison):
McNemar's exact test and Newcombe's paired interval, hand-computed and checked against scipy, and the
promotion decision naming the test it used."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from labeller.jobs.train import AuditResult, audit_comparison, promotion_decision
from labeller.promotion import (
    compare_on_same_labels,
    compare_paired,
    compare_paired_counts,
    held_out_text,
    mcnemar_exact_p,
    newcombe_paired_interval,
)


def test_mcnemar_exact_p_by_hand_and_against_scipy() -> None:
    # 10 vs 2 discordant: 2 * P(X <= 2), X ~ Bin(12, 1/2) = 2 * (1 + 12 + 66) / 4096 = 79/2048.
    assert mcnemar_exact_p(10, 2) == pytest.approx(79 / 2048) == pytest.approx(0.0386, abs=5e-5)
    assert mcnemar_exact_p(2, 10) == mcnemar_exact_p(10, 2)
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(5, 5) == 1.0 and mcnemar_exact_p(1, 0) == 1.0
    assert mcnemar_exact_p(3, 0) == pytest.approx(0.25)  # 2 * (1/2)^3
    # Small counts (exact integers) and large ones (in logs) agree with scipy's exact binomial test.
    for only_new, only_active in ((10, 2), (7, 1), (0, 9), (40, 25), (600, 420), (5000, 5100), (1800, 20)):
        expected = binomtest(min(only_new, only_active), only_new + only_active, 0.5).pvalue
        assert mcnemar_exact_p(only_new, only_active) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_newcombe_paired_interval_by_hand_and_on_a_correlated_table() -> None:
    # Newcombe's square-and-add interval for paired data (method 10, phi with his continuity correction, as
    # in Fagerland, Lydersen and Laake's contingencytables). Bentur et al. (2009), a=1 b=1 c=7 d=12:
    # ad - bc = 5 <= n/2, so phi is 0 and the interval combines the Wilson intervals of 2/21
    # (0.02652 to 0.28915) and 8/21 (0.20750 to 0.59122) by hand: -0.2857 -/+ ... = -0.5069 to -0.0256.
    low, high = newcombe_paired_interval(1, 1, 7, 12)
    assert (low, high) == (pytest.approx(-0.5069, abs=5e-4), pytest.approx(-0.0256, abs=5e-4))
    unpaired = compare_on_same_labels(2 / 21, 8 / 21, 21)
    assert (low, high) == (pytest.approx(unpaired.low), pytest.approx(unpaired.high))
    # Cavo et al. (2012), a=59 b=6 c=16 d=80: strongly correlated outcomes narrow the interval.
    low, high = newcombe_paired_interval(59, 6, 16, 80)
    assert (low, high) == (pytest.approx(-0.1186, abs=5e-4), pytest.approx(-0.0046, abs=5e-4))
    unpaired = compare_on_same_labels(65 / 161, 75 / 161, 161)
    assert unpaired.low < low and high < unpaired.high and unpaired.high > 0


def test_paired_is_sharper_than_unpaired_when_the_versions_agree_on_most_images() -> None:
    # 100 images: both right on 80, only the new one right on 8, the active one never alone: 0.88 vs 0.80.
    paired = compare_paired_counts(80, 8, 0, 12)
    unpaired = compare_on_same_labels(0.88, 0.80, 100)
    assert (paired.new, paired.active, paired.difference) == (pytest.approx(0.88), pytest.approx(0.80), 0.08)
    assert paired.verdict == "better" and paired.p_value == pytest.approx(2 / 256)
    assert unpaired.verdict == "not worse within the noise"
    assert paired.high - paired.low < unpaired.high - unpaired.low
    worse = compare_paired_counts(80, 0, 8, 12)
    assert worse.verdict == "worse" and not worse.promote
    # Identical outcomes: no evidence either way, and the interval still has a width.
    same = compare_paired_counts(10, 0, 0, 0)
    assert same.verdict == "not worse within the noise" and same.p_value == 1.0 and same.low < 0 < same.high
    with pytest.raises(ValueError):
        compare_paired_counts(0, 0, 0, 0)


def test_compare_paired_counts_the_two_by_two_table_from_outcomes() -> None:
    new = [True] * 26 + [True] * 10 + [False] * 2 + [False] * 2
    active = [True] * 26 + [False] * 10 + [True] * 2 + [False] * 2
    comparison = compare_paired(new, active)
    assert comparison == compare_paired_counts(26, 10, 2, 2)
    assert (comparison.n, comparison.only_new, comparison.only_active) == (40, 10, 2)
    assert comparison.p_value == pytest.approx(0.0386, abs=5e-5)
    with pytest.raises(ValueError):
        compare_paired([True], [True, False])
    stored = comparison.as_metrics()
    assert stored["test"] == "paired McNemar / Newcombe paired" and stored["only_new_right"] == 10


def test_the_promotion_decision_names_the_paired_test_when_the_outcomes_are_known() -> None:
    new_right = (True,) * 36 + (False,) * 4
    active_right = (True,) * 26 + (False,) * 10 + (True,) * 2 + (False,) * 2
    new = AuditResult(40, 0.9, 0.85, new_right)
    active = AuditResult(40, 0.7, 0.6, active_right)
    promoted, reason = promotion_decision("auto", new, active, None, None)
    assert promoted and reason.startswith("better than the active version on the same 40 held-out audit labels")
    assert "0.900 vs 0.700" in reason
    assert "paired test on the same images: only the new version right on 10, only the active on 2" in reason
    assert "McNemar exact p = 0.0386" in reason and "Newcombe paired 95% interval" in reason
    assert audit_comparison(new, active).method == "paired"
    # Only the accuracies known (a version measured before this change): the unpaired interval, and it says so.
    promoted, reason = promotion_decision("auto", AuditResult(40, 0.9, 0.85), active, None, None)
    assert promoted and "unpaired test" in reason and "McNemar" not in reason
    assert audit_comparison(AuditResult(40, 0.9, 0.85), active).method == "unpaired"
    assert audit_comparison(new, None) is None and audit_comparison(new, AuditResult(40, None, None)) is None


def test_held_out_text_for_two_versions() -> None:
    table = {"images": 40, "both_right": 26, "only_a_right": 2, "only_b_right": 10, "neither_right": 2}
    text = held_out_text(table)
    assert text.startswith("B is better than A on the same 40 held-out labels: main-class accuracy 0.900 vs 0.700")
    assert "only B right on 10, only A on 2, McNemar exact p = 0.0386" in text
    assert "not compared on the same labels" in held_out_text({"images": 0})
