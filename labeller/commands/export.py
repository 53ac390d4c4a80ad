"""``labeller export``: labels with tags and provenance (and, when asked, predictions) in the formats
other tools read; see ``labeller.export``."""

from __future__ import annotations

from pathlib import Path

import click

from labeller.commands.project import ROW_ID, load_project
from labeller.export import (
    EXPORT_FORMATS,
    FOLDER_FORMATS,
    HF_LAYOUTS,
    TAG_SEPARATOR,
    ExportError,
    ExportOptions,
    export_labels,
)


@click.command("export")
@click.argument("project", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS), default="csv", show_default=True)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help=f"Output file (csv, jsonl, coco) or new folder ({', '.join(sorted(FOLDER_FORMATS))}).",
)
@click.option(
    "--relative-to",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write image paths relative to this folder [default: the folder the export lies in].",
)
@click.option("--absolute-paths", is_flag=True, help="Write absolute image paths instead.")
@click.option(
    "--predictions",
    is_flag=True,
    help="Add the model's predicted main class and leaf, every probability and the uncertainty scores.",
)
@click.option("--model-version", type=ROW_ID, help="With --predictions: this version instead of the active one.")
@click.option("--include-unlabelled", is_flag=True, help="Export the unlabelled images too.")
@click.option("--layout", type=click.Choice(HF_LAYOUTS), default="main", show_default=True, help="hf: folders.")
@click.option("--url-prefix", default="", help="labelstudio: prepended to each image's relative path.")
@click.option("--tag-separator", default=TAG_SEPARATOR, show_default=True, help="csv: joins sub-class tags.")
@click.option("--copy", is_flag=True, help="Folder formats: copy files instead of hard-linking them.")
def export_command(
    project: Path,
    export_format: str,
    out: Path,
    relative_to: Path | None,
    absolute_paths: bool,
    predictions: bool,
    model_version: int | None,
    include_unlabelled: bool,
    layout: str,
    url_prefix: str,
    tag_separator: str,
    copy: bool,
) -> None:
    """Export the labelled images of PROJECT: main class, leaf, sub-class tags, annotator, time, and the
    model version and strategy that queued each one. Image paths are relative unless --absolute-paths."""
    opened = load_project(project)
    options = ExportOptions(
        relative_to=relative_to,
        absolute_paths=absolute_paths,
        predictions=predictions,
        model_version_id=model_version,
        include_unlabelled=include_unlabelled,
        link=not copy,
        layout=layout,  # type: ignore[arg-type]
        url_prefix=url_prefix,
        tag_separator=tag_separator,
    )
    try:
        summary = export_labels(opened, export_format, out, options)  # type: ignore[arg-type]
    except ExportError as error:
        raise click.ClickException(str(error)) from error
    unlabelled = f" and {summary.rows - summary.labelled} unlabelled" if include_unlabelled else ""
    message = f"exported {summary.labelled} labelled{unlabelled} images to {out}"
    if summary.linked or summary.copied or summary.missing:
        message += f" ({summary.linked} hard-linked, {summary.copied} copied, {len(summary.missing)} missing)"
    click.echo(message)
    for path in summary.missing[:20]:
        click.echo(f"  missing: {path}", err=True)
