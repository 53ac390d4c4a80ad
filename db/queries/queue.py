"""The labelling queue: which image an annotator sees next, and the leases (claims) that keep two
annotators off the same image.

How the next image is chosen, in order:
1. *Audit slice*: when none of the annotator's last ``audit_every - 1`` decisions was on an audit image,
   the next one comes from the audit slice (``images.audit``), in ``random_key`` order. Audit images are
   handed to *every* annotator once (in the same order), so the audit slice is both the unbiased
   accuracy sample and the doubly labelled sample for inter-annotator agreement. Until
   ``MIN_AUDIT_LABELS`` audit images carry a label the share is one in ``AUDIT_EVERY_UNTIL_ENOUGH``
   (10) instead of one in ``DEFAULT_AUDIT_EVERY`` (20): model versions are compared on those labels. An
   annotator's first ``AUDIT_EVERY_UNTIL_ENOUGH - 1`` decisions are never audit images, so a fresh
   project's first round still goes to training labels (``db.queries.audit``).
2. *Strategy*: with a model version, the highest-scoring prediction under the strategy (larger =
   sooner), read from the (model_version_id, score) index; ``random`` and cold start (no model version)
   read images in ``random_key`` order. Audit images are never chosen by a strategy.
3. *Fallbacks*: images the model version has not scored (imported after it), then any audit image left.
4. *Returning images*: an image the annotator skipped or was unsure about is not shown to them again
   until everything else is done (then oldest first); other annotators still get it, since an unsure
   image is exactly the one that wants a second opinion.

Each claim records which of these served its image (``db.schema.AnnotationSource``: ranked, score,
random, cold_start, audit, fallback, returning) and, for a strategy's own order, the strategy; the
decision that fulfils the claim records them (``db.queries.annotations.record_annotation``).

An image is a candidate for annotator A when it has no current LABEL from anyone (audit images: from A),
no current decision from A, and no unexpired claim by someone else. Asking again without deciding returns
the same image (A's own lease does not hide it from A), so a page reload resumes where A was.

Every step is one indexed query. Claiming is
``INSERT .. ON CONFLICT (image_id) DO UPDATE .. WHERE the old lease expired``, atomic on both SQLite
(transactions run as BEGIN IMMEDIATE) and PostgreSQL (a conflicting row waits for the other
transaction and is then re-checked), so no image is leased to two annotators at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, and_, delete, exists, or_, select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from core.registry import STRATEGIES
from db.engine import upsert_insert
from db.queries.audit import AUDIT_EVERY_UNTIL_ENOUGH, DEFAULT_AUDIT_EVERY, enough_audit_labels
from db.schema import (
    Annotation,
    AnnotationKind,
    AnnotationSource,
    Claim,
    Image,
    ModelVersion,
    Prediction,
    utcnow,
)

DEFAULT_LEASE_SECONDS = 600
# Extra candidates fetched per round so that a few lost claim races (PostgreSQL) do not cost a round.
_SPARE_CANDIDATES = 4
_CLAIM_ROUNDS = 5

_SCORE_COLUMNS: dict[str, InstrumentedAttribute[float]] = {
    "entropy": Prediction.entropy,
    "leaf_entropy": Prediction.leaf_entropy,
    "margin": Prediction.margin,
    "least_confidence": Prediction.least_confidence,
    "bald": Prediction.bald,
    "disagreement": Prediction.disagreement,
    "novelty": Prediction.novelty,
}


class QueueError(ValueError):
    """A queue request that cannot be served as asked (unknown strategy, bad lease); the message says why."""


@dataclass(frozen=True)
class Served:
    """One image the queue claimed for an annotator, with what served it (as its claim records)."""

    image_id: int
    source: AnnotationSource
    strategy: str | None = None  # the strategy whose own order served it (ranked, score, random), else None


Candidates = Callable[[int, Sequence[int]], Select]


def next_image(
    session: Session,
    *,
    annotator_id: int,
    strategy: str,
    model_version_id: int | None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    audit_every: int = DEFAULT_AUDIT_EVERY,
    now: datetime | None = None,
    exclude: Sequence[int] = (),
) -> int | None:
    """Claim the next image for the annotator and return its id; None when nothing is left. Images in
    ``exclude`` are passed over (the Label page's look-ahead: the images it already holds)."""
    served = serve_next(
        session,
        annotator_id=annotator_id,
        strategy=strategy,
        model_version_id=model_version_id,
        lease_seconds=lease_seconds,
        audit_every=audit_every,
        now=now,
        exclude=exclude,
    )
    return None if served is None else served.image_id


def serve_next(
    session: Session,
    *,
    annotator_id: int,
    strategy: str,
    model_version_id: int | None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    audit_every: int = DEFAULT_AUDIT_EVERY,
    now: datetime | None = None,
    exclude: Sequence[int] = (),
) -> Served | None:
    """``next_image``, saying what served the image."""
    batch = serve_batch(
        session,
        annotator_id=annotator_id,
        strategy=strategy,
        model_version_id=model_version_id,
        size=1,
        lease_seconds=lease_seconds,
        audit_every=audit_every,
        now=now,
        exclude=exclude,
    )
    return batch[0] if batch else None


def next_batch(
    session: Session,
    *,
    annotator_id: int,
    strategy: str,
    model_version_id: int | None,
    size: int,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    audit_every: int = DEFAULT_AUDIT_EVERY,
    now: datetime | None = None,
    exclude: Sequence[int] = (),
) -> list[int]:
    """Claim up to ``size`` images for the annotator (the grid), best first; one in every
    ``audit_every`` is an audit image (``audit_every <= 0``: none; more often while the slice has too few
    labels: ``_audit_share``). Images in ``exclude`` are passed over."""
    served = serve_batch(
        session,
        annotator_id=annotator_id,
        strategy=strategy,
        model_version_id=model_version_id,
        size=size,
        lease_seconds=lease_seconds,
        audit_every=audit_every,
        now=now,
        exclude=exclude,
    )
    return [item.image_id for item in served]


def serve_batch(
    session: Session,
    *,
    annotator_id: int,
    strategy: str,
    model_version_id: int | None,
    size: int,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    audit_every: int = DEFAULT_AUDIT_EVERY,
    now: datetime | None = None,
    exclude: Sequence[int] = (),
) -> list[Served]:
    """``next_batch``, saying what served each image (the order of the module's docstring)."""
    if strategy not in STRATEGIES:
        raise QueueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if lease_seconds <= 0:
        raise QueueError("a lease lasts at least one second")
    if size <= 0:
        return []
    now = now or utcnow()
    expires_at = now + timedelta(seconds=lease_seconds)
    audit_share = _audit_share(session, annotator_id, size, audit_every)

    sources: list[tuple[int, Candidates, AnnotationSource, str | None]] = []

    def audit(n: int, skip: Sequence[int]) -> Select:
        return _random_order(annotator_id, now, n, skip, audit=True)

    def unlabelled(n: int, skip: Sequence[int]) -> Select:
        return _random_order(annotator_id, now, n, skip, audit=False)

    if audit_share:
        sources.append((audit_share, audit, AnnotationSource.AUDIT, None))
    if model_version_id is not None and strategy != "random":
        score = _SCORE_COLUMNS[strategy]
        if _ranked_strategy(session, model_version_id) == strategy:
            ranked = functools.partial(_by_rank, annotator_id, now, model_version_id=model_version_id)
            sources.append((size, ranked, AnnotationSource.RANKED, strategy))
        by_score = functools.partial(_by_score, annotator_id, now, model_version_id=model_version_id, score=score)
        sources.append((size, by_score, AnnotationSource.SCORE, strategy))
    sources.append((size, unlabelled, *_random_source(strategy, model_version_id)))
    sources.append((size, audit, AnnotationSource.AUDIT, None))
    sources.append((size, functools.partial(_returning, annotator_id, now), AnnotationSource.RETURNING, None))

    claimed: list[Served] = []
    for share, candidates, source, served_strategy in sources:
        wanted = min(share, size - len(claimed))
        if wanted > 0:
            already = [*exclude, *(item.image_id for item in claimed)]
            served = (source, served_strategy)  # what the claims record
            won = _claim_from(session, candidates, wanted, already, annotator_id, now, expires_at, served)
            claimed += [Served(image_id, source, served_strategy) for image_id in won]
    return claimed


def _random_source(strategy: str, model_version_id: int | None) -> tuple[AnnotationSource, str | None]:
    """What random-key order of the unlabelled images is when it serves: the random strategy itself, the
    cold start before any model version, or the fallback of a strategy that has nothing left to give."""
    if strategy == "random":
        return AnnotationSource.RANDOM, strategy
    if model_version_id is None:
        return AnnotationSource.COLD_START, None
    return AnnotationSource.FALLBACK, None


def mark_labelled_predictions(session: Session, model_version_id: int) -> int:
    """Set the ``labelled`` hint on a model version's predictions from the current labels; call it
    after writing a scoring run's predictions. Returns how many rows changed."""
    has_label = exists().where(
        Annotation.image_id == Prediction.image_id,
        Annotation.superseded.is_(False),
        Annotation.kind == AnnotationKind.LABEL,
    )
    changed = 0
    for labelled, condition in ((True, has_label), (False, ~has_label)):
        changed += session.execute(
            update(Prediction)
            .where(Prediction.model_version_id == model_version_id, Prediction.labelled.is_(not labelled), condition)
            .values(labelled=labelled)
            .execution_options(synchronize_session=False)
        ).rowcount
    return changed


def release_claim(session: Session, image_id: int, annotator_id: int) -> bool:
    """Give an image back to the pool (the annotator moved on without deciding); True if one was held."""
    result = session.execute(delete(Claim).where(Claim.image_id == image_id, Claim.annotator_id == annotator_id))
    return result.rowcount > 0


def release_claims(session: Session, annotator_id: int, image_ids: Collection[int] | None = None) -> int:
    """Give back the images the annotator holds, only ``image_ids`` when given (one tab's window: the
    annotator's other tabs keep theirs); returns how many."""
    condition = Claim.annotator_id == annotator_id
    if image_ids is not None:
        condition = condition & Claim.image_id.in_(list(image_ids))
    return session.execute(delete(Claim).where(condition)).rowcount


def purge_expired_claims(session: Session, now: datetime | None = None) -> int:
    """Delete expired leases (they are harmless, this only keeps the table small)."""
    return session.execute(delete(Claim).where(Claim.expires_at <= (now or utcnow()))).rowcount


def claimed_images(session: Session, annotator_id: int, now: datetime | None = None) -> list[int]:
    """The images the annotator holds an unexpired lease on, soonest-expiring first."""
    return list(
        session.scalars(
            select(Claim.image_id)
            .where(Claim.annotator_id == annotator_id, Claim.expires_at > (now or utcnow()))
            .order_by(Claim.expires_at)
        )
    )


# --- candidates --------------------------------------------------------------------------------


def _is_candidate(
    image_id: ColumnElement[int], annotator_id: int, now: datetime, *, shared: bool = False
) -> ColumnElement[bool]:
    """Not decided (by anyone's LABEL or by any decision of this annotator) and not leased to someone
    else. A ``shared`` image (the audit slice) only needs to be undecided by this annotator."""
    decided_by_me = Annotation.annotator_id == annotator_id
    decided = exists().where(
        Annotation.image_id == image_id,
        Annotation.superseded.is_(False),
        decided_by_me if shared else or_(Annotation.kind == AnnotationKind.LABEL, decided_by_me),
    )
    claimed_by_other = exists().where(
        Claim.image_id == image_id, Claim.expires_at > now, Claim.annotator_id != annotator_id
    )
    return and_(~decided, ~claimed_by_other)


def _by_score(
    annotator_id: int,
    now: datetime,
    limit: int,
    skip: Sequence[int],
    model_version_id: int,
    score: InstrumentedAttribute[float],
) -> Select:
    # Walks the (model_version_id, labelled, score) index from the top of the unlabelled range; the
    # EXISTS tests are primary-key or index probes per row (they stay the source of truth, the
    # ``labelled`` hint only shortens the walk), and the walk stops after ``limit`` candidates.
    is_audit = exists().where(Image.id == Prediction.image_id, Image.audit.is_(True))
    query = (
        select(Prediction.image_id)
        .where(
            Prediction.model_version_id == model_version_id,
            Prediction.labelled.is_(False),
            score.is_not(None),
            ~is_audit,
            _is_candidate(Prediction.image_id, annotator_id, now),
        )
        .order_by(score.desc())
        .limit(limit)
    )
    return query.where(Prediction.image_id.not_in(skip)) if skip else query


def _ranked_strategy(session: Session, model_version_id: int) -> str | None:
    """The strategy whose core.acquisition order the version's ``queue_rank`` holds, if any."""
    metrics = session.scalar(select(ModelVersion.metrics).where(ModelVersion.id == model_version_id)) or {}
    return (metrics.get("queue") or {}).get("strategy")


def _by_rank(annotator_id: int, now: datetime, limit: int, skip: Sequence[int], model_version_id: int) -> Select:
    # The (model_version_id, labelled, queue_rank) index from the top: the order core.acquisition.rank_pool
    # gave when the version was scored (diversified, with its coverage share), the same order that
    # `labeller evaluate` simulates.
    is_audit = exists().where(Image.id == Prediction.image_id, Image.audit.is_(True))
    query = (
        select(Prediction.image_id)
        .where(
            Prediction.model_version_id == model_version_id,
            Prediction.labelled.is_(False),
            Prediction.queue_rank.is_not(None),
            ~is_audit,
            _is_candidate(Prediction.image_id, annotator_id, now),
        )
        .order_by(Prediction.queue_rank)
        .limit(limit)
    )
    return query.where(Prediction.image_id.not_in(skip)) if skip else query


def _random_order(annotator_id: int, now: datetime, limit: int, skip: Sequence[int], *, audit: bool) -> Select:
    # Reads the (audit, random_key) index in order; random_key is a stable pseudo-random number, so the
    # order is random but the same for every annotator (which makes audit images doubly labelled).
    query = (
        select(Image.id)
        .where(Image.audit.is_(audit), _is_candidate(Image.id, annotator_id, now, shared=audit))
        .order_by(Image.random_key)
        .limit(limit)
    )
    return query.where(Image.id.not_in(skip)) if skip else query


def _returning(annotator_id: int, now: datetime, limit: int, skip: Sequence[int]) -> Select:
    """The annotator's own skipped and unsure images that nobody has labelled since, oldest first."""
    other = aliased(Annotation)
    labelled = exists().where(
        other.image_id == Annotation.image_id,
        other.superseded.is_(False),
        other.kind == AnnotationKind.LABEL,
    )
    claimed_by_other = exists().where(
        Claim.image_id == Annotation.image_id, Claim.expires_at > now, Claim.annotator_id != annotator_id
    )
    query = (
        select(Annotation.image_id)
        .where(
            Annotation.annotator_id == annotator_id,
            Annotation.superseded.is_(False),
            Annotation.kind.in_((AnnotationKind.SKIP, AnnotationKind.UNSURE)),
            ~labelled,
            ~claimed_by_other,
        )
        .order_by(Annotation.created_at, Annotation.id)
        .limit(limit)
    )
    return query.where(Annotation.image_id.not_in(skip)) if skip else query


def _audit_share(session: Session, annotator_id: int, size: int, audit_every: int) -> int:
    """How many of the next ``size`` images come from the audit slice: one in ``audit_every``, or one in
    ``AUDIT_EVERY_UNTIL_ENOUGH`` when that is sooner and fewer than ``MIN_AUDIT_LABELS`` audit images carry
    a label. The count of labelled audit images is read only when the two rates disagree."""
    if audit_every <= 0:
        return 0
    sooner = min(audit_every, AUDIT_EVERY_UNTIL_ENOUGH)
    if size > 1:
        share = size // audit_every
        return size // sooner if size // sooner > share and not enough_audit_labels(session) else share
    # One image: audit when none of the annotator's last every - 1 decisions was an audit image (and there
    # were that many: an annotator's first decisions are training labels).
    window = audit_every - 1
    if window == 0:
        return 1
    recent = session.execute(
        select(Image.audit)
        .join(Annotation, Annotation.image_id == Image.id)
        .where(Annotation.annotator_id == annotator_id, Annotation.kind != AnnotationKind.UNDO)
        .order_by(Annotation.created_at.desc(), Annotation.id.desc())
        .limit(window)
    ).scalars()
    # Decisions since the last audit image (all of those read when none was one).
    since = 0
    for audit in recent:
        if audit:
            break
        since += 1
    if since >= window:
        return 1
    if since < sooner - 1:
        return 0
    return 0 if enough_audit_labels(session) else 1


# --- claiming ----------------------------------------------------------------------------------


def _claim_from(
    session: Session,
    candidates: Candidates,
    wanted: int,
    already: list[int],
    annotator_id: int,
    now: datetime,
    expires_at: datetime,
    served: tuple[AnnotationSource, str | None],
) -> list[int]:
    """Claim up to ``wanted`` images from one candidate query, in its order. A lost race (PostgreSQL)
    is made up from the spare candidates of the same query, then from a new query."""
    claimed: list[int] = []
    tried = list(already)
    for _ in range(_CLAIM_ROUNDS):
        asked = wanted - len(claimed) + _SPARE_CANDIDATES
        ids = list(session.scalars(candidates(asked, tried)))
        position = 0
        while position < len(ids) and len(claimed) < wanted:
            attempt = ids[position : position + wanted - len(claimed)]
            position += len(attempt)
            won = _claim(session, attempt, annotator_id, now, expires_at, served)
            claimed += [image_id for image_id in attempt if image_id in won]
        tried += ids[:position]
        if len(claimed) >= wanted or len(ids) < asked:  # done, or the query has nothing more
            break
    return claimed


def _claim(
    session: Session,
    image_ids: Sequence[int],
    annotator_id: int,
    now: datetime,
    expires_at: datetime,
    served: tuple[AnnotationSource, str | None],
) -> set[int]:
    """Lease the images to the annotator unless someone else holds an unexpired lease, recording what
    served them (source and strategy); the ids won."""
    if not image_ids:
        return set()
    row = {
        "annotator_id": annotator_id,
        "expires_at": expires_at,
        "source": served[0].value,
        "strategy": served[1],
    }
    statement = upsert_insert(session, Claim).values([{"image_id": image_id, **row} for image_id in image_ids])
    statement = statement.on_conflict_do_update(
        index_elements=[Claim.image_id],
        set_={column: statement.excluded[column] for column in row},
        where=or_(Claim.expires_at <= now, Claim.annotator_id == annotator_id),
    ).returning(Claim.image_id)
    won = set(session.scalars(statement))
    if won and session.get_bind().dialect.name == "postgresql":
        won -= _labelled_meanwhile(session, won, annotator_id)
    return won


def _labelled_meanwhile(session: Session, image_ids: set[int], annotator_id: int) -> set[int]:
    """PostgreSQL only: the candidate query read a snapshot taken before the claim, so another annotator
    may have labelled an image (releasing their own claim) in between. A fresh statement sees that
    commit; such images are given back. (SQLite's BEGIN IMMEDIATE makes query and claim one step.)"""
    labelled = set(
        session.scalars(
            select(Annotation.image_id)
            .join(Image, Image.id == Annotation.image_id)
            .where(
                Annotation.image_id.in_(image_ids),
                Annotation.superseded.is_(False),
                Annotation.kind == AnnotationKind.LABEL,
                Annotation.annotator_id != annotator_id,
                Image.audit.is_(False),  # audit images go to every annotator anyway
            )
        )
    )
    if labelled:
        session.execute(delete(Claim).where(Claim.image_id.in_(labelled), Claim.annotator_id == annotator_id))
    return labelled
