"""Whether a new model version beats the active one: both measured on the same held-out labels, with a
95% interval on the difference of their accuracies, so a handful of labels never decides on noise.

Paired where it can be: when it is known which images each version got right, the test looks at the
images where they disagree (McNemar's exact test, and Newcombe's paired score interval on the difference,
his method 10). Two versions are right on mostly the same images, so this is much sharper than treating
the two accuracies as independent. The unpaired interval (Newcombe's hybrid score interval from two
Wilson intervals) is the fallback when only the two accuracies are known. ``Comparison.describe`` says
which one decided.

Fewer than ``MIN_AUDIT_LABELS`` (30) labels behind an accuracy or a comparison is reported as too few:
the 95% interval of one label spans 0.21 to 1, so "not worse on the same 1 label" says nothing
(``audit_text``, ``Comparison.describe``).

Pure functions (no torch, no database): the train job's ``promotion_decision`` and the model comparison
of ``labeller models compare`` and the Train page call them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from db.queries.audit import MIN_AUDIT_LABELS

# Two-sided 95%.
Z95 = 1.959963984540054

Verdict = Literal["better", "not worse within the noise", "worse"]
Method = Literal["paired", "unpaired"]


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``accuracy`` measured on ``n`` items ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(float(accuracy), 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def interval_text(accuracy: float, n: int) -> str:
    """An accuracy with its sample size and Wilson interval, e.g. "0.900 (n = 40, 95% interval 0.769 to
    0.960)"; under ``MIN_AUDIT_LABELS`` labels it says they are too few."""
    low, high = wilson_interval(accuracy, n)
    few = f", fewer than {MIN_AUDIT_LABELS}: too few to go by" if n < MIN_AUDIT_LABELS else ""
    return f"{accuracy:.3f} (n = {n}, 95% interval {low:.3f} to {high:.3f}{few})"


def audit_summary(metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """A model version's audit accuracy from its stored metrics, JSON-ready: ``n`` (labelled audit images
    it was measured on), ``main_accuracy``, its 95% Wilson ``interval`` and ``enough`` (n reaches
    ``MIN_AUDIT_LABELS``); None when it was not measured on any audit label."""
    accuracy, n = metrics.get("audit_main_accuracy"), metrics.get("audit_count")
    if isinstance(accuracy, bool) or not isinstance(accuracy, int | float) or not isinstance(n, int) or n <= 0:
        return None
    low, high = wilson_interval(float(accuracy), n)
    return {"n": n, "main_accuracy": float(accuracy), "interval": [low, high], "enough": n >= MIN_AUDIT_LABELS}


def audit_text(metrics: Mapping[str, Any]) -> str:
    """A version's audit accuracy for people (``interval_text``), or "not measured"."""
    summary = audit_summary(metrics)
    return "not measured" if summary is None else interval_text(summary["main_accuracy"], summary["n"])


def mcnemar_exact_p(only_new: int, only_active: int) -> float:
    """Two-sided exact McNemar test: the discordant images (one version right, the other wrong) split as a
    fair coin would split them if both versions were equally accurate. 1.0 when there are none."""
    n = only_new + only_active
    if n == 0:
        return 1.0
    if n <= 1000:  # exact integers
        tail = sum(math.comb(n, i) for i in range(min(only_new, only_active) + 1))
        return min(1.0, 2 * tail / 2**n)
    # Larger: the binomial terms in logs (exact integers would take seconds).
    logs = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
        for i in range(min(only_new, only_active) + 1)
    ]
    top = max(logs)
    return min(1.0, 2 * math.exp(top) * math.fsum(math.exp(x - top) for x in logs))


def newcombe_paired_interval(
    both: int, only_new: int, only_active: int, neither: int, z: float = Z95
) -> tuple[float, float]:
    """Newcombe's (1998) square-and-add score interval for paired data (his method 10) on new minus active
    accuracy on the same images: the two Wilson intervals combined with the correlation (phi) of the two
    versions' right/wrong outcomes."""
    n = both + only_new + only_active + neither
    if n <= 0:
        return -1.0, 1.0
    new, active = (both + only_new) / n, (both + only_active) / n
    low_new, high_new = wilson_interval(new, n, z)
    low_active, high_active = wilson_interval(active, n, z)
    # phi, the correlation of the two outcomes, with Newcombe's continuity correction: a positive
    # association counts only beyond n / 2 (as in Fagerland, Lydersen and Laake's implementation).
    margins = (both + only_new) * (only_active + neither) * (both + only_active) * (only_new + neither)
    association = both * neither - only_new * only_active
    if association > 0:
        association = max(association - n / 2, 0.0)
    phi = association / math.sqrt(margins) if margins else 0.0
    difference = new - active
    below = (new - low_new) ** 2 - 2 * phi * (new - low_new) * (high_active - active) + (high_active - active) ** 2
    above = (high_new - new) ** 2 - 2 * phi * (high_new - new) * (active - low_active) + (active - low_active) ** 2
    return max(-1.0, difference - math.sqrt(max(below, 0.0))), min(1.0, difference + math.sqrt(max(above, 0.0)))


def _verdict(low: float, high: float) -> Verdict:
    return "better" if low > 0 else "worse" if high < 0 else "not worse within the noise"


@dataclass(frozen=True)
class Comparison:
    """new minus active accuracy on the same ``n`` labels, its 95% interval, and what that means.

    ``method``: "paired" when it is known which images each version got right (then ``only_new`` and
    ``only_active`` count the images only that version got right, and ``p_value`` is McNemar's exact
    test on them), "unpaired" when only the two accuracies are known."""

    new: float
    active: float
    n: int
    difference: float
    low: float
    high: float
    verdict: Verdict
    method: Method = "unpaired"
    only_new: int | None = None
    only_active: int | None = None
    p_value: float | None = None

    @property
    def promote(self) -> bool:
        return self.verdict != "worse"

    @property
    def too_few(self) -> bool:
        """Compared on fewer than ``MIN_AUDIT_LABELS`` labels: "not worse" there is no evidence."""
        return self.n < MIN_AUDIT_LABELS

    def test_text(self, new: str = "the new version", active: str = "the active") -> str:
        """Which test was used, with its numbers, e.g. "paired test on the same images: ..."."""
        interval = f"{self.low:+.3f} to {self.high:+.3f}"
        if self.method == "paired":
            return (
                f"paired test on the same images: only {new} right on {self.only_new}, only {active} on "
                f"{self.only_active}, McNemar exact p = {self.p_value:.3g}; Newcombe paired 95% "
                f"interval {interval}"
            )
        return (
            "unpaired test (which images each version got right is not known): Newcombe 95% interval "
            f"{interval}, wider than a paired one"
        )

    def describe(self, what: str) -> str:
        """One line for people, e.g. "better than the active version on the same 40 audit labels: ...".
        On too few labels (``too_few``) a version within the noise is "promoted as the newest: too few ...":
        the newer version goes ahead, but nothing says it is as good. A clear verdict on few labels stands,
        with a note on how few they were."""
        if self.too_few and self.verdict == "not worse within the noise":
            return (
                f"promoted as the newest: too few {what} to compare (n = {self.n}, fewer than "
                f"{MIN_AUDIT_LABELS}): main-class accuracy {self.accuracies_text()}, difference "
                f"{self.difference:+.3f} ({self.test_text()})"
            )
        verdict = {
            "better": "better than",
            "not worse within the noise": "not worse, within the noise, than",
            "worse": "worse than",
        }[self.verdict]
        text = (
            f"{verdict} the active version on the same {self.n} {what}: main-class accuracy "
            f"{self.new:.3f} vs {self.active:.3f}, difference {self.difference:+.3f} ({self.test_text()})"
        )
        if self.verdict == "not worse within the noise":
            text += "; promoted as the newer version"
        elif self.too_few:
            text += f"; only {self.n} labels (fewer than {MIN_AUDIT_LABELS}), yet the interval excludes 0"
        return text

    def accuracies_text(self) -> str:
        """The two accuracies, each with its 95% Wilson interval on the same n labels."""
        new_low, new_high = wilson_interval(self.new, self.n)
        active_low, active_high = wilson_interval(self.active, self.n)
        return (
            f"{self.new:.3f} (95% interval {new_low:.3f} to {new_high:.3f}) vs {self.active:.3f} "
            f"({active_low:.3f} to {active_high:.3f})"
        )

    def as_metrics(self) -> dict[str, Any]:
        """What is stored beside the decision (JSON-ready)."""
        return {
            "test": "paired McNemar / Newcombe paired" if self.method == "paired" else "unpaired Newcombe",
            "n": self.n,
            "too_few_labels": self.too_few,
            "new_interval": list(wilson_interval(self.new, self.n)),
            "active_interval": list(wilson_interval(self.active, self.n)),
            "difference": self.difference,
            "interval": [self.low, self.high],
            "only_new_right": self.only_new,
            "only_active_right": self.only_active,
            "p_value": self.p_value,
        }


def compare_on_same_labels(new: float, active: float, n: int, z: float = Z95) -> Comparison:
    """Newcombe's hybrid score interval for the difference of two accuracies, each from its Wilson interval.

    Both versions are scored on the same ``n`` labels. Only the two accuracies are known (not which
    images each got right), so the interval treats them as independent: two models are nearly always
    right on mostly the same images, which makes this interval wider than a paired one, i.e. slow to call
    a new version worse. Better: the interval lies above 0; worse: below 0; otherwise not worse within
    the noise. Use ``compare_paired`` when the per-image outcomes are known."""
    low_new, high_new = wilson_interval(new, n, z)
    low_active, high_active = wilson_interval(active, n, z)
    difference = new - active
    low = difference - math.sqrt((new - low_new) ** 2 + (high_active - active) ** 2)
    high = difference + math.sqrt((high_new - new) ** 2 + (active - low_active) ** 2)
    return Comparison(new, active, n, difference, low, high, _verdict(low, high))


def compare_paired_counts(both: int, only_new: int, only_active: int, neither: int, z: float = Z95) -> Comparison:
    """The paired comparison from the 2x2 table of right/wrong outcomes on the same images: the verdict
    from Newcombe's paired interval (better: above 0; worse: below 0), McNemar's exact p beside it."""
    n = both + only_new + only_active + neither
    if n <= 0:
        raise ValueError("a paired comparison needs at least one image")
    low, high = newcombe_paired_interval(both, only_new, only_active, neither, z)
    return Comparison(
        new=(both + only_new) / n,
        active=(both + only_active) / n,
        n=n,
        difference=(only_new - only_active) / n,
        low=low,
        high=high,
        verdict=_verdict(low, high),
        method="paired",
        only_new=only_new,
        only_active=only_active,
        p_value=mcnemar_exact_p(only_new, only_active),
    )


def compare_paired(new_right: Sequence[bool], active_right: Sequence[bool], z: float = Z95) -> Comparison:
    """``compare_paired_counts`` from each version's right/wrong on the same images, in the same order."""
    if len(new_right) != len(active_right):
        raise ValueError(f"paired outcomes need the same images: {len(new_right)} vs {len(active_right)}")
    pairs = [(bool(a), bool(b)) for a, b in zip(new_right, active_right, strict=True)]
    return compare_paired_counts(
        both=pairs.count((True, True)),
        only_new=pairs.count((True, False)),
        only_active=pairs.count((False, True)),
        neither=pairs.count((False, False)),
        z=z,
    )


def held_out_text(table: Mapping[str, int]) -> str:
    """One line on B vs A from ``db.queries.models.held_out_outcomes`` (``labeller models compare`` and the
    Train page): the paired test on the labels neither version trained on, or why there is none."""
    if table.get("images", 0) <= 0:
        return (
            "no labelled image is held out from both versions with a prediction from each (label audit "
            "images, or label after both were trained), so they are not compared on the same labels"
        )
    comparison = compare_paired_counts(
        table["both_right"], table["only_b_right"], table["only_a_right"], table["neither_right"]
    )
    verdict = {"better": "better than", "not worse within the noise": "within the noise of", "worse": "worse than"}
    few = (
        f"; fewer than {MIN_AUDIT_LABELS} labels: too few to tell them apart"
        if comparison.too_few and comparison.verdict == "not worse within the noise"
        else ""
    )
    return (
        f"B is {verdict[comparison.verdict]} A on the same {comparison.n} held-out labels: main-class accuracy "
        f"{comparison.new:.3f} vs {comparison.active:.3f}, difference {comparison.difference:+.3f} "
        f"({comparison.test_text('B', 'A')}){few}"
    )
