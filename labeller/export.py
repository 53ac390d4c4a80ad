"""Exporting current labels: CSV, JSON lines, or an ImageFolder tree (main/sub/file).

Rows are streamed from the database in chunks (``yield_per``; a server-side cursor on PostgreSQL) and
written as they come, so memory stays flat however many images a project has. Files are written under a
temporary name and renamed at the end: an interrupted export leaves no half-written file behind.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.engine import unit_of_work
from db.queries.annotations import CurrentLabel, current_labels
from db.queries.images import images_by_id
from db.schema import ModelVersion
from labeller.project import Project

ExportFormat = Literal["csv", "jsonl", "imagefolder"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("csv", "jsonl", "imagefolder")
TAG_SEPARATOR = ";"
_CHUNK = 1_000


class ExportError(Exception):
    """An export that cannot start (e.g. a non-empty output folder); nothing was written."""


@dataclass(frozen=True)
class ExportRow:
    image_id: int
    sha256: str
    path: str  # absolute, so the export is usable from anywhere
    width: int
    height: int
    main_class: str
    sub_classes: tuple[str, ...]
    annotator: str
    labelled_at: str  # ISO 8601, UTC
    source: str
    model_version_id: int | None
    model_version: str | None
    strategy: str | None
    audit: bool


CSV_COLUMNS = [name for name in ExportRow.__dataclass_fields__]


@dataclass
class ExportSummary:
    rows: int = 0
    linked: int = 0
    copied: int = 0
    missing: list[str] = field(default_factory=list)  # image files no longer where they were imported from


def iter_export_rows(project: Project, *, chunk_size: int = _CHUNK) -> Iterator[ExportRow]:
    """Every labelled image with its current label and provenance, in image id order, streamed."""
    with unit_of_work(project.engine) as session:
        version_names = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())
        chunk: list[CurrentLabel] = []
        for label in current_labels(session):
            chunk.append(label)
            if len(chunk) >= chunk_size:
                yield from _rows(project, session, chunk, version_names)
                chunk = []
        yield from _rows(project, session, chunk, version_names)


def _rows(
    project: Project, session: Session, labels: Sequence[CurrentLabel], version_names: dict[int, str]
) -> Iterator[ExportRow]:
    images = images_by_id(session, (label.image_id for label in labels))
    for label in labels:
        image = images[label.image_id]
        yield ExportRow(
            image_id=image.id,
            sha256=image.sha256,
            path=str(project.resolve_image_path(image.path)),
            width=image.width,
            height=image.height,
            main_class=label.main_class,
            sub_classes=label.tags,
            annotator=label.annotator,
            labelled_at=label.created_at.isoformat(timespec="seconds") + "Z",
            source=label.source,
            model_version_id=label.model_version_id,
            model_version=version_names.get(label.model_version_id) if label.model_version_id else None,
            strategy=label.strategy,
            audit=image.audit,
        )
    session.expunge_all()  # the identity map would otherwise grow with every chunk


@contextmanager
def _atomic_text(target: Path) -> Iterator[IO[str]]:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            yield stream
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _csv_record(row: ExportRow) -> dict[str, object]:
    record = asdict(row)
    record["sub_classes"] = TAG_SEPARATOR.join(row.sub_classes)
    return record


def write_csv(rows: Iterator[ExportRow], stream: IO[str]) -> int:
    writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow(_csv_record(row))
        count += 1
    return count


def export_csv(project: Project, out: Path) -> ExportSummary:
    with _atomic_text(out) as stream:
        return ExportSummary(rows=write_csv(iter_export_rows(project), stream))


def export_jsonl(project: Project, out: Path) -> ExportSummary:
    summary = ExportSummary()
    with _atomic_text(out) as stream:
        for row in iter_export_rows(project):
            stream.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
            summary.rows += 1
    return summary


def safe_folder_name(name: str) -> str:
    """A class name as one folder name: separators replaced, never '.', '..' or hidden."""
    cleaned = name.replace(os.sep, "_").replace("\x00", "_")
    if os.altsep:
        cleaned = cleaned.replace(os.altsep, "_")
    return "_" + cleaned if cleaned.startswith(".") or not cleaned else cleaned


def imagefolder_relative_path(row: ExportRow) -> Path:
    """``main/sub/<name>_<sha8><suffix>``; an image with no tag or several tags (a partial label) goes
    in ``main/`` itself. The hash suffix keeps same-named files from different folders apart."""
    source = Path(row.path)
    folder = Path(safe_folder_name(row.main_class))
    if len(row.sub_classes) == 1:
        folder /= safe_folder_name(row.sub_classes[0])
    return folder / f"{source.stem}_{row.sha256[:8]}{source.suffix.lower()}"


def export_imagefolder(project: Project, out: Path, *, link: bool = True) -> ExportSummary:
    """Hard-link (or copy, across file systems or when ``link`` is False) each labelled image into
    ``out/main/sub/``, with ``out/labels.csv`` describing every file."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder: choose a new --out")
    out.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary()
    placed: dict[int, str] = {}

    def rows_with_files() -> Iterator[ExportRow]:
        for row in iter_export_rows(project):
            relative = imagefolder_relative_path(row)
            outcome = _place(Path(row.path), out / relative, link=link)
            if outcome is None:
                summary.missing.append(row.path)
            else:
                placed[row.image_id] = str(relative)
                summary.linked += outcome == "linked"
                summary.copied += outcome == "copied"
            yield row

    with _atomic_text(out / "labels.csv") as stream:
        summary.rows = _write_csv_with_files(rows_with_files(), stream, placed)
    return summary


def _write_csv_with_files(rows: Iterator[ExportRow], stream: IO[str], placed: dict[int, str]) -> int:
    writer = csv.DictWriter(stream, fieldnames=[*CSV_COLUMNS, "exported_file"])
    writer.writeheader()
    count = 0
    for row in rows:
        record = _csv_record(row)
        record["exported_file"] = placed.pop(row.image_id, "")
        writer.writerow(record)
        count += 1
    return count


def _place(source: Path, target: Path, *, link: bool) -> Literal["linked", "copied"] | None:
    if not source.is_file():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, target)
            return "linked"
        except OSError:
            pass  # another file system, or links not allowed: copy instead
    shutil.copy2(source, target)
    return "copied"


def export_labels(project: Project, format: ExportFormat, out: Path, *, link: bool = True) -> ExportSummary:
    if format == "csv":
        return export_csv(project, out)
    if format == "jsonl":
        return export_jsonl(project, out)
    if format == "imagefolder":
        return export_imagefolder(project, out, link=link)
    raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
