"""model = "auto" (core.training.selection): the decision rule, the fallback with too few labels, and real
cross-validated fits on small synthetic features where one candidate is clearly better."""

from __future__ import annotations

import numpy as np
import pytest

from core.data import LabelledPool
from core.registry import AUTO_MODEL_CANDIDATES, DEFAULT_MODEL, MODEL_CHOICES, MODEL_KINDS
from core.taxonomy import Taxonomy
from core.training import TrainConfig, select_model
from core.training.selection import MIN_LABELS, CandidateScore, decide, fold_count

TWO = Taxonomy.from_dict({"a": [], "b": []})
# Feature vectors (the backbone name only says what they are); a quick M2 so the tests stay fast.
BASE = TrainConfig(model="m2", backbone="efficientnet_lite0", device="cpu", epochs=30, consistency=20.0)
QUICK_M2 = {"epochs": 2}


def xor_pool(labelled: int, total: int = 100, seed: int = 0) -> LabelledPool:
    """Two well-separated XOR classes in the first two of 8 dimensions: no linear classifier tells them
    apart, a small MLP does."""
    rng = np.random.default_rng(seed)
    corner = rng.integers(0, 2, size=(total, 2))
    signal = (corner * 2 - 1) * 2.0 + rng.normal(0, 0.4, (total, 2))
    features = np.concatenate([signal, rng.normal(0, 0.3, (total, 6))], axis=1).astype(np.float32)
    leaves = np.where(np.arange(total) < labelled, corner[:, 0] ^ corner[:, 1], -1)
    return LabelledPool.from_leaf_labels(features, leaves, 2)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny fits on a shared 2-core machine run several times faster on one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_registry_offers_auto_over_real_kinds() -> None:
    assert MODEL_CHOICES[0] == "auto" and MODEL_CHOICES[1:] == MODEL_KINDS
    assert DEFAULT_MODEL in AUTO_MODEL_CANDIDATES and set(AUTO_MODEL_CANDIDATES) <= set(MODEL_KINDS)


def test_ties_and_noise_keep_the_default_and_a_clear_gain_switches() -> None:
    scores = [CandidateScore("m2", (0.8, 0.8)), CandidateScore("supervised", (0.8, 0.85))]
    same = np.array([True] * 16 + [False] * 4)
    assert decide(scores, {"m2": same, "supervised": same.copy()}, "m2")[0] == "m2"
    one_more = same.copy()
    one_more[16] = True  # one image in 20 better: within the noise
    chosen, why = decide(scores, {"m2": same, "supervised": one_more}, "m2")
    assert chosen == "m2" and "within one standard error" in why and "kept m2" in why
    worse = np.array([True] * 8 + [False] * 12)
    chosen, why = decide(scores, {"m2": worse, "supervised": same}, "m2")
    assert chosen == "supervised" and "+0.400 over the default m2 on the same 20 held-out labels" in why
    failed = [CandidateScore("m2", error="diverged"), CandidateScore("supervised", (0.8,))]
    assert decide(failed, {"supervised": same}, "m2")[0] == "supervised"


def test_too_few_labels_fall_back_to_the_default_without_fitting(monkeypatch) -> None:
    import core.training.loop

    def no_fit(*args, **kwargs):
        raise AssertionError("nothing should be fitted")

    monkeypatch.setattr(core.training.loop, "fit", no_fit)
    few = select_model(xor_pool(MIN_LABELS - 1), TWO, BASE)
    assert (few.chosen, few.folds, few.compared, few.candidates) == (DEFAULT_MODEL, 0, False, ())
    assert few.reason.startswith("too few labels to compare") and f"{MIN_LABELS - 1} labels" in few.reason
    # Enough labels, but one class has a single one: no fold could both train on it and test it.
    leaves = np.full(60, -1)
    leaves[:29], leaves[29] = 0, 1
    rare = select_model(LabelledPool.from_leaf_labels(xor_pool(0, 60).images, leaves, 2), TWO, BASE)
    assert rare.chosen == DEFAULT_MODEL and "'b' has 1 label(s)" in rare.reason
    assert rare.as_dict()["compared"] is False
    assert fold_count(np.array([0] * 30 + [1] * 3)) == 3 and fold_count(np.array([0] * 40 + [1] * 40)) == 5


def test_cross_validation_picks_the_candidate_that_can_separate_the_classes() -> None:
    """The default's q(y|x) is linear here and cannot separate XOR; the supervised candidate gets an MLP."""
    folds_seen: list[tuple[str, int, int]] = []
    selection = select_model(
        xor_pool(60),
        TWO,
        BASE,
        overrides={"m2": QUICK_M2, "supervised": {"classifier": "mlp", "epochs": 15, "lr": 2e-2}},
        on_fold=lambda *fold: folds_seen.append(fold),
    )
    scores = {c.model: c for c in selection.candidates}
    assert selection.chosen == "supervised", selection.reason
    assert scores["supervised"].mean > 0.8 and scores["supervised"].mean > scores["m2"].mean + 0.2
    assert (selection.labels, selection.folds, len(scores["m2"].fold_accuracies)) == (60, 5, 5)
    assert folds_seen[0] == ("m2", 1, 5) and len(folds_seen) == 10  # the default first, every fold of each
    recorded = selection.as_dict()
    assert recorded["requested"] == "auto" and recorded["chosen"] == "supervised"
    assert {c["model"] for c in recorded["candidates"]} == {"m2", "supervised"}
    assert "5-fold cross-validation on 60 labels" in selection.reason


def test_the_default_is_kept_when_no_candidate_is_clearly_better() -> None:
    """Both candidates linear on XOR: neither separates the classes, so the default stays."""
    selection = select_model(xor_pool(60), TWO, BASE, overrides={"m2": QUICK_M2, "supervised": {"epochs": 5}})
    assert selection.compared and selection.chosen == DEFAULT_MODEL, selection.reason


def test_evaluate_runs_model_auto_as_a_train_job_does() -> None:
    """``labeller evaluate --models auto``: every fit is preceded by the choice, and each run says which kind
    was trained; here the MLP candidate that separates XOR, so the test accuracy is far above chance."""
    from core.evaluate import EvaluationConfig, EvaluationData, evaluate

    pool = xor_pool(120, total=120)
    data = EvaluationData("xor", images=pool.images, admissible=pool.admissible, taxonomy=TWO)
    config = EvaluationConfig(
        budgets=(60,),
        strategies=("random",),
        models=("auto",),
        baselines=(),
        seeds=1,
        train={"backbone": BASE.backbone, "device": "cpu", "epochs": 30, "consistency": 20.0},
        model_train={"m2": QUICK_M2, "supervised": {"classifier": "mlp", "epochs": 15, "lr": 2e-2}},
    )
    (run,) = evaluate(data, config).runs
    assert (run.model, run.model_chosen, run.labels) == ("auto", "supervised", 60)
    assert run.main_accuracy > 0.8
