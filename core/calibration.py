"""Calibration: M2's classifier grows over-confident, which ruins uncertainty ranking. A single
temperature on the leaf logits, fitted on held-out labels, and the expected calibration error."""

from __future__ import annotations

import math

import numpy as np
import torch

from core.models import classification_loss


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
