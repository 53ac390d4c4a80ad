"""The Label page's operations outside the card: claim a requested image, correct, bulk label, my history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
from db.schema import AnnotationKind, AnnotationSource
from labeller.app.services.common import active_model_version_id


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


def my_history(engine: Engine, annotator_id: int, limit: int = 10) -> list[AnnotationView]:
    """My newest decisions that still stand (undone and corrected ones drop out), newest first."""
    with reading(engine) as session:
        return [view for view in recent_annotations(session, annotator_id, limit * 3) if view.current][:limit]
