"""Hand-made pool scores for acquisition tests: every column computed from given probabilities with the
same definitions the scorer uses (larger = label sooner)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)


def scores_from_probabilities(
    main_probs: np.ndarray,
    *,
    leaf_probs: np.ndarray | None = None,
    bald: np.ndarray | None = None,
    disagreement: np.ndarray | None = None,
    novelty: np.ndarray | None = None,
) -> SimpleNamespace:
    main_probs = np.asarray(main_probs, dtype=np.float64)
    leaf_probs = main_probs if leaf_probs is None else np.asarray(leaf_probs, dtype=np.float64)
    top_two = np.sort(main_probs, axis=1)[:, ::-1][:, :2]
    count = len(main_probs)
    return SimpleNamespace(
        main_probs=main_probs,
        leaf_probs=leaf_probs,
        entropy=_entropy(main_probs),
        leaf_entropy=_entropy(leaf_probs),
        margin=1.0 - (top_two[:, 0] - top_two[:, 1]),
        least_confidence=1.0 - top_two[:, 0],
        bald=bald,
        disagreement=disagreement,
        novelty=novelty,
        latent_mean=np.zeros((count, 2)),
    )
