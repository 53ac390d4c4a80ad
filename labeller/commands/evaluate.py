"""``labeller evaluate``: simulate labelling on a project's labelled images and measure label efficiency.

The JSON schema is documented in ``core.evaluate``; a markdown table (.md) and a plotly learning-curve
figure (.html) are written beside the JSON.
"""

from __future__ import annotations

from pathlib import Path

import click

from core.acquisition import COVERAGE_METHODS
from core.evaluate import INITIAL_SELECTIONS
from labeller.commands.project import load_project


def _csv(kind: type, value: str) -> tuple:
    try:
        items = tuple(kind(item.strip()) for item in value.split(",") if item.strip())
    except ValueError as error:
        raise click.BadParameter(f"{value!r}: {error}") from error
    return items


@click.command("evaluate")
@click.argument("project", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--budgets", default="20,50,100", show_default=True, help="Label budgets, comma-separated.")
@click.option("--strategies", default="random,entropy", show_default=True, help="Query strategies.")
@click.option("--models", default="m2,m1m2,supervised", show_default=True, help="m1, m2, m1m2, supervised.")
@click.option(
    "--baselines",
    default="label_spreading",
    show_default=True,
    help="scikit-learn baselines on pixels: label_spreading, logistic_regression; '' for none.",
)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--test-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3, show_default=True
)
@click.option(
    "--initial",
    "initial_labels",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Random labels before the first active round.",
)
@click.option("--round-size", type=click.IntRange(min=1), default=5, show_default=True, help="Labels per active round.")
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
    default=False,
    show_default=True,
    help="k-centre diversification of each active round in latent space.",
)
@click.option(
    "--exploration",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of each active round chosen for coverage instead of uncertainty (0.2 measured best).",
)
@click.option(
    "--coverage",
    type=click.Choice(COVERAGE_METHODS),
    default="typical",
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
    models: str,
    baselines: str,
    seeds: int,
    test_fraction: float,
    initial_labels: int,
    round_size: int,
    initial_selection: str,
    diversify: bool,
    exploration: float,
    coverage: str,
    epochs: int | None,
    warm_epochs: int | None,
    image_size: int | None,
    channels: str | None,
    device: str | None,
    json_path: Path,
) -> None:
    """Simulate labelling PROJECT's labelled images: for every model, strategy and budget, test accuracy
    (main class, leaf, macro-F1) as mean and std over seeds, with scikit-learn baselines."""
    from core.evaluate import EvaluationConfig, evaluate
    from labeller.project import ProjectError
    from labeller.training_data import evaluation_data, load_project_pool

    opened = load_project(project)
    training = opened.settings.training
    config = EvaluationConfig(
        budgets=_csv(int, budgets),
        strategies=_csv(str, strategies),
        models=_csv(str, models),
        baselines=_csv(str, baselines),
        seeds=seeds,
        test_fraction=test_fraction,
        initial_labels=initial_labels,
        round_size=round_size,
        initial_selection=initial_selection,
        diversify=diversify,
        exploration=exploration,
        coverage=coverage,
        warm_start=warm_epochs is not None,
        warm_epochs=warm_epochs,
        train={
            "epochs": epochs or training.epochs,
            "batch_size": training.batch_size,
            "consistency": training.consistency,
            "balance": training.balance,
            "classifier": training.classifier,
            "device": device or training.device,
        },
    )
    try:
        config.validate()
    except ValueError as error:
        raise click.UsageError(str(error)) from error

    size = image_size or training.image_size
    num_channels = int(channels) if channels else training.channels
    click.echo(f"loading images at {size}x{size}x{num_channels} ...")
    try:
        project_pool = load_project_pool(opened, image_size=size, channels=num_channels)
    except ProjectError as error:
        raise click.ClickException(str(error)) from error
    for image_id, reason in list(project_pool.skipped.items())[:5]:
        click.echo(f"skipped image {image_id}: {reason}", err=True)
    data = evaluation_data(project_pool, opened.settings.name)
    if len(data.images) < 2:
        raise click.ClickException(f"only {len(data.images)} labelled image(s): label more before evaluating")
    unlabelled = 0 if data.extra_unlabelled is None else len(data.extra_unlabelled)
    click.echo(f"{len(data.images)} labelled images to split into pool and test, {unlabelled} unlabelled")
    try:
        result = evaluate(data, config, on_event=click.echo)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    paths = result.write(json_path)
    click.echo(result.markdown())
    click.echo(f"wrote {paths['json']}, {paths['markdown'].name} and {paths['figure'].name}")
