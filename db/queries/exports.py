"""Reads for exports (predictions by image, image ids by path) and the one write a lossless import needs:
a label recorded with its original annotator, time and provenance."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.queries.annotations import record_annotation
from db.schema import AnnotationKind, AnnotationSource, Image, MainClass, ModelVersion, Prediction, SubClass

_ID_CHUNK = 500
SCORE_COLUMNS: tuple[str, ...] = (
    "entropy",
    "leaf_entropy",
    "margin",
    "least_confidence",
    "bald",
    "disagreement",
    "novelty",
)


@dataclass(frozen=True)
class PredictionView:
    """One model version's prediction for one image, by class names."""

    image_id: int
    main_class: str | None
    sub_class: str | None
    confidence: float
    probabilities: dict[str, Any]  # {"main": {name: p}, "leaf": {"main/sub": p}}
    scores: dict[str, float | None]


@dataclass(frozen=True)
class VersionView:
    id: int
    name: str
    # Labels up to this annotation id were in the version's training data, audit labels apart (0: unknown).
    newest_annotation_id: int
    # The images whose labels the version was fitted on (audit held out); None for a version trained before
    # they were stored, where only newest_annotation_id says.
    trained_image_ids: frozenset[int] | None = None


def model_version_view(session: Session, version_id: int | None) -> VersionView | None:
    """The given version, or the active one when ``version_id`` is None; None when there is none."""
    statement = select(ModelVersion)
    statement = (
        statement.where(ModelVersion.id == version_id)
        if version_id is not None
        else statement.where(ModelVersion.active.is_(True))
    )
    version = session.scalar(statement.limit(1))
    if version is None:
        return None
    snapshot = version.data_snapshot or {}
    newest = int(snapshot.get("newest_annotation_id", 0) or 0)
    trained = snapshot.get("trained_image_ids")
    return VersionView(
        version.id, version.name, newest, frozenset(int(i) for i in trained) if trained is not None else None
    )


def predictions_for_images(session: Session, version_id: int, image_ids: Iterable[int]) -> dict[int, PredictionView]:
    wanted = sorted(set(image_ids))
    found: dict[int, PredictionView] = {}
    for start in range(0, len(wanted), _ID_CHUNK):
        chunk = wanted[start : start + _ID_CHUNK]
        statement = (
            select(Prediction, MainClass.name, SubClass.name)
            .outerjoin(MainClass, MainClass.id == Prediction.main_class_id)
            .outerjoin(SubClass, SubClass.id == Prediction.sub_class_id)
            .where(Prediction.model_version_id == version_id, Prediction.image_id.in_(chunk))
        )
        for prediction, main_name, sub_name in session.execute(statement):
            found[prediction.image_id] = PredictionView(
                image_id=prediction.image_id,
                main_class=main_name,
                sub_class=sub_name,
                confidence=prediction.confidence,
                probabilities=dict(prediction.probabilities or {}),
                scores={name: getattr(prediction, name) for name in SCORE_COLUMNS},
            )
    return found


def iter_image_ids(session: Session, *, batch_size: int = 2_000) -> Iterator[int]:
    """Every image id in order, streamed."""
    yield from session.scalars(select(Image.id).order_by(Image.id).execution_options(yield_per=batch_size))


def image_ids_by_path(session: Session, stored_paths: Iterable[str]) -> dict[str, int]:
    """``{stored path: image id}`` for the paths some image row was imported from."""
    wanted = sorted(set(stored_paths))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), _ID_CHUNK):
        chunk = wanted[start : start + _ID_CHUNK]
        found.update(
            (path, image_id)
            for path, image_id in session.execute(select(Image.path, Image.id).where(Image.path.in_(chunk)))
        )
    return found


def record_imported_label(
    session: Session,
    *,
    image_id: int,
    annotator_id: int,
    main_class_id: int,
    sub_class_ids: Sequence[int],
    created_at: datetime | None,
    source: AnnotationSource,
    strategy: str | None,
) -> None:
    """A label read from another tool's file, keeping its time (``None``: now). The model version that
    queued it is not kept: that version does not exist in this project."""
    annotation = record_annotation(
        session,
        image_id=image_id,
        annotator_id=annotator_id,
        kind=AnnotationKind.LABEL,
        main_class_id=main_class_id,
        sub_class_ids=sub_class_ids,
        strategy=strategy,
        source=source,
    )
    if created_at is not None:
        annotation.created_at = created_at
        session.flush()
