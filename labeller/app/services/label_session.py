"""The Label page's services: the decision rules, the card's protocol, and the look-ahead window.

No Streamlit here. The card (``labeller/app/label_card``) makes decisions in the browser and sends
them as *ops*; ``LabelSession`` (kept in the page's session state) applies them in order, each to the
image it names, exactly once, and keeps a window of claimed images for the card to show next.

An op names its place in the annotator's append-only history of its image: ``after`` (the newest row
when the image was handed out, 0 for none) and ``step`` (1 for the first op on it after that, 2 for
the next...). An op whose row is already there was applied before (a resend after a rerun, a reconnect
or a server restart) and is acknowledged without writing anything.
"""

from __future__ import annotations

import base64
import functools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from db.engine import unit_of_work
from db.queries import app_views, label_history, unreadable
from db.queries import models as model_queries
from db.queries.annotations import (
    AnnotationError,
    label_counts,
    recent_annotations,
    record_annotation,
    served_by,
    served_by_claim,
    undo_annotation,
)
from db.queries.queue import (
    DEFAULT_AUDIT_EVERY,
    STRATEGIES,
    claimed_images,
    release_claims,
    serve_next,
)
from db.schema import (
    MAX_ID,
    Annotation,
    AnnotationKind,
    AnnotationSource,
    Image,
    ModelVersion,
    Prediction,
    utcnow,
)
from labeller.app.keys import PAGE_KEYS
from labeller.app.services.common import TaxonomyView, active_model_version_id, large_view_file
from labeller.app.services.label import Decision
from labeller.app.services.renditions import veiled_large_view
from labeller.disk_full import is_disk_full
from labeller.project import Project
from labeller.thumbnails import DEFAULT_BLUR_PX, UNREADABLE_PLACEHOLDER, Veil, placeholder_file, thumbnail_file

# Past this many main classes the card shows a search box and the matching classes, not one button each.
MAX_CLASS_BUTTONS = 40
WINDOW_SIZE = 24  # images the card holds: the one on screen and the next ones, preloaded (a burst of 20 keys)
LEFT_REFRESH_S = 30.0
RESULTS_KEPT = 2000
PROBABILITY_BARS = 4
DECISION_KINDS = ("label", "skip", "unsure")
OP_KINDS = (*DECISION_KINDS, "undo", "undo_annotation")


UNREADABLE_REFUSED = (
    "Image {image}: its file is missing or unreadable, so nobody has seen it: only Skip is saved for it "
    "(nothing applied)."
)


class DecisionError(ValueError):
    """A decision the rules refuse (a tag of another main class, a label without a class...)."""


# ----------------------------------------------------------------------------------------- rules


def resolve_decision(taxonomy: TaxonomyView, kind: str, main_class_id: int | None, tag_ids: Sequence[int]) -> Decision:
    """The decision a key press means, or :class:`DecisionError`.

    - ``label`` names a main class and any of *its* sub-class tags;
    - ``unsure`` may carry a tentative main class and its tags; tags alone name their main class when
      they all belong to one;
    - ``skip`` carries nothing.
    """
    if kind not in DECISION_KINDS:
        raise DecisionError(f"unknown decision {kind!r}")
    tags = tuple(dict.fromkeys(int(t) for t in tag_ids))
    owners = set()
    for tag in tags:
        sub = taxonomy.sub_class(tag)
        if sub is None:
            raise DecisionError(f"no sub-class with id {tag}: the taxonomy changed, reload the page")
        owners.add(sub.main_class_id)
    if main_class_id is not None and taxonomy.main_class(main_class_id) is None:
        raise DecisionError(f"no main class with id {main_class_id}: the taxonomy changed, reload the page")
    if kind == "skip":
        if main_class_id is not None or tags:
            raise DecisionError("a skip carries no class")
        return Decision(AnnotationKind.SKIP)
    if kind == "unsure" and main_class_id is None and tags:
        if len(owners) != 1:
            raise DecisionError("tentative tags must belong to one main class")
        main_class_id = owners.pop()
        owners = {main_class_id}
    if kind == "label" and main_class_id is None:
        raise DecisionError("a label needs a main class")
    if owners - {main_class_id}:
        raise DecisionError("a tag of another main class cannot go with this main class")
    return Decision(AnnotationKind(kind), main_class_id, tuple(sorted(tags)))


# ----------------------------------------------------------------------------------------- ops


@dataclass(frozen=True)
class CardOp:
    """One decision or undo from the card, on one image."""

    op_id: str
    kind: str
    image_id: int
    after: int = 0
    step: int = 0
    main_class_id: int | None = None
    tags: tuple[int, ...] = ()
    target_step: int | None = None  # undo: the step of the decision it withdraws
    annotation_id: int | None = None  # undo_annotation: the row it withdraws (an undo with no local history)
    strategy: str | None = None
    model_version_id: int | None = None


def _int(value: object, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value or value < minimum:
        raise ValueError(f"not an integer >= {minimum}: {value!r}")
    return int(value)


def _optional_int(value: object) -> int | None:
    return None if value is None else _int(value, minimum=1)


def parse_card_ops(raw: object) -> tuple[list[CardOp], list[str]]:
    """The ops in the card's outbox, in the order sent, and a problem line for each one that is malformed
    (dropped: nothing the browser sends can write anything the rules do not allow)."""
    ops: list[CardOp] = []
    problems: list[str] = []
    entries = raw.get("ops") if isinstance(raw, Mapping) else None
    if not isinstance(entries, list):
        return ops, problems
    for entry in entries:
        try:
            if not isinstance(entry, Mapping):
                raise ValueError("not an object")
            op_id = entry.get("op")
            if not isinstance(op_id, str) or not 0 < len(op_id) <= 64:
                raise ValueError("no op id")
            kind = entry.get("kind")
            if kind not in OP_KINDS:
                raise ValueError(f"unknown kind {kind!r}")
            tags = entry.get("tags") or []
            if not isinstance(tags, list):
                raise ValueError("tags must be a list")
            strategy = entry.get("strategy")
            op = CardOp(
                op_id=op_id,
                kind=str(kind),
                image_id=_int(entry.get("image"), minimum=1),
                after=_int(entry.get("after", 0)),
                step=_int(entry.get("step", 0)),
                main_class_id=_optional_int(entry.get("main")),
                tags=tuple(_int(t, minimum=1) for t in tags),
                target_step=_optional_int(entry.get("target")),
                annotation_id=_optional_int(entry.get("annotation")),
                strategy=strategy if strategy in STRATEGIES else None,
                model_version_id=_optional_int(entry.get("mv")),
            )
            if kind in DECISION_KINDS and op.step < 1:
                raise ValueError("a decision needs a step")
            if kind == "undo" and (op.target_step is None or op.step <= op.target_step):
                raise ValueError("an undo needs the step it withdraws, before its own")
            if kind == "undo_annotation" and op.annotation_id is None:
                raise ValueError("an undo needs an annotation id")
            ops.append(op)
        except ValueError as error:
            problems.append(f"ignored a malformed op from the card ({error})")
    return ops, problems


@dataclass(frozen=True)
class OpResult:
    op_id: str
    status: str  # applied | duplicate | rejected
    image_id: int
    kind: str
    annotation_id: int | None = None
    message: str = ""

    @property
    def decided(self) -> bool:
        """True when the image is decided for this annotator (it leaves the window)."""
        return self.kind in DECISION_KINDS and self.status in ("applied", "duplicate")

    @property
    def reopened(self) -> bool:
        """True when an undo brought the image back."""
        return self.kind in ("undo", "undo_annotation") and self.status in ("applied", "duplicate")


def _same_decision(row: Annotation, op: CardOp, decision: Decision | None) -> bool:
    if op.kind == "undo":
        return row.kind == AnnotationKind.UNDO
    return (
        decision is not None
        and row.kind == decision.kind
        and row.main_class_id == decision.main_class_id
        and tuple(sorted(tag.sub_class_id for tag in row.tags)) == decision.sub_class_ids
    )


def held_elsewhere(image_id: int) -> str:
    return f"Image {image_id} is with someone else now: nothing undone. Undo it from Recent once they are done."


def reclaim_undone(session: Session, target: Annotation, annotator_id: int, lease_seconds: int) -> str | None:
    """Claim the image of an annotation being undone: None when claimed, else why the undo is refused.

    Refused while someone else holds the image, and when I undo my current skip or unsure of it after
    someone else has labelled it (the queue hands such an image on; bringing it back would serve it
    twice), except on the audit slice, which every annotator labels. The claim keeps what served the image
    first, so the decision that replaces the withdrawn one records the same source."""
    savepoint = session.begin_nested()
    claim = app_views.claim_image(
        session,
        image_id=target.image_id,
        annotator_id=annotator_id,
        lease_seconds=lease_seconds,
        source=AnnotationSource.parse(target.source),
        strategy=target.strategy,
    )
    if claim is None:
        savepoint.rollback()
        return held_elsewhere(target.image_id)
    # Read after claiming, not before: on PostgreSQL a label saved by the annotator who held the image
    # commits before our claim goes through (it waits on their row), and only a later read sees it.
    handed_on = not target.superseded and target.kind != AnnotationKind.LABEL and not target.image.audit
    if handed_on and label_history.labelled_by_others_since(
        session, image_id=target.image_id, annotator_id=annotator_id, after=target.id
    ):
        savepoint.rollback()
        return f"Image {target.image_id} was labelled by someone else after your decision: nothing undone."
    savepoint.commit()
    return None


def _missing_ids(session: Session, op: CardOp) -> str | None:
    """Why ``op`` cannot apply to any row, or None. A decision replayed from the browser's storage for an
    image that does not exist (or an id past what the database holds) raised on every reload, and no later
    decision saved: it is refused alone, before anything is written."""
    named = (op.image_id, op.after, op.step, op.target_step, op.annotation_id, op.main_class_id, *op.tags)
    if any(value is not None and value > MAX_ID for value in named):
        return f"Image {op.image_id}: the decision names an id no row can have: nothing applied."
    if session.get(Image, op.image_id) is None:
        return f"Image {op.image_id} is not in this project: nothing applied."
    return None


def apply_op(
    session: Session, *, annotator_id: int, op: CardOp, taxonomy: TaxonomyView, lease_seconds: int
) -> OpResult:
    """Apply one op in the caller's transaction (see the module's docstring for when it is a duplicate)."""

    def result(status: str, annotation_id: int | None = None, message: str = "") -> OpResult:
        return OpResult(op.op_id, status, op.image_id, op.kind, annotation_id, message)

    if (missing := _missing_ids(session, op)) is not None:
        return result("rejected", message=missing)
    if op.kind == "undo_annotation":
        target = session.get(Annotation, op.annotation_id)
        if target is None or target.annotator_id != annotator_id or target.image_id != op.image_id:
            return result("rejected", message="Nothing of yours to undo there.")
        if target.superseded:
            undone = any(
                row.kind == AnnotationKind.UNDO and row.supersedes_id == target.id for row in target.image.annotations
            )
            if not undone:
                return result("rejected", message="That decision was changed since: nothing undone.")
            if (refusal := reclaim_undone(session, target, annotator_id, lease_seconds)) is not None:
                return result("rejected", message=refusal)
            return result("duplicate", target.id)
        # Claim first: an undo never brings back an image that another annotator holds (nothing is undone).
        if (refusal := reclaim_undone(session, target, annotator_id, lease_seconds)) is not None:
            return result("rejected", message=refusal)
        undo = undo_annotation(session, target.id, annotator_id)
        return result("applied", undo.id)

    decision = None
    if op.kind in DECISION_KINDS:
        try:
            decision = resolve_decision(taxonomy, op.kind, op.main_class_id, op.tags)
        except DecisionError as error:
            return result("rejected", message=f"Image {op.image_id}: {error}.")
    rows = label_history.rows_after(session, image_id=op.image_id, annotator_id=annotator_id, after=op.after)
    if len(rows) >= op.step:
        row = rows[op.step - 1]
        if _same_decision(row, op, decision):
            return result("duplicate", row.id)
        return result("rejected", message=f"Image {op.image_id} was changed elsewhere meanwhile: nothing applied.")
    if len(rows) < op.step - 1:
        return result("rejected", message=f"Image {op.image_id}: an earlier decision on it is missing.")

    if op.kind == "undo":
        assert op.target_step is not None
        target = rows[op.target_step - 1] if op.target_step <= len(rows) else None
        if target is None or target.kind == AnnotationKind.UNDO or target.superseded:
            return result("rejected", message=f"Image {op.image_id}: that decision is no longer current.")
        if (refusal := reclaim_undone(session, target, annotator_id, lease_seconds)) is not None:
            return result("rejected", message=refusal)
        undo = undo_annotation(session, target.id, annotator_id)
        return result("applied", undo.id)

    assert decision is not None
    if decision.kind != AnnotationKind.SKIP and unreadable.unreadable_ids(session, [op.image_id]):
        # Its card showed the "file missing or unreadable" placeholder: a class key pressed there would label
        # an image nobody saw. Skip stays allowed; once the file is back and re-checked, it can be labelled.
        return result("rejected", message=UNREADABLE_REFUSED.format(image=op.image_id))
    # A decision needs the image: one handed to another annotator meanwhile (say after my other tab skipped
    # it and my lease ran out) is theirs now. My own live claim is renewed and keeps what served the image.
    claim = app_views.claim_image(session, image_id=op.image_id, annotator_id=annotator_id, lease_seconds=lease_seconds)
    if claim is None:
        return result("rejected", message=held_elsewhere(op.image_id))
    version_id = op.model_version_id
    if version_id is not None and (version_id > MAX_ID or session.get(ModelVersion, version_id) is None):
        version_id = None
    # What served the image (and its strategy) comes from my claim on it, not from the card's op.
    source, strategy = served_by(claim)
    annotation = record_annotation(
        session,
        image_id=op.image_id,
        annotator_id=annotator_id,
        kind=decision.kind,
        main_class_id=decision.main_class_id,
        sub_class_ids=decision.sub_class_ids,
        model_version_id=version_id,
        source=source,
        strategy=strategy,
    )
    return result("applied", annotation.id)


def apply_ops(
    engine: Engine, *, annotator_id: int, ops: Sequence[CardOp], taxonomy: TaxonomyView, lease_seconds: int
) -> list[OpResult]:
    """Apply ops in order, each in its own transaction (one refused op never undoes the others)."""
    results = []
    for op in ops:
        try:
            with unit_of_work(engine) as session:
                results.append(
                    apply_op(session, annotator_id=annotator_id, op=op, taxonomy=taxonomy, lease_seconds=lease_seconds)
                )
        except AnnotationError as error:
            results.append(OpResult(op.op_id, "rejected", op.image_id, op.kind, None, str(error)))
        except IntegrityError:
            # Say, the image was removed between the check and the write: refuse this op, keep the others.
            message = f"Image {op.image_id}: the decision no longer fits the database: nothing applied."
            results.append(OpResult(op.op_id, "rejected", op.image_id, op.kind, None, message))
        except (DBAPIError, OSError) as error:
            if not is_disk_full(error):
                raise
            # The transaction rolled back: this op and the ones after it stay unanswered, so the card keeps
            # them in its outbox and sends them again (issue 23 item 8); nothing is lost.
            raise DecisionsNotSaved(results) from error
    return results


class DecisionsNotSaved(Exception):
    """The disk is full: ``results`` answers the ops applied before; the rest are not saved (and not answered)."""

    def __init__(self, results: list[OpResult]) -> None:
        super().__init__(DISK_FULL_NOT_SAVED)
        self.results = results


DISK_FULL_NOT_SAVED = (
    "Disk full on the server: your latest decisions are not saved yet. They stay in this browser and are sent "
    "again until they save; nothing is lost. Tell the project's admin to free space."
)


# ----------------------------------------------------------------------------------------- window


@dataclass(frozen=True)
class WindowItem:
    image_id: int
    strategy: str  # the one asked for
    model_version_id: int | None
    audit: bool = False
    source: AnnotationSource = AnnotationSource.UNKNOWN  # what served it, as its claim records
    served_strategy: str | None = None  # the strategy whose own order served it, if one did


def parse_reveal_request(raw: object) -> tuple[int, str] | None:
    """The card's last reveal request, ``{"image": id, "nonce": text}``, or None when there is none or it is
    malformed (the browser can send anything)."""
    if not isinstance(raw, Mapping):
        return None
    nonce = raw.get("nonce")
    try:
        image_id = _int(raw.get("image"), minimum=1)
    except ValueError:
        return None
    if not isinstance(nonce, str) or not 0 < len(nonce) <= 64:
        return None
    return image_id, nonce


def image_data_url(path: Path) -> str:
    """A cached display file (thumbnail or large view) as a data URL, for the card and image columns."""
    return _data_url(str(path))


@functools.lru_cache(maxsize=512)
def _data_url(path: str) -> str:
    # Display files are named by content hash, so a path's bytes never change.
    data = Path(path).read_bytes()
    mime = "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png" if data[:4] == b"\x89PNG" else "image/webp"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


@dataclass
class LabelSession:
    """One browser session's Label page: the window of claimed images and the ops already answered."""

    annotator_id: int
    strategy: str
    window: list[WindowItem] = field(default_factory=list)
    results: dict[str, OpResult] = field(default_factory=dict)
    reset: int = 0
    epoch: str | None = None
    sent: set[int] = field(default_factory=set)
    payloads: dict[int, dict[str, Any]] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    started: datetime = field(default_factory=utcnow)
    left: tuple[float, int] | None = None  # (when, images left to label) for the window's size
    veil: Veil | None = None  # how the card's images were last sent: veiled (blur on) or in full
    full_request: tuple[int, str] | None = None  # (image, nonce): the card's last reveal request
    full_sent: set[int] = field(default_factory=set)  # images whose full picture this card has

    # --- ops

    def receive(
        self, engine: Engine, outbox: Mapping[str, Any], taxonomy: TaxonomyView, *, lease_seconds: int
    ) -> list[OpResult]:
        """Apply the outbox's ops not answered yet, in order; returns the answers to every op in it."""
        ops, problems = parse_card_ops(outbox)
        self.messages += problems
        epoch = outbox.get("epoch") if isinstance(outbox, Mapping) else None
        if isinstance(epoch, str) and epoch != self.epoch:
            self.epoch = epoch
            self.sent = set()  # a new card instance: it has none of the images yet
            self.full_sent = set()
        new = [op for op in ops if op.op_id not in self.results]
        try:
            answered = apply_ops(
                engine, annotator_id=self.annotator_id, ops=new, taxonomy=taxonomy, lease_seconds=lease_seconds
            )
        except DecisionsNotSaved as stop:
            answered = stop.results
            if DISK_FULL_NOT_SAVED not in self.messages:
                self.messages.append(DISK_FULL_NOT_SAVED)
        for result in answered:
            self.results[result.op_id] = result
            self._follow(result)
            if result.status == "rejected" and result.message:
                self.messages.append(result.message)
        while len(self.results) > RESULTS_KEPT:
            self.results.pop(next(iter(self.results)))
        return [self.results[op.op_id] for op in ops if op.op_id in self.results]

    def _follow(self, result: OpResult) -> None:
        if result.decided:
            self.window = [item for item in self.window if item.image_id != result.image_id]
        elif result.reopened:
            self.put_in_front(result.image_id, announce=result.kind == "undo_annotation")

    def put_in_front(self, image_id: int, *, announce: bool = True) -> None:
        """Show ``image_id`` next (an undo, a link); ``announce`` makes the card switch to it at once."""
        rest = [item for item in self.window if item.image_id != image_id]
        self.window = [WindowItem(image_id, self.strategy, None), *rest]
        self.payloads.pop(image_id, None)
        if announce:
            self.reset += 1

    def change_strategy(self, engine: Engine, strategy: str) -> None:
        """A new queue order: give back the window's claims and start again."""
        with unit_of_work(engine) as session:
            release_claims(session, self.annotator_id, [item.image_id for item in self.window])
        self.strategy = strategy
        self.window = []
        self.reset += 1

    # --- window

    def release_window(self, engine: Engine) -> None:
        """Give back this window's claims (they left the Label page); the window refills on their return.
        Only this window's: the annotator's other tabs keep labelling theirs."""
        if not self.window:
            return
        with unit_of_work(engine) as session:
            release_claims(session, self.annotator_id, [item.image_id for item in self.window])
        self.window = []
        self.reset += 1

    def window_size(self, session: Session, size: int) -> int:
        """``size``, but never more than a quarter of the images left (at least 2): on a small project the
        look-ahead must not keep images from the other annotators. The count is refreshed every 30 s."""
        now = time.monotonic()
        if self.left is None or now - self.left[0] > LEFT_REFRESH_S:
            self.left = (now, label_history.unlabelled_count(session))
        return max(2, min(size, self.left[1] // 4))

    def refill(self, engine: Engine, *, lease_seconds: int, size: int = WINDOW_SIZE) -> None:
        """Keep the window's claims and fill it up to ``size`` images (what I already hold first)."""
        with unit_of_work(engine) as session:
            size = self.window_size(session, size)
            version_id = active_model_version_id(session)
            renewed: dict[int, WindowItem] = {}
            # In image order, not the window's: each renewal keeps its row locked until the commit
            # (PostgreSQL), and two tabs of one annotator renewing the same images in different orders
            # deadlocked. The leases still end in window order (a millisecond apart, from one clock reading,
            # new images after them), which is the order a new session of this annotator resumes them in
            # (claimed_images: soonest-expiring first; those resumed claims keep their leases until the
            # next refill renews them).
            position = {item.image_id: index for index, item in enumerate(self.window)}
            now = utcnow()
            for item in sorted(self.window, key=lambda item: item.image_id):
                # Renews my lease. An image whose claim I no longer hold leaves the window: my other tab
                # decided it, or my lease ran out and someone else took it.
                claim = app_views.renew_claim(
                    session,
                    image_id=item.image_id,
                    annotator_id=self.annotator_id,
                    lease_seconds=lease_seconds + position[item.image_id] / 1000,
                    now=now,
                )
                if claim is not None:
                    source, served_strategy = served_by(claim)
                    renewed[item.image_id] = replace(item, source=source, served_strategy=served_strategy)
            kept = [renewed[item.image_id] for item in self.window if item.image_id in renewed]
            passed: list[int] = []  # unreadable images the queue offered: not offered again in this refill
            # Everything I hold: a new window (a reload) resumes it; otherwise it is my other tabs' images.
            held = claimed_images(session, self.annotator_id, now)
            if not self.window:
                kept = [
                    WindowItem(
                        image_id,
                        self.strategy,
                        version_id,
                        False,
                        *served_by_claim(session, image_id, self.annotator_id),
                    )
                    for image_id in held[:size]
                ]
                kept = self._pass_over_unreadable(session, kept, passed)
            next_position = len(self.window)  # new images' leases end after the renewed ones, in order
            while len(kept) < size:
                has_audit = any(item.audit for item in kept)
                served = serve_next(
                    session,
                    annotator_id=self.annotator_id,
                    strategy=self.strategy,
                    model_version_id=version_id,
                    lease_seconds=lease_seconds + next_position / 1000,
                    now=now,
                    audit_every=0 if has_audit else DEFAULT_AUDIT_EVERY,
                    # The queue hands me my own claims back (that is how a reload resumes them); my other
                    # tabs' images are passed over: two tabs showing one image would both decide it, and
                    # re-claiming a row the other tab renews deadlocked the two refills on PostgreSQL.
                    exclude=[item.image_id for item in kept] + passed + held,
                )
                if served is None:
                    break
                next_position += 1
                item = WindowItem(served.image_id, self.strategy, version_id, False, served.source, served.strategy)
                kept += self._pass_over_unreadable(session, [item], passed)
            audit = label_history.audit_flags(session, [item.image_id for item in kept])
            self.window = [
                replace(
                    item,
                    model_version_id=item.model_version_id if item.model_version_id is not None else version_id,
                    audit=bool(audit.get(item.image_id)),
                )
                for item in kept
                if item.image_id in audit
            ]

    def _pass_over_unreadable(self, session: Session, items: list[WindowItem], passed: list[int]) -> list[WindowItem]:
        """Leave out images already marked unreadable (their file is missing or not an image): the
        annotator's own skip is recorded once, and ``passed`` collects them for ``serve_next``'s exclude."""
        marked = unreadable.unreadable_ids(session, [item.image_id for item in items])
        for image_id in marked:
            unreadable.pass_over(session, image_id, self.annotator_id)
            passed.append(image_id)
        return [item for item in items if item.image_id not in marked]

    def current_image(self) -> int | None:
        return self.window[0].image_id if self.window else None

    def request_full(self, request: tuple[int, str] | None) -> None:
        """The card asked to reveal an image (a new nonce: it lacks the full picture): send it next time."""
        if request is None or request == self.full_request:
            return
        self.full_request = request
        self.full_sent.discard(request[0])

    # --- what the card gets

    def card_data(
        self,
        engine: Engine,
        project: Project,
        taxonomy: TaxonomyView,
        *,
        acks: Sequence[OpResult],
        hide: str,
        storage: str,
        blur_px: int = DEFAULT_BLUR_PX,
        greyscale: bool = False,
    ) -> dict[str, Any]:
        """What the card gets. With ``hide="blurred"`` each image goes as its veiled rendition (blurred at
        ``blur_px``, grey too with ``greyscale``); its full picture goes only once the card asks for it
        (``request_full``), so the browser never holds an image the annotator has not revealed."""
        veil = Veil(blur_px, greyscale) if hide == "blurred" else None
        if veil != self.veil:
            # The annotator changed how images are hidden: every image goes again, as it must be sent now.
            self.veil = veil
            self.payloads.clear()
            self.sent = set()
            self.full_sent = set()
        wanted = self.full_request[0] if self.full_request is not None and veil is not None else None
        with unit_of_work(engine) as session:
            after = label_history.newest_rows(
                session, image_ids=[item.image_id for item in self.window], annotator_id=self.annotator_id
            )
            items = []
            for item in self.window:
                payload = self.payloads.get(item.image_id)
                if payload is None:
                    payload = _item_payload(session, project, taxonomy, item, veil)
                    self.payloads[item.image_id] = payload
                entry = {**payload, "after": after.get(item.image_id, 0)}
                if item.image_id not in self.sent or self.epoch is None:
                    entry["src"] = _data_url(str(payload["file"]))
                if item.image_id == wanted and item.image_id not in self.full_sent:
                    entry["full"] = _data_url(str(payload["full_file"]))
                    self.full_sent.add(item.image_id)
                entry.pop("file")
                entry.pop("full_file")
                items.append(entry)
            undoable = _newest_current(session, self.annotator_id)
        self.sent.update(item.image_id for item in self.window)
        for image_id in [i for i in self.payloads if i not in {item.image_id for item in self.window}]:
            del self.payloads[image_id]
        return {
            "items": items,
            "acks": [
                {
                    "op": r.op_id,
                    "status": r.status,
                    "image": r.image_id,
                    "annotation": r.annotation_id,
                    "message": r.message,
                }
                for r in acks
            ],
            "reset": self.reset,
            "exhausted": len(self.window) == 0,
            "hide": hide,
            "storage": storage,
            "undoable": undoable,
            "keys": card_keys(taxonomy),
            "taxonomy": card_taxonomy(taxonomy),
            "maxButtons": MAX_CLASS_BUTTONS,
        }


def _item_payload(
    session: Session, project: Project, taxonomy: TaxonomyView, item: WindowItem, veil: Veil | None = None
) -> dict[str, Any]:
    image = app_views.image_by_id(session, item.image_id)
    if image is None:
        raise LookupError(f"no image {item.image_id}")
    # An audit image is the unbiased sample every version is measured on: a suggestion would bias its label.
    prediction = None if image.audit else app_views.prediction_for(session, item.model_version_id, item.image_id)
    pred = None
    score = None
    # Read once per image: the calibration and the "why this image" both come from the version's metrics.
    metrics = (model_queries.version_metrics(session, prediction.model_version_id) or {}) if prediction else {}
    if prediction is not None:
        note = model_queries.calibration_view(metrics).note()
        probabilities = dict((prediction.probabilities or {}).get("main", {}))
        bars = sorted(probabilities.items(), key=lambda kv: -kv[1])[:PROBABILITY_BARS]
        pred = {
            "main": taxonomy.main_name(prediction.main_class_id),
            "sub": taxonomy.sub_name(prediction.sub_class_id) if prediction.sub_class_id else None,
            # Percentages only from a version whose calibration rests on enough held-out labels.
            "bars": [] if note else [[name, float(p)] for name, p in bars],
            "note": note,
        }
        if item.strategy != "random":
            value = getattr(prediction, item.strategy, None)
            score = None if value is None else float(value)
    return {
        "id": image.id,
        "name": Path(image.path).name,
        "w": image.width,
        "h": image.height,
        "strategy": item.strategy,
        "mv": item.model_version_id,
        "reason": why_this_image(session, item, prediction, metrics, audit=bool(image.audit)),
        "score": score,
        "audit": bool(image.audit),
        "pred": pred,
        **_card_files(session, project, image, veil),
    }


def why_this_image(
    session: Session, item: WindowItem, prediction: Prediction | None, metrics: Mapping[str, Any], *, audit: bool
) -> str:
    """The card's "why this image": the image's uncertainty place in the pool ("3rd most uncertain of 2,310
    unlabelled images"), a coverage pick of the ranked queue (``metrics``: its version's), the audit sample, or
    what else served it."""
    if audit:
        return "audit sample: a random image everyone labels, to measure the model fairly (no prediction shown)"
    served = item.source.describe(item.served_strategy)
    strategy = item.served_strategy
    if prediction is None or strategy is None or item.source not in (AnnotationSource.RANKED, AnnotationSource.SCORE):
        return served
    version = f"version {prediction.model_version_id}"
    queue = metrics.get("queue") or {}
    if item.source == AnnotationSource.RANKED and prediction.queue_rank in set(queue.get("coverage_ranks") or ()):
        return f"coverage pick of {version}'s {strategy} queue: typical of a region few labels cover"
    place = app_views.uncertainty_place(session, prediction, strategy)
    if place is None:
        return served
    rank, total = place
    return f"{ordinal(rank)} most uncertain of {total:,} unlabelled images ({strategy}, {version})"


def ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 12th, 13th, 21st..."""
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number:,}{suffix}"


def _card_files(session: Session, project: Project, image: Image, veil: Veil | None) -> dict[str, Path]:
    """``file``: what the card shows until a reveal (the veiled rendition when ``veil`` says so);
    ``full_file``: the large view itself. An unreadable image's placeholder is both: it hides nothing."""
    full = _display_or_placeholder(session, project, image)
    if veil is None or full.name == UNREADABLE_PLACEHOLDER:
        return {"file": full, "full_file": full}
    return {"file": veiled_large_view(project, image, full, veil), "full_file": full}


def _display_or_placeholder(session: Session, project: Project, image: Image) -> Path:
    """The image's large view, or, when its file went missing or is no image, a placeholder that asks for
    Skip; the image is then marked unreadable for everyone (``db.queries.unreadable``)."""
    try:
        return large_view_file(project, image)
    except (OSError, ValueError, PILImage.DecompressionBombError) as error:  # missing, not an image, outside roots
        if is_disk_full(error):
            # No room for the large view: the file is fine, so it is not marked; its thumbnail (written at
            # import) is shown instead, while there is one.
            thumb = thumbnail_file(project.thumbs_dir, image.sha256)
            if thumb.exists():
                return thumb
            raise
        unreadable.mark_unreadable(session, image.id)
        return placeholder_file(project.thumbs_dir)


def _newest_current(session: Session, annotator_id: int) -> dict[str, int] | None:
    for view in recent_annotations(session, annotator_id, 5):
        if view.current:
            return {"annotation": view.id, "image": view.image_id}
    return None


def card_keys(taxonomy: TaxonomyView) -> dict[str, Any]:
    """The key map as the card reads it: main key -> main id; tag key -> [(main id, sub id), ...]."""
    tags: dict[str, list[list[int]]] = {}
    for main_id, subs in taxonomy.keys.tags.items():
        for sub in subs:
            if sub.key:
                tags.setdefault(sub.key, []).append([main_id, sub.class_id])
    return {
        "mainByKey": {k.key: k.class_id for k in taxonomy.keys.main if k.key},
        "tagsByKey": tags,
        "page": {
            "skip": PAGE_KEYS.skip,
            "unsure": PAGE_KEYS.unsure,
            "undo": PAGE_KEYS.undo,
            "reveal": PAGE_KEYS.reveal,
        },
        "described": [list(pair) for pair in PAGE_KEYS.described()],
    }


def card_taxonomy(taxonomy: TaxonomyView) -> list[dict[str, Any]]:
    main_keys = {k.class_id: k for k in taxonomy.keys.main}
    out = []
    for main in taxonomy.main_classes:
        sub_keys = {k.class_id: k for k in taxonomy.keys.tags.get(main.id, ())}
        key = main_keys.get(main.id)
        out.append(
            {
                "id": main.id,
                "name": main.name,
                "key": key.key if key else None,
                "assigned": bool(key and key.assigned),
                "subs": [
                    {
                        "id": sub.id,
                        "name": sub.name,
                        "key": sub_keys[sub.id].key if sub.id in sub_keys else None,
                        "assigned": bool(sub.id in sub_keys and sub_keys[sub.id].assigned),
                    }
                    for sub in main.sub_classes
                ],
            }
        )
    return out


# ----------------------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class Progress:
    session: int  # my labels since this browser session began
    today: int  # my labels since midnight UTC
    per_hour: float  # my labels in the last hour
    left: int  # images nobody has labelled yet
    by_main_class: dict[str, int]


def progress(engine: Engine, *, annotator_id: int, session_started: datetime) -> Progress:
    now = utcnow()
    midnight = datetime.combine(now.date(), datetime.min.time(), tzinfo=now.tzinfo)
    with unit_of_work(engine) as session:
        mine_session = label_history.decisions_since(session, annotator_id=annotator_id, since=session_started)
        mine_today = label_history.decisions_since(session, annotator_id=annotator_id, since=midnight)
        last_hour = label_history.decisions_since(session, annotator_id=annotator_id, since=now - timedelta(hours=1))
        left = label_history.unlabelled_count(session)
        counts = label_counts(session)
    return Progress(
        session=mine_session.get("label", 0),
        today=mine_today.get("label", 0),
        per_hour=float(last_hour.get("label", 0)),
        left=left,
        by_main_class=dict(counts.by_main_class),
    )


def undo_from_history(engine: Engine, *, annotator_id: int, annotation_id: int, lease_seconds: int) -> int:
    """The Recent list's Undo: withdraw one of my annotations and claim its image again; returns the image."""
    with unit_of_work(engine) as session:
        target = session.get(Annotation, annotation_id)
        if target is not None and (refusal := reclaim_undone(session, target, annotator_id, lease_seconds)):
            raise AnnotationError(refusal)
        undone = undo_annotation(session, annotation_id, annotator_id)
        return undone.image_id
