"""How job results are decided and written: promotion rules, prediction rows from pool scores."""

from __future__ import annotations

import numpy as np
import pytest

from core.scoring import PoolScores
from core.taxonomy import Taxonomy
from labeller.jobs.score import prediction_rows
from labeller.jobs.train import AuditResult, promotion_decision


def test_promotion_compares_on_the_same_audit_images_with_an_interval() -> None:
    assert promotion_decision("auto", AuditResult(0, None, None), None, 0.5, None) == (True, "no active model version")
    # Clearly better on the same 200 audit labels: promoted, and the reason says so with n and the interval.
    promoted, reason = promotion_decision("auto", AuditResult(200, 0.95, 0.9), AuditResult(200, 0.80, 0.7), 0.1, 0.99)
    assert promoted and reason.startswith("better than the active version on the same 200 held-out audit labels")
    assert "0.950 vs 0.800" in reason and "95% interval" in reason  # validation numbers play no part
    # Clearly worse on the same 200 labels: not promoted.
    promoted, reason = promotion_decision("auto", AuditResult(200, 0.70, 0.6), AuditResult(200, 0.90, 0.8), 0.99, 0.1)
    assert not promoted and reason.startswith("worse than the active version on the same 200")
    # 0.8 vs 0.9 on 5 labels is noise: promoted as the newest, and the reason says the labels were too few
    # (fewer than MIN_AUDIT_LABELS) to compare the two.
    promoted, reason = promotion_decision("auto", AuditResult(5, 0.8, 0.8), AuditResult(5, 0.9, 0.7), None, None)
    assert promoted and reason.startswith("promoted as the newest: too few held-out audit labels to compare (n = 5")
    promoted, _ = promotion_decision("auto", AuditResult(5, 0.9, 0.8), AuditResult(5, 0.9, 0.7), None, None)
    assert promoted  # a tie goes to the newer model, trained on more labels


def test_promotion_never_compares_validation_accuracies_measured_on_different_labels() -> None:
    # Issue 13 item 6: 0.850 on 20 validation labels vs 1.000 on 9 others refused a version trained on 105
    # labels. Without shared held-out labels the newer version is promoted and the reason says why.
    promoted, reason = promotion_decision("auto", AuditResult(0, None, None), AuditResult(0, None, None), 0.85, 1.0)
    assert promoted and "cannot be compared on the same labels" in reason and "not compared" in reason
    promoted, reason = promotion_decision("auto", AuditResult(7, 0.9, 0.9), AuditResult(7, None, None), 0.85, 1.0)
    assert promoted and "cannot be measured on the same 7 audit labels" in reason
    # One audit image: 1.0 vs 0.0 is within the noise (it used to fall back to validation and refuse), and
    # too few labels to compare: the newest is promoted, and the reason says so.
    promoted, reason = promotion_decision("auto", AuditResult(1, 1.0, 1.0), AuditResult(1, 0.0, 0.0), 0.6, 0.7)
    assert promoted and "too few held-out audit labels to compare (n = 1" in reason


def test_promotion_modes_always_and_never_override_the_comparison() -> None:
    assert promotion_decision("never", AuditResult(50, 1.0, 1.0), None, 1.0, None)[0] is False
    assert promotion_decision("always", AuditResult(50, 0.0, 0.0), AuditResult(50, 1.0, 1.0), 0.0, 1.0)[0]


def test_wilson_and_newcombe_intervals_match_published_values() -> None:
    from labeller.promotion import compare_on_same_labels, wilson_interval

    # Newcombe (1998), Statistics in Medicine 17:857, table II: 81/263 -> 0.2553 to 0.3662 (Wilson).
    low, high = wilson_interval(81 / 263, 263)
    assert (low, high) == (pytest.approx(0.2553, abs=5e-4), pytest.approx(0.3662, abs=5e-4))
    assert wilson_interval(0.0, 0) == (0.0, 1.0)
    # Newcombe's hybrid interval on one shared n: clearly better, clearly worse, and noise.
    comparison = compare_on_same_labels(0.8, 0.6, 100)
    assert comparison.verdict == "better" and 0 < comparison.low < 0.2 < comparison.high
    assert compare_on_same_labels(0.6, 0.8, 100).verdict == "worse"
    assert compare_on_same_labels(0.85, 0.9, 40).verdict == "not worse within the noise"


def _scores(leaf_probs: np.ndarray, taxonomy: Taxonomy) -> PoolScores:
    n = len(leaf_probs)
    main_probs = leaf_probs @ taxonomy.leaf_to_main_matrix()
    zeros = np.zeros(n)
    return PoolScores(
        leaf_probs=leaf_probs, main_probs=main_probs, entropy=zeros + 0.5, leaf_entropy=zeros, margin=zeros,
        least_confidence=zeros, bald=zeros, disagreement=zeros, novelty=zeros, reconstruction_error=zeros,
        latent_mean=np.arange(n * 2, dtype=np.float32).reshape(n, 2), latent_log_density=zeros,
    )  # fmt: skip


def test_prediction_rows_pick_the_best_leaf_inside_the_predicted_main_class() -> None:
    taxonomy = Taxonomy.from_dict({"loops": ["0", "6", "8"], "lines": ["1"]})
    # "lines/1" is the single most probable leaf, but "loops" wins as a main class (0.6 vs 0.4).
    leaf_probs = np.array([[0.2, 0.25, 0.15, 0.4], [0.05, 0.05, 0.1, 0.8]], dtype=np.float32)
    main_ids = {"loops": 10, "lines": 20}
    sub_ids = {("loops", "0"): 100, ("loops", "6"): 101, ("loops", "8"): 102, ("lines", "1"): 200}
    rows = list(prediction_rows([7, 9], _scores(leaf_probs, taxonomy), taxonomy, main_ids, sub_ids))
    assert [(r["image_id"], r["main_class_id"], r["sub_class_id"]) for r in rows] == [(7, 10, 101), (9, 20, 200)]
    assert rows[0]["confidence"] == pytest.approx(0.6)
    assert rows[0]["probabilities"]["leaf"]["loops/6"] == pytest.approx(0.25)
    assert np.frombuffer(rows[1]["latent_mean"], dtype="<f4").tolist() == [2.0, 3.0]


def test_prediction_rows_survive_a_class_renamed_since_training() -> None:
    taxonomy = Taxonomy.from_dict({"ants": [], "bees": []})
    rows = list(
        prediction_rows([1], _scores(np.array([[0.9, 0.1]], dtype=np.float32), taxonomy), taxonomy, {"bees": 2}, {})
    )
    assert rows[0]["main_class_id"] is None and rows[0]["sub_class_id"] is None
    assert rows[0]["probabilities"]["main"] == {"ants": 0.9, "bees": 0.1}


class _ScoringContext:
    """What ``score_in_chunks`` uses of a worker's JobContext."""

    device = "cpu"

    def raise_if_stopped(self) -> None:
        pass

    def report_progress(self, payload: dict, *, force: bool = False) -> None:
        pass


def test_scoring_in_chunks_gives_the_whole_pool_scores() -> None:
    """The score job fills whole-pool arrays chunk by chunk (no list of parts held twice); every column,
    novelty (ranked over the whole pool) included, is what one score_pool call over the pool gives."""
    import torch

    from core.data import FeatureScaler
    from core.scoring import score_pool
    from core.training import TrainConfig, TrainedModel, build_model
    from labeller.jobs.score import score_in_chunks

    taxonomy = Taxonomy.from_dict({"a": [], "b": ["x", "y"]})
    features = np.random.default_rng(0).normal(size=(1300, 16)).astype(np.float16)
    config = TrainConfig(model="m2", backbone="efficientnet_lite0", device="cpu", balance=0.0)
    torch.manual_seed(0)
    trained = TrainedModel(
        model=build_model(config, taxonomy, (16,)).eval(),
        taxonomy=taxonomy,
        config=config,
        metrics={},
        temperature=1.5,
        image_shape=(16,),
        scaler=FeatureScaler.fit(features),
    )
    torch.manual_seed(1)  # the same dropout draws: chunks of 512 keep score_pool's batches of 256
    whole = score_pool(trained, features, device="cpu")
    torch.manual_seed(1)
    chunked = score_in_chunks(_ScoringContext(), trained, features, chunk=512)  # type: ignore[arg-type]
    for name, values in vars(whole).items():
        np.testing.assert_array_equal(getattr(chunked, name), values, err_msg=name)
        assert getattr(chunked, name).dtype == values.dtype
