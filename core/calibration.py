"""Calibration: M2's classifier grows over-confident, which ruins uncertainty ranking. A single
temperature on the leaf logits, fitted on held-out labels, and the expected calibration error.

A temperature fitted on a handful of held-out labels, all predicted right, is minimised at T -> 0 and
sharpens every probability (seen: 10 labels, 182 of 189 pool predictions above 99%, its 3 errors among
them). So ``calibrate`` fits T only on enough labels that include errors, keeps T = 1 otherwise, and says
whether the result is backed by enough labels for people to read its percentages.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from core.models import classification_loss
from core.registry import MIN_CALIBRATION_LABELS


def set_nll(logits: torch.Tensor, admissible: torch.Tensor) -> torch.Tensor:
    """Mean of -log q(y in S | x): the likelihood of partial (set) labels as well as exact ones."""
    return classification_loss(logits, admissible).mean()


def fit_temperature(logits: torch.Tensor, admissible: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the set NLL of softmax(logits / T) (LBFGS on log T).

    Returns 1.0 when there is nothing to fit on."""
    if len(logits) == 0:
        return 1.0
    logits = logits.detach().float().cpu()
    admissible = admissible.detach().cpu()
    log_t = torch.zeros((), requires_grad=True)
    optimiser = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = set_nll(logits / log_t.exp(), admissible)
        loss.backward()
        return loss

    optimiser.step(closure)
    temperature = float(log_t.detach().exp())
    if not math.isfinite(temperature):
        return 1.0
    # Bound it: a handful of validation labels, all classified correctly, drive T towards 0 (seen: 0.06
    # on 10 digits), which would make the model absurdly over-confident on everything else.
    return float(np.clip(temperature, 0.5, 20.0))


@dataclass(frozen=True)
class Calibration:
    """The temperature a version applies, what it rests on, and whether people may read its percentages
    (``trusted``: measured on at least MIN_CALIBRATION_LABELS held-out labels)."""

    temperature: float
    labels: int
    errors: int
    fitted: bool
    trusted: bool
    reason: str

    def as_metrics(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(logits: torch.Tensor, admissible: torch.Tensor) -> Calibration:
    """The temperature for held-out ``logits`` (admissible leaf sets ``admissible``): fitted
    (``fit_temperature``) on at least MIN_CALIBRATION_LABELS labels that include errors, else 1.

    No error: the NLL has no minimum above 0, and T -> 0 would claim a certainty nothing measured. Fewer
    labels: one error among six drove the fit to T = 2.4 on hymenoptera, and the ECE on 153 held-out photos
    rose from 0.026 (T = 1) to 0.077 (benchmarks/results/loop_truth.md), so a few labels move T either way
    more than they inform it."""
    labels = len(logits)
    if labels == 0:
        return Calibration(1.0, 0, 0, False, False, "no held-out labels: T = 1")
    top = logits.detach().argmax(dim=1)
    errors = int((~admissible.detach()[torch.arange(labels), top]).sum())
    trusted = labels >= MIN_CALIBRATION_LABELS
    if errors == 0:
        reason = f"T = 1: the {labels} held-out labels are all predicted right, so there is no error to fit on"
        return Calibration(1.0, labels, 0, False, trusted, reason)
    if not trusted:
        reason = (
            f"T = 1: {labels} held-out labels ({errors} predicted wrong), fewer than the "
            f"{MIN_CALIBRATION_LABELS} a fitted temperature needs"
        )
        return Calibration(1.0, labels, errors, False, False, reason)
    reason = f"fitted on {labels} held-out labels ({errors} predicted wrong)"
    return Calibration(fit_temperature(logits, admissible), labels, errors, True, True, reason)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence: sum over equal-width confidence bins of |accuracy - confidence|
    weighted by the fraction of images in the bin."""
    if len(probs) == 0:
        return float("nan")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)
