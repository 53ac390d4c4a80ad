"""The audit slice's numbers in one place: how big the slice is, how often the queue serves it, and how
many labelled audit images it takes before an accuracy on them (or a comparison of two model versions)
is worth reading as more than noise.

Why a minimum: the 5% slice of a 400-image project was 14 images, so no model comparison could rest on
more than 14 labels, and the queue's one-in-twenty share gave a single labelled audit image after 24
decisions (issue 19). The import keeps at least ``minimum_audit_slice`` images in the slice
(``db.queries.images.top_up_audit_slice``), the queue serves it more often until ``MIN_AUDIT_LABELS`` of
its images carry a label (``db.queries.queue``), and promotions and reports say when fewer than that were
behind a number.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.schema import Annotation, AnnotationKind, Image

# Labelled audit images below which an audit accuracy (its 95% interval is at most about +-0.17 at 30) or a
# comparison of two versions is reported as too few to go by.
MIN_AUDIT_LABELS = 30
# The queue's audit share: one image in AUDIT_EVERY_UNTIL_ENOUGH until MIN_AUDIT_LABELS audit images carry
# a label, then one in DEFAULT_AUDIT_EVERY.
AUDIT_EVERY_UNTIL_ENOUGH = 10
DEFAULT_AUDIT_EVERY = 20
# The minimum never takes more than this share of a project's images (a tiny project still trains).
MAX_MINIMUM_SHARE = 0.5


def minimum_audit_slice(images: int) -> int:
    """The fewest audit images a project of ``images`` keeps: ``MIN_AUDIT_LABELS``, or half of a smaller
    project (it still needs images to train on)."""
    return max(0, min(MIN_AUDIT_LABELS, int(images * MAX_MINIMUM_SHARE)))


def labelled_audit_images(session: Session, *, at_most: int | None = None) -> int:
    """Audit images on which someone has a current label; with ``at_most`` the count stops there (the queue
    only asks whether there are enough, and a capped count reads a handful of rows)."""
    query = (
        select(Annotation.image_id)
        .join(Image, Image.id == Annotation.image_id)
        .where(Image.audit.is_(True), Annotation.superseded.is_(False), Annotation.kind == AnnotationKind.LABEL)
        .distinct()
    )
    if at_most is not None:
        query = query.limit(at_most)
    return session.scalar(select(func.count()).select_from(query.subquery())) or 0


def enough_audit_labels(session: Session) -> bool:
    """Whether at least ``MIN_AUDIT_LABELS`` audit images carry a label."""
    return labelled_audit_images(session, at_most=MIN_AUDIT_LABELS) >= MIN_AUDIT_LABELS
