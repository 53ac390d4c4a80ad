"""Learners: fit on the labels revealed so far, predict the test split, score the pool for the strategy."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np

from core.acquisition import UncertaintyScores
from core.evaluate.data import EvaluationData
from core.evaluate.results import EvaluationConfig


def training_threads(config: EvaluationConfig, image_shape: tuple[int, ...]) -> int | None:
    """The intra-op threads a model on rows of ``image_shape`` trains and scores with (None: torch's own):
    ``config.threads`` when set, else the product's rule (``core.device.small_model_threads``)."""
    from core.device import small_model_threads

    return config.threads if config.threads is not None else small_model_threads(image_shape)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``core.device.torch_threads``, imported when used: this module loads without torch."""
    from core.device import torch_threads as set_threads

    with set_threads(threads):
        yield


@dataclass
class Prediction:
    main_probs: np.ndarray  # (N, M)
    leaf_probs: np.ndarray | None  # (N, K), None when the learner predicts main classes only


class Learner(Protocol):
    name: str

    def fit(self, labelled: np.ndarray, *, warm: bool) -> None:
        """Train on the pool rows ``labelled`` (their true labels revealed); ``warm``: continue from the
        previous fit when the learner can."""

    def predict(self, rows: np.ndarray) -> Prediction:
        """Probabilities for ``rows`` of the data (the test split)."""

    def pool_scores(self) -> tuple[UncertaintyScores, np.ndarray | None]:
        """(scores with the strategy columns for every pool row, latent features for diversification)."""


class TrainedModelLearner:
    """One of core.training's models, retrained (or warm-started) after every active round."""

    def __init__(
        self,
        model: str,
        data: EvaluationData,
        pool: np.ndarray,
        config: EvaluationConfig,
        seed: int,
        *,
        needs_bald: bool,
        on_training: Callable[[Any], None] | None = None,
    ) -> None:
        from core.training import TrainConfig

        self.name = model
        self.on_training = on_training
        self.data = data
        self.pool_rows = pool
        self.mc_samples = config.mc_samples if needs_bald else 0
        self.base = TrainConfig(**{**config.train, **config.model_train.get(model, {}), "model": model, "seed": seed})
        self.base.validate()
        self.warm_epochs = config.warm_epochs
        extra = data.extra_unlabelled if data.extra_unlabelled is not None else data.images[:0]
        # Pool images first, then the extra unlabelled ones; test images are never seen in training.
        self.train_images = np.concatenate([data.images[pool], extra])
        self.threads = training_threads(config, self.train_images.shape[1:])
        self.trained: Any = None

    def training_pool(self, labelled: np.ndarray) -> Any:
        """The pool a fit sees: every pool and extra image, the ``labelled`` pool rows with their labels."""
        from core.data import LabelledPool

        admissible = np.ones((len(self.train_images), self.data.taxonomy.num_leaves), dtype=bool)
        admissible[labelled] = self.data.admissible[self.pool_rows[labelled]]
        is_labelled = np.zeros(len(self.train_images), dtype=bool)
        is_labelled[labelled] = True
        return LabelledPool(images=self.train_images, admissible=admissible, labelled=is_labelled)

    def fit(self, labelled: np.ndarray, *, warm: bool) -> None:
        from core.training import fit

        pool = self.training_pool(labelled)
        config = self.base
        init = self.trained if (warm and self.trained is not None) else None
        if init is not None and self.warm_epochs is not None:
            config = dataclasses.replace(config, epochs=self.warm_epochs)
        with torch_threads(self.threads):
            self.trained = fit(pool, self.data.taxonomy, config, init=init, on_progress=self.on_training)

    def predict(self, rows: np.ndarray) -> Prediction:
        from core.scoring import score_pool

        with torch_threads(self.threads):
            scores = score_pool(self.trained, self.data.images[rows], mc_samples=0)
        return Prediction(scores.main_probs, scores.leaf_probs)

    def pool_scores(self) -> tuple[UncertaintyScores, np.ndarray | None]:
        from core.scoring import score_pool

        with torch_threads(self.threads):
            scores = score_pool(self.trained, self.data.images[self.pool_rows], mc_samples=self.mc_samples)
        return scores.uncertainty(), scores.latent_mean


class AutoLearner(TrainedModelLearner):
    """``model = "auto"`` as a train job runs it: before every fit, the kind that cross-validation on the
    labels revealed so far picks (core.training.selection), then that kind trained on all of them.
    ``choices`` keeps each fit's choice."""

    def __init__(
        self,
        data: EvaluationData,
        pool: np.ndarray,
        config: EvaluationConfig,
        seed: int,
        *,
        needs_bald: bool,
        on_training: Callable[[Any], None] | None = None,
    ) -> None:
        from core.registry import AUTO, DEFAULT_MODEL

        super().__init__(DEFAULT_MODEL, data, pool, config, seed, needs_bald=needs_bald, on_training=on_training)
        self.name = AUTO
        self.evaluation = config
        self.seed = seed
        self.choices: list[str] = []

    def fit(self, labelled: np.ndarray, *, warm: bool) -> None:
        from core.training import TrainConfig, select_model

        overrides = self.evaluation.model_train
        with torch_threads(self.threads):  # its cross-validation fits the same models
            selection = select_model(self.training_pool(labelled), self.data.taxonomy, self.base, overrides=overrides)
        chosen = selection.chosen
        self.choices.append(chosen)
        self.base = TrainConfig(
            **{**self.evaluation.train, **overrides.get(chosen, {}), "model": chosen, "seed": self.seed}
        )
        if self.trained is not None and self.trained.config.model != chosen:
            self.trained = None  # a warm start continues the same kind only
        super().fit(labelled, warm=warm)


class ScikitLearner:
    """LabelSpreading (transductive, over pool + extra features) or logistic regression on features.

    Learns leaves when every revealed label names one leaf, otherwise main classes only."""

    def __init__(self, name: str, data: EvaluationData, pool: np.ndarray) -> None:
        self.name = name
        self.data = data
        self.pool_rows = pool
        self.features = np.asarray(data.features, dtype=np.float64)
        self.estimator: Any = None
        self.leaf_level = True

    def _targets(self, rows: np.ndarray) -> np.ndarray:
        leaves = self.data.leaf_labels[rows]
        self.leaf_level = bool((leaves >= 0).all())
        return leaves if self.leaf_level else self.data.main_labels[rows]

    def _expand(self, probs: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Class columns the estimator saw -> every leaf / main class (unseen ones get probability 0)."""
        width = self.data.taxonomy.num_leaves if self.leaf_level else self.data.taxonomy.num_main
        full = np.zeros((len(probs), width))
        full[:, classes] = np.nan_to_num(probs)
        totals = full.sum(axis=1, keepdims=True)
        full = np.where(totals > 0, full / np.where(totals > 0, totals, 1.0), 1.0 / width)
        if self.leaf_level:
            return full @ self.data.taxonomy.leaf_to_main_matrix(), full
        return full, None

    def fit(self, labelled: np.ndarray, *, warm: bool) -> None:
        import warnings

        from sklearn.linear_model import LogisticRegression
        from sklearn.semi_supervised import LabelSpreading

        rows = self.pool_rows[labelled]
        targets = self._targets(rows)
        with warnings.catch_warnings():
            # LabelSpreading warns about non-convergence and divides 0/0 on isolated points, as in the anchors.
            warnings.simplefilter("ignore")
            if self.name == "label_spreading":
                partial = -np.ones(len(self.pool_rows), dtype=np.int64)
                partial[labelled] = targets
                self.estimator = LabelSpreading(kernel="knn", n_neighbors=7, max_iter=100)
                self.estimator.fit(self.features[self.pool_rows], partial)
            else:
                if len(np.unique(targets)) < 2:
                    self.estimator = SimpleNamespace(only_class=int(targets[0]))
                    return
                self.estimator = LogisticRegression(max_iter=2000).fit(self.features[rows], targets)

    def _probs(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if hasattr(self.estimator, "only_class"):
            probs = np.ones((len(features), 1))
            return self._expand(probs, np.array([self.estimator.only_class]))
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probs = self.estimator.predict_proba(features)
        return self._expand(probs, self.estimator.classes_)

    def predict(self, rows: np.ndarray) -> Prediction:
        main, leaf = self._probs(self.features[rows])
        return Prediction(main, leaf)

    def pool_scores(self) -> tuple[UncertaintyScores, np.ndarray | None]:
        if self.name == "label_spreading":
            # The fitted label distributions over the pool, as the anchors rank them.
            main, leaf = self._expand(self.estimator.label_distributions_, self.estimator.classes_)
        else:
            main, leaf = self._probs(self.features[self.pool_rows])
        return UncertaintyScores.from_probabilities(main, leaf), self.features[self.pool_rows]
