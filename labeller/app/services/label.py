"""The Label page's one-image operations: claim, decide, correct, bulk label, and the image card."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from db.engine import reading, unit_of_work
from db.queries import app_views
from db.queries.annotations import (
    AnnotationView,
    recent_annotations,
    record_annotation,
    served_by_claim,
)
from db.queries.queue import serve_next
from db.schema import AnnotationKind, AnnotationSource
from labeller.app.services.common import TaxonomyView, active_model_version_id, large_view_file
from labeller.project import Project


@dataclass(frozen=True)
class Decision:
    """One annotator decision on the Label page."""

    kind: AnnotationKind
    main_class_id: int | None = None
    sub_class_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class QueuedImage:
    image_id: int
    strategy: str  # the one asked for
    model_version_id: int | None
    source: AnnotationSource = AnnotationSource.UNKNOWN  # what served it (its claim records it too)
    served_strategy: str | None = None  # the strategy whose own order served it, if one did


@dataclass(frozen=True)
class StepResult:
    annotation_id: int | None
    next: QueuedImage | None


def claim_next(engine: Engine, *, annotator_id: int, strategy: str, lease_seconds: int) -> QueuedImage | None:
    with unit_of_work(engine) as session:
        return _claim_next(session, annotator_id=annotator_id, strategy=strategy, lease_seconds=lease_seconds)


def _claim_next(session: Session, *, annotator_id: int, strategy: str, lease_seconds: int) -> QueuedImage | None:
    version_id = active_model_version_id(session)
    served = serve_next(
        session,
        annotator_id=annotator_id,
        strategy=strategy,
        model_version_id=version_id,
        lease_seconds=lease_seconds,
    )
    if served is None:
        return None
    return QueuedImage(served.image_id, strategy, version_id, served.source, served.strategy)


def _held(session: Session, image_id: int, annotator_id: int, strategy: str) -> QueuedImage:
    """The image the annotator now holds a claim on, with what served it (as the claim records)."""
    source, served_strategy = served_by_claim(session, image_id, annotator_id)
    return QueuedImage(image_id, strategy, active_model_version_id(session), source, served_strategy)


def claim_requested(
    engine: Engine, *, annotator_id: int, image_id: int, strategy: str, lease_seconds: int
) -> QueuedImage | None:
    """Claim one image asked for by id (a link such as ``?image=42``); None when it does not exist or
    another annotator holds it."""
    with unit_of_work(engine) as session:
        if app_views.image_by_id(session, image_id) is None:
            return None
        claim = app_views.claim_image(
            session,
            image_id=image_id,
            annotator_id=annotator_id,
            lease_seconds=lease_seconds,
            source=AnnotationSource.REQUESTED,
        )
        if claim is None:
            return None
        return _held(session, image_id, annotator_id, strategy)


def decide_and_advance(
    engine: Engine,
    *,
    annotator_id: int,
    current: QueuedImage,
    decision: Decision,
    strategy: str,
    lease_seconds: int,
) -> StepResult:
    """Record the decision on the current image and claim the next one, in one transaction. The annotation
    records what served the image, as its claim says (``record_annotation``)."""
    with unit_of_work(engine) as session:
        annotation = record_annotation(
            session,
            image_id=current.image_id,
            annotator_id=annotator_id,
            kind=decision.kind,
            main_class_id=decision.main_class_id,
            sub_class_ids=decision.sub_class_ids,
            model_version_id=current.model_version_id,
        )
        annotation_id = annotation.id  # recording it also released my claim on the image
        upcoming = _claim_next(session, annotator_id=annotator_id, strategy=strategy, lease_seconds=lease_seconds)
    return StepResult(annotation_id, upcoming)


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
            source=AnnotationSource.HISTORY,
        ).id


def label_many(
    engine: Engine,
    *,
    annotator_id: int,
    image_ids: Sequence[int],
    decision: Decision,
    source: AnnotationSource = AnnotationSource.GRID,
) -> int:
    """Give every image in ``image_ids`` the same decision (Grid bulk labelling; ``source`` EXPLORE for an
    Explore selection)."""
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
            strategy=queued.source.describe(queued.served_strategy),
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
