"""``labeller import``: add image files to a project, optionally with pre-labels."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import click

from labeller import recheck
from labeller.commands.project import load_project
from labeller.export import EXPORT_FORMATS, TAG_SEPARATOR
from labeller.ingest import ImportDiskFull, ImportOptions, ImportReport, IngestError, import_images
from labeller.manifest import ManifestOptions, read_manifest
from labeller.recheck import RecheckReport

SKIPPED_LINES_SHOWN = 20  # per reason; the rest are counted


@click.command("import")
@click.argument("project", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--labels-from-folders",
    is_flag=True,
    help="Pre-label from an ImageFolder layout: PATH/main/sub/file (main + sub-class) or PATH/main/file.",
)
@click.option(
    "--manifest",
    type=click.Path(exists=True, path_type=Path),
    help="Labels to import with their images: a CSV with a header path,class,tags (class: main or main/sub), "
    "or any `labeller export` output (csv, jsonl, coco or Label Studio JSON, an imagefolder, hf or fiftyone folder).",
)
@click.option("--manifest-format", type=click.Choice(EXPORT_FORMATS), help="The manifest's format [default: detected].")
@click.option("--tag-separator", default=TAG_SEPARATOR, show_default=True, help="Manifest: splits sub-class tags.")
@click.option("--create-classes", is_flag=True, help="Add unknown class names from folders or the manifest.")
@click.option("--annotator", default="import", show_default=True, help="Whose name the pre-labels carry.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--recheck-unreadable",
    is_flag=True,
    help="Re-open every image marked unreadable (file missing or no image) and clear the marks of those whose "
    "file is back, so the Label page serves them again. Needs no PATH.",
)
def import_command(
    project: Path,
    paths: tuple[Path, ...],
    labels_from_folders: bool,
    manifest: Path | None,
    manifest_format: str | None,
    tag_separator: str,
    create_classes: bool,
    annotator: str,
    no_progress: bool,
    recheck_unreadable: bool,
) -> None:
    """Import images (jpg, png, webp, bmp, tiff, gif) from files and folders (recursively) into PROJECT.

    Files already in the project (same content) are counted as duplicates, so re-running adds nothing twice.
    Unusable files are skipped and listed with the reason.
    """
    if not paths and manifest is None and not recheck_unreadable:
        raise click.UsageError("give at least one PATH or --manifest FILE.csv (or --recheck-unreadable)")
    opened = load_project(project)
    if recheck_unreadable:
        print_recheck(recheck.recheck_unreadable(opened))
        if not paths and manifest is None:
            return
    options = ImportOptions(
        labels_from_folders=labels_from_folders,
        create_classes=create_classes,
        annotator=annotator,
        progress=not no_progress,
    )
    try:
        parsed = None
        if manifest is not None:
            parsed = read_manifest(manifest, ManifestOptions(tag_separator=tag_separator, format=manifest_format))  # type: ignore[arg-type]
        report = import_images(opened, paths, manifest=parsed, options=options)
    except IngestError as error:
        raise click.ClickException(f"{error}\nnothing was imported") from error
    except ImportDiskFull as error:  # the database stays as it was after the last whole batch
        raise click.ClickException(str(error)) from error
    print_report(report)


def print_by_reason(what: str, items: Iterable[tuple[str, str]]) -> None:
    """(path, reason) pairs on stderr, grouped by reason (commonest first), a few paths each."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for path, reason in items:
        by_reason[reason].append(path)
    for reason, paths in sorted(by_reason.items(), key=lambda pair: -len(pair[1])):
        click.echo(f"{what} {len(paths)}: {reason}", err=True)
        for path in paths[:SKIPPED_LINES_SHOWN]:
            click.echo(f"  {path}", err=True)
        if len(paths) > SKIPPED_LINES_SHOWN:
            click.echo(f"  ... and {len(paths) - SKIPPED_LINES_SHOWN} more", err=True)


def print_recheck(report: RecheckReport) -> None:
    print_by_reason("still unreadable", ((still.path, still.reason) for still in report.still))
    click.echo(
        f"re-checked {report.checked} image(s) marked unreadable: {report.cleared} readable again (mark cleared), "
        f"{len(report.still)} still unreadable"
    )


def print_report(report: ImportReport) -> None:
    print_by_reason("skipped", ((skipped.path, skipped.reason) for skipped in report.skipped))
    click.echo(
        f"added {report.added}, duplicates {report.duplicates}, skipped {len(report.skipped)}, "
        f"pre-labelled {report.labelled} ({report.seconds:.1f} s, {report.images_per_second:.0f} images/s)"
    )
    if report.unreadable_cleared:
        click.echo(f"{report.unreadable_cleared} image(s) marked unreadable are readable again: marks cleared")
