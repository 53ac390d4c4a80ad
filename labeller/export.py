"""Exporting labels (and, when asked, one model version's predictions) in the formats other tools read.

| format | writes | for |
|---|---|---|
| ``csv`` | one file, tags joined by a separator | spreadsheets, pandas, ``labeller import`` |
| ``jsonl`` | one JSON object per image | scripts, ``labeller import`` |
| ``imagefolder`` | ``main/sub/file`` (partial labels in ``main/``) + ``labels.csv`` | torchvision ``ImageFolder`` |
| ``hf`` | files at one depth + ``metadata.csv`` | Hugging Face ``datasets`` (``imagefolder``) |
| ``coco`` | one COCO-style classification JSON, ``supercategory`` = main class | COCO tooling |
| ``labelstudio`` | ``tasks.json`` + ``label_config.xml`` (a Taxonomy) | Label Studio |
| ``fiftyone`` | ``data/`` + ``labels.json`` (FiftyOneImageClassificationDataset) | FiftyOne |

Every format carries the main class, the leaf, every sub-class tag, the annotator, the time and the
provenance, and paths relative to a chosen root (absolute only when asked). ``labeller.manifest`` reads
each of them back.

Rows are streamed from the database in chunks (``yield_per``; a server-side cursor on PostgreSQL) and
written as they come, so memory stays flat for the line formats. Files are written under a temporary
name and renamed at the end: an interrupted export leaves no half-written file behind. Text cells of every
CSV file that could start a formula are escaped for spreadsheets (:func:`spreadsheet_cell`); ``labeller
import`` undoes that.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, get_args
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.engine import reading
from db.queries.annotations import CurrentLabel, current_labels
from db.queries.exports import (
    SCORE_COLUMNS,
    PredictionView,
    VersionView,
    iter_image_ids,
    model_version_view,
    predictions_for_images,
)
from db.queries.images import images_by_id
from db.queries.taxonomy import taxonomy_mapping
from db.schema import ModelVersion
from labeller.project import Project

# The one list of format names: the CLI's choices, the dispatch below and labeller.manifest's detection.
ExportFormat = Literal["csv", "jsonl", "imagefolder", "hf", "coco", "labelstudio", "fiftyone"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
FOLDER_FORMATS: frozenset[ExportFormat] = frozenset({"imagefolder", "hf", "labelstudio", "fiftyone"})
HfLayout = Literal["main", "leaf", "main/sub"]
HF_LAYOUTS: tuple[HfLayout, ...] = get_args(HfLayout)

TAG_SEPARATOR = ";"
# File names inside folder exports; labeller.manifest looks for the same names.
IMAGEFOLDER_LABELS = "labels.csv"
HF_METADATA = "metadata.csv"
LABELSTUDIO_TASKS = "tasks.json"
LABELSTUDIO_CONFIG = "label_config.xml"
FIFTYONE_LABELS = "labels.json"
FIFTYONE_LEAF_LABELS = "leaf_labels.json"
FIFTYONE_PREDICTIONS = "predictions.json"
FIFTYONE_DATA = "data"
# Label Studio's tag names in the generated config; the importer reads results from these names.
LABELSTUDIO_FROM = "taxonomy"
LABELSTUDIO_TO = "image"
# hf layout main/sub: the second-level folder of a label that names no single sub-class, so that every
# file sits at the same depth (datasets' imagefolder needs that).
NO_SUB_FOLDER = "_any"
UNLABELLED_FOLDER = "_unlabelled"
_CHUNK = 1_000


class ExportError(Exception):
    """An export that cannot start (e.g. a non-empty output folder); nothing was written."""


@dataclass(frozen=True)
class ExportOptions:
    relative_to: Path | None = None  # None: the export's own folder (the file's parent, or the folder)
    absolute_paths: bool = False
    predictions: bool = False
    model_version_id: int | None = None  # None: the active version
    include_unlabelled: bool = False
    link: bool = True  # folder formats: hard-link files when possible, else copy
    layout: HfLayout = "main"
    url_prefix: str = ""  # labelstudio: prepended to each image's relative path
    tag_separator: str = TAG_SEPARATOR


@dataclass(frozen=True)
class RowPrediction:
    model_version: str
    main_class: str | None
    leaf: str | None
    confidence: float
    # True when the image's label was in the version's training data (training or validation; never an
    # audit image): its probabilities are then optimistic, not the honest held-out estimates that
    # label-noise tools (cleanlab) assume.
    in_sample: bool
    main: dict[str, float]
    leaf_probabilities: dict[str, float]
    # The stored scores, except "margin": the usual p1 - p2 here (stored: 1 - (p1 - p2), the queue's order).
    scores: dict[str, float | None]


@dataclass(frozen=True)
class ExportRow:
    image_id: int
    sha256: str
    path: str  # absolute here; writers make it relative to the export's root unless asked not to
    width: int
    height: int
    main_class: str  # "" for an unlabelled image (--include-unlabelled)
    sub_classes: tuple[str, ...]
    annotator: str
    labelled_at: str  # ISO 8601, UTC
    source: str
    model_version_id: int | None
    model_version: str | None
    strategy: str | None
    audit: bool
    leaf: str = ""  # "main/sub", or "main" for a main class without sub-classes; "" for a partial label
    prediction: RowPrediction | None = None

    @property
    def labelled(self) -> bool:
        return bool(self.main_class)


CSV_COLUMNS = [
    "image_id",
    "sha256",
    "path",
    "width",
    "height",
    "main_class",
    "leaf",
    "sub_classes",
    "annotator",
    "labelled_at",
    "source",
    "model_version_id",
    "model_version",
    "strategy",
    "audit",
]
PREDICTION_COLUMNS = [
    "predicted_model_version",
    "predicted_main_class",
    "predicted_leaf",
    "predicted_confidence",
    "prediction_in_sample",
    *SCORE_COLUMNS,
]
MAIN_PROBABILITY_PREFIX = "p_main:"
LEAF_PROBABILITY_PREFIX = "p_leaf:"


@dataclass
class ExportSummary:
    rows: int = 0
    labelled: int = 0
    linked: int = 0
    copied: int = 0
    missing: list[str] = field(default_factory=list)  # image files no longer where they were imported from


@dataclass(frozen=True)
class Taxonomy:
    """Class names in display order, as the export needs them."""

    mains: dict[str, list[str]]

    @property
    def main_names(self) -> list[str]:
        return list(self.mains)

    @property
    def leaf_names(self) -> list[str]:
        return [leaf_name(main, sub) for main, subs in self.mains.items() for sub in (subs or [None])]


def leaf_name(main: str, sub: str | None) -> str:
    """The leaf's name as the model's probabilities name it (core.taxonomy.Taxonomy.leaf_names)."""
    return main if sub is None else f"{main}/{sub}"


def label_leaf(main: str, tags: Sequence[str], taxonomy: Taxonomy) -> str:
    """The one leaf a label names, or "" for a partial label (several tags, or none on a class with sub-classes)."""
    if len(tags) == 1:
        return leaf_name(main, tags[0])
    if not tags and not taxonomy.mains.get(main):
        return main
    return ""


# --- rows --------------------------------------------------------------------------------------------


def iter_export_rows(
    project: Project, options: ExportOptions = ExportOptions(), *, chunk_size: int = _CHUNK
) -> Iterator[ExportRow]:
    """Every labelled image (every image with ``include_unlabelled``) with its current label, provenance
    and, with ``predictions``, the model version's prediction; in image id order, streamed."""
    with reading(project.engine) as session:
        taxonomy = Taxonomy(taxonomy_mapping(session))
        version = _prediction_version(session, options) if options.predictions else None
        version_names = dict(session.execute(select(ModelVersion.id, ModelVersion.name)).all())
        context = _RowContext(project, session, taxonomy, version, version_names)
        if options.include_unlabelled:
            ids: list[int] = []
            for image_id in iter_image_ids(session):
                ids.append(image_id)
                if len(ids) >= chunk_size:
                    yield from context.rows(ids, {label.image_id: label for label in current_labels(session, ids)})
                    ids = []
            yield from context.rows(ids, {label.image_id: label for label in current_labels(session, ids)})
            return
        chunk: list[CurrentLabel] = []
        for label in current_labels(session):
            chunk.append(label)
            if len(chunk) >= chunk_size:
                yield from context.rows([c.image_id for c in chunk], {c.image_id: c for c in chunk})
                chunk = []
        yield from context.rows([c.image_id for c in chunk], {c.image_id: c for c in chunk})


def _prediction_version(session: Session, options: ExportOptions) -> VersionView:
    version = model_version_view(session, options.model_version_id)
    if version is None:
        wanted = f"model version {options.model_version_id}" if options.model_version_id else "an active model version"
        raise ExportError(f"--predictions needs {wanted}: train one (labeller train) or pick one (labeller models)")
    return version


@dataclass
class _RowContext:
    project: Project
    session: Session
    taxonomy: Taxonomy
    version: VersionView | None
    version_names: dict[int, str]

    def rows(self, image_ids: Sequence[int], labels: dict[int, CurrentLabel]) -> Iterator[ExportRow]:
        if not image_ids:
            return
        images = images_by_id(self.session, image_ids)
        predictions = (
            predictions_for_images(self.session, self.version.id, image_ids) if self.version is not None else {}
        )
        for image_id in image_ids:
            image = images[image_id]
            label = labels.get(image_id)
            yield ExportRow(
                image_id=image.id,
                sha256=image.sha256,
                path=str(self.project.resolve_image_path(image.path)),
                width=image.width,
                height=image.height,
                main_class=label.main_class if label else "",
                leaf=label_leaf(label.main_class, label.tags, self.taxonomy) if label else "",
                sub_classes=label.tags if label else (),
                annotator=label.annotator if label else "",
                labelled_at=label.created_at.isoformat(timespec="seconds") + "Z" if label else "",
                source=label.source if label else "",
                model_version_id=label.model_version_id if label else None,
                model_version=self.version_names.get(label.model_version_id)
                if label and label.model_version_id
                else None,
                strategy=label.strategy if label else None,
                audit=image.audit,
                prediction=self._prediction(predictions.get(image_id), label, audit=image.audit),
            )
        self.session.expunge_all()  # the identity map would otherwise grow with every chunk

    def _prediction(
        self, prediction: PredictionView | None, label: CurrentLabel | None, *, audit: bool
    ) -> RowPrediction | None:
        if prediction is None or self.version is None:
            return None
        main = {str(k): float(v) for k, v in prediction.probabilities.get("main", {}).items()}
        return RowPrediction(
            model_version=self.version.name,
            main_class=prediction.main_class,
            leaf=leaf_name(prediction.main_class, prediction.sub_class) if prediction.main_class else None,
            confidence=prediction.confidence,
            in_sample=self._in_sample(self.version, prediction.image_id, label, audit=audit),
            main=main,
            leaf_probabilities={str(k): float(v) for k, v in prediction.probabilities.get("leaf", {}).items()},
            scores={**prediction.scores, "margin": export_margin(main, prediction.scores.get("margin"))},
        )

    @staticmethod
    def _in_sample(version: VersionView, image_id: int, label: CurrentLabel | None, *, audit: bool) -> bool:
        if version.trained_image_ids is not None:
            # Relabelled since, or unlabelled: still in-sample, the fit saw this image with some label.
            return image_id in version.trained_image_ids
        # An older version stored only its newest annotation id; training always held the audit labels out.
        newest = version.newest_annotation_id
        return label is not None and not audit and (newest == 0 or label.annotation_id <= newest)


def export_margin(main: dict[str, float], stored: float | None) -> float | None:
    """The usual margin, top main-class probability minus the second (none: 0), from the
    probabilities the export writes beside it; the stored score (``1 - margin``, larger = more uncertain,
    what the queue ranks by) only when a prediction has no main-class probabilities."""
    if main:
        top = sorted(main.values(), reverse=True)
        # Rounded past the stored probabilities' digits: only the subtraction's float noise goes.
        return round(top[0] - (top[1] if len(top) > 1 else 0.0), 10)
    return None if stored is None else 1.0 - stored


# --- paths -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathStyle:
    """How a source path is written: relative to ``root`` (with ``..`` where needed), or absolute."""

    root: Path | None  # None: absolute

    def __call__(self, path: str | Path) -> str:
        # os.path, not pathlib: pathlib interns every path component, which grows with the number of files.
        if self.root is None:
            return os.path.abspath(path)
        relative = os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))
        return relative.replace(os.sep, "/")


def path_style(options: ExportOptions, default_root: Path) -> PathStyle:
    if options.absolute_paths:
        return PathStyle(None)
    return PathStyle(options.relative_to if options.relative_to is not None else default_root)


# --- writing -----------------------------------------------------------------------------------------


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISFIFO, "named pipe (FIFO)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISREG, "regular file"),
    ):
        if test(mode):
            return kind
    return "special file"


def refuse_special_target(out: Path) -> None:
    """Raise ExportError unless ``out`` is a new path, a regular file or a real folder. The rename that ends
    an export replaces whatever has the name: a FIFO, a device node (as root, /dev/full) or a symbolic link
    would become our file. A link is refused rather than followed: it may point anywhere."""
    try:
        mode = os.lstat(out).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    raise ExportError(
        f"{out} is a {_file_kind(mode)}: an export writes only to a new path, a regular file or a folder; "
        "nothing written"
    )


def _make_folders(root: Path, folder: Path) -> None:
    """``folder`` (inside ``root``) and its parents below ``root``, each a real folder: an export never
    writes through a symbolic link someone put into its folder."""
    current = root
    for part in folder.relative_to(root).parts:
        current = current / part
        with suppress(FileExistsError):
            current.mkdir()
        mode = os.lstat(current).st_mode
        if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
            raise ExportError(
                f"{current} is a {_file_kind(mode)}, not a folder this export made: nothing written there"
            )


@contextmanager
def _atomic_text(target: Path) -> Iterator[IO[str]]:
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as stream:
            yield stream
        refuse_special_target(target)  # again: something may have taken the name while rows were written
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _join_tags(tags: Sequence[str], separator: str) -> str:
    clash = next((tag for tag in tags if separator in tag), None)
    if clash is not None:
        raise ExportError(f"sub-class {clash!r} contains the tag separator {separator!r}: pass another --tag-separator")
    return separator.join(tags)


# A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection"): a class or an
# annotator named "=cmd|' /C calc'!A0" would run when the export is opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# Columns that hold a path: escaped with "./" (still the same path) rather than a quote (another path).
CSV_PATH_COLUMNS = frozenset({"path", "exported_file", "file_name"})


def spreadsheet_cell(value: str) -> str:
    """``value`` as a spreadsheet shows it, never as a formula: a leading ``'`` before ``= + - @`` tab or CR.
    A value that already starts with quotes before one of those gets one more, so that
    :func:`unescape_cell` gives every name back exactly."""
    return "'" + value if value.lstrip("'").startswith(FORMULA_STARTS) else value


def unescape_cell(value: str) -> str:
    """The name :func:`spreadsheet_cell` escaped; any other value as it is."""
    return value[1:] if value.startswith("'") and value.lstrip("'").startswith(FORMULA_STARTS) else value


def spreadsheet_path(value: str) -> str:
    """A relative path that would read as a formula, as ``./path``: the same file for every reader."""
    return "./" + value if value.startswith(FORMULA_STARTS) else value


def spreadsheet_row(record: dict[str, object]) -> dict[str, object]:
    """Every text cell of a CSV line escaped for spreadsheets; numbers (probabilities, scores, ids, where a
    leading '-' is a sign) are not text and stay as they are."""
    return {
        name: (spreadsheet_path(value) if name in CSV_PATH_COLUMNS else spreadsheet_cell(value))
        if isinstance(value, str)
        else value
        for name, value in record.items()
    }


def csv_columns(taxonomy: Taxonomy, *, predictions: bool) -> list[str]:
    if not predictions:
        return list(CSV_COLUMNS)
    return [
        *CSV_COLUMNS,
        *PREDICTION_COLUMNS,
        *(MAIN_PROBABILITY_PREFIX + name for name in taxonomy.main_names),
        *(LEAF_PROBABILITY_PREFIX + name for name in taxonomy.leaf_names),
    ]


def csv_record(
    row: ExportRow, *, paths: PathStyle = PathStyle(None), tags: Callable[[Sequence[str]], str] | None = None
) -> dict[str, object]:
    """One CSV line's values; ``tags`` encodes the sub-classes (default: joined by ``;``)."""
    record: dict[str, object] = {name: getattr(row, name) for name in CSV_COLUMNS}
    record["path"] = paths(row.path)
    record["sub_classes"] = tags(row.sub_classes) if tags else _join_tags(row.sub_classes, TAG_SEPARATOR)
    prediction = row.prediction
    if prediction is not None:
        record.update(
            predicted_model_version=prediction.model_version,
            predicted_main_class=prediction.main_class,
            predicted_leaf=prediction.leaf,
            predicted_confidence=prediction.confidence,
            prediction_in_sample=prediction.in_sample,
            **prediction.scores,
        )
        record.update({MAIN_PROBABILITY_PREFIX + name: p for name, p in prediction.main.items()})
        record.update({LEAF_PROBABILITY_PREFIX + name: p for name, p in prediction.leaf_probabilities.items()})
    return record


def write_csv(
    rows: Iterator[ExportRow],
    stream: IO[str],
    *,
    paths: PathStyle = PathStyle(None),
    columns: Sequence[str] = CSV_COLUMNS,
    tag_separator: str = TAG_SEPARATOR,
) -> int:
    """CSV lines; paths absolute unless ``paths`` says otherwise (the app's download has no root)."""
    writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    count = 0
    for row in rows:
        writer.writerow(
            spreadsheet_row(csv_record(row, paths=paths, tags=lambda tags: _join_tags(tags, tag_separator)))
        )
        count += 1
    return count


def json_record(row: ExportRow, *, paths: PathStyle = PathStyle(None)) -> dict[str, Any]:
    record = asdict(row)
    record["path"] = paths(row.path)
    record["sub_classes"] = list(row.sub_classes)
    if row.prediction is None:
        del record["prediction"]
    return record


def _taxonomy(project: Project) -> Taxonomy:
    with reading(project.engine) as session:
        return Taxonomy(taxonomy_mapping(session))


def export_csv(project: Project, out: Path, options: ExportOptions = ExportOptions()) -> ExportSummary:
    columns = csv_columns(_taxonomy(project), predictions=options.predictions)
    summary = ExportSummary()
    with _atomic_text(out) as stream:
        summary.rows = write_csv(
            _counted(iter_export_rows(project, options), summary),
            stream,
            paths=path_style(options, out.parent),
            columns=columns,
            tag_separator=options.tag_separator,
        )
    return summary


def _counted(rows: Iterator[ExportRow], summary: ExportSummary) -> Iterator[ExportRow]:
    for row in rows:
        summary.labelled += row.labelled
        yield row


def export_jsonl(project: Project, out: Path, options: ExportOptions = ExportOptions()) -> ExportSummary:
    summary = ExportSummary()
    paths = path_style(options, out.parent)
    with _atomic_text(out) as stream:
        for row in _counted(iter_export_rows(project, options), summary):
            stream.write(json.dumps(json_record(row, paths=paths), ensure_ascii=False) + "\n")
            summary.rows += 1
    return summary


def safe_folder_name(name: str) -> str:
    """A class name as one folder name: separators replaced, never '.', '..' or hidden."""
    cleaned = name.replace(os.sep, "_").replace("\x00", "_")
    if os.altsep:
        cleaned = cleaned.replace(os.altsep, "_")
    return "_" + cleaned if cleaned.startswith(".") or not cleaned else cleaned


# Folder names longer than this (in UTF-8 bytes) are cut and given a hash: a 200-character main class and a
# 200-character sub-class made a leaf folder name past the file systems' 255 bytes.
MAX_FOLDER_BYTES = 200
FolderKey = tuple[str, ...]  # see ExportFolders


def unique_folder_names(wanted: Mapping[FolderKey, str], reserved: Sequence[str] = ()) -> dict[FolderKey, str]:
    """One folder name per key, unique among siblings and apart from ``reserved`` names, comparing without
    case (as macOS and Windows do). Class names ``.x`` and ``_.x``, or the leaves ``dog/pug`` and ``dog.pug``
    (``dog.pug`` in the leaf layout), used to land in one folder and merge: a colliding name gets a short hash
    of its key (``_.x~3fa2c1d0``), except one that is its own wanted name unchanged."""
    safe = {key: safe_folder_name(name) for key, name in wanted.items()}
    for key, name in safe.items():
        if len(name.encode()) > MAX_FOLDER_BYTES:
            safe[key] = name.encode()[: MAX_FOLDER_BYTES - 20].decode(errors="ignore")

    def hashed(key: FolderKey, length: int) -> str:
        return f"{safe[key]}~{hashlib.sha256(json.dumps(key).encode()).hexdigest()[:length]}"

    taken = {name.casefold() for name in reserved}
    groups: dict[str, list[FolderKey]] = {}
    for key, name in safe.items():
        groups.setdefault(name.casefold(), []).append(key)
    out: dict[FolderKey, str] = {}
    for folded, keys in groups.items():
        exact = [key for key in keys if safe[key] == wanted[key]]
        plain = exact[0] if len(exact) == 1 and folded not in taken else None
        for key in keys:
            cut = len(safe[key]) < len(safe_folder_name(wanted[key]))
            clash = len(keys) > 1 or folded in taken
            out[key] = hashed(key, 8) if (clash and key != plain) or cut else safe[key]
    # A hashed name that meets a class literally called so (``x~3fa2c1d0``): longer hashes until none do.
    for length in (16, 64):
        counts: dict[str, int] = {}
        for name in [*out.values(), *reserved]:
            counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
        repeated = [key for key, name in out.items() if counts[name.casefold()] > 1 and "~" in name]
        for key in repeated:
            out[key] = hashed(key, length)
    return out


@dataclass(frozen=True)
class ExportFolders:
    """The folder names of one folder export, made unique from the whole taxonomy up front. Keys:
    ``("main", main)``, ``("sub", main, sub)`` and ``("any", main)`` (a label naming no single sub-class),
    apart even where the names are not (a sub-class called ``_any``)."""

    mains: dict[FolderKey, str]  # top folders of the imagefolder, hf main and hf main/sub layouts
    subs: dict[FolderKey, str]  # folders inside a main folder (imagefolder, hf main/sub)
    leaves: dict[FolderKey, str]  # top folders of the hf leaf layout

    @classmethod
    def of(cls, taxonomy: Taxonomy, reserved: Sequence[str]) -> ExportFolders:
        mains = unique_folder_names({("main", main): main for main in taxonomy.mains}, reserved)
        subs: dict[FolderKey, str] = {}
        leaves: dict[FolderKey, str] = {}
        for main, names in taxonomy.mains.items():
            subs.update(unique_folder_names({("sub", main, sub): sub for sub in names}, [NO_SUB_FOLDER]))
            leaves.update({("sub", main, sub): f"{main}.{sub}" for sub in names})
            if names:
                leaves[("any", main)] = f"{main}.{NO_SUB_FOLDER}"
            else:
                leaves[("main", main)] = main
        return cls(mains, subs, unique_folder_names(leaves, reserved))

    def main(self, main: str) -> str:
        return self.mains.get(("main", main)) or safe_folder_name(main)

    def sub(self, main: str, sub: str) -> str:
        return self.subs.get(("sub", main, sub)) or safe_folder_name(sub)

    def leaf(self, main: str, sub: str) -> str:
        """The leaf layout's folder of a label naming one sub-class."""
        return self.leaves.get(("sub", main, sub)) or safe_folder_name(f"{main}.{sub}")

    def leaf_of_main(self, main: str) -> str:
        """The leaf layout's folder of a main class without sub-classes."""
        return self.leaves.get(("main", main)) or safe_folder_name(main)

    def leaf_of_any(self, main: str) -> str:
        """The leaf layout's folder of a label naming no single sub-class of a main class that has them."""
        return self.leaves.get(("any", main)) or safe_folder_name(f"{main}.{NO_SUB_FOLDER}")


def exported_file_name(row: ExportRow) -> str:
    """``<name>_<sha8><suffix>``: the hash keeps same-named files from different folders apart."""
    source = Path(row.path)
    return f"{source.stem}_{row.sha256[:8]}{source.suffix.lower()}"


_NO_FOLDERS = ExportFolders({}, {}, {})


def imagefolder_relative_path(row: ExportRow, folders: ExportFolders = _NO_FOLDERS) -> Path:
    """``main/sub/<file>``; an image with no tag or several tags (a partial label) goes in ``main/``
    itself, an unlabelled one in ``_unlabelled/``. Folder names come from ``folders`` (unique per export)."""
    if not row.labelled:
        return Path(UNLABELLED_FOLDER) / exported_file_name(row)
    folder = Path(folders.main(row.main_class))
    if len(row.sub_classes) == 1:
        folder /= folders.sub(row.main_class, row.sub_classes[0])
    return folder / exported_file_name(row)


def hf_relative_path(row: ExportRow, layout: HfLayout, folders: ExportFolders = _NO_FOLDERS) -> Path:
    """Every file at one depth: ``main/<file>``; ``leaf/<file>`` with the leaf as ``main.sub`` (``main._any``
    for a label that names no single sub-class of a main class that has them, plain ``main`` otherwise); or
    ``main/sub/<file>`` with ``_any`` for a label that names no single sub-class. Folder names come from
    ``folders`` (unique per export)."""
    main = folders.main(row.main_class) if row.labelled else UNLABELLED_FOLDER
    if layout == "main":
        return Path(main) / exported_file_name(row)
    if layout == "leaf":
        if not row.labelled:
            return Path(UNLABELLED_FOLDER) / exported_file_name(row)
        if len(row.sub_classes) == 1:
            leaf = folders.leaf(row.main_class, row.sub_classes[0])
        elif row.leaf == row.main_class:
            leaf = folders.leaf_of_main(row.main_class)
        else:
            leaf = folders.leaf_of_any(row.main_class)
        return Path(leaf) / exported_file_name(row)
    sub = folders.sub(row.main_class, row.sub_classes[0]) if len(row.sub_classes) == 1 else NO_SUB_FOLDER
    return Path(main) / sub / exported_file_name(row)


def fiftyone_relative_path(row: ExportRow) -> Path:
    return Path(FIFTYONE_DATA) / exported_file_name(row)


def _empty_folder(out: Path) -> None:
    refuse_special_target(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder: choose a new --out")
    out.mkdir(parents=True, exist_ok=True)


def _with_files(
    project: Project,
    out: Path,
    options: ExportOptions,
    summary: ExportSummary,
    place_at: Callable[[ExportRow], Path],
) -> Iterator[tuple[ExportRow, str]]:
    """Rows whose image file was linked or copied into ``out``, with its path there (posix, relative)."""
    for row in _counted(iter_export_rows(project, options), summary):
        relative = place_at(row)
        outcome = _place(Path(row.path), out, relative, link=options.link)
        if outcome is None:
            summary.missing.append(row.path)
            summary.labelled -= row.labelled
            continue
        summary.linked += outcome == "linked"
        summary.copied += outcome == "copied"
        summary.rows += 1
        yield row, relative.as_posix()


def export_imagefolder(project: Project, out: Path, options: ExportOptions = ExportOptions()) -> ExportSummary:
    """Hard-link (or copy, across file systems or when ``link`` is False) each image into
    ``out/main/sub/``, with ``out/labels.csv`` describing every file (``exported_file``)."""
    _empty_folder(out)
    summary = ExportSummary()
    taxonomy = _taxonomy(project)
    columns = [*csv_columns(taxonomy, predictions=options.predictions), "exported_file"]
    paths = path_style(options, out)
    folders = ExportFolders.of(taxonomy, [UNLABELLED_FOLDER, IMAGEFOLDER_LABELS])
    place = lambda row: imagefolder_relative_path(row, folders)  # noqa: E731
    with _atomic_text(out / IMAGEFOLDER_LABELS) as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row, exported in _with_files(project, out, options, summary, place):
            record = csv_record(row, paths=paths, tags=lambda tags: _join_tags(tags, options.tag_separator))
            writer.writerow(spreadsheet_row({**record, "exported_file": exported}))
    return summary


def export_hf(project: Project, out: Path, options: ExportOptions = ExportOptions()) -> ExportSummary:
    """A Hugging Face ``imagefolder``: ``metadata.csv`` with ``file_name`` first, every file at one depth.
    ``sub_classes`` is a JSON list (``[]`` when none): datasets reads the CSV with pandas in chunks, and
    a column that is empty in a whole chunk would come back as float."""
    _empty_folder(out)
    summary = ExportSummary()
    taxonomy = _taxonomy(project)
    columns = ["file_name", *csv_columns(taxonomy, predictions=options.predictions)]
    paths = path_style(options, out)
    folders = ExportFolders.of(taxonomy, [UNLABELLED_FOLDER, HF_METADATA])
    with _atomic_text(out / HF_METADATA) as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        place = lambda row: hf_relative_path(row, options.layout, folders)  # noqa: E731
        for row, exported in _with_files(project, out, options, summary, place):
            record = csv_record(row, paths=paths, tags=lambda tags: json.dumps(list(tags), ensure_ascii=False))
            writer.writerow(spreadsheet_row({"file_name": exported, **record}))
    return summary


# COCO keeps per-image and per-annotation extras under these keys; everything else is standard COCO.
COCO_IMAGE_EXTRAS = ("sha256", "audit")
COCO_ANNOTATION_EXTRAS = ("main_class", "leaf", "sub_classes", "annotator", "labelled_at", "source", "strategy")


def coco_categories(taxonomy: Taxonomy) -> tuple[list[dict[str, Any]], dict[tuple[str, str | None], int]]:
    """One category per main class (partial labels use it) and one per sub-class; ``supercategory`` is
    always the main class. Also ``{(main, sub or None): category id}``."""
    categories: list[dict[str, Any]] = []
    ids: dict[tuple[str, str | None], int] = {}
    for main, subs in taxonomy.mains.items():
        for sub in (None, *subs):
            ids[(main, sub)] = len(categories) + 1
            categories.append({"id": len(categories) + 1, "name": sub or main, "supercategory": main})
    return categories, ids


def export_coco(project: Project, out: Path, options: ExportOptions = ExportOptions()) -> ExportSummary:
    """COCO-style image classification: ``images``, ``categories`` (supercategory = main class) and one
    ``annotations`` entry per label, whose ``category_id`` is its leaf (or its main class for a partial
    label); with predictions, a ``predictions`` list in COCO's results style (``score``)."""
    taxonomy = _taxonomy(project)
    categories, category_ids = coco_categories(taxonomy)
    paths = path_style(options, out.parent)
    summary = ExportSummary()
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    for row in _counted(iter_export_rows(project, options), summary):
        summary.rows += 1
        images.append(
            {
                "id": row.image_id,
                "file_name": paths(row.path),
                "width": row.width,
                "height": row.height,
                **{key: getattr(row, key) for key in COCO_IMAGE_EXTRAS},
            }
        )
        if row.labelled:
            sub = row.sub_classes[0] if len(row.sub_classes) == 1 else None
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": row.image_id,
                    "category_id": category_ids.get((row.main_class, sub), category_ids.get((row.main_class, None))),
                    **{key: getattr(row, key) for key in COCO_ANNOTATION_EXTRAS},
                }
            )
            annotations[-1]["sub_classes"] = list(row.sub_classes)
        if row.prediction is not None and row.prediction.main_class is not None:
            predicted_sub = row.prediction.leaf.partition("/")[2] if row.prediction.leaf else ""
            predictions.append(
                {
                    "image_id": row.image_id,
                    "category_id": category_ids.get(
                        (row.prediction.main_class, predicted_sub or None),
                        category_ids.get((row.prediction.main_class, None)),
                    ),
                    "score": row.prediction.confidence,
                    **_prediction_json(row.prediction),
                }
            )
    document: dict[str, Any] = {
        "info": {"description": f"{project.settings.name}: exported by Latent Labeller"},
        "images": images,
        "categories": categories,
        "annotations": annotations,
    }
    if options.predictions:
        document["predictions"] = predictions
    with _atomic_text(out) as stream:
        json.dump(document, stream, ensure_ascii=False, indent=1)
    return summary


def _prediction_json(prediction: RowPrediction) -> dict[str, Any]:
    record = asdict(prediction)
    record["leaf_probabilities"] = dict(prediction.leaf_probabilities)
    return record


def labelstudio_config(taxonomy: Taxonomy) -> str:
    """A Label Studio labeling config: the image and a Taxonomy of main classes with their sub-classes."""
    lines = [
        "<View>",
        f'  <Image name="{LABELSTUDIO_TO}" value="${LABELSTUDIO_TO}"/>',
        f'  <Taxonomy name="{LABELSTUDIO_FROM}" toName="{LABELSTUDIO_TO}">',
    ]
    for main, subs in taxonomy.mains.items():
        if not subs:
            lines.append(f"    <Choice value={quoteattr(main)}/>")
            continue
        lines.append(f"    <Choice value={quoteattr(main)}>")
        lines += [f"      <Choice value={quoteattr(sub)}/>" for sub in subs]
        lines.append("    </Choice>")
    lines += ["  </Taxonomy>", "</View>", ""]
    return "\n".join(lines)


def labelstudio_result(main: str, tags: Sequence[str]) -> list[dict[str, Any]]:
    """A Taxonomy result: one path per tag (several tags: a partial label), or the main class alone."""
    paths = [[main, tag] for tag in tags] or [[main]]
    return [
        {"from_name": LABELSTUDIO_FROM, "to_name": LABELSTUDIO_TO, "type": "taxonomy", "value": {"taxonomy": paths}}
    ]


def export_labelstudio(project: Project, out: Path, options: ExportOptions = ExportOptions()) -> ExportSummary:
    """``tasks.json`` (human labels as annotations, predictions as pre-annotations) and
    ``label_config.xml``. Image URLs are ``--url-prefix`` + the path relative to the root; the label's
    provenance rides in the task's ``data`` (Label Studio keeps and shows it)."""
    _empty_folder(out)
    taxonomy = _taxonomy(project)
    paths = path_style(options, out)
    summary = ExportSummary()
    tasks: list[dict[str, Any]] = []
    for row in _counted(iter_export_rows(project, options), summary):
        summary.rows += 1
        relative = paths(row.path)
        data: dict[str, Any] = {
            LABELSTUDIO_TO: options.url_prefix + quote(relative) if options.url_prefix else relative,
            "path": relative,
            "sha256": row.sha256,
            "image_id": row.image_id,
        }
        task: dict[str, Any] = {"data": data}
        if row.labelled:
            data.update(
                annotator=row.annotator,
                labelled_at=row.labelled_at,
                source=row.source,
                strategy=row.strategy,
                leaf=row.leaf,
            )
            task["annotations"] = [
                {"result": labelstudio_result(row.main_class, row.sub_classes), "created_at": row.labelled_at}
            ]
        if row.prediction is not None and row.prediction.main_class is not None:
            predicted_sub = row.prediction.leaf.partition("/")[2] if row.prediction.leaf else ""
            task["predictions"] = [
                {
                    "model_version": row.prediction.model_version,
                    "score": row.prediction.confidence,
                    "result": labelstudio_result(row.prediction.main_class, [predicted_sub] if predicted_sub else []),
                }
            ]
            data["prediction"] = _prediction_json(row.prediction)
        tasks.append(task)
    with _atomic_text(out / LABELSTUDIO_CONFIG) as stream:
        stream.write(labelstudio_config(taxonomy))
    with _atomic_text(out / LABELSTUDIO_TASKS) as stream:
        json.dump(tasks, stream, ensure_ascii=False, indent=1)
    return summary


def export_fiftyone(project: Project, out: Path, options: ExportOptions = ExportOptions()) -> ExportSummary:
    """FiftyOne's ``FiftyOneImageClassificationDataset``: ``data/<uuid><ext>`` and ``labels.json``
    (``{"classes": [...], "labels": {uuid: {"label": main class, ...} or null}}``). FiftyOne reads
    ``label`` and ``confidence``; the other keys (leaf, sub_classes, annotator, ...) are ours. The same
    format in ``leaf_labels.json`` (the leaf) and ``predictions.json`` (``label`` = the predicted main
    class, ``confidence``) loads as more fields through ``labels_path``."""
    _empty_folder(out)
    taxonomy = _taxonomy(project)
    paths = path_style(options, out)
    summary = ExportSummary()
    labels: dict[str, Any] = {}
    leaves: dict[str, Any] = {}
    predictions: dict[str, Any] = {}
    for row, exported in _with_files(project, out, options, summary, fiftyone_relative_path):
        uuid = Path(exported).stem
        labels[uuid] = None
        leaves[uuid] = {"label": row.leaf} if row.leaf else None
        if row.labelled:
            labels[uuid] = {
                "label": row.main_class,
                **{key: getattr(row, key) for key in COCO_ANNOTATION_EXTRAS},
                "sha256": row.sha256,
                "path": paths(row.path),
            }
            labels[uuid]["sub_classes"] = list(row.sub_classes)
        if row.prediction is not None and row.prediction.main_class is not None:
            predictions[uuid] = {
                "label": row.prediction.main_class,
                "confidence": row.prediction.confidence,
                **_prediction_json(row.prediction),
            }
    for name, mapping, classes in (
        (FIFTYONE_LABELS, labels, taxonomy.main_names),
        (FIFTYONE_LEAF_LABELS, leaves, taxonomy.leaf_names),
        (FIFTYONE_PREDICTIONS, predictions, taxonomy.main_names),
    ):
        if name == FIFTYONE_PREDICTIONS and not options.predictions:
            continue
        with _atomic_text(out / name) as stream:
            json.dump({"classes": classes, "labels": mapping}, stream, ensure_ascii=False, indent=1)
    return summary


def _place(source: Path, root: Path, relative: Path, *, link: bool) -> Literal["linked", "copied"] | None:
    if not source.is_file():
        return None
    target = root / relative
    _make_folders(root, target.parent)
    refuse_special_target(target)
    if link:
        try:
            os.link(source, target)  # never follows a link at target: it fails if the name is taken
            return "linked"
        except OSError:
            pass  # another file system, links not allowed, or the name taken: copy instead
    # Copied under a new name and renamed: never written into an existing file (a hard link to someone's
    # image) or through a symbolic link.
    handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream, source.open("rb") as original:
            shutil.copyfileobj(original, stream)
        shutil.copystat(source, tmp_name)
        refuse_special_target(target)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return "copied"


EXPORTERS: dict[ExportFormat, Callable[[Project, Path, ExportOptions], ExportSummary]] = {
    "csv": export_csv,
    "jsonl": export_jsonl,
    "imagefolder": export_imagefolder,
    "hf": export_hf,
    "coco": export_coco,
    "labelstudio": export_labelstudio,
    "fiftyone": export_fiftyone,
}


def export_labels(
    project: Project, format: ExportFormat, out: Path, options: ExportOptions | None = None, *, link: bool = True
) -> ExportSummary:
    options = options or ExportOptions(link=link)
    exporter = EXPORTERS.get(format)
    if exporter is None:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    refuse_special_target(out)
    if format not in FOLDER_FORMATS and out.is_dir():
        raise ExportError(f"{out} is a folder: --out names the {format} file to write, e.g. {out / f'labels.{format}'}")
    try:
        return exporter(project, out, options)
    except OSError as error:
        raise ExportError(f"cannot write {error.filename or out}: {error.strerror or error}") from error
