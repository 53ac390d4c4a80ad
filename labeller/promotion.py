"""Whether a new model version beats the active one: both measured on the same held-out labels, with a
95% interval on the difference of their accuracies, so a handful of labels never decides on noise.

Pure functions (no torch, no database): the train job's ``promotion_decision`` calls them, the app shows
what they say.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

# Two-sided 95%.
Z95 = 1.959963984540054

Verdict = Literal["better", "not worse within the noise", "worse"]


def wilson_interval(accuracy: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``accuracy`` measured on ``n`` items ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(float(accuracy), 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Comparison:
    """new minus active accuracy on the same ``n`` labels, its 95% interval, and what that means."""

    new: float
    active: float
    n: int
    difference: float
    low: float
    high: float
    verdict: Verdict

    @property
    def promote(self) -> bool:
        return self.verdict != "worse"

    def describe(self, what: str) -> str:
        """One line for people, e.g. "better than the active version on the same 40 audit labels: ..."."""
        verdict = {
            "better": "better than",
            "not worse within the noise": "not worse, within the noise, than",
            "worse": "worse than",
        }[self.verdict]
        text = (
            f"{verdict} the active version on the same {self.n} {what}: main-class accuracy "
            f"{self.new:.3f} vs {self.active:.3f}, difference {self.difference:+.3f} "
            f"(95% interval {self.low:+.3f} to {self.high:+.3f})"
        )
        if self.verdict == "not worse within the noise":
            text += "; promoted as the newer version"
        return text


def compare_on_same_labels(new: float, active: float, n: int, z: float = Z95) -> Comparison:
    """Newcombe's hybrid score interval for the difference of two accuracies, each from its Wilson interval.

    Both versions are scored on the same ``n`` labels. Only the two accuracies are known (not which
    images each got right), so the interval treats them as independent: two models are nearly always
    right on mostly the same images, which makes this interval wider than a paired one, i.e. slow to call
    a new version worse. Better: the interval lies above 0; worse: below 0; otherwise not worse within
    the noise."""
    low_new, high_new = wilson_interval(new, n, z)
    low_active, high_active = wilson_interval(active, n, z)
    difference = new - active
    low = difference - math.sqrt((new - low_new) ** 2 + (high_active - active) ** 2)
    high = difference + math.sqrt((high_new - new) ** 2 + (active - low_active) ** 2)
    verdict: Verdict = "better" if low > 0 else "worse" if high < 0 else "not worse within the noise"
    return Comparison(new, active, n, difference, low, high, verdict)
