"""How job results are decided and written: promotion rules, prediction rows from pool scores."""

from __future__ import annotations

import numpy as np
import pytest

from core.scoring import PoolScores
from core.taxonomy import Taxonomy
from labeller.jobs.score import prediction_rows
from labeller.jobs.train import MIN_AUDIT_FOR_PROMOTION, AuditResult, promotion_decision


def test_promotion_compares_on_the_same_audit_images_then_falls_back_to_validation() -> None:
    enough = MIN_AUDIT_FOR_PROMOTION
    assert promotion_decision("auto", AuditResult(0, None, None), None, 0.5, None) == (True, "no active model version")
    promoted, reason = promotion_decision(
        "auto", AuditResult(enough, 0.8, 0.7), AuditResult(enough, 0.9, 0.8), 0.99, 0.1
    )
    assert not promoted and "less accurate than the active version" in reason  # audit wins over validation
    promoted, _ = promotion_decision("auto", AuditResult(enough, 0.9, 0.8), AuditResult(enough, 0.9, 0.7), None, None)
    assert promoted  # a tie goes to the newer model, trained on more labels
    promoted, reason = promotion_decision("auto", AuditResult(1, 1.0, 1.0), AuditResult(1, 0.0, 0.0), 0.6, 0.7)
    assert not promoted and "validation" in reason  # one audit image is too few to decide on
    assert promotion_decision("never", AuditResult(enough, 1.0, 1.0), None, 1.0, None)[0] is False
    assert promotion_decision("always", AuditResult(enough, 0.0, 0.0), AuditResult(enough, 1.0, 1.0), 0.0, 1.0)[0]


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
