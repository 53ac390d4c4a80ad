"""Reads for the Label page's card: one annotator's history of one image, and the page's progress counts.

The card identifies a decision by *where it falls in the history*: the newest row the annotator had on the
image when it was handed out (``after``, 0 for none) and how many of the annotator's rows on that image
the decision is (``step``: 1 for the first decision after ``after``, 2 for an undo of it, ...). The
history is append-only, so those two numbers name one row forever: a resent decision finds its row there
and is not applied twice, across reruns, reconnects and server restarts, with no extra column.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.schema import Annotation, AnnotationKind, Image


def rows_after(session: Session, *, image_id: int, annotator_id: int, after: int) -> list[Annotation]:
    """The annotator's rows on the image newer than row ``after``, oldest first (undo rows included)."""
    return list(
        session.scalars(
            select(Annotation)
            .where(Annotation.image_id == image_id, Annotation.annotator_id == annotator_id, Annotation.id > after)
            .order_by(Annotation.id)
        )
    )


def labelled_by_others_since(session: Session, *, image_id: int, annotator_id: int, after: int) -> bool:
    """Whether another annotator's current label on the image is newer than row ``after``."""
    newer = select(Annotation.id).where(
        Annotation.image_id == image_id,
        Annotation.annotator_id != annotator_id,
        Annotation.superseded.is_(False),
        Annotation.kind == AnnotationKind.LABEL,
        Annotation.id > after,
    )
    return session.scalar(newer.limit(1)) is not None


def newest_rows(session: Session, *, image_ids: Sequence[int], annotator_id: int) -> dict[int, int]:
    """The id of the annotator's newest row on each image (0 when there is none)."""
    if not image_ids:
        return {}
    found = dict(
        session.execute(
            select(Annotation.image_id, func.max(Annotation.id))
            .where(Annotation.image_id.in_(list(image_ids)), Annotation.annotator_id == annotator_id)
            .group_by(Annotation.image_id)
        ).all()
    )
    return {image_id: int(found.get(image_id) or 0) for image_id in image_ids}


def audit_flags(session: Session, image_ids: Sequence[int]) -> dict[int, bool]:
    if not image_ids:
        return {}
    return dict(session.execute(select(Image.id, Image.audit).where(Image.id.in_(list(image_ids)))).all())


def decisions_since(session: Session, *, annotator_id: int, since: datetime) -> dict[str, int]:
    """The annotator's decisions that still stand, made since ``since``, by kind (label, skip, unsure)."""
    rows = session.execute(
        select(Annotation.kind, func.count())
        .where(
            Annotation.annotator_id == annotator_id,
            Annotation.created_at >= since,
            Annotation.superseded.is_(False),
            Annotation.kind != AnnotationKind.UNDO,
        )
        .group_by(Annotation.kind)
    ).all()
    return {str(AnnotationKind(kind).value): int(count) for kind, count in rows}


def unlabelled_count(session: Session) -> int:
    """Images with no current label from anyone: what is left in the queue (skips and unsure included)."""
    labelled = (
        select(func.count(func.distinct(Annotation.image_id)))
        .where(Annotation.superseded.is_(False), Annotation.kind == AnnotationKind.LABEL)
        .scalar_subquery()
    )
    return int(session.scalar(select(func.count(Image.id) - labelled)) or 0)
