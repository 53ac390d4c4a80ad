"""The append-only annotation history and what is read from it.

Rules of the history:
- Each (image, annotator) pair has at most one *current* row (``superseded`` false). Recording a new
  decision flags the annotator's current row superseded and links it through ``supersedes_id``;
  nothing is ever deleted.
- Undo inserts an ``UNDO`` row that is never current: it records the withdrawal of the annotation it
  supersedes. When the withdrawn row was itself a correction, the row it had replaced becomes current
  again, so undoing a correction restores the earlier decision; undoing a first decision leaves the
  image without a decision from that annotator.
- A ``LABEL`` names a main class and optionally sub-class tags of that class (several tags make a partial
  label over those leaves). ``UNSURE`` may carry a tentative main class and tags; ``SKIP`` carries none.
- The *consensus* label of an image is its newest current ``LABEL`` across annotators.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from db.schema import (
    CURRENT_ANNOTATION_INDEX,
    Annotation,
    AnnotationKind,
    AnnotationSource,
    AnnotationTag,
    Annotator,
    Claim,
    Image,
    MainClass,
    Prediction,
    SubClass,
)


class AnnotationError(ValueError):
    """An annotation that cannot be recorded or undone; nothing was written. The message says why."""


@dataclass(frozen=True)
class CurrentLabel:
    """The consensus label of one image: its newest current LABEL across annotators."""

    image_id: int
    main_class: str
    tags: tuple[str, ...]
    kind: AnnotationKind
    annotator: str
    created_at: datetime
    model_version_id: int | None
    strategy: str | None
    annotation_id: int = 0
    main_class_id: int = 0
    source: str = AnnotationSource.UNKNOWN


@dataclass(frozen=True)
class AnnotationView:
    """One row of the history, with names resolved, for review pages and the CLI."""

    id: int
    image_id: int
    annotator: str
    annotator_id: int
    kind: AnnotationKind
    main_class: str | None
    tags: tuple[str, ...]
    created_at: datetime
    current: bool
    supersedes_id: int | None
    model_version_id: int | None
    strategy: str | None
    source: str

    @property
    def served_by(self) -> str:
        """What put the image in front of the annotator, for people ("entropy, ranked", "audit slice"...)."""
        known = AnnotationSource.parse(self.source)
        return known.describe(self.strategy) if known.value == self.source else self.source


@dataclass(frozen=True)
class LabelCounts:
    """Images per consensus main class and per sub-class tag; every class appears, with 0 if unused."""

    labelled_images: int
    by_main_class: dict[str, int]
    # main class -> sub-class -> images whose consensus label carries that tag.
    by_sub_class: dict[str, dict[str, int]]
    # main class -> images labelled with that main class but no sub-class tag.
    main_class_only: dict[str, int]


@dataclass(frozen=True)
class Disagreement:
    """An image whose current labels from different annotators name different main classes or tags."""

    image_id: int
    # (annotator, main class, tags) for each annotator's current label, oldest first.
    labels: tuple[tuple[str, str, tuple[str, ...]], ...]
    main_classes_differ: bool


@dataclass(frozen=True)
class PairedLabel:
    image_id: int
    label_a: str
    label_b: str


@dataclass(frozen=True)
class Agreement:
    """Cohen's kappa between two annotators on the images both labelled."""

    images: int
    observed_agreement: float
    expected_agreement: float
    kappa: float


# --- writing -----------------------------------------------------------------------------------


def record_annotation(
    session: Session,
    *,
    image_id: int,
    annotator_id: int,
    kind: AnnotationKind,
    main_class_id: int | None,
    sub_class_ids: Sequence[int] = (),
    model_version_id: int | None = None,
    strategy: str | None = None,
    source: AnnotationSource | None = None,
) -> Annotation:
    """Append one decision; it supersedes the annotator's current annotation of the image, if any.

    The annotator's claim on the image is released: the decision fulfils it. ``source`` None records what
    served that claim (``db.queries.queue``) and its strategy, or "unknown" without one; otherwise the
    caller names the source (grid, import...) and the strategy, if any.
    """
    kind = AnnotationKind(kind)
    tag_ids = _unique(sub_class_ids)
    _validate_decision(session, image_id, annotator_id, kind, main_class_id, tag_ids)
    if source is None:
        if strategy is not None:
            raise AnnotationError("the strategy of a queued image comes from its claim: name no strategy")
        source, strategy = served_by_claim(session, image_id, annotator_id)

    for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
        try:
            # A savepoint per attempt: losing the race rolls back only this attempt, not the caller's work.
            with session.begin_nested():
                previous = _current_annotation(session, image_id, annotator_id)
                if previous is not None:
                    previous.superseded = True
                    session.flush()  # before the insert: the unique index allows one current row at a time
                annotation = Annotation(
                    image_id=image_id,
                    annotator_id=annotator_id,
                    kind=kind,
                    main_class_id=main_class_id,
                    superseded=False,
                    supersedes_id=previous.id if previous is not None else None,
                    model_version_id=model_version_id,
                    strategy=strategy,
                    source=source,
                    tags=[AnnotationTag(sub_class_id=tag_id) for tag_id in tag_ids],
                )
                session.add(annotation)
            break
        except IntegrityError as error:
            # Another session of this annotator inserted a current row for the image after our read (on
            # PostgreSQL no row lock covers a row that did not exist yet). Read again and supersede it.
            if attempt == _CONFLICT_ATTEMPTS or not _is_current_conflict(error):
                raise
    session.execute(delete(Claim).where(Claim.image_id == image_id, Claim.annotator_id == annotator_id))
    session.flush()
    if kind == AnnotationKind.LABEL:
        _set_labelled_hint(session, image_id, True)
    elif previous is not None and previous.kind == AnnotationKind.LABEL:
        _sync_labelled_hint(session, image_id)
    return annotation


def served_by_claim(session: Session, image_id: int, annotator_id: int) -> tuple[AnnotationSource, str | None]:
    """(source, strategy) of the annotator's claim on the image, expired or not: what served it to them.
    ("unknown", None) when they hold none, or one taken before claims recorded it."""
    # populate_existing: claims are written by INSERT .. ON CONFLICT statements (claim_image, the queue),
    # which leave a Claim loaded earlier in this session as it was; the row is what counts.
    claim = session.get(Claim, image_id, populate_existing=True)
    if claim is None or claim.annotator_id != annotator_id:
        return AnnotationSource.UNKNOWN, None
    return served_by(claim)


def served_by(claim: Claim) -> tuple[AnnotationSource, str | None]:
    """(source, strategy) recorded on a claim; ("unknown", None) for one taken before claims recorded it."""
    if claim.source is None:
        return AnnotationSource.UNKNOWN, None
    return AnnotationSource(claim.source), claim.strategy


# Each lost race means another session committed a decision meanwhile; a handful of tries is plenty.
_CONFLICT_ATTEMPTS = 10


def _is_current_conflict(error: IntegrityError) -> bool:
    """The unique index on current annotations refused the row (PostgreSQL names the index, SQLite its
    columns); any other integrity error is a real error."""
    message = str(error.orig)
    return CURRENT_ANNOTATION_INDEX in message or "annotations.image_id, annotations.annotator_id" in message


def undo_annotation(session: Session, annotation_id: int, annotator_id: int) -> Annotation:
    """Withdraw the annotator's current annotation ``annotation_id``; returns the UNDO row.

    If that annotation was a correction, the decision it replaced becomes current again.
    """
    # populate_existing: the caller may have read the row earlier in this transaction (the Label page's
    # undo does), and get() would hand back that copy; on PostgreSQL another session of the annotator may
    # have undone or corrected it since. The locked row is the truth, so it overwrites the copy.
    target = session.get(Annotation, annotation_id, with_for_update=True, populate_existing=True)
    if target is None:
        raise AnnotationError(f"no annotation with id {annotation_id}")
    if target.annotator_id != annotator_id:
        raise AnnotationError(f"annotation {annotation_id} belongs to another annotator: only its author undoes it")
    if target.kind == AnnotationKind.UNDO:
        raise AnnotationError(f"annotation {annotation_id} is itself an undo")
    if target.superseded:
        raise AnnotationError(f"annotation {annotation_id} is no longer current: it was corrected or undone")

    target.superseded = True
    session.flush()  # before restoring the row it replaced: the unique index allows one current row
    if target.supersedes_id is not None:
        # Held still by the lock on ``target`` (any change to it goes through the current row), but a copy
        # read earlier in this transaction may be stale the same way.
        restored = session.get(Annotation, target.supersedes_id, populate_existing=True)
        if restored is not None and restored.kind != AnnotationKind.UNDO:
            restored.superseded = False
    undo = Annotation(
        image_id=target.image_id,
        annotator_id=annotator_id,
        kind=AnnotationKind.UNDO,
        main_class_id=None,
        superseded=True,  # an undo is a record of the withdrawal, never a current decision
        supersedes_id=target.id,
        model_version_id=target.model_version_id,
        strategy=target.strategy,
        source=target.source,
    )
    session.add(undo)
    session.flush()
    _sync_labelled_hint(session, target.image_id)
    return undo


def undo_last_annotation(session: Session, annotator_id: int) -> Annotation | None:
    """Undo the annotator's newest current annotation (the app's "undo" key); None if there is none."""
    newest = session.scalars(
        select(Annotation)
        .where(Annotation.annotator_id == annotator_id, Annotation.kind != AnnotationKind.UNDO)
        .order_by(Annotation.id.desc())
        .limit(1)
    ).one_or_none()
    if newest is None or newest.superseded:
        return None
    return undo_annotation(session, newest.id, annotator_id)


def has_current_label(session: Session, image_id: int) -> bool:
    return bool(
        session.scalar(
            select(
                exists().where(
                    Annotation.image_id == image_id,
                    Annotation.superseded.is_(False),
                    Annotation.kind == AnnotationKind.LABEL,
                )
            )
        )
    )


def _sync_labelled_hint(session: Session, image_id: int) -> None:
    _set_labelled_hint(session, image_id, has_current_label(session, image_id))


def _set_labelled_hint(session: Session, image_id: int, labelled: bool) -> None:
    """Keep ``predictions.labelled`` (the queue's index hint) in step for every model version."""
    session.execute(
        update(Prediction)
        .where(Prediction.image_id == image_id, Prediction.labelled.is_(not labelled))
        .values(labelled=labelled)
        .execution_options(synchronize_session=False)
    )


def _unique(ids: Iterable[int]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(int(i) for i in ids))


def _validate_decision(
    session: Session,
    image_id: int,
    annotator_id: int,
    kind: AnnotationKind,
    main_class_id: int | None,
    tag_ids: tuple[int, ...],
) -> None:
    if kind == AnnotationKind.UNDO:
        raise AnnotationError("an undo is recorded with undo_annotation, not record_annotation")
    if session.get(Image, image_id) is None:
        raise AnnotationError(f"no image with id {image_id}")
    if session.get(Annotator, annotator_id) is None:
        raise AnnotationError(f"no annotator with id {annotator_id}")
    if kind == AnnotationKind.LABEL and main_class_id is None:
        raise AnnotationError("a label names a main class")
    if kind == AnnotationKind.SKIP and (main_class_id is not None or tag_ids):
        raise AnnotationError("a skip carries no class and no tags")
    if main_class_id is not None and session.get(MainClass, main_class_id) is None:
        raise AnnotationError(f"no main class with id {main_class_id}")
    if tag_ids:
        if main_class_id is None:
            raise AnnotationError("sub-class tags need their main class")
        owners = dict(
            session.execute(select(SubClass.id, SubClass.main_class_id).where(SubClass.id.in_(tag_ids))).all()
        )
        missing = [tag_id for tag_id in tag_ids if tag_id not in owners]
        if missing:
            raise AnnotationError(f"no sub-class with id {', '.join(map(str, missing))}")
        foreign = [tag_id for tag_id in tag_ids if owners[tag_id] != main_class_id]
        if foreign:
            raise AnnotationError(
                f"sub-class {', '.join(map(str, foreign))} does not belong to main class {main_class_id}"
            )


def _current_annotation(session: Session, image_id: int, annotator_id: int) -> Annotation | None:
    return session.scalars(
        select(Annotation)
        .where(
            Annotation.image_id == image_id,
            Annotation.superseded.is_(False),
            Annotation.annotator_id == annotator_id,
        )
        .with_for_update()
    ).one_or_none()


def current_annotation(session: Session, image_id: int, annotator_id: int) -> Annotation | None:
    """The annotator's current decision on the image (LABEL, UNSURE or SKIP), if any."""
    return _current_annotation(session, image_id, annotator_id)


# --- reading -----------------------------------------------------------------------------------

# SQLite allows 32k bound parameters and PostgreSQL 65k; chunks of this size stay well below both.
_ID_CHUNK = 5_000


def _is_consensus_label(annotation: type[Annotation] | Annotation) -> object:
    """True for an image's newest current LABEL (across annotators): its consensus label."""
    newer = aliased(Annotation)
    return and_(
        annotation.superseded.is_(False),
        annotation.kind == AnnotationKind.LABEL,
        ~exists().where(
            newer.image_id == annotation.image_id,
            newer.superseded.is_(False),
            newer.kind == AnnotationKind.LABEL,
            newer.id > annotation.id,
        ),
    )


def _consensus_rows() -> Select:
    return (
        select(
            Annotation.id,
            Annotation.image_id,
            MainClass.name,
            Annotator.name,
            Annotation.created_at,
            Annotation.model_version_id,
            Annotation.strategy,
            Annotation.main_class_id,
            Annotation.source,
            SubClass.name,
        )
        .join(MainClass, MainClass.id == Annotation.main_class_id)
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .outerjoin(AnnotationTag, AnnotationTag.annotation_id == Annotation.id)
        .outerjoin(SubClass, SubClass.id == AnnotationTag.sub_class_id)
        .where(_is_consensus_label(Annotation))
        .order_by(Annotation.image_id, Annotation.id, SubClass.position, SubClass.id)
    )


def current_labels(session: Session, image_ids: Iterable[int] | None = None) -> Iterator[CurrentLabel]:
    """The consensus label of every labelled image (or of ``image_ids``), by image id, streamed."""
    if image_ids is None:
        yield from _stream_current_labels(session, _consensus_rows())
        return
    wanted = sorted(set(image_ids))
    for start in range(0, len(wanted), _ID_CHUNK):
        chunk = wanted[start : start + _ID_CHUNK]
        yield from _stream_current_labels(session, _consensus_rows().where(Annotation.image_id.in_(chunk)))


def _stream_current_labels(session: Session, query: Select) -> Iterator[CurrentLabel]:
    rows = session.execute(query.execution_options(yield_per=2_000))
    for annotation_id, group in itertools.groupby(rows, key=lambda row: row[0]):
        first, *rest = list(group)
        tags = tuple(row[9] for row in (first, *rest) if row[9] is not None)
        yield CurrentLabel(
            image_id=first[1],
            main_class=first[2],
            tags=tags,
            kind=AnnotationKind.LABEL,
            annotator=first[3],
            created_at=first[4],
            model_version_id=first[5],
            strategy=first[6],
            annotation_id=annotation_id,
            main_class_id=first[7],
            source=first[8],
        )


def _tag_names(session: Session, annotation_ids: Sequence[int]) -> dict[int, tuple[str, ...]]:
    names: dict[int, list[str]] = {}
    for start in range(0, len(annotation_ids), _ID_CHUNK):
        rows = session.execute(
            select(AnnotationTag.annotation_id, SubClass.name)
            .join(SubClass, SubClass.id == AnnotationTag.sub_class_id)
            .where(AnnotationTag.annotation_id.in_(annotation_ids[start : start + _ID_CHUNK]))
            .order_by(AnnotationTag.annotation_id, SubClass.position, SubClass.id)
        )
        for annotation_id, name in rows:
            names.setdefault(annotation_id, []).append(name)
    return {annotation_id: tuple(tags) for annotation_id, tags in names.items()}


def _views(session: Session, query: Select) -> list[AnnotationView]:
    rows = session.execute(
        query.add_columns(Annotator.name, MainClass.name)
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .outerjoin(MainClass, MainClass.id == Annotation.main_class_id)
    ).all()
    tags = _tag_names(session, [row[0].id for row in rows])
    return [
        AnnotationView(
            id=annotation.id,
            image_id=annotation.image_id,
            annotator=annotator,
            annotator_id=annotation.annotator_id,
            kind=annotation.kind,
            main_class=main_class,
            tags=tags.get(annotation.id, ()),
            created_at=annotation.created_at,
            current=not annotation.superseded,
            supersedes_id=annotation.supersedes_id,
            model_version_id=annotation.model_version_id,
            strategy=annotation.strategy,
            source=annotation.source,
        )
        for annotation, annotator, main_class in rows
    ]


def annotation_history(session: Session, image_id: int) -> list[AnnotationView]:
    """Every decision ever recorded on the image, oldest first, undos included."""
    return _views(session, select(Annotation).where(Annotation.image_id == image_id).order_by(Annotation.id))


def recent_annotations(
    session: Session, annotator_id: int, limit: int = 50, *, include_undos: bool = False
) -> list[AnnotationView]:
    """The annotator's newest decisions, newest first; withdrawn ones show ``current=False``."""
    query = select(Annotation).where(Annotation.annotator_id == annotator_id)
    if not include_undos:
        query = query.where(Annotation.kind != AnnotationKind.UNDO)
    return _views(session, query.order_by(Annotation.id.desc()).limit(limit))


def label_counts(session: Session) -> LabelCounts:
    """Images per consensus main class, per sub-class tag, and labelled at main-class level only."""
    consensus = (
        select(Annotation.id.label("annotation_id"), Annotation.main_class_id)
        .where(_is_consensus_label(Annotation))
        .subquery()
    )
    per_main = dict(
        session.execute(select(consensus.c.main_class_id, func.count()).group_by(consensus.c.main_class_id)).all()
    )
    per_sub = dict(
        session.execute(
            select(AnnotationTag.sub_class_id, func.count())
            .join(consensus, consensus.c.annotation_id == AnnotationTag.annotation_id)
            .group_by(AnnotationTag.sub_class_id)
        ).all()
    )
    untagged = (
        select(consensus.c.main_class_id, func.count())
        .where(~exists().where(AnnotationTag.annotation_id == consensus.c.annotation_id))
        .group_by(consensus.c.main_class_id)
    )
    per_main_only = dict(session.execute(untagged).all())

    main_classes = session.execute(select(MainClass.id, MainClass.name).order_by(MainClass.position, MainClass.id))
    sub_classes = session.execute(
        select(SubClass.id, SubClass.name, SubClass.main_class_id).order_by(SubClass.position, SubClass.id)
    ).all()
    by_main: dict[str, int] = {}
    by_sub: dict[str, dict[str, int]] = {}
    main_only: dict[str, int] = {}
    for main_id, main_name in main_classes:
        by_main[main_name] = per_main.get(main_id, 0)
        main_only[main_name] = per_main_only.get(main_id, 0)
        by_sub[main_name] = {name: per_sub.get(sub_id, 0) for sub_id, name, owner in sub_classes if owner == main_id}
    return LabelCounts(
        labelled_images=sum(per_main.values()),
        by_main_class=by_main,
        by_sub_class=by_sub,
        main_class_only=main_only,
    )


def _current_labels_by_annotator(session: Session, image_filter: Select | None) -> list[AnnotationView]:
    query = select(Annotation).where(Annotation.superseded.is_(False), Annotation.kind == AnnotationKind.LABEL)
    if image_filter is not None:
        query = query.where(Annotation.image_id.in_(image_filter))
    return _views(session, query.order_by(Annotation.image_id, Annotation.id))


def disagreements(session: Session, *, include_tags: bool = True) -> list[Disagreement]:
    """Images whose current labels from different annotators differ in main class (or, with
    ``include_tags``, in sub-class tags), by image id."""
    doubly_labelled = (
        select(Annotation.image_id)
        .where(Annotation.superseded.is_(False), Annotation.kind == AnnotationKind.LABEL)
        .group_by(Annotation.image_id)
        .having(func.count() > 1)
    )
    found = []
    views = _current_labels_by_annotator(session, doubly_labelled)
    for image_id, group in itertools.groupby(views, key=lambda view: view.image_id):
        labels = tuple((view.annotator, view.main_class or "", view.tags) for view in group)
        main_classes_differ = len({main for _, main, _ in labels}) > 1
        tags_differ = len({(main, frozenset(tags)) for _, main, tags in labels}) > 1
        if main_classes_differ or (include_tags and tags_differ):
            found.append(Disagreement(image_id=image_id, labels=labels, main_classes_differ=main_classes_differ))
    return found


def paired_labels(session: Session, annotator_a: int, annotator_b: int, *, level: str = "main") -> list[PairedLabel]:
    """Both annotators' current labels on each image they both labelled. ``level="main"`` compares main
    classes; ``level="leaf"`` compares main class plus the set of tags."""
    if level not in ("main", "leaf"):
        raise AnnotationError(f"level must be 'main' or 'leaf', not {level!r}")
    both = (
        select(Annotation.image_id)
        .where(
            Annotation.superseded.is_(False),
            Annotation.kind == AnnotationKind.LABEL,
            Annotation.annotator_id.in_((annotator_a, annotator_b)),
        )
        .group_by(Annotation.image_id)
        .having(func.count() == 2)
    )
    query = select(Annotation).where(
        Annotation.superseded.is_(False),
        Annotation.kind == AnnotationKind.LABEL,
        Annotation.annotator_id.in_((annotator_a, annotator_b)),
        Annotation.image_id.in_(both),
    )
    views = _views(session, query.order_by(Annotation.image_id, Annotation.id))

    def name(view: AnnotationView) -> str:
        if level == "main" or not view.tags:
            return view.main_class or ""
        return f"{view.main_class}/{'+'.join(sorted(view.tags))}"

    pairs = []
    for image_id, group in itertools.groupby(views, key=lambda view: view.image_id):
        by_author = {view.annotator_id: view for view in group}
        pairs.append(PairedLabel(image_id, name(by_author[annotator_a]), name(by_author[annotator_b])))
    return pairs


def cohen_kappa(pairs: Iterable[tuple[str, str]]) -> Agreement:
    """Cohen's kappa for two raters' labels on the same items: (p_o - p_e) / (1 - p_e).

    Undefined (NaN) with no items, or when both raters used one and the same category throughout.
    """
    pairs = list(pairs)
    count = len(pairs)
    if count == 0:
        return Agreement(images=0, observed_agreement=float("nan"), expected_agreement=float("nan"), kappa=float("nan"))
    observed = sum(a == b for a, b in pairs) / count
    marginal_a = Counter(a for a, _ in pairs)
    marginal_b = Counter(b for _, b in pairs)
    expected = sum(marginal_a[label] * marginal_b[label] for label in marginal_a) / count**2
    kappa = float("nan") if expected == 1.0 else (observed - expected) / (1.0 - expected)
    return Agreement(images=count, observed_agreement=observed, expected_agreement=expected, kappa=kappa)


def agreement(session: Session, annotator_a: int, annotator_b: int, *, level: str = "main") -> Agreement:
    """Cohen's kappa between two annotators on the images both currently label."""
    pairs = paired_labels(session, annotator_a, annotator_b, level=level)
    return cohen_kappa((pair.label_a, pair.label_b) for pair in pairs)
