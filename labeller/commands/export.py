"""``labeller export``: current labels with tags and provenance, as CSV, JSON lines or an ImageFolder tree."""

from __future__ import annotations

from pathlib import Path

import click

from labeller.commands.project import load_project
from labeller.export import EXPORT_FORMATS, ExportError, export_labels


@click.command("export")
@click.argument("project", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS), default="csv", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output file (csv, jsonl) or folder.")
@click.option("--copy", is_flag=True, help="imagefolder: copy files instead of hard-linking them.")
def export_command(project: Path, export_format: str, out: Path, copy: bool) -> None:
    """Export every labelled image of PROJECT: main class, sub-class tags, annotator, time, and the model
    version and strategy that queued it. Streamed, so a million images export in constant memory."""
    opened = load_project(project)
    try:
        summary = export_labels(opened, export_format, out, link=not copy)  # type: ignore[arg-type]
    except ExportError as error:
        raise click.ClickException(str(error)) from error
    message = f"exported {summary.rows} labelled images to {out}"
    if export_format == "imagefolder":
        message += f" ({summary.linked} hard-linked, {summary.copied} copied, {len(summary.missing)} missing)"
    click.echo(message)
    for path in summary.missing[:20]:
        click.echo(f"  missing: {path}", err=True)
