"""Query strategies: which unlabelled images should a human label next.

Every strategy has one signature, in the style of small-text::

    strategy.query(scores, candidates, n, *, rng, latent=None, labelled=None) -> indices

``scores`` is the model's view of the whole pool (``UncertaintyScores``, one row per image; a learner's
``core.scoring.PoolScores`` gives it with ``.uncertainty()``) or ``None`` when no model exists yet;
``candidates`` are the row indices that may be chosen (the unlabelled, unclaimed images); the result is at
most ``n`` distinct entries of ``candidates``, most useful first.

Uncertainty strategies read one score column where larger means "label me sooner" (the same columns the
database stores on ``predictions``). When ``latent`` (one row per pool image) is given they diversify the
batch: k-centre greedy over the ``diversity_factor * n`` most uncertain candidates, so that "next 20" is
not 20 near-duplicates of one confusing image. Without a model every strategy falls back to a cold start
by diversity (k-centre on cheap features such as downsampled pixels, passed as ``latent``). With
``exploration > 0`` a share of each batch goes to the candidates farthest from every ``labelled`` image
(core-set style coverage), because uncertainty sampling never asks about a class the model has not met.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np

from core.registry import COVERAGE_METHODS, DIVERSITY_FACTOR, SCORE_STRATEGIES, STRATEGIES


@dataclass(frozen=True)
class UncertaintyScores:
    """One value per pool row for each score strategy, larger = label sooner. A learner that cannot give a
    score (a scikit-learn baseline has no BALD) leaves it None, and a strategy that needs it says so."""

    entropy: np.ndarray
    leaf_entropy: np.ndarray
    margin: np.ndarray
    least_confidence: np.ndarray
    bald: np.ndarray | None = None
    disagreement: np.ndarray | None = None
    novelty: np.ndarray | None = None

    def column(self, strategy: str) -> np.ndarray:
        values = getattr(self, strategy) if strategy in SCORE_STRATEGIES else None
        if values is None:
            raise ValueError(f"the model's scores have no {strategy!r} column")
        values = np.asarray(values, dtype=np.float64)
        # A NaN score (e.g. no reconstruction for one image) must not jump the queue.
        return np.where(np.isfinite(values), values, -np.inf)

    @classmethod
    def from_probabilities(cls, main_probs: np.ndarray, leaf_probs: np.ndarray | None = None) -> UncertaintyScores:
        """The columns probabilities alone give (what any classifier, a scikit-learn one included, offers)."""
        leaf = main_probs if leaf_probs is None else leaf_probs
        ranked = -np.sort(-main_probs, axis=1)
        second = ranked[:, 1] if main_probs.shape[1] > 1 else np.zeros(len(main_probs))
        return cls(
            entropy=_entropy(main_probs),
            leaf_entropy=_entropy(leaf),
            margin=1.0 - (ranked[:, 0] - second),
            least_confidence=1.0 - ranked[:, 0],
        )


assert {f.name for f in fields(UncertaintyScores)} == set(SCORE_STRATEGIES), "one column per score strategy"


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(probs + 1e-12)).sum(axis=-1)


class QueryStrategy(Protocol):
    name: str

    def query(
        self,
        scores: UncertaintyScores | None,
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
        scores: UncertaintyScores | None,
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
    """Top-``n`` candidates by the score column named like the strategy, diversified in latent space when
    ``latent`` is given."""

    name: str
    diversify: bool = True
    # The batch is drawn from the diversity_factor * n most uncertain candidates.
    diversity_factor: int = DIVERSITY_FACTOR
    # Share of each batch chosen for coverage instead: the candidates farthest in latent space from every
    # labelled image. Uncertainty alone never asks about a class the model has not seen (it is confidently
    # wrong there); these picks find such regions.
    exploration: float = 0.0
    # How the exploration share is chosen: "typical" (the most typical image of the largest uncovered
    # k-means cluster, see typical_coverage) or "farthest" (k-centre from the labelled images).
    coverage: str = "farthest"

    def query(
        self,
        scores: UncertaintyScores | None,
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
            explored = self.coverage_picks(latent, candidates, labelled, count, rng=rng)
            candidates = candidates[~np.isin(candidates, explored)]
            n -= len(explored)
        uncertain = self.diversified(self.ranked(scores, candidates, rng=rng), n, rng=rng, latent=latent)
        return np.concatenate([uncertain, explored])

    def coverage_picks(
        self,
        latent: np.ndarray,
        candidates: np.ndarray,
        labelled: np.ndarray | None,
        count: int,
        *,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """``count`` candidates for the coverage share, most useful first (see ``coverage``)."""
        count = min(count, len(candidates))
        if count <= 0:
            return np.empty(0, dtype=np.int64)
        latent = np.asarray(latent)
        if self.coverage == "typical":
            return typical_coverage(latent, candidates, labelled, count, rng=rng)
        centres = latent[np.asarray(labelled, dtype=np.int64)] if labelled is not None and len(labelled) else None
        return candidates[k_center_greedy(latent[candidates], count, rng=rng, centres=centres)]

    def ranked(self, scores: UncertaintyScores, candidates: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
        """``candidates``, most uncertain first by this strategy's score column; ties in random order."""
        priority = scores.column(self.name)[candidates]
        # Random order first, then a stable sort: ties are broken at random, not by pool position.
        shuffled = rng.permutation(len(candidates))
        return candidates[shuffled[np.argsort(-priority[shuffled], kind="stable")]]

    def diversified(
        self, ranked: np.ndarray, n: int, *, rng: np.random.Generator, latent: np.ndarray | None
    ) -> np.ndarray:
        """``n`` of ``ranked`` (most uncertain first): the top ``n``, or, diversified, k-centre in ``latent``
        over the top ``diversity_factor x n`` starting from the most uncertain, so that "next 20" is not 20
        near-copies of one confusing image."""
        if n <= 0 or len(ranked) == 0:
            return np.empty(0, dtype=np.int64)
        if latent is None or not self.diversify or n <= 1:
            return ranked[:n]
        top = ranked[: max(n, self.diversity_factor * n)]
        return top[k_center_greedy(np.asarray(latent)[top], n, rng=rng, first=0)]


def get_strategy(
    name: str,
    *,
    diversify: bool = True,
    diversity_factor: int = DIVERSITY_FACTOR,
    exploration: float = 0.0,
    coverage: str = "farthest",
) -> QueryStrategy:
    """The strategy called ``name`` (one of ``core.registry.STRATEGIES``)."""
    if not 0.0 <= exploration <= 1.0:
        raise ValueError(f"exploration must lie in [0, 1], got {exploration}")
    if coverage not in COVERAGE_METHODS:
        raise ValueError(f"coverage must be one of {COVERAGE_METHODS}, got {coverage!r}")
    if name == "random":
        return RandomStrategy()
    if name not in SCORE_STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return ScoreStrategy(
        name,
        diversify=diversify,
        diversity_factor=diversity_factor,
        exploration=exploration,
        coverage=coverage,
    )


@dataclass(frozen=True)
class Ranking:
    """The order a strategy hands out the pool in: ``order`` (pool row indices, served first to last) and
    which of them are coverage picks (``coverage``, a subset of ``order``); the rest are uncertainty picks
    (or, without a model, the cold start's)."""

    order: np.ndarray
    coverage: np.ndarray


def rank_pool(
    strategy: QueryStrategy,
    scores: UncertaintyScores | None,
    candidates: np.ndarray,
    *,
    rng: np.random.Generator,
    limit: int,
    round_size: int,
    latent: np.ndarray | None = None,
    labelled: np.ndarray | None = None,
) -> Ranking:
    """The order in which ``strategy`` hands out ``candidates``: its first ``limit`` picks, in rounds of
    ``round_size``, as ``labeller evaluate`` simulates them one round per retrain.

    Each round of a score strategy takes its coverage share (``exploration x round_size``) from one
    coverage ranking made once for the whole call (k-means once per job, not once per round: at a million
    images per-round clustering is hours), and the rest from the ``diversity_factor x rest`` most uncertain
    candidates not yet handed out, spread by k-centre in ``latent`` from the most uncertain one. So the
    head of the queue is the head of the uncertainty ranking, however long the queue: a single diversified
    query over ``limit`` images would shortlist ``diversity_factor x limit`` (the whole pool) and become a
    farthest-first walk that ignores uncertainty.

    The app's queue serves this order (stored as each prediction's ``queue_rank`` by the train and score
    jobs), and ``labeller evaluate`` calls it once per simulated round, so what is measured is what
    annotators get."""
    candidates = _validate(candidates, limit)
    if round_size < 1:
        raise ValueError(f"round_size must be >= 1, got {round_size}")
    limit = min(limit, len(candidates))
    none = np.empty(0, dtype=np.int64)
    if not isinstance(strategy, ScoreStrategy) or scores is None:
        return Ranking(strategy.query(scores, candidates, limit, rng=rng, latent=latent, labelled=labelled), none)
    rounds = -(-limit // round_size)
    covering = latent is not None and strategy.exploration > 0
    per_round = min(round_size, int(np.ceil(strategy.exploration * round_size))) if covering else 0
    # A quarter more than the rounds need: an uncertainty pick may take a coverage pick first.
    wanted = per_round * rounds + (per_round * rounds) // 4
    coverage = strategy.coverage_picks(latent, candidates, labelled, wanted, rng=rng) if per_round else none
    ranked = strategy.ranked(scores, candidates, rng=rng)
    # Every pick lies within this head: a round takes at most round_size from the top diversity_factor x
    # round_size of what is left, and at most limit images are taken in all.
    ranked = ranked[: limit + len(coverage) + strategy.diversity_factor * round_size]
    taken: set[int] = set()
    order: list[int] = []
    is_coverage: list[int] = []
    next_coverage = 0
    while len(order) < limit:
        size = min(round_size, limit - len(order))
        covered: list[int] = []
        while next_coverage < len(coverage) and len(covered) < min(per_round, size):
            pick = int(coverage[next_coverage])
            next_coverage += 1
            if pick not in taken:
                covered.append(pick)
                taken.add(pick)
        remaining = np.array([row for row in ranked if row not in taken], dtype=np.int64)
        uncertain = strategy.diversified(remaining, size - len(covered), rng=rng, latent=latent)
        if len(uncertain) + len(covered) == 0:
            break
        taken.update(int(row) for row in uncertain)
        order += [int(row) for row in uncertain] + covered
        is_coverage += covered
    return Ranking(np.array(order, dtype=np.int64), np.array(is_coverage, dtype=np.int64))
