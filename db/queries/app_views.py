"""Read queries the Streamlit app needs beyond the annotation, queue, job and model modules.

Every function takes a Session and never commits. "Current label" here means an annotator's newest,
non-superseded annotation of kind LABEL (an undo leaves an UNDO row current, so it drops out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Select, and_, case, exists, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from core.registry import SCORE_STRATEGIES
from db.engine import upsert_insert
from db.queries.models import input_embedding
from db.schema import (
    Annotation,
    AnnotationKind,
    AnnotationSource,
    Annotator,
    Claim,
    Image,
    MainClass,
    Prediction,
    utcnow,
)


def taxonomy_rows(session: Session) -> list[MainClass]:
    """Main classes in display order with their sub-classes loaded (also in display order)."""
    query = select(MainClass).options(selectinload(MainClass.sub_classes)).order_by(MainClass.position, MainClass.id)
    return list(session.scalars(query))


def image_by_id(session: Session, image_id: int) -> Image | None:
    return session.get(Image, image_id)


def images_by_ids(session: Session, image_ids: Sequence[int]) -> list[Image]:
    return list(session.scalars(select(Image).where(Image.id.in_(list(image_ids)))))


def prediction_for(session: Session, model_version_id: int | None, image_id: int) -> Prediction | None:
    if model_version_id is None:
        return None
    return session.get(Prediction, (model_version_id, image_id))


def uncertainty_place(session: Session, prediction: Prediction, strategy: str) -> tuple[int, int] | None:
    """(place, of): the image's place by ``strategy``'s score (1 = most uncertain) among the images of its
    model version nobody has labelled yet, and how many those are; None when the version has no such score.
    One pass over the (model_version_id, labelled, score) index range of the unlabelled rows."""
    if strategy not in SCORE_STRATEGIES:
        return None
    score = getattr(Prediction, strategy)
    mine = getattr(prediction, strategy)
    if mine is None:
        return None
    above, total = session.execute(
        select(func.count().filter(score > mine), func.count()).where(
            Prediction.model_version_id == prediction.model_version_id,
            Prediction.labelled.is_(False),
            score.is_not(None),
        )
    ).one()
    return int(above) + 1, int(total)


def claim_image(
    session: Session,
    *,
    image_id: int,
    annotator_id: int,
    lease_seconds: float,
    source: AnnotationSource = AnnotationSource.UNKNOWN,
    strategy: str | None = None,
    now: datetime | None = None,
) -> Claim | None:
    """Claim one given image (e.g. the one an undo brings back): the claim as written, or None when someone
    else holds it.

    A claim the annotator already holds is renewed and keeps what served it; a new one records ``source``
    and ``strategy`` (see ``db.schema.AnnotationSource``) for the decision that will fulfil it.

    One statement, INSERT .. ON CONFLICT (image_id) DO UPDATE .. WHERE mine or expired .. RETURNING: a
    read-then-write raced on PostgreSQL (two inserts of a fresh image: duplicate key on pk_claims; two
    take-overs of an expired one: both won). A conflicting row waits for its writer, then is re-checked."""
    now = now or utcnow()
    statement = upsert_insert(session, Claim).values(
        image_id=image_id,
        annotator_id=annotator_id,
        expires_at=now + timedelta(seconds=lease_seconds),
        source=source.value,
        strategy=strategy,
    )
    new = statement.excluded
    mine = Claim.annotator_id == annotator_id  # Claim.* is the row already there
    statement = statement.on_conflict_do_update(
        index_elements=[Claim.image_id],
        set_={
            "annotator_id": new.annotator_id,
            "expires_at": new.expires_at,
            # A renewal keeps what served the image; an expired claim of someone else's records ours.
            "source": case((mine, Claim.source), else_=new.source),
            "strategy": case((mine, Claim.strategy), else_=new.strategy),
        },
        where=or_(mine, Claim.expires_at <= now),
    ).returning(Claim)
    # populate_existing: a Claim loaded earlier in this session is overwritten with the row as written.
    claimed = session.scalars(statement, execution_options={"populate_existing": True}).one_or_none()
    if claimed is None:
        # Refused: the row is someone else's live claim, whatever a copy loaded earlier says.
        stale = session.identity_map.get(session.identity_key(Claim, image_id))
        if stale is not None:
            session.expire(stale)
    return claimed


def renew_claim(
    session: Session, *, image_id: int, annotator_id: int, lease_seconds: float, now: datetime | None = None
) -> Claim | None:
    """Extend the annotator's claim on the image, expired or not, keeping what served it: the claim as
    renewed, or None when they hold none. Never creates one: a claim that is gone went with a decision or
    a release (another tab of the annotator decided the image, or another annotator was handed it since
    and decided it), and bringing it back would show that image again as if the queue had served it."""
    now = now or utcnow()
    statement = (
        update(Claim)
        .where(Claim.image_id == image_id, Claim.annotator_id == annotator_id)
        .values(expires_at=now + timedelta(seconds=lease_seconds))
        .returning(Claim)
    )
    return session.scalars(statement, execution_options={"populate_existing": True}).one_or_none()


def _current_label_exists(image_column) -> Select:  # type: ignore[no-untyped-def]
    return exists().where(
        Annotation.image_id == image_column,
        Annotation.superseded.is_(False),
        Annotation.kind == AnnotationKind.LABEL,
    )


@dataclass(frozen=True)
class GridRow:
    image_id: int
    path: str
    predicted_main_id: int | None
    predicted_sub_id: int | None
    confidence: float | None
    score: float | None
    labelled: bool


GRID_MODES = ("uncertain", "predicted", "unlabelled", "labelled", "search", "ids")


def grid_images(
    session: Session,
    *,
    mode: str,
    model_version_id: int | None,
    strategy: str = "entropy",
    main_class_id: int | None = None,
    search: str = "",
    image_ids: Sequence[int] = (),
    offset: int = 0,
    limit: int = 24,
) -> tuple[list[GridRow], int]:
    """One page of images for the Grid page, and the total count under the same filter.

    ``uncertain``: unlabelled images, highest ``strategy`` score first (random order without a model);
    ``predicted``: the model's predicted main class is ``main_class_id``, most confident first;
    ``unlabelled`` / ``labelled``: by random key; ``search``: the file path contains ``search``;
    ``ids``: exactly ``image_ids`` (an Explore selection), in that order.
    """
    if mode not in GRID_MODES:
        raise ValueError(f"unknown grid mode {mode!r}; expected one of {GRID_MODES}")
    labelled = _current_label_exists(Image.id)
    join_condition = and_(Prediction.image_id == Image.id, Prediction.model_version_id == model_version_id)
    score_column = getattr(Prediction, strategy, Prediction.entropy) if strategy != "random" else None
    columns = [
        Image.id,
        Image.path,
        Prediction.main_class_id,
        Prediction.sub_class_id,
        Prediction.confidence,
        score_column if score_column is not None else Prediction.entropy,
        labelled.label("labelled"),
    ]
    query = select(*columns).select_from(Image).outerjoin(Prediction, join_condition)
    if mode == "uncertain":
        query = query.where(~labelled)
        if model_version_id is not None and score_column is not None:
            query = query.order_by(score_column.desc().nulls_last(), Image.random_key)
        else:
            query = query.order_by(Image.random_key)
    elif mode == "predicted":
        query = query.where(Prediction.main_class_id == main_class_id).order_by(Prediction.confidence.desc())
    elif mode == "unlabelled":
        query = query.where(~labelled).order_by(Image.random_key)
    elif mode == "labelled":
        query = query.where(labelled).order_by(Image.random_key)
    elif mode == "search":
        query = query.where(Image.path.contains(search, autoescape=True)).order_by(Image.path)
    else:
        query = query.where(Image.id.in_(list(image_ids)))
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    rows = session.execute(query.offset(offset).limit(limit)).all()
    result = [GridRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6])) for r in rows]
    if mode == "ids":
        order = {image_id: i for i, image_id in enumerate(image_ids)}
        result.sort(key=lambda row: order.get(row.image_id, len(order)))
    return result, total


@dataclass(frozen=True)
class ModelDisagreement:
    image_id: int
    path: str
    human_main_id: int
    annotator: str
    predicted_main_id: int
    confidence: float


def confident_disagreements(
    session: Session,
    model_version_id: int,
    *,
    min_confidence: float = 0.9,
    limit: int = 48,
    annotator_id: int | None = None,
) -> list[ModelDisagreement]:
    """Human labels the model contradicts with at least ``min_confidence``: likely labelling mistakes
    (only ``annotator_id``'s own labels when given)."""
    query = (
        select(
            Image.id,
            Image.path,
            Annotation.main_class_id,
            Annotator.name,
            Prediction.main_class_id,
            Prediction.confidence,
        )
        .join(Annotation, Annotation.image_id == Image.id)
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .join(Prediction, and_(Prediction.image_id == Image.id, Prediction.model_version_id == model_version_id))
        .where(
            Annotation.superseded.is_(False),
            Annotation.kind == AnnotationKind.LABEL,
            Prediction.confidence >= min_confidence,
            Prediction.main_class_id != Annotation.main_class_id,
        )
        .order_by(Prediction.confidence.desc())
        .limit(limit)
    )
    if annotator_id is not None:
        query = query.where(Annotation.annotator_id == annotator_id)
    return [ModelDisagreement(*row) for row in session.execute(query)]


def annotation_counts_by_annotator(session: Session) -> list[tuple[str, str, int]]:
    """(annotator, kind, count) over current annotations."""
    query = (
        select(Annotator.name, Annotation.kind, func.count())
        .join(Annotation, Annotation.annotator_id == Annotator.id)
        .where(Annotation.superseded.is_(False))
        .group_by(Annotator.name, Annotation.kind)
        .order_by(Annotator.name)
    )
    return [(name, str(kind), count) for name, kind, count in session.execute(query)]


@dataclass(frozen=True)
class EmbeddingPoints:
    """A map's points in image-id order; on the input map (``input_map_points``) every prediction is None."""

    image_ids: list[int]
    x: list[float]
    y: list[float]
    predicted_main_id: list[int | None]
    predicted_sub_id: list[int | None]
    confidence: list[float | None]
    entropy: list[float | None]
    novelty: list[float | None]
    disagreement: list[float | None]


def embedding_points(session: Session, model_version_id: int) -> EmbeddingPoints:
    """The model version's UMAP coordinates and scores, for images that have them."""
    query = (
        select(
            Prediction.image_id,
            Prediction.umap_x,
            Prediction.umap_y,
            Prediction.main_class_id,
            Prediction.sub_class_id,
            Prediction.confidence,
            Prediction.entropy,
            Prediction.novelty,
            Prediction.disagreement,
        )
        .where(
            Prediction.model_version_id == model_version_id,
            Prediction.umap_x.is_not(None),
            Prediction.umap_y.is_not(None),
        )
        .order_by(Prediction.image_id)
    )
    rows = session.execute(query).all()
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in range(9)]
    return EmbeddingPoints(*(list(column) for column in columns))


def input_map_points(session: Session) -> tuple[str | None, EmbeddingPoints]:
    """The map made before any model version (UMAP of the backbone's features, or pixels): what was mapped
    ("efficientnet_lite2 features"; None without a map) and its points, with no predictions."""
    name, image_ids, coords = input_embedding(session)
    nothing = ([None] * len(image_ids) for _ in range(6))
    return name, EmbeddingPoints(image_ids, coords[:, 0].tolist(), coords[:, 1].tolist(), *nothing)


def human_main_labels(session: Session) -> dict[int, int]:
    """image id -> main class id of its newest current LABEL (across annotators)."""
    query = (
        select(Annotation.image_id, Annotation.main_class_id)
        .where(Annotation.superseded.is_(False), Annotation.kind == AnnotationKind.LABEL)
        .order_by(Annotation.created_at)
    )
    return {image_id: main_id for image_id, main_id in session.execute(query) if main_id is not None}
