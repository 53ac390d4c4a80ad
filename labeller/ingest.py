"""Importing images into a project: folders, ImageFolder pre-labels, CSV manifests.

Every file is read once: hashed (SHA-256 of its bytes, the de-duplication key), decoded in full (so
truncated and corrupt files are caught here, not later in training), and thumbnailed. Files that cannot
be used are skipped with a reason, never crashing the import. Rows are written in batches, each batch one
transaction, so an interrupted import leaves whole rows only; re-running it adds nothing twice.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from PIL import Image as PILImage
from PIL import UnidentifiedImageError
from sqlalchemy.exc import IntegrityError
from tqdm import tqdm

from db.engine import unit_of_work
from db.queries.annotations import record_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.images import (
    NewImage,
    add_images,
    image_ids_by_sha,
    images_with_current_annotation,
    top_up_audit_slice,
)
from db.queries.taxonomy import ensure_class, list_main_classes
from db.schema import AnnotationKind, AnnotationSource, MainClass, name_length_problem
from labeller.disk_full import device_of, is_disk_full
from labeller.files import FileRefused, hash_file, is_utf8_name, printable, read_regular
from labeller.project import Project
from labeller.thumbnails import thumbnail_file, write_thumbnail

if TYPE_CHECKING:
    from labeller.manifest import Manifest, ManifestEntry

BatchItem = TypeVar("BatchItem")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
IMPORT_ANNOTATOR = "import"


class IngestError(Exception):
    """Input that stops the whole import before anything is written (e.g. a manifest without a path column)."""


class ImportDiskFull(OSError):
    """The disk filled up during an import (thumbnails, the database): the import stopped; the batches before
    are stored, the batch it was on is not (or, when it failed at its pre-labels, without them)."""

    def __init__(self, device: str, *, batch_stored: bool = False, added: int = 0) -> None:
        self.device = device
        self.batch_stored = batch_stored
        self.added = added
        if batch_stored:
            outcome = "this batch's images were stored, maybe without their pre-labels (the import again adds them)"
        else:
            outcome = "nothing of this batch was stored"
        super().__init__(
            f"disk full: free space on {device} and run the import again; {outcome} "
            f"({added} image(s) of earlier batches are stored)"
        )


class _BatchStoredDiskFull(Exception):
    """Internal: the disk filled up after a batch's images were inserted."""


@dataclass(frozen=True)
class PreLabel:
    main: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportItem:
    path: Path
    label: PreLabel | None = None
    origin: str = ""  # where the item came from, for messages: "manifest.csv line 7"


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class ImportReport:
    added: int = 0
    duplicates: int = 0
    labelled: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    unreadable_cleared: int = 0  # images marked unreadable whose file this import found readable again

    @property
    def images_per_second(self) -> float:
        return (self.added + self.duplicates) / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ImportOptions:
    labels_from_folders: bool = False
    create_classes: bool = False  # add class names met in folders or the manifest to the taxonomy
    annotator: str = IMPORT_ANNOTATOR
    batch_size: int = 64
    progress: bool = True  # a tqdm bar on stderr when it is a terminal
    # Folders every imported file must really lie in (links resolved); empty: anywhere. The app's server-folder
    # import sets the project's import_roots, so a link inside a root cannot lead the import elsewhere.
    within: tuple[Path, ...] = ()


# --- finding files -----------------------------------------------------------------------------------


OWN_FOLDER_REASON = "the project's own folder (thumbnails or model checkpoints): never imported"
OUTSIDE_ROOTS_REASON = "a link that leads out of the import roots: not imported"


def walk_images(root: Path, *, exclude: Iterable[Path] = (), within: Sequence[Path] = ()) -> Iterator[Path | Skipped]:
    """Image files under ``root`` in a stable order; every other file, and every folder not searched,
    comes back as :class:`Skipped` with the reason. Symlinked folders are followed, each real folder
    once (a link loop ends); folders in ``exclude`` (the project's own) and hidden folders are not
    searched. Hidden files are treated like any other file. With ``within``, a file or folder whose real
    path lies outside all of them is skipped."""
    excluded = {folder.resolve() for folder in exclude}
    roots = [folder.resolve() for folder in within]

    def outside(path: Path) -> bool:
        return bool(roots) and not any(path.resolve().is_relative_to(folder) for folder in roots)

    resolved = root.resolve()
    if resolved in excluded or not excluded.isdisjoint(resolved.parents):
        yield Skipped(printable(root), OWN_FOLDER_REASON)
        return
    if not root.is_dir():
        yield _candidate(root)
        return
    visited = {_folder_key(root)}
    unreadable: list[OSError] = []  # os.walk would otherwise skip an unreadable folder without a word
    for directory, subdirectories, files in os.walk(root, onerror=unreadable.append, followlinks=True):
        yield from _unreadable_folders(unreadable)
        searched = []
        for name in sorted(subdirectories):
            folder = Path(directory) / name
            if name.startswith("."):
                # .git, .cache, .Trash: rarely images, often thousands of files; one line says so.
                yield Skipped(printable(folder), "hidden folder (name starts with '.'): not searched")
            elif folder.resolve() in excluded:
                yield Skipped(printable(folder), OWN_FOLDER_REASON)
            elif outside(folder):
                yield Skipped(printable(folder), OUTSIDE_ROOTS_REASON)
            elif (key := _folder_key(folder)) in visited:
                yield Skipped(printable(folder), "a link to a folder already searched (link loop or duplicate)")
            else:
                if key is not None:
                    visited.add(key)
                searched.append(name)
        subdirectories[:] = searched
        for name in sorted(files):
            path = Path(directory) / name
            yield Skipped(printable(path), OUTSIDE_ROOTS_REASON) if outside(path) else _candidate(path)
    yield from _unreadable_folders(unreadable)


def _folder_key(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the real folder behind ``folder``; None when it cannot be read (os.walk reports it)."""
    try:
        info = folder.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _candidate(path: Path) -> Path | Skipped:
    if not is_utf8_name(path):
        return Skipped(printable(path), "the file name is not valid UTF-8: rename the file to import it")
    return path if path.suffix.lower() in IMAGE_SUFFIXES else Skipped(str(path), _suffix_reason(path))


def _unreadable_folders(errors: list[OSError]) -> Iterator[Skipped]:
    while errors:
        error = errors.pop(0)
        yield Skipped(printable(error.filename), f"unreadable folder: {error.strerror or error}")


def _suffix_reason(path: Path) -> str:
    return f"not an image file type ({path.suffix or 'no extension'})"


def folder_label(root: Path, path: Path) -> PreLabel | None:
    """ImageFolder layout: ``root/main/sub/file`` -> main + sub tag, ``root/main/file`` -> main only."""
    parts = path.relative_to(root).parent.parts if root.is_dir() else ()
    if not parts:
        return None
    return PreLabel(parts[0], tuple(parts[1:2]))


def items_from_paths(
    paths: Sequence[Path], *, labels_from_folders: bool, exclude: Iterable[Path] = (), within: Sequence[Path] = ()
) -> tuple[list[ImportItem], list[Skipped]]:
    items: list[ImportItem] = []
    skipped: list[Skipped] = []
    exclude = tuple(exclude)
    for root in paths:
        if not root.exists() and not root.is_symlink():
            skipped.append(Skipped(printable(root), "no such file or folder"))
            continue
        for found in walk_images(root, exclude=exclude, within=within):
            if isinstance(found, Skipped):
                skipped.append(found)
            else:
                label = folder_label(root, found) if labels_from_folders else None
                items.append(ImportItem(found, label, origin=str(found)))
    return items, skipped


# --- resolving pre-labels against the taxonomy --------------------------------------------------------


@dataclass(frozen=True)
class ResolvedLabel:
    main_class_id: int
    sub_class_ids: tuple[int, ...]


def resolve_labels(
    project: Project, items: Sequence[ImportItem], *, create_classes: bool
) -> tuple[list[tuple[ImportItem, ResolvedLabel | None]], list[Skipped]]:
    """Class ids for each item's pre-label; an item whose label names an unknown class is skipped."""
    wanted = {item.label for item in items if item.label is not None}
    resolved: dict[PreLabel, ResolvedLabel | str] = {}
    with unit_of_work(project.engine) as session:
        if create_classes:
            for label in sorted(wanted, key=lambda label: (label.main, label.tags)):
                for tag in label.tags or (None,):
                    ensure_class(session, label.main, tag)
            session.flush()
        mains = {main.name: main for main in list_main_classes(session)}
        for label in wanted:
            resolved[label] = _resolve_label(label, mains)
    kept: list[tuple[ImportItem, ResolvedLabel | None]] = []
    skipped: list[Skipped] = []
    for item in items:
        outcome = resolved.get(item.label) if item.label is not None else None
        if isinstance(outcome, str):
            skipped.append(Skipped(item.origin, outcome))
        else:
            kept.append((item, outcome))
    return kept, skipped


def _resolve_label(label: PreLabel, mains: dict[str, MainClass]) -> ResolvedLabel | str:
    main = mains.get(label.main)
    if main is None:
        return f"unknown class {label.main!r} (define it with `labeller taxonomy` or pass --create-classes)"
    subs = {sub.name: sub.id for sub in main.sub_classes}
    unknown = [tag for tag in label.tags if tag not in subs]
    if unknown:
        return (
            f"unknown sub-class {label.main}/{unknown[0]} (define it with `labeller taxonomy` or pass --create-classes)"
        )
    return ResolvedLabel(main.id, tuple(subs[tag] for tag in label.tags))


# --- reading one file --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReadFile:
    item: ImportItem
    label: ResolvedLabel | None
    sha256: str
    size: int  # bytes; the content is not kept: a batch of large files would not fit in memory


@dataclass(frozen=True)
class DecodedFile:
    read: ReadFile
    width: int
    height: int
    format: str


def read_file(item: ImportItem, label: ResolvedLabel | None) -> ReadFile | Skipped:
    """Hash the file by streaming it (regular files under the size cap only; see labeller.files)."""
    try:
        sha256, size = hash_file(item.path)
    except FileRefused as refused:
        return Skipped(item.origin, refused.reason)
    if not size:
        return Skipped(item.origin, "empty file (0 bytes)")
    return ReadFile(item, label, sha256, size)


def decode(read: ReadFile) -> tuple[DecodedFile, PILImage.Image] | Skipped:
    """Decode every pixel (the first frame of an animation): catches truncation, corruption and bombs."""
    try:
        data = read_regular(read.item.path)  # one file in memory at a time, only when it is new
    except FileRefused as refused:
        return Skipped(read.item.origin, refused.reason)
    if hashlib.sha256(data).hexdigest() != read.sha256:
        return Skipped(read.item.origin, "the file changed while it was imported: import it again")
    try:
        with warnings.catch_warnings():
            # Above PIL's MAX_IMAGE_PIXELS it only warns; above twice that it raises. Both mean "skip".
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            image = PILImage.open(io.BytesIO(data))
            image.load()
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning) as error:
        return Skipped(read.item.origin, f"too large to decode safely (decompression bomb): {error}")
    except UnidentifiedImageError:
        return Skipped(read.item.origin, "not an image (no decoder recognises its content)")
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # PIL reports truncated and corrupt data as OSError, broken headers as SyntaxError/ValueError.
        return Skipped(read.item.origin, f"corrupt or truncated image: {error}")
    width, height = _upright_size(image)
    return DecodedFile(read, width, height, image.format or "unknown"), image


def _upright_size(image: PILImage.Image) -> tuple[int, int]:
    """Width and height as displayed: EXIF orientations 5-8 swap them."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a malformed EXIF block does not make the pixels unusable
        orientation = 1
    return (image.height, image.width) if orientation in (5, 6, 7, 8) else (image.width, image.height)


# --- the import --------------------------------------------------------------------------------------


def import_images(
    project: Project,
    paths: Sequence[Path] = (),
    *,
    manifest: Path | Manifest | None = None,
    options: ImportOptions = ImportOptions(),
) -> ImportReport:
    """Import files and folders (and a manifest's rows) into ``project``; see the module docstring."""
    started = time.perf_counter()
    items, skipped = items_from_paths(
        [Path(p) for p in paths],
        labels_from_folders=options.labels_from_folders,
        exclude=(project.thumbs_dir, project.models_dir),
        within=options.within,
    )
    parsed = None
    if manifest is not None:
        from labeller.manifest import read_manifest  # labeller.manifest builds on this module

        parsed = read_manifest(manifest)
    if problems := _name_problems(items, parsed.entries if parsed is not None else [], options):
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise IngestError(f"nothing was imported: {len(problems)} name(s) too long:\n  {shown}")
    if parsed is not None:
        manifest_items, manifest_skipped = parsed.prepare(project, options)
        items += manifest_items
        skipped += manifest_skipped
    labelled_items, label_skips = resolve_labels(project, items, create_classes=options.create_classes)
    report = ImportReport(skipped=skipped + label_skips)
    annotator_id = _annotator_id(project, options.annotator) if any(label for _, label in labelled_items) else None

    seen: set[str] = set()
    try:
        with tqdm(
            total=len(labelled_items), unit="img", desc="import", disable=None if options.progress else True
        ) as bar:
            for batch in _batches(labelled_items, options.batch_size):
                _import_batch(project, batch, seen, report, annotator_id)
                bar.update(len(batch))
        if parsed is not None:
            report.labelled += parsed.record_labels(project)  # rows with their own annotator and time
    except Exception as error:
        stored = isinstance(error, _BatchStoredDiskFull)
        cause = error.__cause__ if stored else error
        if not stored and not is_disk_full(error):
            raise
        device = device_of(cause or error, files=project.thumbs_dir, database_url=project.database_url)
        raise ImportDiskFull(device, batch_stored=stored, added=report.added) from cause
    report.seconds = time.perf_counter() - started
    return report


def _name_problems(items: Sequence[ImportItem], entries: Sequence[ManifestEntry], options: ImportOptions) -> list[str]:
    """Every name the import would write that the databases cannot hold, checked before anything is written:
    on PostgreSQL a long annotator name failed after the images were in, leaving them without their labels."""
    problems: list[str] = []

    def check(origin: str, what: str, name: str | None) -> None:
        if name is not None and (problem := name_length_problem(what, name.strip())):
            problems.append(f"{origin}: {problem}")

    labelled = any(item.label for item in items) or any(entry.main and not entry.recorded for entry in entries)
    if labelled:
        check("--annotator", "the annotator name", options.annotator)
    for entry in entries:
        if entry.main is not None:
            check(entry.origin, "the annotator name", entry.annotator)
    if options.create_classes:
        labels = [(item.origin, item.label) for item in items if item.label is not None]
        labels += [(entry.origin, PreLabel(entry.main, entry.tags)) for entry in entries if entry.main is not None]
        for origin, label in labels:
            check(origin, "main class", label.main)
            for tag in label.tags:
                check(origin, f"sub-class of {label.main[:40]!r}", tag)
    return problems


def _annotator_id(project: Project, name: str) -> int:
    with unit_of_work(project.engine) as session:
        return get_or_create_annotator(session, name).id


def _batches(items: Sequence[BatchItem], size: int) -> Iterable[Sequence[BatchItem]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _import_batch(
    project: Project,
    batch: Sequence[tuple[ImportItem, ResolvedLabel | None]],
    seen: set[str],
    report: ImportReport,
    annotator_id: int | None,
) -> None:
    reads: list[ReadFile] = []
    for item, label in batch:
        outcome = read_file(item, label)
        if isinstance(outcome, Skipped):
            report.skipped.append(outcome)
        else:
            reads.append(outcome)
    with unit_of_work(project.engine) as session:
        stored = image_ids_by_sha(session, (read.sha256 for read in reads))

    fresh: list[DecodedFile] = []
    labels_for_stored: list[tuple[int, ResolvedLabel]] = []
    for read in reads:
        if read.sha256 in stored or read.sha256 in seen:
            report.duplicates += 1
            if read.label is not None and read.sha256 in stored:
                labels_for_stored.append((stored[read.sha256], read.label))
            continue
        outcome = decode(read)
        if isinstance(outcome, Skipped):
            report.skipped.append(outcome)
            continue
        decoded, image = outcome
        with image:
            failure = _ensure_thumbnail(project, read, image)
        if failure is not None:
            report.skipped.append(failure)
            continue
        seen.add(read.sha256)
        fresh.append(decoded)

    new_ids = _insert(project, fresh, report)
    try:
        _after_insert(project, stored, reads, fresh, new_ids, labels_for_stored, report, annotator_id)
    except Exception as error:
        if new_ids and is_disk_full(error):
            raise _BatchStoredDiskFull() from error
        raise


def _after_insert(
    project: Project,
    stored: dict[str, int],
    reads: Sequence[ReadFile],
    fresh: Sequence[DecodedFile],
    new_ids: dict[str, int],
    labels_for_stored: list[tuple[int, ResolvedLabel]],
    report: ImportReport,
    annotator_id: int | None,
) -> None:
    labels = labels_for_stored + [
        (new_ids[d.read.sha256], d.read.label) for d in fresh if d.read.label and d.read.sha256 in new_ids
    ]
    if labels and annotator_id is not None:
        report.labelled += _pre_label(project, labels, annotator_id)
    if met := [stored[read.sha256] for read in reads if read.sha256 in stored]:
        # A file marked unreadable (moved away, then back) is readable again: clear its mark (issue 23 item 5).
        from labeller.recheck import recheck_unreadable

        report.unreadable_cleared += recheck_unreadable(project, met).cleared
    # Only now: a pre-labelled image is a training label, and the top-up never takes one into the audit slice
    # (topped up at insert, 15 of a first import's 30 labelled photos became audit images).
    with unit_of_work(project.engine) as session:
        top_up_audit_slice(session, audit_fraction=project.settings.labelling.audit_fraction)


def _ensure_thumbnail(project: Project, read: ReadFile, image: PILImage.Image) -> Skipped | None:
    thumb = thumbnail_file(project.thumbs_dir, read.sha256)
    if thumb.exists():
        return None
    try:
        write_thumbnail(image, thumb)
    except (OSError, ValueError) as error:  # an exotic pixel mode PIL cannot convert to RGB
        if is_disk_full(error):
            raise  # not this file's fault: the import stops (ImportDiskFull)
        return Skipped(read.item.origin, f"cannot convert to RGB for a thumbnail: {error}")
    return None


def _insert(project: Project, fresh: Sequence[DecodedFile], report: ImportReport) -> dict[str, int]:
    """Insert the batch in one transaction; if another importer stored one of its files meanwhile, insert
    row by row so only that file counts as a duplicate."""
    audit_fraction = project.settings.labelling.audit_fraction
    rows = [_new_image(project, decoded) for decoded in fresh]
    try:
        with unit_of_work(project.engine) as session:
            added = {
                image.sha256: image.id
                for image in add_images(session, rows, audit_fraction=audit_fraction, top_up=False)
            }
        report.added += len(added)
        return added
    except IntegrityError:
        pass
    added = {}
    for row in rows:
        try:
            with unit_of_work(project.engine) as session:
                added[row.sha256] = add_images(session, [row], audit_fraction=audit_fraction, top_up=False)[0].id
            report.added += 1
        except IntegrityError:
            report.duplicates += 1
    return added


def _new_image(project: Project, decoded: DecodedFile) -> NewImage:
    return NewImage(
        sha256=decoded.read.sha256,
        path=project.stored_image_path(decoded.read.item.path.absolute()),
        width=decoded.width,
        height=decoded.height,
        format=decoded.format,
        file_size=decoded.read.size,
    )


def _pre_label(project: Project, labels: Sequence[tuple[int, ResolvedLabel]], annotator_id: int) -> int:
    """Record pre-labels on images nobody has decided on yet, so re-imports and human labels both win."""
    written = 0
    with unit_of_work(project.engine) as session:
        decided = images_with_current_annotation(session, (image_id for image_id, _ in labels))
        for image_id, label in labels:
            if image_id in decided:
                continue
            record_annotation(
                session,
                image_id=image_id,
                annotator_id=annotator_id,
                kind=AnnotationKind.LABEL,
                main_class_id=label.main_class_id,
                sub_class_ids=label.sub_class_ids,
                source=AnnotationSource.IMPORT,
            )
            decided.add(image_id)
            written += 1
    return written
