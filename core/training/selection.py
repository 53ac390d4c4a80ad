"""``model = "auto"``: choose the model kind by cross-validation on the current labels.

Each candidate (core.registry.AUTO_MODEL_CANDIDATES) is fitted k times, each time with one stratified fold
of the labels turned unlabelled (they stay in the pool, as the audit slice does in a train job), and
scored on that fold. Fits are quick: at most ``QUICK_EPOCHS`` epochs over the labels and at most
``QUICK_UNLABELLED`` unlabelled images, so a large pool costs no more than a small one.

The score is main-class accuracy, the measure the train job promotes on (the audit slice): a kind chosen by
one measure and judged by another could be chosen and then never promoted. A candidate replaces the default
kind only when its gain over the default, paired image by image on the held-out labels, exceeds one
standard error; ties and noise keep the default, so versions do not flip kind (and the Explore map with
them) from one retrain to the next on a handful of labels.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.data import LabelledPool
from core.registry import AUTO_MODEL_CANDIDATES, DEFAULT_MODEL
from core.taxonomy import Taxonomy
from core.training.config import TrainConfig

# Below this many labels one held-out image is over 5 points of accuracy: more than the candidates were
# ever measured apart (0.3-1.4 points on hymenoptera features), so a comparison would only pick noise.
MIN_LABELS = 20
# Every labelled main class needs this many labels, so that each fold both trains on and tests it.
MIN_PER_CLASS = 2
MAX_FOLDS = 5
QUICK_EPOCHS = 15
QUICK_UNLABELLED = 4_096
METRIC = "main-class accuracy"


@dataclass(frozen=True)
class CandidateScore:
    """One candidate's held-out main-class accuracy in each fold, or why it could not be fitted."""

    model: str
    fold_accuracies: tuple[float, ...] = ()
    error: str | None = None

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.fold_accuracies)) if self.fold_accuracies else None

    @property
    def sd(self) -> float | None:
        return float(np.std(self.fold_accuracies, ddof=1)) if len(self.fold_accuracies) > 1 else None

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.model} failed ({self.error})"
        if self.mean is None:
            return f"{self.model} not measured"
        return f"{self.model} {self.mean:.3f}" + (f" ± {self.sd:.3f}" if self.sd is not None else "")

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "mean": self.mean,
            "sd": self.sd,
            "folds": list(self.fold_accuracies),
            "error": self.error,
        }


@dataclass(frozen=True)
class ModelSelection:
    """What ``model = "auto"`` chose and why: ``reason`` is one line for the job log and the Train page."""

    chosen: str
    default: str
    labels: int  # labels the comparison could use
    folds: int  # 0: no comparison was made
    candidates: tuple[CandidateScore, ...]
    reason: str
    seconds: float = 0.0
    metric: str = METRIC

    @property
    def compared(self) -> bool:
        return self.folds > 0

    def as_dict(self) -> dict[str, Any]:
        """For a model version's metrics (JSON)."""
        return {
            "requested": "auto",
            "chosen": self.chosen,
            "default": self.default,
            "compared": self.compared,
            "labels": self.labels,
            "folds": self.folds,
            "metric": self.metric,
            "candidates": [c.as_dict() for c in self.candidates],
            "reason": self.reason,
            "seconds": self.seconds,
        }


def label_mains(pool: LabelledPool, taxonomy: Taxonomy) -> np.ndarray:
    """The main class of every labelled row (a label, partial or not, admits leaves of one main class)."""
    rows = np.flatnonzero(pool.labelled)
    return taxonomy.main_of_leaf()[pool.admissible[rows].argmax(axis=1)]


def fold_count(mains: np.ndarray) -> int:
    """k for stratified k-fold on these labels' main classes; 0 when there are too few labels to compare."""
    if len(mains) < MIN_LABELS:
        return 0
    smallest = int(np.unique(mains, return_counts=True)[1].min())
    return 0 if smallest < MIN_PER_CLASS else min(MAX_FOLDS, smallest)


def _fold_pool(pool: LabelledPool, train: np.ndarray, held: np.ndarray, unlabelled: np.ndarray) -> LabelledPool:
    """The rows one fold fits on: its training labels, its held-out labels turned unlabelled, and the
    unlabelled sample; held-out rows come right after the training rows."""
    rows = np.concatenate([train, held, unlabelled])
    admissible = pool.admissible[rows].copy()
    labelled = np.zeros(len(rows), dtype=bool)
    labelled[: len(train)] = True
    admissible[len(train) : len(train) + len(held)] = True
    return LabelledPool(images=pool.images[rows], admissible=admissible, labelled=labelled)


def _too_few(labels: int, mains: np.ndarray, taxonomy: Taxonomy, default: str) -> str:
    if labels < MIN_LABELS:
        why = f"{labels} labels; auto compares from {MIN_LABELS}"
    else:
        names, counts = np.unique(mains, return_counts=True)
        rare = taxonomy.main_names[int(names[counts.argmin()])]
        why = f"{rare!r} has {int(counts.min())} label(s); auto needs {MIN_PER_CLASS} of each labelled main class"
    return f"too few labels to compare ({why}): the default {default}"


def decide(scores: Sequence[CandidateScore], correct: Mapping[str, np.ndarray], default: str) -> tuple[str, str]:
    """(chosen kind, the sentence after the scores)."""
    measured = [s for s in scores if s.mean is not None]
    if not measured:
        return default, f"no candidate could be fitted: the default {default}"
    # Candidates are ordered default first, and max keeps the first of equals: exact ties go to the default.
    best = max(measured, key=lambda s: float(correct[s.model].mean()))
    if best.model == default:
        return default, f"{default} (the default) is best"
    if default not in correct:
        return best.model, f"{best.model} is best (the default {default} could not be fitted)"
    paired = correct[best.model].astype(np.float64) - correct[default]
    gain = float(paired.mean())
    se = float(paired.std(ddof=1) / math.sqrt(len(paired))) if len(paired) > 1 else math.inf
    if gain > se + 1e-9:  # one image better in n is exactly one standard error: within the noise
        return best.model, (
            f"{best.model} is best, {gain:+.3f} over the default {default} on the same {len(paired)} held-out "
            f"labels (one standard error {se:.3f})"
        )
    return default, (
        f"{best.model}'s {gain:+.3f} over the default {default} is within one standard error ({se:.3f}) on "
        f"{len(paired)} held-out labels: kept {default}"
    )


def select_model(
    pool: LabelledPool,
    taxonomy: Taxonomy,
    config: TrainConfig,
    *,
    candidates: Sequence[str] = AUTO_MODEL_CANDIDATES,
    default: str = DEFAULT_MODEL,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    on_fold: Callable[[str, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ModelSelection:
    """The model kind to train on ``pool``'s labels with ``config``, chosen by stratified k-fold
    cross-validation among ``candidates`` (``overrides``: TrainConfig fields per candidate, as
    ``core.evaluate``'s model_train). ``on_fold(candidate, fold, folds)`` is called before each fit; a
    TrainingCancelled from ``should_stop`` propagates."""
    started = time.perf_counter()
    ordered = [default, *(c for c in candidates if c != default)] if default in candidates else list(candidates)
    labelled = np.flatnonzero(pool.labelled)
    mains = label_mains(pool, taxonomy)
    folds = fold_count(mains)
    if folds == 0:
        return ModelSelection(default, default, len(labelled), 0, (), _too_few(len(labelled), mains, taxonomy, default))

    from sklearn.model_selection import StratifiedKFold

    from core.scoring import score_pool
    from core.training.config import TrainingDiverged
    from core.training.loop import fit

    rng = np.random.default_rng([config.seed, 17])
    unlabelled = np.flatnonzero(~pool.labelled)
    if len(unlabelled) > QUICK_UNLABELLED:
        unlabelled = np.sort(rng.choice(unlabelled, QUICK_UNLABELLED, replace=False))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    splits = list(splitter.split(labelled, mains))
    extra = overrides or {}
    correct: dict[str, np.ndarray] = {}
    scores: list[CandidateScore] = []
    for kind in ordered:
        fields = {"model": kind, "epochs": min(config.epochs, QUICK_EPOCHS), **dict(extra.get(kind, {}))}
        quick = dataclasses.replace(config, **fields)
        hits = np.zeros(len(labelled), dtype=bool)
        accuracies: list[float] = []
        try:
            for number, (train_pos, held_pos) in enumerate(splits, start=1):
                if on_fold is not None:
                    on_fold(kind, number, folds)
                train, held = labelled[train_pos], labelled[held_pos]
                trained = fit(_fold_pool(pool, train, held, unlabelled), taxonomy, quick, should_stop=should_stop)
                predicted = score_pool(trained, pool.images[held], mc_samples=0).main_probs.argmax(axis=1)
                hits[held_pos] = predicted == mains[held_pos]
                accuracies.append(float(hits[held_pos].mean()))
        except (ValueError, TrainingDiverged) as error:
            scores.append(CandidateScore(kind, error=str(error)))
            continue
        correct[kind] = hits
        scores.append(CandidateScore(kind, tuple(accuracies)))
    chosen, verdict = decide(scores, correct, default)
    reason = (
        f"{folds}-fold cross-validation on {len(labelled)} labels, {METRIC}: "
        + ", ".join(s.describe() for s in scores)
        + f"; {verdict}"
    )
    return ModelSelection(
        chosen, default, len(labelled), folds, tuple(scores), reason, seconds=time.perf_counter() - started
    )
