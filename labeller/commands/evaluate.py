"""``labeller evaluate``: simulate labelling on a project's labelled images and measure label efficiency.

The JSON schema is documented in ``core.evaluate``; a markdown table (.md) and a plotly learning-curve
figure (.html) are written beside the JSON.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click
import numpy as np

from core.evaluate import BASELINES, INITIAL_SELECTIONS, EvaluationData
from core.registry import (
    AUTO,
    COVERAGE_METHODS,
    DEFAULT_COVERAGE,
    DEFAULT_EXPLORATION,
    DEFAULT_STRATEGY,
    DIVERSITY_FACTOR,
    INPUT_KINDS,
    SMALL_IMAGE_SIDE,
)
from labeller.commands.project import load_project


class TrainingBar:
    """One tqdm bar per training (phase, epoch, loss, ETA); finished runs print above it."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.count = 0

    def __enter__(self) -> TrainingBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, progress: Any) -> None:
        from tqdm import tqdm

        total = progress.epochs * progress.steps_per_epoch
        done = (progress.epoch - 1) * progress.steps_per_epoch + progress.step
        if self.bar is None or done < self.bar.n or self.bar.total != total:
            if self.bar is not None:
                self.bar.close()
            self.count += 1
            self.bar = tqdm(total=total, desc=f"training {self.count}", unit="step", leave=False, dynamic_ncols=True)
        self.bar.update(done - self.bar.n)
        loss = progress.loss_terms.get("loss") or next(iter(progress.loss_terms.values()), None)
        shown = {"epoch": f"{progress.epoch}/{progress.epochs}", "eta": f"{progress.eta_seconds:.0f}s"}
        if loss is not None:
            shown["loss"] = f"{loss:.3g}"
        self.bar.set_postfix(shown)

    def write(self, message: str) -> None:
        from tqdm import tqdm

        tqdm.write(message)


def _evaluate_seed(data: Any, config: Any, split: tuple[Any, Any], seed: int) -> Any:
    """One seed in a worker process (module level, so it can be sent to one)."""
    import torch

    from core.evaluate import evaluate

    torch.set_num_threads(1)
    return evaluate(data, dataclasses.replace(config, first_seed=seed, seeds=1), split=split)


def _evaluate_in_processes(data: Any, config: Any, workers: int) -> Any:
    """The seeds in parallel processes on the same split, merged into one result."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from core.evaluate import EvaluationResult, evaluation_split
    from core.evaluate.simulation import budgets_that_fit

    split = evaluation_split(data, config.test_fraction, config.split_seed, on_validation=config.on_validation)
    # Before spawning anything: no budget that fits is an error; the others are skipped in every worker.
    for skip in budgets_that_fit(config.budgets, len(split[0]))[1]:
        click.echo(f"skipped budget {skip['budget']}: {skip['reason']}")
    seeds = range(config.first_seed, config.first_seed + config.seeds)
    parts = []
    context = multiprocessing.get_context("spawn")  # torch state must not be forked
    with ProcessPoolExecutor(min(workers, config.seeds), mp_context=context) as pool:
        futures = {pool.submit(_evaluate_seed, data, config, split, seed): seed for seed in seeds}
        for done, future in enumerate(as_completed(futures), start=1):
            part = future.result()
            parts.append(part)
            accuracies = ", ".join(
                f"{run.model} {run.strategy} {run.budget}: {100 * run.main_accuracy:.1f}%" for run in part.runs
            )
            click.echo(f"[{done}/{config.seeds} seeds] seed {futures[future]}: {accuracies}")
    return EvaluationResult.merge(
        parts, config={**parts[0].config, "seeds": config.seeds, "first_seed": config.first_seed}
    )


def _csv(kind: type, value: str) -> tuple:
    try:
        items = tuple(kind(item.strip()) for item in value.split(",") if item.strip())
    except ValueError as error:
        raise click.BadParameter(f"{value!r}: {error}") from error
    return items


@click.command("evaluate")
@click.argument("project", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--budgets", default="20,50,100", show_default=True, help="Label budgets, comma-separated.")
@click.option("--strategies", default=f"random,{DEFAULT_STRATEGY}", show_default=True, help="Query strategies.")
@click.option(
    "--models",
    help="m1, m2, m1m2, supervised, auto (chosen by cross-validation before every fit, as a train job does). "
    "Default: the project's model (training.model).",
)
@click.option(
    "--baselines",
    default=",".join(BASELINES),
    show_default=True,
    help="scikit-learn baselines on the same input (features or pixels); '' for none.",
)
@click.option(
    "--backbone",
    type=click.Choice([AUTO, *INPUT_KINDS]),
    help="What the models learn from: pixels or a pretrained backbone's features. Default: the project's "
    "setting (auto decides from the images).",
)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run the seeds in this many processes (one torch thread each); results are merged.",
)
@click.option(
    "--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3, show_default=True
)
@click.option(
    "--on-validation",
    is_flag=True,
    help="Measure on a validation split of the pool (for choosing settings); the test split is left untouched.",
)
@click.option(
    "--initial",
    "initial_labels",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Random labels before the first active round.",
)
@click.option(
    "--round-size",
    type=click.IntRange(min=1),
    help="Labels per active round. Default: the project's labelling.round_size, the round the app's queue "
    "serves, so the simulation labels as annotators do.",
)
@click.option(
    "--initial-selection",
    type=click.Choice(INITIAL_SELECTIONS),
    default="random",
    show_default=True,
    help="First labels of an active run: uniformly random, the most typical image of each k-means cluster "
    "of the pixels, or spread out by k-centre on pixels.",
)
@click.option(
    "--diversify/--no-diversify",
    default=True,
    show_default=True,
    help=f"k-centre diversification of each active round in latent space, over its {DIVERSITY_FACTOR} x round-size "
    "most uncertain images (as the app's queue).",
)
@click.option(
    "--exploration",
    type=click.FloatRange(0, 1),
    default=DEFAULT_EXPLORATION,
    show_default=True,
    help="Share of each active round chosen for coverage instead of uncertainty.",
)
@click.option(
    "--coverage",
    type=click.Choice(COVERAGE_METHODS),
    default=DEFAULT_COVERAGE,
    show_default=True,
    help="How the coverage share is chosen: the image farthest from every label, or the most typical image of "
    "the least-labelled k-means cluster of the latent space.",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Training epochs per model. Default: the project setting.")
@click.option(
    "--warm-epochs",
    type=click.IntRange(min=1),
    help="Continue each active round from the previous model for this many epochs instead of retraining "
    "(faster; measured much worse for M2 on digits).",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    help="Torch threads while a model trains and scores. Default: 1 for small models (backbone features, images "
    f"under {SMALL_IMAGE_SIDE} px: many times faster than 2 on a busy machine, benchmarks/results/threads.md), "
    "torch's own setting for larger images.",
)
@click.option("--image-size", type=click.IntRange(min=4), help="Default: the project setting (training.image_size).")
@click.option("--channels", type=click.Choice(["1", "3"]), help="Default: the project setting (training.channels).")
@click.option("--device", help="auto, cpu, cuda, cuda:N. Default: the project setting.")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the results; .md and .html go beside it.",
)
def evaluate_command(
    project: Path,
    budgets: str,
    strategies: str,
    models: str | None,
    baselines: str,
    backbone: str | None,
    seeds: int,
    workers: int,
    test_fraction: float,
    on_validation: bool,
    initial_labels: int,
    round_size: int | None,
    initial_selection: str,
    diversify: bool,
    exploration: float,
    coverage: str,
    epochs: int | None,
    warm_epochs: int | None,
    threads: int | None,
    image_size: int | None,
    channels: str | None,
    device: str | None,
    json_path: Path,
) -> None:
    """Simulate labelling PROJECT's labelled images: for every model, strategy and budget, test accuracy
    (main class, leaf, macro-F1) as mean and std over seeds (n/a with one seed), with scikit-learn baselines.
    Budgets above the labelled images left for the pool are skipped."""
    from core.backbones import BackboneUnavailable
    from core.evaluate import EvaluationConfig, evaluate
    from labeller.inputs import choose_input
    from labeller.project import ProjectError
    from labeller.training_data import evaluation_data, load_project_features, load_project_pool

    opened = load_project(project)
    training = opened.settings.training
    choice = choose_input(opened, backbone=backbone)
    if image_size or channels:
        choice = dataclasses.replace(
            choice, image_size=image_size or choice.image_size, channels=int(channels or choice.channels)
        )
    config = EvaluationConfig(
        budgets=_csv(int, budgets),
        strategies=_csv(str, strategies),
        models=_csv(str, models) if models is not None else (training.model,),
        baselines=_csv(str, baselines),
        seeds=seeds,
        test_fraction=test_fraction,
        on_validation=on_validation,
        initial_labels=initial_labels,
        round_size=round_size if round_size is not None else opened.settings.labelling.round_size,
        initial_selection=initial_selection,
        diversify=diversify,
        exploration=exploration,
        coverage=coverage,
        warm_start=warm_epochs is not None,
        warm_epochs=warm_epochs,
        threads=threads,
        train={
            "epochs": epochs or training.epochs,
            "batch_size": training.batch_size,
            "consistency": training.consistency,
            "balance": training.balance,
            "classifier": training.classifier,
            "device": device or training.device,
            "backbone": choice.backbone,
            "backbone_weights": choice.weights,
            "feature_view": choice.view,
        },
    )
    try:
        config.validate()
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    below = sorted({budget for budget in config.budgets if budget < initial_labels})
    if below and any(strategy != "random" for strategy in config.strategies):
        raise click.UsageError(
            f"budget(s) {', '.join(map(str, below))} below --initial {initial_labels}: an active run starts with "
            f"{initial_labels} random labels, so it would have no row there; lower --initial or drop those budgets"
        )

    click.echo(f"input: {choice.backbone} ({choice.reason})")
    try:
        if choice.uses_features:
            project_pool = load_project_features(opened, choice.feature_spec(), device=device or training.device)
        else:
            click.echo(f"loading images at {choice.image_size}x{choice.image_size}x{choice.channels} ...")
            project_pool = load_project_pool(opened, image_size=choice.image_size, channels=choice.channels)
    except (ProjectError, BackboneUnavailable, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    for image_id, reason in list(project_pool.skipped.items())[:5]:
        click.echo(f"skipped image {image_id}: {reason}", err=True)
    labelled = int(project_pool.pool.labelled.sum())
    if labelled < 2:
        raise click.ClickException(f"only {labelled} labelled image(s): label more before evaluating")
    data = evaluation_data(project_pool, opened.settings.name)
    _check_classes(data)
    unlabelled = 0 if data.extra_unlabelled is None else len(data.extra_unlabelled)
    click.echo(f"{len(data.images)} labelled images to split into pool and test, {unlabelled} unlabelled")
    try:
        if workers > 1 and config.seeds > 1:
            result = _evaluate_in_processes(data, config, workers)
        else:
            with TrainingBar() as bar:
                result = evaluate(data, config, on_event=bar.write, on_training=bar.update)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    paths = result.write(json_path)
    click.echo(result.markdown())
    click.echo(f"wrote {paths['json']}, {paths['markdown'].name} and {paths['figure'].name}")


def _check_classes(data: EvaluationData) -> None:
    """Refuse labels of one main class only (as ``labeller train`` does) and a one-main-class taxonomy: its
    main-class accuracy and macro-F1 are a meaningless 100% (they were reported without a word)."""
    taxonomy = data.taxonomy
    leaf_main = taxonomy.main_of_leaf()
    mains_seen = {int(main) for row in data.admissible for main in np.unique(leaf_main[row])}
    if taxonomy.num_main > 1 and len(mains_seen) < 2:
        only = taxonomy.main_names[next(iter(mains_seen))]
        raise click.ClickException(
            f"only one main class ({only!r}) has labels: label images of at least one other main class before "
            "evaluating, or every accuracy is a meaningless 0% or 100%"
        )
    if taxonomy.num_main == 1:
        raise click.ClickException(
            f"the taxonomy has one main class ({taxonomy.main_names[0]!r}): main-class accuracy and macro-F1 "
            "would be 100% by construction, so there is nothing to tell apart; add at least one other main class "
            "(its sub-classes can become main classes) before evaluating"
        )
