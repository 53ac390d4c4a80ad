"""Hand-made ``core.scoring.PoolScores``, as acquisition sees them (``UncertaintyScores``), for tests: every
column computed from given probabilities with the scorer's definitions (larger = label sooner). A column
passed as ``None`` is left off (``None`` on the dataclass) to test strategies that need it."""

from __future__ import annotations

import numpy as np

from core.acquisition import UncertaintyScores
from core.scoring import PoolScores


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)


def scores_from_probabilities(
    main_probs: np.ndarray,
    *,
    leaf_probs: np.ndarray | None = None,
    bald: np.ndarray | None = None,
    disagreement: np.ndarray | None = None,
    novelty: np.ndarray | None = None,
) -> UncertaintyScores:
    main_probs = np.asarray(main_probs, dtype=np.float64)
    leaf_probs = main_probs if leaf_probs is None else np.asarray(leaf_probs, dtype=np.float64)
    top_two = np.sort(main_probs, axis=1)[:, ::-1][:, :2]
    count = len(main_probs)
    pool = PoolScores(
        main_probs=main_probs,
        leaf_probs=leaf_probs,
        entropy=_entropy(main_probs),
        leaf_entropy=_entropy(leaf_probs),
        margin=1.0 - (top_two[:, 0] - top_two[:, 1]),
        least_confidence=1.0 - top_two[:, 0],
        bald=bald,
        disagreement=disagreement,
        novelty=novelty,
        reconstruction_error=np.zeros(count),
        latent_mean=np.zeros((count, 2), dtype=np.float32),
        latent_log_density=np.zeros(count),
    )
    return pool.uncertainty()
