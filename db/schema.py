"""The relational schema (SQLAlchemy 2.x typed models).

Vocabulary:
- a *main class* is what annotators decide first ("nazi elements", "other"); it may have *sub-classes*
  ("salute", "flag"). A *leaf* of the taxonomy is a sub-class, or a main class with no sub-classes.
- an *annotation* is one human decision about one image. The history is append-only: an undo or a
  correction inserts a new row and flags the previous one ``superseded``; nothing is deleted.
- a *prediction* is one model version's output for one image; the acquisition scores live on it as
  indexed columns so that "next image under strategy S" is one indexed query.
"""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints make Alembic's batch mode (SQLite) able to alter them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# The largest id an Integer primary key holds on every dialect (PostgreSQL's int4): ids from users (URLs,
# command lines) are checked against it, so that a huge one is "not found", not an overflow traceback.
MAX_ID = 2**31 - 1

# Names people type (main classes, sub-classes, annotators): one limit on every database, checked before
# writing. PostgreSQL enforces String(200) with a DataError; SQLite stored 100,000-character names. Names
# stored before the check stay readable: only new names are refused.
MAX_NAME_LENGTH = 200


def name_length_problem(what: str, name: str) -> str | None:
    """None when ``name`` fits MAX_NAME_LENGTH, else a message naming ``what`` (the name is cut short)."""
    if len(name) <= MAX_NAME_LENGTH:
        return None
    return f"{what} {name[:40]!r}... is {len(name):,} characters long: at most {MAX_NAME_LENGTH} are allowed"


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar = {dict[str, Any]: JSON, list[Any]: JSON}


class Image(Base):
    __tablename__ = "images"
    # Cold start and the audit slice read unlabelled images in random_key order within one audit value.
    __table_args__ = (Index("ix_images_audit_random_key", "audit", "random_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # Relative to the project folder when the file lies inside it, absolute otherwise.
    path: Mapped[str] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(16))
    file_size: Mapped[int] = mapped_column(BigInteger)
    added_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # A stable pseudo-random key in [0, 1) from the content hash: the random strategy, the audit slice
    # and the cold-start order read it through an index instead of ORDER BY random().
    random_key: Mapped[float] = mapped_column(Float, index=True)
    # Part of the unbiased audit slice: labelled to measure accuracy, never chosen by uncertainty.
    audit: Mapped[bool] = mapped_column(Boolean, default=False)

    annotations: Mapped[list[Annotation]] = relationship(back_populates="image")


class MainClass(Base):
    __tablename__ = "main_classes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH), unique=True)
    shortcut: Mapped[str | None] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer, default=0)
    colour: Mapped[str | None] = mapped_column(String(16))

    sub_classes: Mapped[list[SubClass]] = relationship(
        back_populates="main_class", order_by="SubClass.position", cascade="all, delete-orphan"
    )


class SubClass(Base):
    __tablename__ = "sub_classes"
    __table_args__ = (UniqueConstraint("main_class_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    main_class_id: Mapped[int] = mapped_column(ForeignKey("main_classes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH))
    shortcut: Mapped[str | None] = mapped_column(String(16))
    position: Mapped[int] = mapped_column(Integer, default=0)
    colour: Mapped[str | None] = mapped_column(String(16))

    main_class: Mapped[MainClass] = relationship(back_populates="sub_classes")


class Annotator(Base):
    __tablename__ = "annotators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_NAME_LENGTH), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class AnnotatorWellbeing(Base):
    """One annotator's image-safety settings and exposure count, kept across sessions and reloads.

    ``blur`` and ``greyscale`` of None follow the project's defaults (``labeller.toml``). Exposures count the
    images the Label card showed: ``exposures_today`` for the UTC day ``exposure_day`` (the project's daily
    limit applies to it), ``exposures_since_break`` since ``break_started_at``.
    """

    __tablename__ = "annotator_wellbeing"

    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id", ondelete="CASCADE"), primary_key=True)
    blur: Mapped[bool | None] = mapped_column(Boolean)
    greyscale: Mapped[bool | None] = mapped_column(Boolean)
    blur_px: Mapped[int] = mapped_column(Integer, default=22)
    reveal_on_hold: Mapped[bool] = mapped_column(Boolean, default=True)
    exposure_day: Mapped[date | None] = mapped_column(Date)
    exposures_today: Mapped[int] = mapped_column(Integer, default=0)
    exposures_since_break: Mapped[int] = mapped_column(Integer, default=0)
    break_started_at: Mapped[datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)


class AnnotationKind(enum.StrEnum):
    LABEL = "label"  # a main class, optionally with sub-class tags
    UNSURE = "unsure"  # the annotator could not decide; may carry a tentative main class
    SKIP = "skip"  # not now; the image goes back to the pool
    UNDO = "undo"  # withdraws the annotation it supersedes


class AnnotationSource(enum.StrEnum):
    """What put an image in front of the annotator, recorded on each annotation (and on the claim that
    served it until the decision): the one vocabulary of ``annotations.source`` and ``claims.source``.

    The Label page's queue (``db.queries.queue``) says which of its sources served each image; the
    annotation's ``strategy`` names the strategy only when that strategy's order served it (RANKED, SCORE,
    RANDOM). Other ways of labelling name themselves.
    """

    # -- the Label page's queue
    RANKED = "ranked"  # the version's queue_rank: core.acquisition.rank_pool's order, which `evaluate` simulates
    SCORE = "score"  # the strategy's plain score order: past the ranked head, or a strategy not ranked
    RANDOM = "random"  # random-key order, asked for (the random strategy)
    COLD_START = "cold_start"  # no model version yet: random-key order (evaluate's initial_selection="random")
    AUDIT = "audit"  # the audit slice (its share of the queue, or what is left of it when nothing else is)
    FALLBACK = "fallback"  # the strategy had nothing left (unscored images, a score the version lacks): random order
    RETURNING = "returning"  # the annotator's own skipped or unsure image, handed back when nothing else is left
    REQUESTED = "requested"  # one image asked for by id (a link such as ?image=42)
    # -- elsewhere
    HISTORY = "history"  # a correction from the Label page's Recent list
    GRID = "grid"  # bulk labelling on the Grid page
    EXPLORE = "explore"  # bulk labelling of an Explore (lasso) selection, on the Grid page
    IMPORT = "import"  # labeller import (class folders, manifests)
    DEMO = "demo"  # the demo project's generated labels
    UNREADABLE = "unreadable"  # the automatic skip of an image whose file cannot be read
    # -- no more known
    APP = "app"  # before revision c4e7a2d91b36: the Label page, what served it unrecorded (strategy: the one asked)
    UNKNOWN = "unknown"  # the Label page, but the claim that served the image was gone when the decision came

    @classmethod
    def parse(cls, value: str | None) -> AnnotationSource:
        """The source called ``value``; UNKNOWN for anything else (a row another tool wrote)."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN

    def describe(self, strategy: str | None = None) -> str:
        """For people: "entropy, ranked", "entropy" (its score order), "audit slice", "cold start", "grid"..."""
        if self == AnnotationSource.RANKED and strategy:
            return f"{strategy}, ranked"
        if self == AnnotationSource.SCORE and strategy:
            return strategy
        if self == AnnotationSource.APP and strategy:
            return f"{strategy} (asked; what served it was not recorded)"
        return _SOURCE_WORDS.get(self, self.value.replace("_", " "))


_SOURCE_WORDS = {
    AnnotationSource.AUDIT: "audit slice",
    AnnotationSource.FALLBACK: "fallback (random order: the strategy had nothing left)",
    AnnotationSource.RETURNING: "returning (your skipped or unsure image)",
    AnnotationSource.REQUESTED: "requested by link",
    AnnotationSource.APP: "Label page (what served it was not recorded)",
}


CURRENT_ANNOTATION_INDEX = "ux_annotations_one_current"


class Annotation(Base):
    __tablename__ = "annotations"
    __table_args__ = (
        # "Is this image labelled?" and "what is its current label?" read only current rows.
        Index("ix_annotations_image_current", "image_id", "superseded"),
        Index("ix_annotations_annotator_created", "annotator_id", "created_at"),
        # At most one current decision per (image, annotator), enforced by the database: PostgreSQL's
        # SELECT ... FOR UPDATE locks nothing when no current row exists yet, so two sessions of one
        # annotator could both insert one. record_annotation retries when it loses that race.
        Index(
            CURRENT_ANNOTATION_INDEX,
            "image_id",
            "annotator_id",
            unique=True,
            sqlite_where=text("NOT superseded"),
            postgresql_where=text("NOT superseded"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[AnnotationKind] = mapped_column(Enum(AnnotationKind, native_enum=False, length=16))
    main_class_id: Mapped[int | None] = mapped_column(ForeignKey("main_classes.id"))
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("annotations.id"))
    # Provenance: the model version active when the image was served, what served it (an AnnotationSource)
    # and, when that was a strategy's own order, the strategy.
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    strategy: Mapped[str | None] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(String(32), default=AnnotationSource.UNKNOWN.value)

    image: Mapped[Image] = relationship(back_populates="annotations")
    tags: Mapped[list[AnnotationTag]] = relationship(cascade="all, delete-orphan")


class AnnotationTag(Base):
    """A sub-class tag on an annotation; several tags make a partial label over those leaves."""

    __tablename__ = "annotation_tags"

    annotation_id: Mapped[int] = mapped_column(ForeignKey("annotations.id", ondelete="CASCADE"), primary_key=True)
    sub_class_id: Mapped[int] = mapped_column(ForeignKey("sub_classes.id"), primary_key=True)


class Claim(Base):
    """An image handed to one annotator; nobody else gets it until the lease expires."""

    __tablename__ = "claims"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"))
    expires_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    # What served the image (an AnnotationSource) and the strategy when its own order did: the decision
    # that fulfils the claim records them. NULL on claims taken before revision c4e7a2d91b36.
    source: Mapped[str | None] = mapped_column(String(32))
    strategy: Mapped[str | None] = mapped_column(String(32))


class ModelVersion(Base):
    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    name: Mapped[str] = mapped_column(String(200))
    model_kind: Mapped[str] = mapped_column(String(32))  # m1, m2, m1m2, supervised
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What it was trained on: label counts, the newest annotation id, the taxonomy.
    data_snapshot: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    label_count: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint_path: Mapped[str] = mapped_column(Text)
    active: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime)


class Prediction(Base):
    """One model version's view of one image, with every acquisition score as an indexed column."""

    __tablename__ = "predictions"
    __table_args__ = (
        # (version, labelled, score): the next-image walk starts past every labelled image instead of
        # probing and skipping each one (thousands after a busy day on one model version).
        Index("ix_predictions_entropy", "model_version_id", "labelled", "entropy"),
        Index("ix_predictions_leaf_entropy", "model_version_id", "labelled", "leaf_entropy"),
        Index("ix_predictions_margin", "model_version_id", "labelled", "margin"),
        Index("ix_predictions_least_confidence", "model_version_id", "labelled", "least_confidence"),
        Index("ix_predictions_bald", "model_version_id", "labelled", "bald"),
        Index("ix_predictions_disagreement", "model_version_id", "labelled", "disagreement"),
        Index("ix_predictions_novelty", "model_version_id", "labelled", "novelty"),
        Index("ix_predictions_queue_rank", "model_version_id", "labelled", "queue_rank"),
        Index("ix_predictions_main", "model_version_id", "main_class_id", "confidence"),
        Index("ix_predictions_image_id", "image_id"),
    )

    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    main_class_id: Mapped[int | None] = mapped_column(ForeignKey("main_classes.id", ondelete="SET NULL"))
    sub_class_id: Mapped[int | None] = mapped_column(ForeignKey("sub_classes.id", ondelete="SET NULL"))
    confidence: Mapped[float] = mapped_column(Float)  # probability of the predicted main class
    # {"main": {name: p}, "leaf": {"main/sub": p}}, by name so that a renamed class still reads.
    probabilities: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Acquisition scores: larger means "label me sooner" for every one of them.
    entropy: Mapped[float] = mapped_column(Float)
    leaf_entropy: Mapped[float] = mapped_column(Float)
    margin: Mapped[float] = mapped_column(Float)  # stored as 1 - (p1 - p2)
    least_confidence: Mapped[float] = mapped_column(Float)
    bald: Mapped[float | None] = mapped_column(Float)
    disagreement: Mapped[float | None] = mapped_column(Float)
    novelty: Mapped[float | None] = mapped_column(Float)
    reconstruction_error: Mapped[float | None] = mapped_column(Float)
    latent_mean: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32, little-endian
    umap_x: Mapped[float | None] = mapped_column(Float)
    umap_y: Mapped[float | None] = mapped_column(Float)
    # Place in the order core.acquisition.rank_pool gives for the version's ranked strategy (diversified,
    # with coverage picks; ModelVersion.metrics["queue"] says which): 0 = first. Only the top of the pool is
    # ranked; the rest (NULL) follows in score order.
    queue_rank: Mapped[int | None] = mapped_column(Integer)
    # A hint kept by db.queries.annotations (and db.queries.queue.mark_labelled_predictions after a
    # scoring run): the image has a current LABEL. The queue still checks annotations itself, so a
    # stale hint only costs speed, never correctness.
    labelled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class InputEmbedding(Base):
    """Where one image lies on the map of what the models see (a backbone's features, or pixels), before
    any model version has latent means to map: the Explore page's map until the first version's is made.
    One map per project; the embed job replaces it whole (``db.queries.models.set_input_embedding``)."""

    __tablename__ = "input_embeddings"

    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), primary_key=True)
    input: Mapped[str] = mapped_column(String(200))  # what was mapped, for people: "efficientnet_lite2 features"
    umap_x: Mapped[float] = mapped_column(Float)
    umap_y: Mapped[float] = mapped_column(Float)


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # train, score, embed
    status: Mapped[JobStatus] = mapped_column(Enum(JobStatus, native_enum=False, length=16), default=JobStatus.QUEUED)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime)
    worker_id: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))

    events: Mapped[list[JobEvent]] = relationship(
        back_populates="job", order_by="JobEvent.id", cascade="all, delete-orphan"
    )


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))  # progress, log, metric
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)

    job: Mapped[Job] = relationship(back_populates="events")


class TaxonomyChange(Base):
    """One applied taxonomy edit that renamed or merged classes, append-only: ``details`` holds what is
    needed to undo it (the merged classes' names, keys and colours, the ids of the annotations and tags that
    moved, the renames). An undo is a row of its own whose ``undo_of`` names the change it reverted."""

    __tablename__ = "taxonomy_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    summary: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    undo_of: Mapped[int | None] = mapped_column(ForeignKey("taxonomy_changes.id"), unique=True)
