"""Simulated labelling: "how many labels do I need, and does this beat the alternatives?"

Given images whose labels are known, hold out a stratified test split, let an oracle reveal pool labels
as a query strategy asks for them, train after every round, and measure test accuracy at each label
budget. The same harness runs on arrays (scikit-learn digits, a folder of class sub-folders) and on a
project's labelled images (``labeller.training_data``), and is the label-efficiency benchmark.

Protocol (that of ``../shared/anchors/digits.py``, so numbers compare with the anchors quoted there):
- test split: ``train_test_split(test_size, random_state=split_seed, stratify=main class)``, pool order
  as sklearn returns it;
- ``random``: for each budget a fresh ``numpy.random.default_rng(seed)`` draws ``budget // M`` pool
  images per main class (``balanced_random``; the remainder uniformly), and a model is trained from
  scratch on them;
- any other strategy: ``default_rng(seed).choice(pool, initial_labels)`` uniformly, then rounds of
  ``round_size`` images chosen by the strategy from the current model's scores, training from scratch
  after every round, measuring at each budget. (``warm_start`` continues from the previous round's model
  for ``warm_epochs`` instead: cheaper, but on digits M2 never left the 10-label model's clusters, 55.9%
  at 50 labels against 88.0% retrained.)
  Ties in the score are broken at random (the anchors use ``argsort`` order; LabelSpreading gives many
  exact ties on points its graph does not reach, so active LabelSpreading numbers differ slightly).
The default initial selection is also the app's cold start: before any model version its queue serves
images in random-key order (recorded as ``cold_start`` on each annotation).
Beyond the protocol: ``initial_selection="diverse"`` starts from a k-centre sample of the features
(``core.acquisition.cold_start``; the app does not serve it), ``"typical"`` from the most typical image of
each of ``initial_labels`` k-means clusters (TypiClust); ``diversify=True`` spreads each round by k-centre
over the ``DIVERSITY_FACTOR x round_size`` (5 x) most uncertain candidates in the model's latent space (pixels for the
scikit-learn learners); ``exploration`` gives a share of each round to coverage, ``coverage="typical"``
choosing the most typical image of the largest unlabelled k-means cluster (TypiClust) rather than the
farthest one.
Note the random arm's balanced draw uses the true labels, which no real annotator can: at 20 labels it
is worth about 20 points to LabelSpreading on digits over a uniform draw.
Learners: the models of ``core.training`` (m1, m2, m1m2, supervised) and two scikit-learn baselines,
``label_spreading`` (LabelSpreading, knn kernel, 7 neighbours, on flattened pixels) and
``logistic_regression`` (supervised, on the same features).

Result JSON (``EvaluationResult.to_dict``), schema ``latent-labeller/evaluate/1``::

    {
      "schema": "latent-labeller/evaluate/1",
      "dataset": {"name": str, "num_pool": int, "num_test": int, "num_extra_unlabelled": int,
                  "image_shape": [C, H, W], "taxonomy": {main: [sub, ...]}, "test_class_counts": {main: n}},
      "config": {...EvaluationConfig fields..., "train": {...TrainConfig fields...}},
      "runs": [{"model": str, "strategy": str, "seed": int, "budget": int, "labels": int,
                "main_accuracy": float, "leaf_accuracy": float | null, "macro_f1": float,
                "seconds": float, "classes_labelled": int}, ...],  # one per (model, strategy, seed, budget)
      "summary": [{"model": str, "strategy": str, "budget": int, "seeds": int,
                   "main_accuracy_mean": float, "main_accuracy_std": float | null,
                   "leaf_accuracy_mean": float | null, "leaf_accuracy_std": float | null,
                   "macro_f1_mean": float, "macro_f1_std": float | null, "classes_labelled_mean": float | null},
                  ...],                 # every std is null with one seed
      "skipped": [{"model": str, "strategy": str, "reason": str} | {"budget": int, "reason": str}, ...],
      "seconds": float                          # summed over parts when merged from parallel runs
    }

``main_accuracy`` is the test accuracy of the arg-max main class; ``leaf_accuracy`` is measured on the
test images whose label names exactly one leaf (null when none does or the learner predicts no leaves);
``macro_f1`` is the unweighted mean of per-main-class F1. Standard deviations are population (ddof=0).
"""

from core.evaluate.data import (
    EvaluationData,
    digits_data,
    evaluation_split,
    folder_data,
    from_class_labels,
    stratified_test_split,
)
from core.evaluate.results import BASELINES, INITIAL_SELECTIONS, SCHEMA, EvaluationConfig, EvaluationResult, RunResult
from core.evaluate.simulation import balanced_draw, evaluate

__all__ = [
    "BASELINES",
    "INITIAL_SELECTIONS",
    "SCHEMA",
    "EvaluationConfig",
    "EvaluationData",
    "EvaluationResult",
    "RunResult",
    "balanced_draw",
    "digits_data",
    "evaluate",
    "evaluation_split",
    "folder_data",
    "from_class_labels",
    "stratified_test_split",
]
