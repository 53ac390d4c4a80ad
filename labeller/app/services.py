"""What the app's pages do, as plain functions over an engine and a project (no Streamlit here).

Each function is one unit of work: it opens a session with ``unit_of_work``, calls the query functions
in ``db/queries`` and returns plain dataclasses, so pages stay layout-only and the benchmark and the
tests can call exactly the code a key press runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from core.registry import MODEL_KINDS
from db.engine import reading, unit_of_work
from db.queries import app_views
from db.queries import jobs as job_queries
from db.queries.annotations import (
    AnnotationView,
    Disagreement,
    LabelCounts,
    agreement,
    current_labels,
    disagreements,
    label_counts,
    recent_annotations,
    record_annotation,
    undo_annotation,
)
from db.queries.annotators import list_annotators
from db.queries.images import image_count
from db.queries.jobs import enqueue_job, get_job, job_events, list_jobs, request_cancel
from db.queries.models import active_model_version, list_model_versions, rollback_model_version
from db.queries.queue import next_image
from db.queries.taxonomy import apply_taxonomy_spec, taxonomy_spec
from db.schema import MAX_ID, AnnotationKind, Image, Job
from labeller.app.keys import KeyMap, build_key_map
from labeller.ingest import ImportReport
from labeller.project import Project

LARGE_VIEW_SIZE = 768  # longest side of the Label page's image, pixels
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


class UnsafePathError(ValueError):
    """A file the app was asked to show lies outside the project's image roots."""


# ----------------------------------------------------------------------------------------- taxonomy


@dataclass(frozen=True)
class SubClassView:
    id: int
    name: str
    main_class_id: int


@dataclass(frozen=True)
class MainClassView:
    id: int
    name: str
    colour: str | None
    sub_classes: tuple[SubClassView, ...]


@dataclass(frozen=True)
class TaxonomyView:
    main_classes: tuple[MainClassView, ...]
    keys: KeyMap

    def main_name(self, main_id: int | None) -> str:
        return next((m.name for m in self.main_classes if m.id == main_id), "-")

    def sub_name(self, sub_id: int | None) -> str:
        return next((s.name for m in self.main_classes for s in m.sub_classes if s.id == sub_id), "-")

    def sub_class(self, sub_id: int) -> SubClassView | None:
        return next((s for m in self.main_classes for s in m.sub_classes if s.id == sub_id), None)

    def main_class(self, main_id: int) -> MainClassView | None:
        return next((m for m in self.main_classes if m.id == main_id), None)


def load_taxonomy(session: Session) -> TaxonomyView:
    rows = app_views.taxonomy_rows(session)
    keys = build_key_map(
        [(m.id, m.name, m.shortcut) for m in rows],
        {m.id: [(s.id, s.name, s.shortcut) for s in m.sub_classes] for m in rows},
    )
    mains = tuple(
        MainClassView(m.id, m.name, m.colour, tuple(SubClassView(s.id, s.name, m.id) for s in m.sub_classes))
        for m in rows
    )
    return TaxonomyView(mains, keys)


def active_model_version_id(session: Session) -> int | None:
    version = active_model_version(session)
    return None if version is None else version.id


# ----------------------------------------------------------------------------------------- images


def check_servable(path: Path, roots: Sequence[Path]) -> Path:
    """``path`` with symlinks resolved, if it is an image file inside one of ``roots``."""
    resolved = path.resolve()
    if resolved.suffix.lower() not in IMAGE_SUFFIXES:
        raise UnsafePathError(f"{path} is not an image file")
    if not any(resolved.is_relative_to(root) for root in roots):
        raise UnsafePathError(f"{path} lies outside the project's image roots")
    if not resolved.is_file():
        raise FileNotFoundError(f"image file {path} is missing")
    return resolved


def display_file(project: Project, image: Image) -> Path:
    """The cached, resized file to show for ``image`` (made once), checked to lie inside the project."""
    from labeller.thumbnails import thumbnail_path

    thumb = thumbnail_path(project, image)
    return check_servable(thumb, [project.thumbs_dir.resolve()])


def display_files(engine: Engine, project: Project, image_ids: Sequence[int]) -> dict[int, Path]:
    """Thumbnail files of several images, by image id."""
    with unit_of_work(engine) as session:
        return {image.id: display_file(project, image) for image in app_views.images_by_ids(session, image_ids)}


def large_view_file(project: Project, image: Image) -> Path:
    """A larger cached copy for the Label page (made once, like the thumbnails), checked the same way."""
    from PIL import Image as PILImage

    from labeller.thumbnails import thumbnail_file, write_thumbnail

    target = thumbnail_file(project.thumbs_dir / "large", image.sha256)
    if not target.exists():
        with PILImage.open(project.resolve_image_path(image.path)) as source:
            write_thumbnail(source, target, size=LARGE_VIEW_SIZE)
    return check_servable(target, [project.thumbs_dir.resolve()])


def parse_image_id(value: object) -> int | None:
    """An image id from a URL parameter: a positive integer that fits an id column, or nothing (never a path).
    ASCII digits only: ``str.isdigit`` accepts "²", which ``int`` then refuses."""
    text = str(value).strip() if value is not None else ""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_ID)):
        return None
    number = int(text)
    return number if 0 < number <= MAX_ID else None


# ----------------------------------------------------------------------------------------- labelling


@dataclass(frozen=True)
class Decision:
    """One annotator decision on the Label page."""

    kind: AnnotationKind
    main_class_id: int | None = None
    sub_class_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class QueuedImage:
    image_id: int
    strategy: str
    model_version_id: int | None


@dataclass(frozen=True)
class StepResult:
    annotation_id: int | None
    next: QueuedImage | None


def claim_next(engine: Engine, *, annotator_id: int, strategy: str, lease_seconds: int) -> QueuedImage | None:
    with unit_of_work(engine) as session:
        return _claim_next(session, annotator_id=annotator_id, strategy=strategy, lease_seconds=lease_seconds)


def _claim_next(session: Session, *, annotator_id: int, strategy: str, lease_seconds: int) -> QueuedImage | None:
    version_id = active_model_version_id(session)
    image_id = next_image(
        session,
        annotator_id=annotator_id,
        strategy=strategy,
        model_version_id=version_id,
        lease_seconds=lease_seconds,
    )
    return None if image_id is None else QueuedImage(image_id, strategy, version_id)


def claim_requested(
    engine: Engine, *, annotator_id: int, image_id: int, strategy: str, lease_seconds: int
) -> QueuedImage | None:
    """Claim one image asked for by id (a link such as ``?image=42``); None when it does not exist or
    another annotator holds it."""
    with unit_of_work(engine) as session:
        if app_views.image_by_id(session, image_id) is None:
            return None
        if not app_views.claim_image(
            session, image_id=image_id, annotator_id=annotator_id, lease_seconds=lease_seconds
        ):
            return None
        return QueuedImage(image_id, strategy, active_model_version_id(session))


def decide_and_advance(
    engine: Engine,
    *,
    annotator_id: int,
    current: QueuedImage,
    decision: Decision,
    strategy: str,
    lease_seconds: int,
) -> StepResult:
    """Record the decision on the current image and claim the next one, in one transaction."""
    with unit_of_work(engine) as session:
        annotation = record_annotation(
            session,
            image_id=current.image_id,
            annotator_id=annotator_id,
            kind=decision.kind,
            main_class_id=decision.main_class_id,
            sub_class_ids=decision.sub_class_ids,
            model_version_id=current.model_version_id,
            strategy=current.strategy,
            source="app",
        )
        annotation_id = annotation.id  # recording it also released my claim on the image
        upcoming = _claim_next(session, annotator_id=annotator_id, strategy=strategy, lease_seconds=lease_seconds)
    return StepResult(annotation_id, upcoming)


def undo_and_return(
    engine: Engine,
    *,
    annotator_id: int,
    annotation_id: int,
    current: QueuedImage | None,
    strategy: str,
    lease_seconds: int,
) -> QueuedImage:
    """Withdraw one of my annotations and put its image back in front of me."""
    with unit_of_work(engine) as session:
        undone = undo_annotation(session, annotation_id, annotator_id)
        image_id = undone.image_id
        if current is not None and current.image_id != image_id:
            app_views.drop_claims(session, [current.image_id], annotator_id)
        app_views.claim_image(session, image_id=image_id, annotator_id=annotator_id, lease_seconds=lease_seconds)
        version_id = active_model_version_id(session)
    return QueuedImage(image_id, strategy, version_id)


def release(engine: Engine, *, annotator_id: int, image_id: int) -> None:
    """Give back my claim on an image I will not label now (e.g. the queue order changed)."""
    with unit_of_work(engine) as session:
        app_views.drop_claims(session, [image_id], annotator_id)


def correct_annotation(engine: Engine, *, annotator_id: int, image_id: int, decision: Decision) -> int:
    """Replace my label of an already labelled image (the history editor on the Label page)."""
    with unit_of_work(engine) as session:
        return record_annotation(
            session,
            image_id=image_id,
            annotator_id=annotator_id,
            kind=decision.kind,
            main_class_id=decision.main_class_id,
            sub_class_ids=decision.sub_class_ids,
            source="history",
        ).id


def label_many(
    engine: Engine, *, annotator_id: int, image_ids: Sequence[int], decision: Decision, source: str = "grid"
) -> int:
    """Give every image in ``image_ids`` the same decision (Grid and Explore bulk labelling)."""
    with unit_of_work(engine) as session:
        for image_id in image_ids:
            record_annotation(
                session,
                image_id=image_id,
                annotator_id=annotator_id,
                kind=decision.kind,
                main_class_id=decision.main_class_id,
                sub_class_ids=decision.sub_class_ids,
                source=source,
            )
    return len(image_ids)


@dataclass(frozen=True)
class ImageCard:
    """Everything the Label page shows about one image."""

    image_id: int
    file: Path
    name: str
    width: int
    height: int
    strategy: str
    score: float | None
    predicted_main: str | None
    predicted_sub: str | None
    main_probabilities: dict[str, float] = field(default_factory=dict)
    leaf_probabilities: dict[str, float] = field(default_factory=dict)
    audit: bool = False


def image_card(engine: Engine, project: Project, queued: QueuedImage, taxonomy: TaxonomyView) -> ImageCard:
    with unit_of_work(engine) as session:
        image = app_views.image_by_id(session, queued.image_id)
        if image is None:
            raise LookupError(f"no image {queued.image_id}")
        prediction = app_views.prediction_for(session, queued.model_version_id, queued.image_id)
        file = large_view_file(project, image)
        score = None
        if prediction is not None and queued.strategy != "random":
            score = getattr(prediction, queued.strategy, None)
        probabilities = prediction.probabilities if prediction is not None else {}
        return ImageCard(
            image_id=image.id,
            file=file,
            name=Path(image.path).name,
            width=image.width,
            height=image.height,
            strategy=queued.strategy if queued.model_version_id is not None else "cold start",
            score=score,
            predicted_main=taxonomy.main_name(prediction.main_class_id) if prediction else None,
            predicted_sub=taxonomy.sub_name(prediction.sub_class_id)
            if prediction and prediction.sub_class_id
            else None,
            main_probabilities=dict(probabilities.get("main", {})),
            leaf_probabilities=dict(probabilities.get("leaf", {})),
            audit=image.audit,
        )


def my_history(engine: Engine, annotator_id: int, limit: int = 10) -> list[AnnotationView]:
    """My newest decisions that still stand (undone and corrected ones drop out), newest first."""
    with reading(engine) as session:
        return [view for view in recent_annotations(session, annotator_id, limit * 3) if view.current][:limit]


# ----------------------------------------------------------------------------------------- grid


@dataclass(frozen=True)
class Tile:
    row: app_views.GridRow
    file: Path


def grid_page(
    engine: Engine,
    project: Project,
    *,
    mode: str,
    strategy: str = "entropy",
    main_class_id: int | None = None,
    search: str = "",
    image_ids: Sequence[int] = (),
    page: int = 0,
    page_size: int = 24,
) -> tuple[list[Tile], int]:
    """One page of the Grid under a filter (see ``app_views.grid_images``) and the filter's total count."""
    with reading(engine) as session:
        rows, total = app_views.grid_images(
            session,
            mode=mode,
            model_version_id=active_model_version_id(session),
            strategy=strategy,
            main_class_id=main_class_id,
            search=search,
            image_ids=image_ids,
            offset=page * page_size,
            limit=page_size,
        )
        images = {image.id: image for image in app_views.images_by_ids(session, [row.image_id for row in rows])}
        return [Tile(row, display_file(project, images[row.image_id])) for row in rows], total


MATCHING_LIMIT = 20_000  # "Select all that match" takes at most this many images at once


def grid_matching_ids(
    engine: Engine,
    *,
    mode: str,
    strategy: str = "entropy",
    main_class_id: int | None = None,
    search: str = "",
    image_ids: Sequence[int] = (),
    limit: int = MATCHING_LIMIT,
) -> list[int]:
    """Every image under a Grid filter, on every page, in page order (at most ``limit``)."""
    with reading(engine) as session:
        rows, _ = app_views.grid_images(
            session,
            mode=mode,
            model_version_id=active_model_version_id(session),
            strategy=strategy,
            main_class_id=main_class_id,
            search=search,
            image_ids=image_ids,
            offset=0,
            limit=limit,
        )
    return [row.image_id for row in rows]


# ----------------------------------------------------------------------------------------- review


@dataclass(frozen=True)
class AgreementRow:
    annotator_a: str
    annotator_b: str
    images: int
    observed_agreement: float
    cohen_kappa: float


@dataclass(frozen=True)
class ReviewSummary:
    counts: list[tuple[str, str, int]]  # (annotator, kind, current annotations)
    agreements: list[AgreementRow]
    disagreements: list[Disagreement]


def kappa_text(kappa: float, images: int) -> str:
    """Cohen's kappa for a table: a number, or why there is none (it is undefined when both annotators
    used one class throughout, as on a single shared image)."""
    if math.isnan(kappa):
        return f"undefined ({images} shared image{'s' if images != 1 else ''}, one class)"
    return f"{kappa:.2f}"


def labels_conflict(labels: Sequence[tuple[str, str, tuple[str, ...]]]) -> bool:
    """True when no sub-class fits every label: different main classes, or tag sets with nothing in common.
    A label without tags stands for all its main class's sub-classes (a partial label), so it fits any tag;
    "loops" and "loops / 6" agree."""
    if len({main for _, main, _ in labels}) > 1:
        return True
    tag_sets = [set(tags) for _, _, tags in labels if tags]
    return bool(tag_sets) and not set.intersection(*tag_sets)


def review_summary(engine: Engine) -> ReviewSummary:
    """Per-annotator counts, Cohen's kappa for every pair of annotators, and images they disagree on."""
    with reading(engine) as session:
        annotators = list_annotators(session)
        rows = []
        for a, b in itertools.combinations(annotators, 2):
            result = agreement(session, a.id, b.id)
            if result.images:
                rows.append(AgreementRow(a.name, b.name, result.images, result.observed_agreement, result.kappa))
        return ReviewSummary(
            counts=app_views.annotation_counts_by_annotator(session),
            agreements=rows,
            disagreements=[d for d in disagreements(session) if labels_conflict(d.labels)],
        )


def likely_mistakes(engine: Engine, *, min_confidence: float, limit: int = 24) -> list[app_views.ModelDisagreement]:
    """Human labels the active model contradicts with at least ``min_confidence``."""
    with reading(engine) as session:
        version_id = active_model_version_id(session)
        if version_id is None:
            return []
        return app_views.confident_disagreements(session, version_id, min_confidence=min_confidence, limit=limit)


# ----------------------------------------------------------------------------------------- training

TRAIN_MODELS = MODEL_KINDS  # core.registry: the one list of model kinds


@dataclass(frozen=True)
class JobView:
    id: int
    kind: str
    status: str
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    cancel_requested: bool
    model_version_id: int | None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed", "cancelled")


def _job_view(job: Job) -> JobView:
    return JobView(
        job.id,
        job.kind,
        str(job.status),
        dict(job.params or {}),
        job.created_at,
        job.started_at,
        job.finished_at,
        job.error,
        job.cancel_requested,
        job.model_version_id,
    )


class TrainingInProgress(ValueError):
    """A train job is already queued or running: one click, one job."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"train job {job_id} is already queued or running; it is shown below")
        self.job_id = job_id


def pending_training(engine: Engine) -> JobView | None:
    """The queued or running train job, if any (the oldest when there are several)."""
    from db.queries.jobs import pending_jobs

    with reading(engine) as session:
        pending = pending_jobs(session, kind="train")
        return _job_view(pending[0]) if pending else None


def start_training(engine: Engine, *, model: str, epochs: int, device: str, backbone: str | None = None) -> int:
    """Queue a train job for a worker; returns its id. The app never trains in its own process.

    Refused with TrainingInProgress while a train job is queued or running (a double click queues one job).
    ``backbone``: the job's input (pixels or a backbone name); None leaves it to the project's setting."""
    from sqlalchemy import text

    from db.queries.jobs import AUTO_RETRAIN_LOCK_KEY, pending_jobs
    from labeller.jobs.params import TrainParams

    params = TrainParams(model=model, epochs=int(epochs), device=device, backbone=backbone, reason="app")
    if problems := params.problems():
        raise ValueError("; ".join(problems))
    with unit_of_work(engine) as session:
        if session.get_bind().dialect.name == "postgresql":
            # Two clicks in two sessions (or the worker's auto retrain) must not both see no job and queue one;
            # SQLite's BEGIN IMMEDIATE already serialises them.
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUTO_RETRAIN_LOCK_KEY})
        pending = pending_jobs(session, kind="train")
        if pending:
            raise TrainingInProgress(pending[0].id)
        return enqueue_job(session, "train", params.to_params()).id


def cancel(engine: Engine, job_id: int) -> JobView:
    with unit_of_work(engine) as session:
        return _job_view(request_cancel(session, job_id))


def recent_jobs(engine: Engine, *, limit: int = 10) -> list[JobView]:
    with reading(engine) as session:
        return [_job_view(job) for job in list_jobs(session, limit=limit)]


def job_progress(engine: Engine, job_id: int) -> tuple[JobView, list[dict[str, Any]], list[str]]:
    """The job, its progress payloads (each with the event time) and its log messages, oldest first."""
    with reading(engine) as session:
        job = _job_view(get_job(session, job_id))
        events = job_events(session, job_id)
        progress = [{**event.payload, "time": event.created_at} for event in events if event.kind == "progress"]
        logs = [str(event.payload.get("message", event.payload)) for event in events if event.kind == "log"]
    return job, progress, logs


def flatten_progress(payloads: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per progress event: nested dicts (loss terms, validation metrics) become
    ``loss_terms.kl``-style keys; a running step counter ``global_step`` is added for plotting."""
    rows = []
    for index, payload in enumerate(payloads):
        row: dict[str, Any] = {"global_step": index}
        for key, value in payload.items():
            if isinstance(value, dict):
                row.update({f"{key}.{inner}": v for inner, v in value.items() if isinstance(v, int | float)})
            else:
                row[key] = value
        epoch, steps, step = row.get("epoch"), row.get("steps_per_epoch"), row.get("step")
        if isinstance(epoch, int | float) and isinstance(steps, int | float) and isinstance(step, int | float):
            row["global_step"] = (epoch - 1) * steps + step
        rows.append(row)
    return rows


@dataclass(frozen=True)
class VersionView:
    id: int
    name: str
    model_kind: str
    created_at: datetime
    active: bool
    label_count: int
    metrics: dict[str, Any]
    config: dict[str, Any]


def model_versions(engine: Engine) -> list[VersionView]:
    with reading(engine) as session:
        return [
            VersionView(
                v.id,
                v.name,
                v.model_kind,
                v.created_at,
                v.active,
                v.label_count,
                dict(v.metrics or {}),
                dict(v.config or {}),
            )
            for v in list_model_versions(session)
        ]


def promote(engine: Engine, version_id: int) -> str:
    """Promote now if the version is scored, else queue the score job that promotes it; says which."""
    with unit_of_work(engine) as session:
        job = job_queries.promote_when_scored(session, version_id)
    if job is None:
        return f"Model version {version_id} is active."
    return f"Model version {version_id} is being scored (job {job.id}); it becomes active once its predictions are in."


def roll_back(engine: Engine) -> int:
    with unit_of_work(engine) as session:
        return rollback_model_version(session).id


def counts(engine: Engine) -> LabelCounts:
    with reading(engine) as session:
        return label_counts(session)


# ----------------------------------------------------------------------------------------- explore

COLOUR_BY = {
    "human": "Human label",
    "predicted": "Predicted class",
    "predicted_sub": "Predicted sub-class",
    "entropy": "Uncertainty (entropy)",
    "novelty": "Novelty",
    "disagreement": "Disagreement",
}


@dataclass(frozen=True)
class EmbeddingView:
    model_version_id: int
    image_ids: list[int]
    x: list[float]
    y: list[float]
    colour: list[float]  # numeric: a score, or a category index (NaN: none)
    categories: list[str]  # names of the category indices; empty for a score
    hover: list[str]
    labelled: list[bool]  # a human label exists; these points come last, so they are drawn on top


def labelled_last(labelled: Sequence[bool]) -> list[int]:
    """Row order that draws labelled points above unlabelled ones (a scatter paints in row order), keeping
    the order within each group."""
    return [i for i, flag in enumerate(labelled) if not flag] + [i for i, flag in enumerate(labelled) if flag]


def embedding_view(engine: Engine, taxonomy: TaxonomyView, colour_by: str) -> EmbeddingView | None:
    """The active version's UMAP points, coloured by one of ``COLOUR_BY``; None without coordinates."""
    if colour_by not in COLOUR_BY:
        raise ValueError(f"unknown colouring {colour_by!r}; expected one of {sorted(COLOUR_BY)}")
    with reading(engine) as session:
        version_id = active_model_version_id(session)
        if version_id is None:
            return None
        points = app_views.embedding_points(session, version_id)
        human = app_views.human_main_labels(session) if points.image_ids else {}
    if not points.image_ids:
        return None
    nan = float("nan")
    categories: list[str] = []
    if colour_by in ("human", "predicted"):
        categories = [m.name for m in taxonomy.main_classes]
        index = {m.id: i for i, m in enumerate(taxonomy.main_classes)}
        source = [human.get(i) for i in points.image_ids] if colour_by == "human" else points.predicted_main_id
        colour = [float(index[c]) if c in index else nan for c in source]
    elif colour_by == "predicted_sub":
        subs = [s for m in taxonomy.main_classes for s in m.sub_classes]
        categories = [f"{taxonomy.main_name(s.main_class_id)}/{s.name}" for s in subs]
        index = {s.id: i for i, s in enumerate(subs)}
        colour = [float(index[c]) if c in index else nan for c in points.predicted_sub_id]
    else:
        values = {"entropy": points.entropy, "novelty": points.novelty, "disagreement": points.disagreement}[colour_by]
        colour = [nan if v is None else float(v) for v in values]
    hover = [
        f"image {image_id}<br>label: {taxonomy.main_name(human.get(image_id))}"
        f"<br>predicted: {taxonomy.main_name(main)} ({confidence:.0%})<br>entropy {entropy:.2f}"
        for image_id, main, confidence, entropy in zip(
            points.image_ids, points.predicted_main_id, points.confidence, points.entropy, strict=True
        )
    ]
    labelled = [image_id in human for image_id in points.image_ids]
    order = labelled_last(labelled)

    def ordered(values: Sequence[Any]) -> list[Any]:
        return [values[i] for i in order]

    return EmbeddingView(
        version_id,
        ordered(points.image_ids),
        ordered(points.x),
        ordered(points.y),
        ordered(colour),
        categories,
        ordered(hover),
        ordered(labelled),
    )


# ----------------------------------------------------------------------------------------- data

UPLOADS_FOLDER = "uploads"


def import_folder(project: Project, folder: str, *, labels_from_folders: bool) -> ImportReport:
    """Import a folder on the server (the Data page's path box)."""
    from labeller.ingest import ImportOptions, import_images

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder on the server")
    options = ImportOptions(labels_from_folders=labels_from_folders, progress=False)
    return import_images(project, [path], options=options)


def import_uploads(project: Project, files: Sequence[tuple[str, bytes]]) -> ImportReport:
    """Save browser uploads under ``project/uploads/<time>/`` (inside the project, so they move with it)
    and import them. Names are reduced to their last component: an upload never writes elsewhere."""
    from labeller.ingest import ImportOptions, import_images

    folder = project.root / UPLOADS_FOLDER / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder.mkdir(parents=True)
    for index, (name, data) in enumerate(files):
        save_upload(folder, name, data, index=index)
    return import_images(project, [folder], options=ImportOptions(progress=False))


def save_upload(folder: Path, name: str, data: bytes, *, index: int = 0) -> Path:
    """Write one upload into ``folder`` under its own name's last component, never over another file:
    several uploads may share a name (``x.png`` from two folders), so a taken name gets `` (2)``,
    `` (3)``... The file is created exclusively, so nothing already there is ever replaced."""
    # Browsers send a bare name, but a Windows path or a NUL must not reach the file system either.
    safe = PureWindowsPath(name.replace("\x00", "")).name
    safe = Path(safe).name if safe not in ("", ".", "..") else ""
    stem, suffix = (Path(safe).stem, Path(safe).suffix) if safe else (f"upload-{index}", "")
    for attempt in itertools.count(1):
        target = folder / (f"{stem}{suffix}" if attempt == 1 else f"{stem} ({attempt}){suffix}")
        try:
            with target.open("xb") as stream:
                stream.write(data)
            return target
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def taxonomy_toml(engine: Engine) -> str:
    from labeller.taxonomy_file import taxonomy_to_toml

    with reading(engine) as session:
        return taxonomy_to_toml(taxonomy_spec(session))


def apply_taxonomy_toml(engine: Engine, text: str) -> list[str]:
    """Parse and apply an edited taxonomy (renames and merges keep every label); returns the changes.
    Any problem raises before anything is written."""
    from labeller.taxonomy_file import parse_taxonomy_toml

    spec = parse_taxonomy_toml(text, source="the taxonomy editor")
    with unit_of_work(engine) as session:
        return apply_taxonomy_spec(session, spec).lines


def labels_csv(project: Project) -> str:
    """Every labelled image's current label and provenance, in ``labeller export``'s CSV format."""
    import io

    from labeller.export import iter_export_rows, write_csv

    buffer = io.StringIO()
    write_csv(iter_export_rows(project), buffer)
    return buffer.getvalue()


def labels_jsonl(project: Project) -> str:
    """The same rows as JSON lines."""
    import json
    from dataclasses import asdict

    from labeller.export import iter_export_rows

    return "".join(json.dumps(asdict(row), ensure_ascii=False) + "\n" for row in iter_export_rows(project))


def image_total(engine: Engine) -> int:
    with reading(engine) as session:
        return image_count(session)


# ----------------------------------------------------------------------------------------- decoder


def active_checkpoint(engine: Engine, project: Project) -> tuple[int, Path] | None:
    """(version id, checkpoint file) of the active model version, if there is one and its file exists."""
    with reading(engine) as session:
        version = active_model_version(session)
        if version is None:
            return None
        path = project.resolve_image_path(version.checkpoint_path)
        return (version.id, path) if path.is_file() else None


def examples_per_sub_class(engine: Engine, *, per_class: int = 4) -> dict[str, list[int]]:
    """Up to ``per_class`` human-labelled images per sub-class tag (``main/sub``), in label order."""
    examples: dict[str, list[int]] = {}
    with reading(engine) as session:
        for label in current_labels(session):
            for tag in label.tags or (None,):
                name = label.main_class if tag is None else f"{label.main_class}/{tag}"
                bucket = examples.setdefault(name, [])
                if len(bucket) < per_class:
                    bucket.append(label.image_id)
    return dict(sorted(examples.items()))


def decoder_samples(trained: Any, per_leaf: int = 8) -> dict[str, np.ndarray]:
    """What the active model imagines for each sub-class: uint8 HxWxC images drawn from its decoder."""
    from core.generation import samples_per_leaf

    return samples_per_leaf(trained, per_leaf)


def reconstructions(
    engine: Engine, project: Project, trained: Any, image_ids: Sequence[int]
) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(image id, input, decoder reconstruction) as uint8 HxWxC arrays at the model's input size."""
    from core.data import load_images
    from core.generation import reconstruct

    channels, size, _ = trained.image_shape
    with reading(engine) as session:
        images = {image.id: image for image in app_views.images_by_ids(session, image_ids)}
    ids = [image_id for image_id in image_ids if image_id in images]
    pixels = load_images([project.resolve_image_path(images[i].path) for i in ids], size, channels)
    decoded = reconstruct(trained, pixels)
    return [(i, pixels[n].transpose(1, 2, 0), decoded[n]) for n, i in enumerate(ids)]
