"""Image rows: adding imported files (and keeping the audit slice at its minimum size), looking them up by
content hash, streaming them out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from db.queries.audit import MIN_AUDIT_LABELS, minimum_audit_slice
from db.schema import Annotation, AnnotationKind, Image

_ID_CHUNK = 500  # bound parameters per IN (...) list: well under SQLite's and PostgreSQL's limits
_KEY_HEX_DIGITS = 13  # 52 bits: every key is exactly representable in a float64


def random_key_from_sha(sha256: str) -> float:
    """A stable pseudo-random number in [0, 1) from a content hash (the same file always gets the same key)."""
    return int(sha256[:_KEY_HEX_DIGITS], 16) / 16**_KEY_HEX_DIGITS


@dataclass(frozen=True)
class NewImage:
    sha256: str
    path: str
    width: int
    height: int
    format: str
    file_size: int


def image_ids_by_sha(session: Session, hashes: Iterable[str]) -> dict[str, int]:
    """``{sha256: image id}`` for the hashes already stored."""
    wanted = sorted(set(hashes))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), _ID_CHUNK):
        chunk = wanted[start : start + _ID_CHUNK]
        found.update(
            (sha, image_id)
            for sha, image_id in session.execute(select(Image.sha256, Image.id).where(Image.sha256.in_(chunk)))
        )
    return found


def add_images(
    session: Session, new_images: Sequence[NewImage], *, audit_fraction: float, top_up: bool = True
) -> list[Image]:
    """Insert image rows: ``random_key`` comes from the hash and an image is in the audit slice when
    ``random_key < audit_fraction``; then, with ``top_up``, ``top_up_audit_slice`` keeps the slice at its
    minimum size (an import that pre-labels images tops up after recording the labels instead)."""
    rows = []
    for new in new_images:
        key = random_key_from_sha(new.sha256)
        rows.append(
            Image(
                sha256=new.sha256,
                path=new.path,
                width=new.width,
                height=new.height,
                format=new.format,
                file_size=new.file_size,
                random_key=key,
                audit=key < audit_fraction,
            )
        )
    session.add_all(rows)
    session.flush()
    if top_up:
        top_up_audit_slice(session, audit_fraction=audit_fraction)
    return rows


def top_up_audit_slice(session: Session, *, audit_fraction: float) -> int:
    """Grow the audit slice to ``db.queries.audit.minimum_audit_slice`` images (30, or half a smaller
    project) and return how many images joined it; an ``audit_fraction`` of 0 keeps the slice off.

    The slice is the images with the smallest ``random_key``: those below ``audit_fraction`` (``add_images``)
    and, while they are too few, the unlabelled images with the next smallest keys. Keys come from content
    hashes, so the slice stays a random sample and the same files give the same slice. An image that
    already has a current label never joins: its label is a training label, and making it an audit image
    would silently take it out of training. Nothing ever leaves the slice (its labels are what versions are
    compared on)."""
    if audit_fraction <= 0:
        return 0
    # A capped count first: once the slice has the minimum, an import batch costs no count(*) of the images.
    audit = session.scalar(
        select(func.count()).select_from(
            select(Image.id).where(Image.audit.is_(True)).limit(MIN_AUDIT_LABELS).subquery()
        )
    )
    if audit is None or audit >= MIN_AUDIT_LABELS:
        return 0
    missing = minimum_audit_slice(image_count(session)) - audit
    if missing <= 0:
        return 0
    labelled = exists().where(
        Annotation.image_id == Image.id, Annotation.superseded.is_(False), Annotation.kind == AnnotationKind.LABEL
    )
    joining = session.scalars(
        select(Image.id).where(Image.audit.is_(False), ~labelled).order_by(Image.random_key, Image.id).limit(missing)
    ).all()
    if joining:
        # An ORM update: it also sets ``audit`` on the Image objects this session holds (add_images returns them).
        session.execute(update(Image).where(Image.id.in_(joining)).values(audit=True))
    return len(joining)


def image_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Image)) or 0


def audit_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Image).where(Image.audit)) or 0


def images_with_current_annotation(session: Session, image_ids: Iterable[int]) -> set[int]:
    """Those of ``image_ids`` on which some annotator has a current decision (label, unsure or skip)."""
    wanted = sorted(set(image_ids))
    found: set[int] = set()
    for start in range(0, len(wanted), _ID_CHUNK):
        chunk = wanted[start : start + _ID_CHUNK]
        statement = (
            select(Annotation.image_id)
            .where(Annotation.image_id.in_(chunk), Annotation.superseded.is_(False))
            .distinct()
        )
        found.update(session.scalars(statement))
    return found


def images_by_id(session: Session, image_ids: Iterable[int]) -> dict[int, Image]:
    wanted = sorted(set(image_ids))
    found: dict[int, Image] = {}
    for start in range(0, len(wanted), _ID_CHUNK):
        chunk = wanted[start : start + _ID_CHUNK]
        found.update((image.id, image) for image in session.scalars(select(Image).where(Image.id.in_(chunk))))
    return found


def iter_images(session: Session, *, batch_size: int = 2_000) -> Iterator[Image]:
    """Every image by id, streamed in batches (server-side cursor on PostgreSQL), constant memory."""
    result = session.scalars(select(Image).order_by(Image.id).execution_options(yield_per=batch_size))
    yield from result


def iter_image_files(session: Session, *, batch_size: int = 10_000) -> Iterator[tuple[int, str, str, bool]]:
    """(id, sha256, stored path, audit) of every image by id, streamed: what training reads of a million
    images, without an ORM object for each."""
    query = select(Image.id, Image.sha256, Image.path, Image.audit).order_by(Image.id)
    for row in session.execute(query.execution_options(yield_per=batch_size)):
        yield row.id, row.sha256, row.path, bool(row.audit)
