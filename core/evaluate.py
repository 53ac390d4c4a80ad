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
Beyond the protocol: ``initial_selection="diverse"`` starts from a k-centre sample of the features (the
tool's cold start), ``"typical"`` from the most typical image of each of ``initial_labels`` k-means
clusters (TypiClust); ``diversify=True`` spreads each round by k-centre over the ``5 x round_size`` most
uncertain candidates in the model's latent space (pixels for the scikit-learn learners);
``exploration`` gives a share of each round to coverage, ``coverage="typical"`` choosing the most typical
image of the largest unlabelled k-means cluster (TypiClust) rather than the farthest one.
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
                   "main_accuracy_mean": float, "main_accuracy_std": float,
                   "leaf_accuracy_mean": float | null, "leaf_accuracy_std": float | null,
                   "macro_f1_mean": float, "macro_f1_std": float, "classes_labelled_mean": float | null}, ...],
      "skipped": [{"model": str, "strategy": str, "reason": str}, ...],
      "seconds": float                          # summed over parts when merged from parallel runs
    }

``main_accuracy`` is the test accuracy of the arg-max main class; ``leaf_accuracy`` is measured on the
test images whose label names exactly one leaf (null when none does or the learner predicts no leaves);
``macro_f1`` is the unweighted mean of per-main-class F1. Standard deviations are population (ddof=0).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np

from core.acquisition import UncertaintyScores, cold_start, get_strategy, rank_pool, typical_coverage
from core.registry import MODEL_KINDS, STRATEGIES
from core.taxonomy import Taxonomy

SCHEMA = "latent-labeller/evaluate/1"
BASELINES = ("label_spreading", "logistic_regression")
INITIAL_SELECTIONS = ("random", "typical", "diverse")


# ---------------------------------------------------------------------------------------------------------
# Data


@dataclass
class EvaluationData:
    """Images with known labels, as the oracle sees them.

    images: what the models see: uint8 pixels (N, C, H, W) or a backbone's feature vectors (N, D);
    admissible: bool (N, K), each image's true label as a set of leaves (one leaf for an exact label,
    several for a partial one); features: float (N, F) for the scikit-learn baselines and the cold start
    (default: pixels scaled to [0, 1], or the feature vectors scaled to unit length); extra_unlabelled:
    rows like ``images`` with no label that the semi-supervised learners may use as unlabelled data (never
    queried, never tested).
    """

    name: str
    images: np.ndarray
    admissible: np.ndarray
    taxonomy: Taxonomy
    features: np.ndarray | None = None
    extra_unlabelled: np.ndarray | None = None

    def __post_init__(self) -> None:
        pixels = self.images.ndim == 4 and self.images.dtype == np.uint8
        vectors = self.images.ndim == 2 and np.issubdtype(self.images.dtype, np.floating)
        if not (pixels or vectors):
            raise ValueError(
                "images must be uint8 (N, C, H, W) or feature vectors (N, D), "
                f"got {self.images.dtype} {self.images.shape}"
            )
        expected = (len(self.images), self.taxonomy.num_leaves)
        if self.admissible.shape != expected or self.admissible.dtype != bool:
            raise ValueError(f"admissible must be bool {expected}, got {self.admissible.dtype} {self.admissible.shape}")
        if not self.admissible.any(axis=1).all():
            raise ValueError("every image needs a label: found an image that admits no leaf")
        main_sets = self.admissible.astype(np.int64) @ self.taxonomy.leaf_to_main_matrix().astype(np.int64)
        if ((main_sets > 0).sum(axis=1) != 1).any():
            raise ValueError("a label admits leaves of more than one main class")
        if self.features is None:
            if vectors:
                from core.data import unit_rows

                self.features = unit_rows(self.images)
            else:
                self.features = self.images.reshape(len(self.images), -1).astype(np.float32) / 255.0
        if self.extra_unlabelled is not None and self.extra_unlabelled.shape[1:] != self.images.shape[1:]:
            raise ValueError("extra unlabelled images must have the labelled images' shape")

    @property
    def main_labels(self) -> np.ndarray:
        """Main-class index of every image (a label never spans two main classes)."""
        return self.taxonomy.main_of_leaf()[self.admissible.argmax(axis=1)]

    @property
    def leaf_labels(self) -> np.ndarray:
        """Leaf index of every exactly labelled image, -1 for a partial label."""
        exact = self.admissible.sum(axis=1) == 1
        return np.where(exact, self.admissible.argmax(axis=1), -1)


def from_class_labels(
    name: str, images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], **kwargs: Any
) -> EvaluationData:
    """Flat classes (no sub-classes): ``labels[i]`` indexes ``class_names``."""
    taxonomy = Taxonomy.from_dict({str(c): [] for c in class_names})
    admissible = np.zeros((len(labels), len(class_names)), dtype=bool)
    admissible[np.arange(len(labels)), labels] = True
    return EvaluationData(name, images, admissible, taxonomy, **kwargs)


def digits_data() -> EvaluationData:
    """scikit-learn's 1,797 8x8 digits: uint8 images for the models, ``pixels / 16`` for the baselines
    exactly as the anchors use them."""
    from sklearn.datasets import load_digits

    pixels, labels = load_digits(return_X_y=True)
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    return from_class_labels("digits", images, labels, [str(d) for d in range(10)], features=pixels / 16.0)


def folder_data(
    root: Path, *, image_size: int, channels: int = 3, classes: Sequence[str] | None = None
) -> EvaluationData:
    """Images in ``root/<class>/*``: the folder names are the labels."""
    from core.data import load_images

    root = Path(root)
    classes = list(classes) if classes is not None else sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.is_file() and not p.name.startswith("."))
        paths += files
        labels += [index] * len(files)
    if not paths:
        raise ValueError(f"no images under {root}/<class>/")
    images = load_images(paths, image_size, channels)
    return from_class_labels(root.name, images, np.array(labels), classes)


def stratified_test_split(data: EvaluationData, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, test) indices, stratified by main class, in the order scikit-learn returns them."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must lie in (0, 1), got {test_fraction}")
    indices = np.arange(len(data.images))
    pool, test = train_test_split(indices, test_size=test_fraction, random_state=seed, stratify=data.main_labels)
    return np.asarray(pool), np.asarray(test)


# ---------------------------------------------------------------------------------------------------------
# Configuration and results


@dataclass
class EvaluationConfig:
    budgets: tuple[int, ...] = (20, 50, 100)
    strategies: tuple[str, ...] = ("random", "entropy")
    models: tuple[str, ...] = ("m2", "m1m2", "supervised")
    baselines: tuple[str, ...] = ("label_spreading",)
    seeds: int = 3
    first_seed: int = 0  # seeds run are first_seed, first_seed + 1, ... (lets seeds run in parallel processes)
    test_fraction: float = 0.3
    split_seed: int = 0
    initial_labels: int = 10
    # How the first labels of an active run are chosen: "random" (the anchors' protocol), "typical" (TypiClust
    # on the features) or "diverse" (k-centre on the features, the tool's cold start without a model).
    initial_selection: str = "random"
    round_size: int = 5
    balanced_random: bool = True
    # k-centre diversification of each round in latent space (the app's default); off = plain top-n,
    # the anchors' protocol.
    diversify: bool = False
    # Share of each active round picked for coverage (farthest from every labelled image in latent space).
    exploration: float = 0.0
    coverage: str = "farthest"  # how the exploration share is chosen: farthest or typical (core.acquisition)
    # Active rounds continue from the previous round's model (warm_start) for warm_epochs epochs; the first
    # round, every random budget and every round without warm_start train from scratch for train.epochs.
    warm_start: bool = False
    warm_epochs: int | None = None
    mc_samples: int = 8  # MC-dropout passes when scoring for BALD
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides shared by every model
    # Per-model TrainConfig overrides on top of ``train`` (e.g. more epochs for the supervised model, whose
    # epochs pass over the few labelled images only).
    model_train: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        problems = []
        if not self.budgets or min(self.budgets) < 1:
            problems.append(f"budgets must be positive, got {self.budgets}")
        if list(self.budgets) != sorted(set(self.budgets)):
            problems.append(f"budgets must be increasing and distinct, got {self.budgets}")
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown:
            problems.append(f"unknown strategies {unknown}; choose from {list(STRATEGIES)}")
        unknown = sorted(set(self.models) - set(MODEL_KINDS))
        if unknown:
            problems.append(f"unknown models {unknown}; choose from {list(MODEL_KINDS)}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            problems.append(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
        if self.seeds < 1:
            problems.append(f"seeds must be >= 1, got {self.seeds}")
        if self.initial_selection not in INITIAL_SELECTIONS:
            problems.append(f"initial_selection must be one of {INITIAL_SELECTIONS}, got {self.initial_selection!r}")
        if self.initial_labels < 1 or self.round_size < 1:
            problems.append("initial_labels and round_size must be >= 1")
        if problems:
            raise ValueError("invalid evaluation: " + "; ".join(problems))


@dataclass
class RunResult:
    model: str
    strategy: str
    seed: int
    budget: int
    labels: int
    main_accuracy: float
    leaf_accuracy: float | None
    macro_f1: float
    seconds: float
    classes_labelled: int | None = None  # distinct main classes among the labels used (coverage)


@dataclass
class EvaluationResult:
    dataset: dict[str, Any]
    config: dict[str, Any]
    runs: list[RunResult]
    skipped: list[dict[str, str]]
    seconds: float

    @classmethod
    def merge(cls, parts: Sequence[EvaluationResult], config: dict[str, Any] | None = None) -> EvaluationResult:
        """One result from parts run separately on the same data and split (e.g. one process per model
        and seed); ``config`` describes the whole (default: the first part's)."""
        if not parts:
            raise ValueError("nothing to merge")
        if any(part.dataset != parts[0].dataset for part in parts):
            raise ValueError("cannot merge results on different datasets or splits")
        return cls(
            dataset=parts[0].dataset,
            config=config if config is not None else parts[0].config,
            runs=[run for part in parts for run in part.runs],
            skipped=[skip for part in parts for skip in part.skipped],
            seconds=sum(part.seconds for part in parts),
        )

    def summary(self) -> list[dict[str, Any]]:
        groups: dict[tuple[str, str, int], list[RunResult]] = {}
        for run in self.runs:
            groups.setdefault((run.model, run.strategy, run.budget), []).append(run)
        rows = []
        for (model, strategy, budget), runs in groups.items():
            row: dict[str, Any] = {"model": model, "strategy": strategy, "budget": budget, "seeds": len(runs)}
            for metric in ("main_accuracy", "leaf_accuracy", "macro_f1"):
                values = [getattr(r, metric) for r in runs if getattr(r, metric) is not None]
                row[f"{metric}_mean"] = float(np.mean(values)) if values else None
                row[f"{metric}_std"] = float(np.std(values)) if values else None
            covered = [r.classes_labelled for r in runs if r.classes_labelled is not None]
            row["classes_labelled_mean"] = float(np.mean(covered)) if covered else None
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "dataset": self.dataset,
            "config": self.config,
            "runs": [dataclasses.asdict(run) for run in self.runs],
            "summary": self.summary(),
            "skipped": self.skipped,
            "seconds": self.seconds,
        }

    def markdown(self) -> str:
        lines = [
            f"Test accuracy on {self.dataset['name']} ({self.dataset['num_test']} test images, "
            f"pool {self.dataset['num_pool']}), mean ± std over seeds.\n",
            "| model | strategy | labels | main accuracy | leaf accuracy | macro-F1 | seeds |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.summary():
            cells = [
                row["model"],
                row["strategy"],
                str(row["budget"]),
                _mean_std(row["main_accuracy_mean"], row["main_accuracy_std"]),
                _mean_std(row["leaf_accuracy_mean"], row["leaf_accuracy_std"]),
                _mean_std(row["macro_f1_mean"], row["macro_f1_std"]),
                str(row["seeds"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        for skip in self.skipped:
            lines.append(f"\nSkipped {skip['model']} × {skip['strategy']}: {skip['reason']}")
        return "\n".join(lines) + "\n"

    def figure(self) -> Any:
        """Plotly learning curves: main-class accuracy against labels, one line per (model, strategy)."""
        import plotly.graph_objects as go

        figure = go.Figure()
        curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in self.summary():
            curves.setdefault((row["model"], row["strategy"]), []).append(row)
        for (model, strategy), rows in curves.items():
            rows.sort(key=lambda r: r["budget"])
            figure.add_trace(
                go.Scatter(
                    x=[r["budget"] for r in rows],
                    y=[r["main_accuracy_mean"] for r in rows],
                    error_y={"type": "data", "array": [r["main_accuracy_std"] for r in rows]},
                    mode="lines+markers",
                    name=f"{model} · {strategy}",
                    line={"dash": "dot" if strategy == "random" else "solid"},
                )
            )
        figure.update_layout(
            title=f"Label efficiency on {self.dataset['name']}",
            xaxis_title="labels",
            yaxis_title="test main-class accuracy",
            template="plotly_white",
        )
        return figure

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        """Read back what ``to_dict`` wrote (e.g. to redraw the figure elsewhere)."""
        if data.get("schema") != SCHEMA:
            raise ValueError(f"not an evaluation result of schema {SCHEMA}: {data.get('schema')!r}")
        runs = [RunResult(**run) for run in data["runs"]]
        return cls(data["dataset"], data["config"], runs, data.get("skipped", []), data.get("seconds", 0.0))

    def write(self, json_path: Path, *, plotlyjs: str | bool = True, figure: bool = True) -> dict[str, Path]:
        """The JSON, a markdown table (.md) and a learning-curve figure (.html) side by side.

        ``plotlyjs=True`` embeds plotly.js so the figure opens offline; ``"cdn"`` keeps the file small."""
        json_path = Path(json_path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        paths = {"json": json_path, "markdown": json_path.with_suffix(".md")}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2))
        paths["markdown"].write_text(self.markdown())
        if figure:
            paths["figure"] = json_path.with_suffix(".html")
            self.figure().write_html(paths["figure"], include_plotlyjs=plotlyjs)
        return paths


def _mean_std(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{100 * mean:.1f}% ± {100 * (std or 0.0):.1f}"


# ---------------------------------------------------------------------------------------------------------
# Learners: fit on the labels revealed so far, predict the test split, score the pool for the strategy


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
        self.trained: Any = None

    def fit(self, labelled: np.ndarray, *, warm: bool) -> None:
        from core.data import LabelledPool
        from core.training import fit

        admissible = np.ones((len(self.train_images), self.data.taxonomy.num_leaves), dtype=bool)
        admissible[labelled] = self.data.admissible[self.pool_rows[labelled]]
        is_labelled = np.zeros(len(self.train_images), dtype=bool)
        is_labelled[labelled] = True
        pool = LabelledPool(images=self.train_images, admissible=admissible, labelled=is_labelled)
        config = self.base
        init = self.trained if (warm and self.trained is not None) else None
        if init is not None and self.warm_epochs is not None:
            config = dataclasses.replace(config, epochs=self.warm_epochs)
        self.trained = fit(pool, self.data.taxonomy, config, init=init, on_progress=self.on_training)

    def predict(self, rows: np.ndarray) -> Prediction:
        from core.scoring import score_pool

        scores = score_pool(self.trained, self.data.images[rows], mc_samples=0)
        return Prediction(scores.main_probs, scores.leaf_probs)

    def pool_scores(self) -> tuple[UncertaintyScores, np.ndarray | None]:
        from core.scoring import score_pool

        scores = score_pool(self.trained, self.data.images[self.pool_rows], mc_samples=self.mc_samples)
        return scores.uncertainty(), scores.latent_mean


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


# ---------------------------------------------------------------------------------------------------------
# The simulation


def _metrics(data: EvaluationData, rows: np.ndarray, prediction: Prediction) -> dict[str, float | None]:
    from sklearn.metrics import f1_score

    truth = data.main_labels[rows]
    predicted = prediction.main_probs.argmax(axis=1)
    leaf_accuracy = None
    exact = data.leaf_labels[rows] >= 0
    if prediction.leaf_probs is not None and exact.any():
        leaf_accuracy = float((prediction.leaf_probs[exact].argmax(axis=1) == data.leaf_labels[rows][exact]).mean())
    return {
        "main_accuracy": float((predicted == truth).mean()),
        "leaf_accuracy": leaf_accuracy,
        "macro_f1": float(
            f1_score(truth, predicted, labels=np.arange(data.taxonomy.num_main), average="macro", zero_division=0)
        ),
    }


def balanced_draw(main_labels: np.ndarray, budget: int, num_main: int, rng: np.random.Generator) -> np.ndarray:
    """``budget // num_main`` positions per main class (the anchors' draw), the remainder uniformly."""
    per_class = budget // num_main
    chosen = [
        rng.choice(np.flatnonzero(main_labels == c), min(per_class, int((main_labels == c).sum())), replace=False)
        for c in range(num_main)
    ]
    picked = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
    remainder = budget - len(picked)
    if remainder > 0:
        rest = np.setdiff1d(np.arange(len(main_labels)), picked)
        picked = np.concatenate([picked, rng.choice(rest, min(remainder, len(rest)), replace=False)])
    return picked.astype(np.int64)


def _random_runs(
    learner_factory: Callable[[int], Learner],
    data: EvaluationData,
    pool: np.ndarray,
    test: np.ndarray,
    config: EvaluationConfig,
    seed: int,
) -> list[RunResult]:
    runs = []
    pool_main = data.main_labels[pool]
    for budget in config.budgets:
        rng = np.random.default_rng(seed)
        if config.balanced_random:
            labelled = balanced_draw(pool_main, budget, data.taxonomy.num_main, rng)
        else:
            labelled = rng.choice(len(pool), min(budget, len(pool)), replace=False)
        started = time.perf_counter()
        learner = learner_factory(seed)
        learner.fit(labelled, warm=False)
        metrics = _metrics(data, test, learner.predict(test))
        runs.append(
            RunResult(
                learner.name,
                "random",
                seed,
                budget,
                len(labelled),
                **metrics,
                seconds=time.perf_counter() - started,
                classes_labelled=len(np.unique(pool_main[labelled])),
            )
        )
    return runs


def _active_runs(
    learner_factory: Callable[[int], Learner],
    strategy_name: str,
    data: EvaluationData,
    pool: np.ndarray,
    test: np.ndarray,
    config: EvaluationConfig,
    seed: int,
) -> list[RunResult]:
    strategy = get_strategy(
        strategy_name, diversify=config.diversify, exploration=config.exploration, coverage=config.coverage
    )
    rng = np.random.default_rng(seed)
    initial = min(config.initial_labels, len(pool))
    if config.initial_selection == "typical":
        labelled = typical_coverage(data.features[pool], np.arange(len(pool)), None, initial, rng=rng)
    elif config.initial_selection == "diverse":
        labelled = cold_start(np.arange(len(pool)), initial, rng=rng, features=data.features[pool])
    else:
        labelled = rng.choice(len(pool), initial, replace=False)
    learner = learner_factory(seed)
    runs: list[RunResult] = []
    budgets = [b for b in config.budgets if b <= len(pool)]
    started = time.perf_counter()
    warm = False
    while True:
        learner.fit(labelled, warm=warm)
        warm = config.warm_start
        if len(labelled) in budgets:
            metrics = _metrics(data, test, learner.predict(test))
            runs.append(
                RunResult(
                    learner.name,
                    strategy_name,
                    seed,
                    len(labelled),
                    len(labelled),
                    **metrics,
                    seconds=time.perf_counter() - started,
                    classes_labelled=len(np.unique(data.main_labels[pool[labelled]])),
                )
            )
        upcoming = [b for b in budgets if b > len(labelled)]
        if not upcoming:
            return runs
        scores, latent = learner.pool_scores()
        candidates = np.setdiff1d(np.arange(len(pool)), labelled)
        step = min(config.round_size, upcoming[0] - len(labelled))
        # The app's queue order for this state (core.acquisition.rank_pool), one round of it.
        picked = rank_pool(
            strategy, scores, candidates, rng=rng, limit=step, round_size=step, latent=latent, labelled=labelled
        )
        labelled = np.concatenate([labelled, picked])


def _learner_factory(
    name: str,
    strategy: str,
    data: EvaluationData,
    pool: np.ndarray,
    config: EvaluationConfig,
    on_training: Callable[[Any], None] | None,
) -> Callable[[int], Learner]:
    """seed -> a fresh learner called ``name``."""
    if name in BASELINES:
        return lambda seed: ScikitLearner(name, data, pool)
    return lambda seed: TrainedModelLearner(
        name, data, pool, config, seed, needs_bald=strategy == "bald", on_training=on_training
    )


def evaluate(
    data: EvaluationData,
    config: EvaluationConfig,
    *,
    split: tuple[np.ndarray, np.ndarray] | None = None,
    on_event: Callable[[str], None] | None = None,
    on_training: Callable[[Any], None] | None = None,
) -> EvaluationResult:
    """Run every (learner, strategy, seed) and measure at every budget.

    split: explicit (pool, test) indices into ``data`` (e.g. a dataset's own train/val folders); by
    default a stratified ``config.test_fraction`` split with ``config.split_seed``. on_event: one line per
    finished run, prefixed with runs done of runs planned; on_training: every training's
    ``core.training.Progress``."""
    config.validate()
    pool, test = split if split is not None else stratified_test_split(data, config.test_fraction, config.split_seed)
    pool, test = np.asarray(pool, dtype=np.int64), np.asarray(test, dtype=np.int64)
    if np.intersect1d(pool, test).size:
        raise ValueError("pool and test splits overlap")
    if max(config.budgets) > len(pool):
        raise ValueError(f"budget {max(config.budgets)} exceeds the {len(pool)} labelled images in the pool")
    say = on_event or (lambda message: None)
    started = time.perf_counter()
    runs: list[RunResult] = []
    skipped: list[dict[str, str]] = []
    planned = [
        (name, strategy)
        for name in (*config.models, *config.baselines)
        for strategy in config.strategies
        if not (name in BASELINES and strategy in ("bald", "disagreement", "novelty"))
    ]
    total, done = len(planned) * config.seeds, 0

    for name in (*config.models, *config.baselines):
        for strategy in config.strategies:
            if (name, strategy) not in planned:
                skipped.append({"model": name, "strategy": strategy, "reason": f"{name} has no {strategy} score"})
                continue
            for seed in range(config.first_seed, config.first_seed + config.seeds):
                seed_started = time.perf_counter()
                factory = _learner_factory(name, strategy, data, pool, config, on_training)
                if strategy == "random":
                    new = _random_runs(factory, data, pool, test, config, seed)
                else:
                    new = _active_runs(factory, strategy, data, pool, test, config, seed)
                runs += new
                done += 1
                accuracies = ", ".join(f"{r.budget}: {100 * r.main_accuracy:.1f}%" for r in new)
                seconds = time.perf_counter() - seed_started
                say(f"[{done}/{total}] {name} · {strategy} · seed {seed}: {accuracies} ({seconds:.1f} s)")

    train_config: dict[str, Any] = {}
    if config.models:
        from core.training import TrainConfig

        train_config = TrainConfig(**config.train).to_dict()
    dataset = {
        "name": data.name,
        "num_pool": len(pool),
        "num_test": len(test),
        "num_extra_unlabelled": 0 if data.extra_unlabelled is None else len(data.extra_unlabelled),
        "image_shape": list(data.images.shape[1:]),
        "taxonomy": data.taxonomy.to_dict(),
        "test_class_counts": {
            main: int((data.main_labels[test] == i).sum()) for i, main in enumerate(data.taxonomy.main_names)
        },
    }
    config_dict = {**dataclasses.asdict(config), "train": train_config}
    return EvaluationResult(dataset, config_dict, runs, skipped, time.perf_counter() - started)
