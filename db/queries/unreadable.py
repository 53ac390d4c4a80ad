"""Images whose file went missing or stopped being an image (issue 12 item 11).

No schema change: an unreadable image carries a current SKIP by the system annotator ``UNREADABLE_ANNOTATOR``
(source ``"unreadable"``), recorded by the first session that fails to show it. The Label page then passes
over it for everyone (each annotator's own SKIP is recorded once, so the queue stops offering it), and
``labeller status`` / the Review page see who skipped it and why. Restoring the file and undoing that skip
(or ``clear_unreadable``) brings the image back.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from db.queries.annotations import record_annotation, undo_annotation
from db.queries.annotators import get_or_create_annotator
from db.queries.queue import release_claim
from db.schema import Annotation, AnnotationKind, AnnotationSource, Annotator

UNREADABLE_ANNOTATOR = "(unreadable file)"
UNREADABLE_SOURCE = AnnotationSource.UNREADABLE


def _current(session: Session, image_id: int, annotator_id: int) -> Annotation | None:
    return session.scalars(
        select(Annotation).where(
            Annotation.image_id == image_id,
            Annotation.annotator_id == annotator_id,
            Annotation.superseded.is_(False),
        )
    ).one_or_none()


def mark_unreadable(session: Session, image_id: int) -> bool:
    """Mark ``image_id`` unreadable for everyone; False if it already was."""
    system = get_or_create_annotator(session, UNREADABLE_ANNOTATOR)
    current = _current(session, image_id, system.id)
    if current is not None and current.kind == AnnotationKind.SKIP:
        return False
    record_annotation(
        session,
        image_id=image_id,
        annotator_id=system.id,
        kind=AnnotationKind.SKIP,
        main_class_id=None,
        source=UNREADABLE_SOURCE,
    )
    return True


def unreadable_ids(session: Session, image_ids: Iterable[int]) -> set[int]:
    """Those of ``image_ids`` marked unreadable."""
    ids = list(image_ids)
    if not ids:
        return set()
    return set(session.scalars(_marks().where(Annotation.image_id.in_(ids))))


def marked_image_ids(session: Session) -> list[int]:
    """Every image marked unreadable, in id order."""
    return list(session.scalars(_marks().order_by(Annotation.image_id)))


def _marks() -> Select[tuple[int]]:
    """The ids of the images marked unreadable: the unreadable annotator's current skips."""
    return (
        select(Annotation.image_id)
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .where(
            Annotator.name == UNREADABLE_ANNOTATOR,
            Annotation.superseded.is_(False),
            Annotation.kind == AnnotationKind.SKIP,
        )
    )


def pass_over(session: Session, image_id: int, annotator_id: int) -> None:
    """An annotator's queue offered an unreadable image: record their SKIP once (which also gives the claim
    back), so the queue does not offer it to them again before everything else is done."""
    current = _current(session, image_id, annotator_id)
    if current is not None and current.kind == AnnotationKind.SKIP:
        release_claim(session, image_id, annotator_id)
        return
    record_annotation(
        session,
        image_id=image_id,
        annotator_id=annotator_id,
        kind=AnnotationKind.SKIP,
        main_class_id=None,
        source=UNREADABLE_SOURCE,
    )


def clear_unreadable(session: Session, image_id: int) -> bool:
    """The file is back: withdraw the system's mark, and the skips ``pass_over`` recorded for annotators whose
    queue offered the image meanwhile (nobody pressed those: left, the image came back to them only after
    everything else). A Skip an annotator pressed on the placeholder stays, as any skip does."""
    system = session.scalars(select(Annotator).where(Annotator.name == UNREADABLE_ANNOTATOR)).one_or_none()
    if system is None:
        return False
    current = _current(session, image_id, system.id)
    if current is None or current.kind != AnnotationKind.SKIP:
        return False
    undo_annotation(session, current.id, system.id)
    passed_over = session.scalars(
        select(Annotation).where(
            Annotation.image_id == image_id,
            Annotation.annotator_id != system.id,
            Annotation.superseded.is_(False),
            Annotation.kind == AnnotationKind.SKIP,
            Annotation.source == UNREADABLE_SOURCE.value,
        )
    ).all()
    for skip in passed_over:
        undo_annotation(session, skip.id, skip.annotator_id)
    return True
