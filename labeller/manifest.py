"""Reading label manifests: every format ``labeller export`` writes (``labeller.export.EXPORT_FORMATS``),
plain ``path,class,tags`` CSVs, and the same formats written by other tools (FiftyOne's CSV, COCO,
Label Studio, Hugging Face ``metadata.csv``).

A row that carries its annotator or time (the tool's own exports do) is recorded with them, so that
export -> fresh project -> export gives the same labels, tags, annotators and times. A plain row is a
pre-label from ``ImportOptions.annotator``, as before. A manifest whose label columns are not recognised
is an error: importing it as unlabelled images would lose every label without a word.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from db.engine import unit_of_work
from db.queries.annotators import get_or_create_annotator
from db.queries.exports import image_ids_by_path, record_imported_label
from db.queries.images import image_ids_by_sha, images_with_current_annotation
from db.schema import AnnotationSource
from labeller.export import (
    FIFTYONE_DATA,
    FIFTYONE_LABELS,
    HF_METADATA,
    IMAGEFOLDER_LABELS,
    LABELSTUDIO_TASKS,
    TAG_SEPARATOR,
    ExportFormat,
    unescape_cell,
)
from labeller.files import FileRefused, hash_file, read_regular
from labeller.ingest import ImportItem, ImportOptions, IngestError, PreLabel, ResolvedLabel, Skipped, resolve_labels
from labeller.project import Project

# Column names read, best first. "file" and "name" are not path columns: too often something else.
PATH_COLUMNS = ("exported_file", "file_name", "path", "filepath")
MAIN_COLUMNS = ("main_class", "class", "label", "ground_truth")
TAG_COLUMNS = ("sub_classes", "tags")
LEAF_COLUMNS = ("leaf",)
LABEL_COLUMNS = (*MAIN_COLUMNS, *TAG_COLUMNS, *LEAF_COLUMNS)
IMPORT_SOURCE = AnnotationSource.IMPORT
# Far above any real manifest (a million CSV rows is about 100 MB), far below what fills the memory.
MAX_MANIFEST_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class ManifestOptions:
    tag_separator: str = TAG_SEPARATOR  # FiftyOne's CSV joins tags with ","
    format: ExportFormat | None = None  # None: detected from the name and content


@dataclass(frozen=True)
class ManifestEntry:
    path: Path
    main: str | None
    tags: tuple[str, ...]
    origin: str  # for messages: "labels.csv line 7"
    annotator: str | None = None
    labelled_at: datetime | None = None
    source: str | None = None
    strategy: str | None = None

    @property
    def recorded(self) -> bool:
        """Carries its own provenance: recorded as it was, not as a pre-label from this import."""
        return self.main is not None and (self.annotator is not None or self.labelled_at is not None)


@dataclass
class Manifest:
    path: Path
    format: ExportFormat
    entries: list[ManifestEntry]
    skipped: list[Skipped] = field(default_factory=list)
    _pending: list[tuple[ManifestEntry, ResolvedLabel]] = field(default_factory=list)

    def prepare(self, project: Project, options: ImportOptions) -> tuple[list[ImportItem], list[Skipped]]:
        """Items for the file import. Plain rows carry pre-labels; recorded rows are resolved against the
        taxonomy here (an unknown class skips the row, as for pre-labels) and written by
        :meth:`record_labels` once their images exist."""
        items: list[ImportItem] = []
        recorded: list[ImportItem] = []
        entry_of: dict[int, ManifestEntry] = {}
        entries, conflicts = _drop_conflicts(self.entries, set() if options.create_classes else self._unknown(project))
        for entry in entries:
            label = PreLabel(entry.main, entry.tags) if entry.main else None
            item = ImportItem(entry.path, label, origin=entry.origin)
            if entry.recorded:
                entry_of[id(item)] = entry
                recorded.append(item)
            else:
                items.append(item)
        kept, skipped = resolve_labels(project, recorded, create_classes=options.create_classes)
        self._pending = [(entry_of[id(item)], label) for item, label in kept if label is not None]
        items += [ImportItem(item.path, None, origin=item.origin) for item, _ in kept]
        return items, [*self.skipped, *conflicts, *skipped]

    def _unknown(self, project: Project) -> set[int]:
        """The rows (by ``id``) whose label names a class the taxonomy lacks."""
        labelled = [entry for entry in self.entries if entry.main]
        items = [ImportItem(entry.path, PreLabel(entry.main, entry.tags), origin=entry.origin) for entry in labelled]
        known, _ = resolve_labels(project, items, create_classes=False)
        known_ids = {id(item) for item, _ in known}
        return {id(entry) for entry, item in zip(labelled, items, strict=True) if id(item) not in known_ids}

    def record_labels(self, project: Project) -> int:
        """Write the recorded labels on images nobody has decided on yet; returns how many."""
        if not self._pending:
            return 0
        stored = {id(entry): project.stored_image_path(entry.path.absolute()) for entry, _ in self._pending}
        written = 0
        with unit_of_work(project.engine) as session:
            by_path = image_ids_by_path(session, stored.values())
            unmatched = [entry for entry, _ in self._pending if stored[id(entry)] not in by_path]
            # Same content already imported from elsewhere: find it by hash.
            hashes = {id(entry): _sha256(entry.path) for entry in unmatched}
            by_sha = image_ids_by_sha(session, (sha for sha in hashes.values() if sha))
            targets: list[tuple[int, ManifestEntry, ResolvedLabel]] = []
            for entry, label in self._pending:
                image_id = by_path.get(stored[id(entry)]) or by_sha.get(hashes.get(id(entry)) or "")
                if image_id is not None:
                    targets.append((image_id, entry, label))
            decided = images_with_current_annotation(session, (image_id for image_id, _, _ in targets))
            annotators: dict[str, int] = {}
            for image_id, entry, label in targets:
                if image_id in decided:
                    continue
                name = entry.annotator or IMPORT_SOURCE
                if name not in annotators:
                    annotators[name] = get_or_create_annotator(session, name).id
                record_imported_label(
                    session,
                    image_id=image_id,
                    annotator_id=annotators[name],
                    main_class_id=label.main_class_id,
                    sub_class_ids=label.sub_class_ids,
                    created_at=entry.labelled_at,
                    source=imported_source(entry.source),
                    strategy=entry.strategy,
                )
                decided.add(image_id)
                written += 1
        self._pending = []
        return written


def imported_source(value: str | None) -> AnnotationSource:
    """The source an imported label records: the one its row names when that is one of ours (an export of
    this tool: export -> import keeps it), "import" otherwise."""
    source = AnnotationSource.parse(value)
    return source if source.value == value else IMPORT_SOURCE


def _sha256(path: Path) -> str | None:
    try:  # streamed, regular files only: a row naming /dev/zero or a FIFO must not hang or fill the memory
        return hash_file(path)[0]
    except FileRefused:
        return None


# --- detection ---------------------------------------------------------------------------------------


def detect_format(path: Path) -> tuple[ExportFormat, Path]:
    """The format of ``path`` and the file to read (a folder export names its manifest file)."""
    if path.is_dir():
        for name, format in (
            (FIFTYONE_LABELS, "fiftyone"),
            (LABELSTUDIO_TASKS, "labelstudio"),
            (HF_METADATA, "hf"),
            (IMAGEFOLDER_LABELS, "imagefolder"),
        ):
            if (path / name).is_file():
                return format, path / name  # type: ignore[return-value]
        raise IngestError(
            f"{path}: no {FIFTYONE_LABELS}, {LABELSTUDIO_TASKS}, {HF_METADATA} or {IMAGEFOLDER_LABELS} in this folder"
        )
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "jsonl", path
    if suffix == ".json":
        document = _read_json(path)
        if isinstance(document, list):
            return "labelstudio", path
        if isinstance(document, dict) and "images" in document and "categories" in document:
            return "coco", path
        if isinstance(document, dict) and isinstance(document.get("labels"), dict):
            return "fiftyone", path
        raise IngestError(f"{path}: not a COCO, Label Studio or FiftyOne labels file")
    if path.name == HF_METADATA:
        return "hf", path
    return "csv", path


def read_manifest(manifest: Path | Manifest, options: ManifestOptions = ManifestOptions()) -> Manifest:
    """Parse a manifest (any supported format; see the module docstring). A parsed one is returned as is."""
    if isinstance(manifest, Manifest):
        return manifest
    path = Path(manifest)
    if not path.exists():
        raise IngestError(f"cannot read the manifest {path}: no such file or folder")
    detected, file = detect_format(path)
    format = options.format or detected
    if format in ("csv", "hf", "imagefolder"):
        entries, skipped = _read_csv(file, options)
    elif format == "jsonl":
        entries, skipped = _read_jsonl(file, options)
    elif format == "coco":
        entries, skipped = _read_coco(file)
    elif format == "labelstudio":
        entries, skipped = _read_labelstudio(file if file.suffix == ".json" else file / LABELSTUDIO_TASKS)
    else:
        entries, skipped = _read_fiftyone(file)
    return Manifest(file, format, entries, skipped)


def _drop_conflicts(entries: Sequence[ManifestEntry], ignore: set[int]) -> tuple[list[ManifestEntry], list[Skipped]]:
    """Rows that give one file (for one annotator) different labels: each is reported, and the file is
    imported once without a label from them. Identical repeated rows are kept once. Rows in ``ignore``
    (by ``id``: labels the taxonomy does not know, reported on their own) take no part."""
    groups: dict[tuple[str, str | None], list[ManifestEntry]] = {}
    kept: list[ManifestEntry] = [entry for entry in entries if id(entry) in ignore]
    for entry in entries:
        if id(entry) in ignore:
            continue
        groups.setdefault((os.path.normpath(entry.path.absolute()), entry.annotator), []).append(entry)
    reported: list[Skipped] = []
    for group in groups.values():
        labels = {(entry.main, tuple(sorted(entry.tags))) for entry in group}
        if len(labels) == 1:
            kept.append(group[0])
            continue
        described = "; ".join(
            f"{entry.origin.rsplit(': ', 1)[0]} says {entry.main or '(no class)'}"
            + (f" [{', '.join(entry.tags)}]" if entry.tags else "")
            for entry in group
        )
        for entry in group:
            reported.append(
                Skipped(entry.origin, f"conflicting labels ({described}): none applied, file imported unlabelled")
            )
        first = group[0]
        kept.append(ManifestEntry(first.path, None, (), first.origin))
    return kept, reported


# --- rows as mappings (CSV, JSON lines) --------------------------------------------------------------


def _read_text(path: Path) -> str:
    """The manifest's text: a regular file of at most MAX_MANIFEST_BYTES (--manifest /dev/zero reached 11.7 GB
    of memory in 20 s, and a FIFO hung the import)."""
    try:
        text = read_regular(path, max_bytes=MAX_MANIFEST_BYTES).decode("utf-8-sig")
        return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text mode reads
    except FileRefused as error:
        raise IngestError(f"cannot read the manifest {path}: {error.reason}") from error
    except UnicodeDecodeError as error:
        raise IngestError(f"cannot read the manifest {path}: {error}") from error


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as error:
        raise IngestError(f"{path}: not valid JSON ({error})") from error


def _check_columns(manifest: Path, columns: Iterable[str]) -> None:
    names = {name.strip().lower() for name in columns}
    if not names & set(PATH_COLUMNS):
        raise IngestError(
            f"{manifest}: the first line must be a header with a 'path' column (path,class,tags); "
            f"found {', '.join(sorted(names)) or 'nothing'}"
        )
    unknown = names - set(PATH_COLUMNS) - set(LABEL_COLUMNS) - _KNOWN_OTHER_COLUMNS
    if unknown and not names & set(LABEL_COLUMNS):
        raise IngestError(
            f"{manifest}: no label column recognised among {', '.join(sorted(unknown))}; "
            f"name the main class {' or '.join(MAIN_COLUMNS)} and the sub-classes {' or '.join(TAG_COLUMNS)}"
        )


# Columns our exports write that carry no label: a manifest of only these is a plain list of files.
_KNOWN_OTHER_COLUMNS = {
    "image_id",
    "sha256",
    "width",
    "height",
    "annotator",
    "labelled_at",
    "source",
    "model_version_id",
    "model_version",
    "strategy",
    "audit",
}


def _read_csv(manifest: Path, options: ManifestOptions) -> tuple[list[ManifestEntry], list[Skipped]]:
    reader = csv.DictReader(io.StringIO(_read_text(manifest)))
    if reader.fieldnames is None:
        raise IngestError(f"{manifest}: the first line must be a header with a 'path' column (path,class,tags)")
    _check_columns(manifest, reader.fieldnames)
    entries: list[ManifestEntry] = []
    skipped: list[Skipped] = []
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as error:  # e.g. a field over csv's 128 KiB limit: the rest cannot be read reliably
            raise IngestError(
                f"{manifest}: the CSV record after line {reader.line_num} cannot be read ({error})"
            ) from error
        where = f"{manifest.name} line {reader.line_num}"
        cleaned = {(key or "").strip().lower(): value for key, value in row.items() if isinstance(value, str)}
        # Names our CSV exports escaped for spreadsheets come back as they were; paths were never quoted.
        cleaned = {key: value if key in PATH_COLUMNS else unescape_cell(value) for key, value in cleaned.items()}
        _entry(manifest, cleaned, where, options, entries, skipped)
    return entries, skipped


def _read_jsonl(manifest: Path, options: ManifestOptions) -> tuple[list[ManifestEntry], list[Skipped]]:
    entries: list[ManifestEntry] = []
    skipped: list[Skipped] = []
    checked = False
    for number, line in enumerate(_read_text(manifest).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{manifest.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            skipped.append(Skipped(where, f"not valid JSON: {error}"))
            continue
        if not isinstance(record, dict):
            skipped.append(Skipped(where, "not a JSON object"))
            continue
        if not checked:
            _check_columns(manifest, record)
            checked = True
        _entry(manifest, {key.lower(): value for key, value in record.items()}, where, options, entries, skipped)
    return entries, skipped


def _first(row: Mapping[str, Any], names: Sequence[str]) -> Any:
    for name in names:
        value = row.get(name)
        if value not in (None, "", []):
            return value
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def parse_tags(value: Any, separator: str) -> tuple[str, ...]:
    """A list, a JSON list (``["red", "black"]``, as the hf export writes), or text split by ``separator``."""
    if value is None:
        return ()
    if isinstance(value, str) and value.strip().startswith("["):
        with contextlib.suppress(json.JSONDecodeError):  # a tag that starts with "[": split it as text
            value = json.loads(value)
    if isinstance(value, list):
        return tuple(str(tag).strip() for tag in value if str(tag).strip())
    return tuple(tag.strip() for tag in str(value).split(separator) if tag.strip())


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 (``Z`` or an offset: converted to UTC; none: taken as UTC), as a naive UTC datetime."""
    text = _text(value)
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _entry(
    manifest: Path,
    row: Mapping[str, Any],
    where: str,
    options: ManifestOptions,
    entries: list[ManifestEntry],
    skipped: list[Skipped],
) -> None:
    raw_path = _text(_first(row, PATH_COLUMNS))
    if raw_path is None:
        skipped.append(Skipped(where, "manifest row without a path"))
        return
    path = Path(raw_path).expanduser()
    path = path if path.is_absolute() else manifest.parent / path
    main_value = _text(_first(row, MAIN_COLUMNS))
    leaf_value = _text(_first(row, LEAF_COLUMNS))
    main, _, sub = (main_value or leaf_value or "").partition("/")
    tags = parse_tags(_first(row, TAG_COLUMNS), options.tag_separator)
    if not tags and leaf_value and "/" in leaf_value:
        sub = sub or leaf_value.partition("/")[2]
    if sub:
        tags = (sub, *(tag for tag in tags if tag != sub))
    origin = f"{where}: {path}"
    if tags and not main:
        skipped.append(Skipped(origin, "tags given without a class"))
        return
    entries.append(
        ManifestEntry(
            path=path,
            main=main or None,
            tags=tags,
            origin=origin,
            annotator=_text(row.get("annotator")),
            labelled_at=parse_time(row.get("labelled_at")),
            source=_text(row.get("source")),
            strategy=_text(row.get("strategy")),
        )
    )


# --- documents (COCO, Label Studio, FiftyOne) ----------------------------------------------------------


def _read_coco(manifest: Path) -> tuple[list[ManifestEntry], list[Skipped]]:
    document = _read_json(manifest)
    categories = {category["id"]: category for category in document.get("categories", [])}
    first_annotation: dict[Any, dict[str, Any]] = {}
    for annotation in document.get("annotations", []):
        first_annotation.setdefault(annotation.get("image_id"), annotation)
    entries: list[ManifestEntry] = []
    skipped: list[Skipped] = []
    for number, image in enumerate(document.get("images", []), start=1):
        where = f"{manifest.name} image {number}"
        annotation = first_annotation.get(image.get("id"))
        row: dict[str, Any] = {"path": image.get("file_name")}
        if annotation is not None:
            category = categories.get(annotation.get("category_id"), {})
            name, parent = category.get("name"), category.get("supercategory")
            # Ours name the main class and sub-classes outright (a partial label has several tags).
            row.update(annotation)
            if "main_class" not in annotation:
                if parent and parent != name:
                    row.update(main_class=parent, sub_classes=[name])
                else:
                    row.update(main_class=name)
            if row.get("main_class") is None:
                skipped.append(Skipped(where, f"annotation names no known category ({annotation.get('category_id')})"))
                continue
        _entry(manifest, row, where, ManifestOptions(), entries, skipped)
    return entries, skipped


def _read_labelstudio(manifest: Path) -> tuple[list[ManifestEntry], list[Skipped]]:
    tasks = _read_json(manifest)
    if not isinstance(tasks, list):
        raise IngestError(f"{manifest}: a Label Studio tasks file is a JSON list of tasks")
    entries: list[ManifestEntry] = []
    skipped: list[Skipped] = []
    for number, task in enumerate(tasks, start=1):
        where = f"{manifest.name} task {number}"
        data = task.get("data", {}) if isinstance(task, dict) else {}
        row: dict[str, Any] = {
            "path": data.get("path") or data.get("image"),
            "annotator": data.get("annotator"),
            "labelled_at": data.get("labelled_at"),
            "source": data.get("source"),
            "strategy": data.get("strategy"),
        }
        annotations = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
        if annotations:
            paths = _labelstudio_paths(annotations[-1].get("result", []))
            mains = {path[0] for path in paths}
            if len(mains) != 1:
                skipped.append(Skipped(where, f"the annotation names {len(mains)} main classes, not one"))
                continue
            row["main_class"] = mains.pop()
            row["sub_classes"] = [path[1] for path in paths if len(path) > 1]
            row["labelled_at"] = row["labelled_at"] or annotations[-1].get("created_at")
        _entry(manifest, row, where, ManifestOptions(), entries, skipped)
    return entries, skipped


def _labelstudio_paths(result: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    """Taxonomy paths (``[[main, sub], ...]``) from a result; a Choices result gives ``[[main]]``."""
    paths: list[list[str]] = []
    for item in result:
        value = item.get("value", {})
        paths += [list(path) for path in value.get("taxonomy", []) if path]
        paths += [[choice] for choice in value.get("choices", [])]
    return paths


def _read_fiftyone(manifest: Path) -> tuple[list[ManifestEntry], list[Skipped]]:
    document = _read_json(manifest)
    classes = document.get("classes") or []
    data = manifest.parent / FIFTYONE_DATA
    files = {path.stem: path for path in sorted(data.rglob("*")) if path.is_file()} if data.is_dir() else {}
    entries: list[ManifestEntry] = []
    skipped: list[Skipped] = []
    for uuid, target in document.get("labels", {}).items():
        where = f"{manifest.name} {uuid}"
        path = files.get(uuid)
        if path is None:
            skipped.append(Skipped(where, f"no file named {uuid}.* in {FIFTYONE_DATA}/"))
            continue
        row: dict[str, Any] = {"path": str(path)}
        if isinstance(target, dict):
            row.update(target)
            row["main_class"] = target.get("label")
            row["path"] = str(path)
        elif isinstance(target, int) and 0 <= target < len(classes):
            row["main_class"] = classes[target]
        elif target is not None:
            row["main_class"] = str(target)
        _entry(manifest, row, where, ManifestOptions(), entries, skipped)
    return entries, skipped
