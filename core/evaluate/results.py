"""What an evaluation is asked to do (EvaluationConfig) and what it found (RunResult, EvaluationResult:
JSON, markdown table, learning-curve figure)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.registry import MODEL_CHOICES, STRATEGIES

SCHEMA = "latent-labeller/evaluate/1"
BASELINES = ("label_spreading", "logistic_regression")
INITIAL_SELECTIONS = ("random", "typical", "diverse")


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
    # Measure on a validation split of the pool instead of the test split: for choosing settings.
    on_validation: bool = False
    initial_labels: int = 10
    # How the first labels of an active run are chosen: "random" (the anchors' protocol, and the app's cold start:
    # before any model version its queue serves images in random-key order), "typical" (TypiClust on the
    # features) or "diverse" (k-centre on the features, core.acquisition.cold_start, which the app does not serve).
    initial_selection: str = "random"
    # Labels per active round. 5 is the anchors' protocol (the benchmarks); `labeller evaluate` passes the
    # project's labelling.round_size, the app queue's round, so that it simulates what the app serves.
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
    # Torch intra-op threads while a model trains and scores. None: 1 for small models (feature vectors, images
    # under SMALL_IMAGE_SIDE px), whose steps extra threads slow down, badly on a busy machine
    # (core.evaluate.learners.training_threads, benchmarks/results/threads.md); torch's own setting for larger
    # pixel models. A number: that many for every model.
    threads: int | None = None
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
        unknown = sorted(set(self.models) - set(MODEL_CHOICES))
        if unknown:
            problems.append(f"unknown models {unknown}; choose from {list(MODEL_CHOICES)}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            problems.append(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
        if self.seeds < 1:
            problems.append(f"seeds must be >= 1, got {self.seeds}")
        if self.initial_selection not in INITIAL_SELECTIONS:
            problems.append(f"initial_selection must be one of {INITIAL_SELECTIONS}, got {self.initial_selection!r}")
        if self.initial_labels < 1 or self.round_size < 1:
            problems.append("initial_labels and round_size must be >= 1")
        if self.threads is not None and self.threads < 1:
            problems.append(f"threads must be >= 1, got {self.threads}")
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
    model_chosen: str | None = None  # model auto: the kind its cross-validation chose for this run's fit


@dataclass
class EvaluationResult:
    dataset: dict[str, Any]
    config: dict[str, Any]
    runs: list[RunResult]
    # {"model", "strategy", "reason"} for a pair not run, {"budget", "reason"} for a budget not run.
    skipped: list[dict[str, Any]]
    seconds: float

    @classmethod
    def merge(cls, parts: Sequence[EvaluationResult], config: dict[str, Any] | None = None) -> EvaluationResult:
        """One result from parts run separately on the same data and split (e.g. one process per model
        and seed); ``config`` describes the whole (default: the first part's)."""
        if not parts:
            raise ValueError("nothing to merge")
        if any(part.dataset != parts[0].dataset for part in parts):
            raise ValueError("cannot merge results on different datasets or splits")
        all_skips = [skip for part in parts for skip in part.skipped]
        return cls(
            dataset=parts[0].dataset,
            config=config if config is not None else parts[0].config,
            runs=[run for part in parts for run in part.runs],
            # Every part skips the same budgets and pairs: once each.
            skipped=[skip for i, skip in enumerate(all_skips) if skip not in all_skips[:i]],
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
                # One value has no spread to report: null ("n/a"), not a reassuring 0.0.
                row[f"{metric}_std"] = float(np.std(values)) if len(values) >= 2 else None
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

    def spread_note(self) -> str:
        """How the accuracies are summarised over seeds: a std needs at least two."""
        seeds = {row["seeds"] for row in self.summary()}
        if seeds and max(seeds) < 2:
            return "one seed, so no std (n/a)"
        if seeds and min(seeds) < 2:
            return "mean ± std over seeds (n/a with one seed)"
        return "mean ± std over seeds"

    def image_points(self) -> str:
        """What one measured image is worth in accuracy points, e.g. "1 test image = 5.9 points (17 test
        images)": on a small split a gap of a few points is one or two images."""
        measured_on = self.dataset.get("measured_on", "test")
        count = int(self.dataset["num_test"])
        if count < 1:
            return f"no {measured_on} images"
        return f"1 {measured_on} image = {100 / count:.1f} points ({count} {measured_on} images)"

    def markdown(self) -> str:
        measured_on = self.dataset.get("measured_on", "test")
        lines = [
            f"{measured_on.capitalize()} accuracy on {self.dataset['name']} ({self.dataset['num_test']} "
            f"{measured_on} images, pool {self.dataset['num_pool']}), {self.spread_note()}.\n",
            f"{self.image_points()}.\n",
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
            what = f"budget {skip['budget']}" if "budget" in skip else f"{skip['model']} × {skip['strategy']}"
            lines.append(f"\nSkipped {what}: {skip['reason']}")
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
            stds = [r["main_accuracy_std"] for r in rows]
            figure.add_trace(
                go.Scatter(
                    x=[r["budget"] for r in rows],
                    y=[r["main_accuracy_mean"] for r in rows],
                    # Bars only where there is a std: one seed gives none (its hover text says n/a).
                    error_y={
                        "type": "data",
                        "array": [0.0 if std is None else std for std in stds],
                        "visible": any(std is not None for std in stds),
                    },
                    text=[
                        f"{_mean_std(r['main_accuracy_mean'], r['main_accuracy_std'])} over {r['seeds']} seed(s)"
                        for r in rows
                    ],
                    hovertemplate="%{x} labels: %{text}",
                    mode="lines+markers",
                    name=f"{model} · {strategy}",
                    line={"dash": "dot" if strategy == "random" else "solid"},
                )
            )
        measured_on = self.dataset.get("measured_on", "test")
        figure.update_layout(
            title=f"Label efficiency on {self.dataset['name']}<br><sup>{self.spread_note()}; "
            f"{self.image_points()}</sup>",
            xaxis_title="labels",
            yaxis_title=f"{measured_on} main-class accuracy",
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
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}% ± " + ("n/a" if std is None else f"{100 * std:.1f}")
