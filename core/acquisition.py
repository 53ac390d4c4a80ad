"""Query strategies: which unlabelled images should a human label next.

Every strategy has one signature, in the style of small-text::

    strategy.query(scores, candidates, n, *, rng, latent=None, labelled=None) -> indices

``scores`` is the model's view of the whole pool (``core.scoring.PoolScores``, one row per image) or
``None`` when no model exists yet; ``candidates`` are the row indices that may be chosen (the unlabelled,
unclaimed images); the result is at most ``n`` distinct entries of ``candidates``, most useful first.

Uncertainty strategies read one score column where larger means "label me sooner" (the same columns the
database stores on ``predictions``). When ``latent`` (one row per pool image) is given they diversify the
batch: k-centre greedy over the ``diversity_factor * n`` most uncertain candidates, so that "next 20" is
not 20 near-duplicates of one confusing image. Without a model every strategy falls back to a cold start
by diversity (k-centre on cheap features such as downsampled pixels, passed as ``latent``). With
``exploration > 0`` a share of each batch goes to the candidates farthest from every ``labelled`` image
(core-set style coverage), because uncertainty sampling never asks about a class the model has not met.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Score columns of core.scoring.PoolScores that rank candidates, larger = sooner.
SCORE_COLUMNS: dict[str, str] = {
    "entropy": "entropy",
    "leaf_entropy": "leaf_entropy",
    "margin": "margin",
    "least_confidence": "least_confidence",
    "bald": "bald",
    "disagreement": "disagreement",
    "novelty": "novelty",
}
STRATEGY_NAMES: tuple[str, ...] = ("random", *SCORE_COLUMNS)
DEFAULT_STRATEGY = "entropy"
COVERAGE_METHODS: tuple[str, ...] = ("farthest", "typical")


class QueryStrategy(Protocol):
    name: str

    def query(
        self,
        scores: object | None,
        candidates: np.ndarray,
        n: int,
        *,
        rng: np.random.Generator,
        latent: np.ndarray | None = None,
        labelled: np.ndarray | None = None,
    ) -> np.ndarray: ...


def _validate(candidates: np.ndarray, n: int) -> np.ndarray:
    candidates = np.asarray(candidates, dtype=np.int64).reshape(-1)
    if n < 0:
        raise ValueError(f"cannot query a negative number of images ({n})")
    if len(np.unique(candidates)) != len(candidates):
        raise ValueError("candidates contain duplicates")
    return candidates


def k_center_greedy(
    features: np.ndarray,
    n: int,
    *,
    rng: np.random.Generator,
    first: int | None = None,
    centres: np.ndarray | None = None,
) -> np.ndarray:
    """Farthest-first traversal: ``n`` row indices of ``features`` that cover them evenly.

    Starts from ``first`` (a random row when ``None``), or, when ``centres`` (points already covered,
    e.g. labelled images) are given, from the row farthest from them. Each next pick is the row farthest
    from everything picked so far, so the result has no duplicates and no two picks sit close together
    while far regions remain uncovered (a 2-approximation of the k-centre objective).
    """
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    count = len(features)
    n = min(n, count)
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    if centres is not None and len(centres):
        centres = np.asarray(centres, dtype=np.float64).reshape(len(centres), -1)
        distance = _min_sq_distance(features, centres)
        start = int(np.argmax(distance)) if first is None else first
    else:
        distance = np.full(count, np.inf)
        start = int(rng.integers(count)) if first is None else first
    chosen = [start]
    distance = np.minimum(distance, _sq_distance(features, features[start]))
    distance[start] = -1.0
    for _ in range(n - 1):
        pick = int(np.argmax(distance))
        chosen.append(pick)
        distance = np.minimum(distance, _sq_distance(features, features[pick]))
        distance[chosen] = -1.0
    return np.array(chosen, dtype=np.int64)


def _sq_distance(features: np.ndarray, point: np.ndarray) -> np.ndarray:
    difference = features - point
    return np.einsum("ij,ij->i", difference, difference)


def _min_sq_distance(features: np.ndarray, centres: np.ndarray, chunk: int = 1024) -> np.ndarray:
    # Chunked so that a large pool against many labelled images does not build an N x L matrix at once.
    best = np.full(len(features), np.inf)
    feature_norms = np.einsum("ij,ij->i", features, features)
    for start in range(0, len(centres), chunk):
        block = centres[start : start + chunk]
        block_norms = np.einsum("ij,ij->i", block, block)
        squared = feature_norms[:, None] - 2.0 * features @ block.T + block_norms[None, :]
        best = np.minimum(best, np.maximum(squared, 0.0).min(axis=1))
    return best


def typical_coverage(
    features: np.ndarray,
    candidates: np.ndarray,
    labelled: np.ndarray | None,
    n: int,
    *,
    rng: np.random.Generator,
    neighbours: int = 20,
) -> np.ndarray:
    """``n`` rows of ``candidates`` that are typical of the regions no label covers yet (TypiClust,
    Hacohen et al. 2022): k-means on every row of ``features`` into ``len(labelled) + n`` clusters; from
    the largest clusters with the fewest labels, the candidate of highest typicality (inverse mean
    distance to its ``neighbours`` nearest rows). Farthest-first coverage picks outliers instead, which
    teach a classifier little when labels are few."""
    from sklearn.cluster import KMeans

    candidates = np.asarray(candidates, dtype=np.int64)
    features = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    labelled = np.empty(0, dtype=np.int64) if labelled is None else np.asarray(labelled, dtype=np.int64)
    n = min(n, len(candidates))
    if n <= 0:
        return np.empty(0, dtype=np.int64)
    clusters = min(len(features), len(labelled) + n)
    seed = int(rng.integers(2**31 - 1))
    assignment = KMeans(clusters, n_init=1, random_state=seed).fit_predict(features)
    sizes = np.bincount(assignment, minlength=clusters)
    covered = np.bincount(assignment[labelled], minlength=clusters)
    is_candidate = np.zeros(len(features), dtype=bool)
    is_candidate[candidates] = True
    chosen: list[int] = []
    # Fewest labels first, then the largest cluster: each pick covers the biggest uncovered region.
    for cluster in np.lexsort((-sizes, covered)):
        members = np.flatnonzero((assignment == cluster) & is_candidate)
        if len(members) == 0:
            continue
        chosen.append(int(members[np.argmax(_typicality(features, members, neighbours))]))
        if len(chosen) == n:
            break
    return np.array(chosen, dtype=np.int64)


def _typicality(features: np.ndarray, rows: np.ndarray, neighbours: int) -> np.ndarray:
    """Inverse mean distance of each of ``rows`` to its nearest other rows (within ``rows``)."""
    points = features[rows]
    squared = _min_sq_distance_matrix(points)
    k = min(neighbours, len(rows) - 1)
    if k <= 0:
        return np.ones(len(rows))
    nearest = np.sqrt(np.sort(squared, axis=1)[:, 1 : k + 1])
    return 1.0 / (nearest.mean(axis=1) + 1e-12)


def _min_sq_distance_matrix(points: np.ndarray) -> np.ndarray:
    norms = np.einsum("ij,ij->i", points, points)
    return np.maximum(norms[:, None] - 2.0 * points @ points.T + norms[None, :], 0.0)


def pixel_features(images: np.ndarray, size: int = 8) -> np.ndarray:
    """Cheap features for a cold start: images (N, C, H, W) area-averaged to (N, C*size*size) in [0, 1]."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {images.shape}")
    count, channels, height, width = images.shape
    size = min(size, height, width)
    # Crop to a multiple of the block size, then average each block.
    rows, cols = height // size, width // size
    cropped = images[:, :, : rows * size, : cols * size].astype(np.float32)
    blocks = cropped.reshape(count, channels, size, rows, size, cols).mean(axis=(3, 5))
    scale = 255.0 if images.dtype == np.uint8 else max(float(blocks.max()), 1e-12)
    return (blocks / scale).reshape(count, -1)


def cold_start(
    candidates: np.ndarray, n: int, *, rng: np.random.Generator, features: np.ndarray | None = None
) -> np.ndarray:
    """No model yet: a spread-out sample by k-centre on ``features`` (pool rows), random without them."""
    candidates = _validate(candidates, n)
    if features is None or len(candidates) == 0:
        return rng.permutation(candidates)[:n]
    picks = k_center_greedy(np.asarray(features)[candidates], n, rng=rng)
    return candidates[picks]


@dataclass(frozen=True)
class RandomStrategy:
    """Uniform random choice: the baseline every other strategy must beat."""

    name: str = "random"

    def query(
        self,
        scores: object | None,
        candidates: np.ndarray,
        n: int,
        *,
        rng: np.random.Generator,
        latent: np.ndarray | None = None,
        labelled: np.ndarray | None = None,
    ) -> np.ndarray:
        candidates = _validate(candidates, n)
        return rng.permutation(candidates)[:n]


@dataclass(frozen=True)
class ScoreStrategy:
    """Top-``n`` candidates by one score column, diversified in latent space when ``latent`` is given."""

    name: str
    column: str
    diversify: bool = True
    # The batch is drawn from the diversity_factor * n most uncertain candidates.
    diversity_factor: int = 5
    # Share of each batch chosen for coverage instead: the candidates farthest in latent space from every
    # labelled image. Uncertainty alone never asks about a class the model has not seen (it is confidently
    # wrong there); these picks find such regions.
    exploration: float = 0.0
    # How the exploration share is chosen: "typical" (the most typical image of the largest uncovered
    # k-means cluster, see typical_coverage) or "farthest" (k-centre from the labelled images).
    coverage: str = "farthest"

    def priority(self, scores: object) -> np.ndarray:
        values = getattr(scores, self.column, None)
        if values is None:
            raise ValueError(f"the model's scores have no {self.column!r} column for strategy {self.name!r}")
        values = np.asarray(values, dtype=np.float64)
        # A NaN score (e.g. no reconstruction for one image) must not jump the queue.
        return np.where(np.isfinite(values), values, -np.inf)

    def query(
        self,
        scores: object | None,
        candidates: np.ndarray,
        n: int,
        *,
        rng: np.random.Generator,
        latent: np.ndarray | None = None,
        labelled: np.ndarray | None = None,
    ) -> np.ndarray:
        """``labelled``: pool rows that already carry labels (the centres the exploration share avoids)."""
        candidates = _validate(candidates, n)
        if scores is None:
            return cold_start(candidates, n, rng=rng, features=latent)
        explored = np.empty(0, dtype=np.int64)
        if latent is not None and self.exploration > 0 and n > 0:
            count = min(n, len(candidates), int(np.ceil(self.exploration * n)))
            latent = np.asarray(latent)
            if self.coverage == "typical":
                explored = typical_coverage(latent, candidates, labelled, count, rng=rng)
            else:
                has_labels = labelled is not None and len(labelled)
                centres = latent[np.asarray(labelled, dtype=np.int64)] if has_labels else None
                explored = candidates[k_center_greedy(latent[candidates], count, rng=rng, centres=centres)]
            candidates = candidates[~np.isin(candidates, explored)]
            n -= count
        return np.concatenate([self._most_uncertain(scores, candidates, n, rng=rng, latent=latent), explored])

    def _most_uncertain(
        self, scores: object, candidates: np.ndarray, n: int, *, rng: np.random.Generator, latent: np.ndarray | None
    ) -> np.ndarray:
        if n <= 0 or len(candidates) == 0:
            return np.empty(0, dtype=np.int64)
        priority = self.priority(scores)[candidates]
        # Random order first, then a stable sort: ties are broken at random, not by pool position.
        shuffled = rng.permutation(len(candidates))
        ranked = candidates[shuffled[np.argsort(-priority[shuffled], kind="stable")]]
        if latent is None or not self.diversify or n <= 1:
            return ranked[:n]
        top = ranked[: max(n, self.diversity_factor * n)]
        # Start from the most uncertain image, then farthest-first among the shortlist.
        picks = k_center_greedy(np.asarray(latent)[top], n, rng=rng, first=0)
        return top[picks]


def get_strategy(
    name: str,
    *,
    diversify: bool = True,
    diversity_factor: int = 5,
    exploration: float = 0.0,
    coverage: str = "farthest",
) -> QueryStrategy:
    """The strategy called ``name`` (one of ``STRATEGY_NAMES``)."""
    if not 0.0 <= exploration <= 1.0:
        raise ValueError(f"exploration must lie in [0, 1], got {exploration}")
    if coverage not in COVERAGE_METHODS:
        raise ValueError(f"coverage must be one of {COVERAGE_METHODS}, got {coverage!r}")
    if name == "random":
        return RandomStrategy()
    if name not in SCORE_COLUMNS:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGY_NAMES)}")
    return ScoreStrategy(
        name,
        SCORE_COLUMNS[name],
        diversify=diversify,
        diversity_factor=diversity_factor,
        exploration=exploration,
        coverage=coverage,
    )


def choose_audit_slice(
    candidates: np.ndarray, fraction: float, *, rng: np.random.Generator, minimum: int = 1
) -> np.ndarray:
    """A uniformly random slice of ``candidates`` (``fraction`` of them, at least ``minimum``).

    Audit images are labelled like any other but never chosen by uncertainty, so accuracy measured on
    them is unbiased by the active strategy."""
    candidates = _validate(candidates, 0)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"audit fraction must lie in [0, 1], got {fraction}")
    if fraction == 0.0 or len(candidates) == 0:
        return np.empty(0, dtype=np.int64)
    size = min(len(candidates), max(minimum, round(fraction * len(candidates))))
    return np.sort(rng.choice(candidates, size, replace=False))


def query_with_audit(
    strategy: QueryStrategy,
    scores: object | None,
    candidates: np.ndarray,
    n: int,
    *,
    rng: np.random.Generator,
    audit_candidates: np.ndarray,
    audit_every: int,
    latent: np.ndarray | None = None,
    labelled: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A batch of ``n``: every ``audit_every``-th image a random pick from the unlabelled audit slice,
    the rest from ``strategy`` over the other candidates. Returns (strategy picks, audit picks),
    disjoint; ``audit_every <= 0`` turns the audit off."""
    candidates = _validate(candidates, n)
    audit_candidates = _validate(audit_candidates, 0)
    audit_count = 0 if audit_every <= 0 else min(n // audit_every, len(audit_candidates))
    audit = rng.permutation(audit_candidates)[:audit_count]
    rest = np.setdiff1d(candidates, audit_candidates, assume_unique=True)
    chosen = strategy.query(scores, rest, n - audit_count, rng=rng, latent=latent, labelled=labelled)
    return chosen, audit
