"""``labeller models``: list, compare, promote and roll back model versions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from db.engine import unit_of_work
from db.queries import jobs as job_queries
from db.queries import models as model_queries
from db.queries.audit import MIN_AUDIT_LABELS
from db.queries.models import ModelVersionError
from labeller.commands.project import ROW_ID, load_project
from labeller.promotion import audit_summary, held_out_text

# audit_interval_95 is worked out from the two before it (Wilson), not stored.
HEADLINE_METRICS = (
    "audit_main_accuracy",
    "audit_count",
    "audit_interval_95",
    "val_main_accuracy",
    "val_ece",
    "num_val_labels",  # what the ECE (and the temperature) rest on
)
FEW = "*"  # marks an audit interval on fewer than MIN_AUDIT_LABELS labels


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _headline(metrics: dict[str, Any], key: str) -> str:
    if key != "audit_interval_95":
        return _number(metrics.get(key))
    summary = audit_summary(metrics)
    if summary is None:
        return "-"
    low, high = summary["interval"]
    return f"{low:.3f}-{high:.3f}{'' if summary['enough'] else FEW}"


@click.group("models", invoke_without_command=True)
@click.argument("project", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.pass_context
def models_command(context: click.Context, project: Path) -> None:
    """Model versions: list (default), compare A B, promote ID, rollback."""
    context.obj = load_project(project)
    if context.invoked_subcommand is None:
        context.invoke(list_command)


@models_command.command("list")
@click.pass_obj
def list_command(project) -> None:
    """Newest first; * marks the active version."""
    with unit_of_work(project.engine) as session:
        versions = model_queries.list_model_versions(session)
        if not versions:
            click.echo("no model versions yet: labeller train PROJECT")
            return
        click.echo(
            f"  {'id':>4}  {'kind':<10} {'labels':>6}  "
            + "  ".join(f"{m:>19}" for m in HEADLINE_METRICS)
            + f"  {'created (UTC)':<16}"
        )
        for version in versions:
            metrics = version.metrics or {}
            click.echo(
                f"{'*' if version.active else ' '} {version.id:>4}  {version.model_kind:<10} {version.label_count:>6}  "
                + "  ".join(f"{_headline(metrics, m):>19}" for m in HEADLINE_METRICS)
                + f"  {version.created_at:%Y-%m-%d %H:%M}"
            )
        if any((summary := audit_summary(v.metrics or {})) and not summary["enough"] for v in versions):
            click.echo(f"{FEW} fewer than {MIN_AUDIT_LABELS} audit labels: too few to compare versions by")


@models_command.command("compare")
@click.argument("first", type=ROW_ID)
@click.argument("second", type=ROW_ID)
@click.option("--json", "as_json", is_flag=True, help="Print the whole comparison as JSON.")
@click.pass_obj
def compare_command(project, first: int, second: int, as_json: bool) -> None:
    """Metrics side by side (B - A), label counts, B vs A on the same held-out labels (a paired test on
    their stored predictions), and the config and data entries that differ."""
    try:
        with unit_of_work(project.engine) as session:
            comparison = model_queries.compare_model_versions(session, first, second)
    except ModelVersionError as error:
        raise click.ClickException(str(error)) from error
    if as_json:
        click.echo(json.dumps(comparison, indent=2, default=str))
        return
    from labeller.app.services.train_report import snapshot_list_text  # plain functions, no Streamlit

    click.echo(f"{'':<32} {'A = ' + str(first):>12} {'B = ' + str(second):>12} {'B - A':>10}")
    click.echo(f"{'labels':<32} {comparison['label_count']['a']:>12} {comparison['label_count']['b']:>12}")
    long_text = []
    for key, row in comparison["metrics"].items():
        values = (row["a"], row["b"])
        if any(isinstance(v, dict | list) for v in values):
            continue
        if any(isinstance(v, str) and len(v) > 12 for v in values):
            long_text.append((key, row))
            continue
        click.echo(f"{key:<32} {_number(row['a']):>12} {_number(row['b']):>12} {_number(row['difference']):>10}")
    for key, row in long_text:
        click.echo(f"\n{key}:\n  A: {row['a']}\n  B: {row['b']}")
    click.echo(f"\nsame held-out labels: {held_out_text(comparison['held_out'])}")
    for title in ("config_differences", "data_snapshot_differences"):
        if comparison[title]:
            click.echo(f"\n{title.replace('_', ' ')}:")
            for key, row in comparison[title].items():
                a, b = row["a"], row["b"]
                if title == "data_snapshot_differences":  # a list (trained_image_ids) by its length
                    a_text = snapshot_list_text(key, a) or repr(a)
                    b_text = snapshot_list_text(key, b, a) or repr(b)
                else:
                    a_text, b_text = repr(a), repr(b)
                click.echo(f"  {key}: {a_text} -> {b_text}")


def _ensure_scored(session, version_id: int) -> str:
    """The queue reads a version's predictions: queue a score job when it has none."""
    job = job_queries.queue_scoring_if_missing(session, version_id)
    return f"; it has no predictions yet, so score job {job.id} is queued" if job else ""


@models_command.command("promote")
@click.argument("version_id", type=ROW_ID)
@click.pass_obj
def promote_command(project, version_id: int) -> None:
    """Make a version the active one (the one the labelling queue ranks by)."""
    try:
        with unit_of_work(project.engine) as session:
            job = job_queries.promote_when_scored(session, version_id)
    except ModelVersionError as error:
        raise click.ClickException(str(error)) from error
    if job is None:
        click.echo(f"model version {version_id} is active")
    else:
        click.echo(
            f"model version {version_id} has no predictions yet: score job {job.id} is queued and promotes it "
            "once they are written (the active version serves the queue until then)"
        )


@models_command.command("rollback")
@click.pass_obj
def rollback_command(project) -> None:
    """Re-activate the version that was promoted before the active one."""
    try:
        with unit_of_work(project.engine) as session:
            version = model_queries.rollback_model_version(session)
            note = _ensure_scored(session, version.id)
    except ModelVersionError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"rolled back: model version {version.id} is active{note}")
