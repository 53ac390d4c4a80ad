"""The simulation: random and active runs over budgets and seeds, measured on the test split."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from core.acquisition import cold_start, get_strategy, rank_pool, typical_coverage
from core.evaluate.data import EvaluationData, evaluation_split
from core.evaluate.learners import AutoLearner, Learner, Prediction, ScikitLearner, TrainedModelLearner
from core.evaluate.results import BASELINES, EvaluationConfig, EvaluationResult, RunResult
from core.registry import AUTO, DIVERSITY_FACTOR


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


def _chosen(learner: Learner) -> str | None:
    """The kind model auto trained last (AutoLearner.choices); None for any other learner."""
    choices = getattr(learner, "choices", None)
    return choices[-1] if choices else None


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
                model_chosen=_chosen(learner),
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
    # The app queue's shortlist factor (core.registry), so a simulated round diversifies as the app's does.
    strategy = get_strategy(
        strategy_name,
        diversify=config.diversify,
        diversity_factor=DIVERSITY_FACTOR,
        exploration=config.exploration,
        coverage=config.coverage,
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
                    model_chosen=_chosen(learner),
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
        ).order
        labelled = np.concatenate([labelled, picked])


def budgets_that_fit(budgets: tuple[int, ...], pool_size: int) -> tuple[tuple[int, ...], list[dict[str, Any]]]:
    """(the budgets a pool of ``pool_size`` images can give, a skip record for each other one).

    Raises ValueError when none fits: there would be nothing to measure."""
    fitting = tuple(budget for budget in budgets if budget <= pool_size)
    too_big = [budget for budget in budgets if budget > pool_size]
    if not fitting:
        raise ValueError(
            f"every budget ({', '.join(map(str, too_big))}) exceeds the {pool_size} labelled images in the pool: "
            "ask for smaller budgets, or label more images"
        )
    reason = f"more than the {pool_size} labelled images in the pool"
    return fitting, [{"budget": budget, "reason": reason} for budget in too_big]


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
    if name == AUTO:
        return lambda seed: AutoLearner(
            data, pool, config, seed, needs_bald=strategy == "bald", on_training=on_training
        )
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
    default a stratified ``config.test_fraction`` split with ``config.split_seed`` (its validation part when
    ``config.on_validation``; an explicit split is then taken to be that validation split). on_event: one line per
    finished run, prefixed with runs done of runs planned, and one per budget skipped; on_training: every
    training's ``core.training.Progress``.

    Budgets above the pool's size are skipped (listed in the result's ``skipped``); ValueError when none fits."""
    config.validate()
    if split is None:
        split = evaluation_split(data, config.test_fraction, config.split_seed, on_validation=config.on_validation)
    pool, test = split
    pool, test = np.asarray(pool, dtype=np.int64), np.asarray(test, dtype=np.int64)
    if np.intersect1d(pool, test).size:
        raise ValueError("pool and test splits overlap")
    say = on_event or (lambda message: None)
    # Budgets the pool cannot give are skipped, not the whole run; the recorded config keeps the budgets asked.
    fitting, skipped = budgets_that_fit(config.budgets, len(pool))
    for skip in skipped:
        say(f"skipped budget {skip['budget']}: {skip['reason']}")
    requested, config = config, dataclasses.replace(config, budgets=fitting)
    started = time.perf_counter()
    runs: list[RunResult] = []
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
        "measured_on": "validation" if config.on_validation else "test",
        "num_extra_unlabelled": 0 if data.extra_unlabelled is None else len(data.extra_unlabelled),
        "image_shape": list(data.images.shape[1:]),
        "taxonomy": data.taxonomy.to_dict(),
        "test_class_counts": {
            main: int((data.main_labels[test] == i).sum()) for i, main in enumerate(data.taxonomy.main_names)
        },
    }
    config_dict = {**dataclasses.asdict(requested), "train": train_config, "diversity_factor": DIVERSITY_FACTOR}
    return EvaluationResult(dataset, config_dict, runs, skipped, time.perf_counter() - started)
