"""Query strategies on hand-made scores: each ranks as its definition says, batches are spread out,
cold start needs no model, the audit slice is random and disjoint."""

from __future__ import annotations

import numpy as np
import pytest

from core.acquisition import (
    cold_start,
    get_strategy,
    k_center_greedy,
    rank_pool,
    typical_coverage,
)
from core.registry import STRATEGIES
from tests.scores_factory import scores_from_probabilities


def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# Four images over three main classes: confident, two-way tie, uniform, fairly confident.
MAIN_PROBS = np.array(
    [
        [0.98, 0.01, 0.01],
        [0.50, 0.49, 0.01],
        [1 / 3, 1 / 3, 1 / 3],
        [0.70, 0.20, 0.10],
    ]
)


def test_every_strategy_name_resolves_and_unknown_fails() -> None:
    for name in STRATEGIES:
        assert get_strategy(name).name == name
    with pytest.raises(ValueError, match="unknown strategy"):
        get_strategy("most_fun")


def test_entropy_picks_the_uniform_image_first() -> None:
    scores = scores_from_probabilities(MAIN_PROBS)
    order = get_strategy("entropy").query(scores, np.arange(4), 4, rng=rng())
    # [0.7, 0.2, 0.1] spreads more mass than [0.5, 0.49, 0.01]: higher entropy.
    assert order.tolist() == [2, 3, 1, 0]


def test_margin_prefers_a_close_call_and_least_confidence_a_low_top_probability() -> None:
    # Image 1: top two 0.45 vs 0.44 (smallest margin); image 2: top probability 0.40 (least confident).
    probs = np.array([[0.98, 0.01, 0.01], [0.45, 0.44, 0.11], [0.40, 0.30, 0.30]])
    scores = scores_from_probabilities(probs)
    assert get_strategy("margin").query(scores, np.arange(3), 3, rng=rng()).tolist() == [1, 2, 0]
    assert get_strategy("least_confidence").query(scores, np.arange(3), 3, rng=rng()).tolist() == [2, 1, 0]


def test_leaf_entropy_reads_leaves_not_main_classes() -> None:
    # Same main-class certainty (one main class with two leaves), different leaf uncertainty.
    leaf_probs = np.array([[0.5, 0.5, 0.0], [0.99, 0.01, 0.0], [0.0, 0.0, 1.0]])
    scores = scores_from_probabilities(leaf_probs @ np.array([[1, 0], [1, 0], [0, 1]]), leaf_probs=leaf_probs)
    assert get_strategy("leaf_entropy").query(scores, np.arange(3), 1, rng=rng()).tolist() == [0]


def test_bald_disagreement_and_novelty_read_their_own_columns() -> None:
    scores = scores_from_probabilities(
        MAIN_PROBS,
        bald=np.array([0.0, 0.1, 0.0, 0.4]),
        disagreement=np.array([0.3, 0.0, 0.1, 0.0]),
        novelty=np.array([0.0, 0.0, 0.0, 9.0]),
    )
    assert get_strategy("bald").query(scores, np.arange(4), 2, rng=rng()).tolist() == [3, 1]
    assert get_strategy("disagreement").query(scores, np.arange(4), 1, rng=rng()).tolist() == [0]
    assert get_strategy("novelty").query(scores, np.arange(4), 1, rng=rng()).tolist() == [3]


def test_a_missing_column_is_a_clear_error() -> None:
    scores = scores_from_probabilities(MAIN_PROBS, bald=None)
    with pytest.raises(ValueError, match="bald"):
        get_strategy("bald").query(scores, np.arange(4), 1, rng=rng())


def test_only_candidates_are_returned() -> None:
    scores = scores_from_probabilities(MAIN_PROBS)
    # The uniform image (2) is already labelled, so it is not a candidate.
    picked = get_strategy("entropy").query(scores, np.array([0, 1, 3]), 2, rng=rng())
    assert picked.tolist() == [3, 1]
    assert get_strategy("entropy").query(scores, np.array([0, 3]), 5, rng=rng()).tolist() == [3, 0]


def test_random_is_a_permutation_of_candidates_and_depends_on_the_seed() -> None:
    candidates = np.arange(100, 200)
    first = get_strategy("random").query(None, candidates, 30, rng=np.random.default_rng(1))
    second = get_strategy("random").query(None, candidates, 30, rng=np.random.default_rng(2))
    assert len(set(first.tolist())) == 30 and set(first.tolist()) <= set(candidates.tolist())
    assert first.tolist() != second.tolist()


def _two_blobs(count: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Latents: 90% in a tight cluster near the origin, 10% in a far cluster; uncertainty highest
    in the tight cluster, so undiversified top-n is all near-duplicates."""
    generator = np.random.default_rng(3)
    near = generator.normal(0.0, 0.01, size=(count - count // 10, 4))
    far = generator.normal(5.0, 0.01, size=(count // 10, 4))
    latent = np.vstack([near, far])
    uncertainty = np.concatenate([np.linspace(1.0, 0.9, len(near)), np.linspace(0.8, 0.7, len(far))])
    return latent, uncertainty


def test_diversified_batch_spreads_over_latent_space() -> None:
    latent, uncertainty = _two_blobs()
    probs = np.column_stack([0.5 + (1 - uncertainty) / 2, 0.5 - (1 - uncertainty) / 2])
    scores = scores_from_probabilities(probs)
    candidates = np.arange(len(latent))
    plain = get_strategy("entropy", diversify=False).query(scores, candidates, 4, rng=rng())
    spread = get_strategy("entropy", diversity_factor=50).query(scores, candidates, 4, rng=rng(), latent=latent)
    assert (plain < 180).all()  # all from the tight cluster
    assert spread[0] == plain[0]  # the most uncertain image still comes first
    assert (spread >= 180).any() and (spread < 180).any()
    assert len(set(spread.tolist())) == 4


def test_k_center_greedy_covers_clusters_without_duplicates() -> None:
    generator = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=float)
    points = np.vstack([c + generator.normal(0, 0.1, size=(50, 2)) for c in centres])
    picked = k_center_greedy(points, 4, rng=rng())
    assert len(set(picked.tolist())) == 4
    assert sorted({int(i) // 50 for i in picked}) == [0, 1, 2, 3]  # one per cluster
    # Asking for more than there are returns each row once.
    assert sorted(k_center_greedy(points[:5], 9, rng=rng()).tolist()) == [0, 1, 2, 3, 4]


def test_k_center_greedy_starts_far_from_existing_centres() -> None:
    points = np.array([[0.0], [1.0], [2.0], [10.0]])
    picked = k_center_greedy(points, 1, rng=rng(), centres=np.array([[0.0], [1.5]]))
    assert picked.tolist() == [3]


def test_cold_start_without_a_model_is_diverse() -> None:
    generator = np.random.default_rng(0)
    # 8x8 grey images: 95 dark, 5 bright. A diverse start of 4 must include a bright one.
    images = generator.integers(0, 20, size=(100, 1, 8, 8)).astype(np.uint8)
    images[95:] = 250
    features = images.reshape(100, -1) / 255.0
    for strategy in STRATEGIES:
        if strategy == "random":
            continue
        picked = get_strategy(strategy).query(None, np.arange(100), 4, rng=rng(), latent=features)
        assert len(set(picked.tolist())) == 4 and (picked >= 95).any(), strategy
    # Without features it is a random sample of the candidates.
    assert len(cold_start(np.arange(10), 3, rng=rng())) == 3


def _product_strategy():  # the app's setting: entropy, diversified, 20% typical coverage
    from core.registry import DEFAULT_COVERAGE, DEFAULT_EXPLORATION, DEFAULT_STRATEGY

    return get_strategy(DEFAULT_STRATEGY, diversify=True, exploration=DEFAULT_EXPLORATION, coverage=DEFAULT_COVERAGE)


def _spread_pool(count: int = 3_000) -> tuple[np.ndarray, np.ndarray]:
    """Latents spread over 8 clusters and uncertainties independent of them, as in a real pool."""
    generator = np.random.default_rng(11)
    centres = generator.normal(0.0, 4.0, size=(8, 16))
    latent = centres[generator.integers(0, 8, count)] + generator.normal(0.0, 1.0, size=(count, 16))
    return latent, generator.uniform(0.0, 1.0, count)


def test_the_queue_head_is_the_head_of_the_uncertainty_ranking_however_long_the_queue() -> None:
    # Issue 19: one diversified query over 2,000 images shortlisted the whole pool and served a farthest-first
    # walk (the first 20 no more uncertain than the pool's mean). Ranked in rounds, the head stays uncertain.
    latent, uncertainty = _spread_pool()
    scores = scores_from_probabilities(np.column_stack([0.5 + (1 - uncertainty) / 2, 0.5 - (1 - uncertainty) / 2]))
    labelled, candidates = np.arange(0, 30), np.arange(30, len(latent))
    ranking = rank_pool(
        _product_strategy(), scores, candidates, rng=rng(), limit=2_000, round_size=20, latent=latent, labelled=labelled
    )
    assert len(ranking.order) == 2_000 and len(set(ranking.order.tolist())) == 2_000
    assert set(ranking.order.tolist()) <= set(candidates.tolist())
    entropy = scores.entropy
    top_100 = set(candidates[np.argsort(-entropy[candidates])][:100].tolist())
    first_20 = ranking.order[:20]
    assert len(set(first_20.tolist()) & top_100) >= 16
    assert np.median(entropy[first_20]) > np.percentile(entropy[candidates], 90)
    # Each round: its coverage share (4 of 20), and its uncertain picks from the top 5 x 16 of what remains.
    coverage = set(ranking.coverage.tolist())
    handed: set[int] = set()
    for start in range(0, 2_000, 20):
        round_rows = ranking.order[start : start + 20].tolist()
        uncertain = [row for row in round_rows if row not in coverage]
        # Coverage picks are ranked with a margin; only deep into a small pool (2,000 of 2,970) can they run out.
        assert len(uncertain) == 16 if start < 1_000 else len(uncertain) >= 16, start
        # What remains: not handed out in earlier rounds, nor taken by this round's coverage share.
        gone = handed | (set(round_rows) & coverage)
        remaining = [row for row in candidates[np.argsort(-entropy[candidates], kind="stable")] if row not in gone]
        # Ties broken at random: compare with the 80th remaining entropy, not with positions.
        threshold = entropy[remaining[5 * len(uncertain) - 1]]
        assert (entropy[uncertain] >= threshold - 1e-12).all(), start
        handed.update(round_rows)


def test_every_round_carries_its_coverage_picks_into_regions_uncertainty_never_reaches() -> None:
    latent, uncertainty = _two_blobs()
    probs = np.column_stack([0.5 + (1 - uncertainty) / 2, 0.5 - (1 - uncertainty) / 2])
    scores = scores_from_probabilities(probs)
    labelled, candidates = np.arange(0, 20), np.arange(20, len(latent))
    plain = rank_pool(
        get_strategy("entropy"), scores, candidates, rng=rng(), limit=30, round_size=10, latent=latent
    ).order
    assert (plain < 180).all() and len(set(plain.tolist())) == 30  # uncertainty alone stays in the near cluster
    explore = get_strategy("entropy", exploration=0.2, coverage="farthest")
    ranking = rank_pool(
        explore, scores, candidates, rng=rng(), limit=30, round_size=10, latent=latent, labelled=labelled
    )
    assert len(ranking.order) == 30 and len(set(ranking.order.tolist())) == 30
    far = ranking.order >= 180  # the coverage picks land in the cluster uncertainty never reaches
    assert [int(far[start : start + 10].sum()) >= 1 for start in (0, 10, 20)] == [True, True, True]
    assert set(ranking.coverage.tolist()) <= set(ranking.order.tolist()) and len(ranking.coverage) == 6


def test_rank_pool_without_a_model_is_the_cold_start_and_random_is_a_permutation() -> None:
    latent, _ = _spread_pool(300)
    cold = rank_pool(_product_strategy(), None, np.arange(300), rng=rng(), limit=40, round_size=20, latent=latent)
    assert len(set(cold.order.tolist())) == 40 and len(cold.coverage) == 0
    shuffled = rank_pool(get_strategy("random"), None, np.arange(300), rng=rng(), limit=300, round_size=20)
    assert sorted(shuffled.order.tolist()) == list(range(300))


def test_exploration_share_finds_a_region_far_from_every_labelled_image() -> None:
    # Uncertainty is high near the labelled cluster and low in the far cluster (a class the model never
    # saw and is confidently wrong about): plain entropy never goes there, exploration does.
    latent, uncertainty = _two_blobs()
    probs = np.column_stack([0.5 + (1 - uncertainty) / 2, 0.5 - (1 - uncertainty) / 2])
    scores = scores_from_probabilities(probs)
    labelled = np.arange(0, 20)
    candidates = np.arange(20, len(latent))
    plain = get_strategy("entropy").query(scores, candidates, 5, rng=rng(), latent=latent, labelled=labelled)
    explore = get_strategy("entropy", exploration=0.2).query(
        scores, candidates, 5, rng=rng(), latent=latent, labelled=labelled
    )
    assert (plain < 180).all()
    assert len(explore) == 5 and len(set(explore.tolist())) == 5
    assert (explore[:4] < 180).all() and explore[4] >= 180  # four by uncertainty, one for coverage
    assert set(explore.tolist()) <= set(candidates.tolist())
    with pytest.raises(ValueError, match="exploration"):
        get_strategy("entropy", exploration=1.5)


def test_typical_coverage_picks_the_dense_centre_of_an_uncovered_cluster_not_its_outlier() -> None:
    # Two clusters, each with one far outlier; the left cluster is labelled. Farthest-first coverage goes
    # to an outlier; typical coverage picks a point near the centre of the unlabelled right cluster.
    generator = np.random.default_rng(1)
    left = generator.normal(0.0, 0.1, size=(50, 2))
    right = generator.normal(0.0, 0.1, size=(50, 2)) + np.array([5.0, 0.0])
    outliers = np.array([[-3.0, 3.0], [8.0, 3.0]])
    features = np.vstack([left, right, outliers])
    labelled = np.arange(0, 5)
    candidates = np.arange(5, len(features))
    picked = typical_coverage(features, candidates, labelled, 1, rng=rng())
    assert len(picked) == 1 and 50 <= picked[0] < 100
    assert np.linalg.norm(features[picked[0]] - right.mean(axis=0)) < 0.15
    farthest = k_center_greedy(features[candidates], 1, rng=rng(), centres=features[labelled])
    assert candidates[farthest[0]] >= 100  # an outlier
    strategy = get_strategy("entropy", exploration=1.0, coverage="typical")
    probs = np.full((len(features), 2), 0.5)
    chosen = strategy.query(
        scores_from_probabilities(probs), candidates, 3, rng=rng(), latent=features, labelled=labelled
    )
    assert len(set(chosen.tolist())) == 3 and set(chosen.tolist()) <= set(candidates.tolist())
    with pytest.raises(ValueError, match="coverage"):
        get_strategy("entropy", coverage="nearest")
