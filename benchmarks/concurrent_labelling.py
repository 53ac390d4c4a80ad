"""N annotator processes x M decisions each on one database at once: nothing lost, nothing doubled.

What runs: ``processes`` real OS processes (spawned, as the app's server processes are), each one annotator
on the Label page going through the app's own code: ``LabelSession.refill`` claims the look-ahead window
(``db.queries.queue.next_image``, entropy order of an active model version, audit slice every 20th),
``LabelSession.receive`` applies the card's ops (label, skip, unsure; an undo on the card followed by a new
decision; an undo from the Recent list) and ``correct_annotation`` relabels one of the annotator's own
images (the history editor). Some processes share one annotator (two browser tabs of one person); some
outboxes are resent to a fresh ``LabelSession`` (a server restart: the ops must come back as duplicates,
not be written again); an op that raised is resent, as the card does.

Afterwards :func:`check` reads the database and the processes' ledgers of answers:

- lost: an op answered "applied" or "duplicate" whose row is missing or says something else;
- doubled: two current rows for one (image, annotator), a row no op reported writing, or one op whose
  answers name two different rows;
- history: replaying each (image, annotator) history in id order gives exactly the stored current rows
  and ``supersedes_id`` links;
- handed twice: a non-audit image with current Label-page labels from two annotators who both held its
  lease when they decided (the queue gave it to both), and, seen live by each process after every refill,
  an image in its window leased to another annotator although this annotator has not decided it.

Reported, not failed: "decided without the lease", a non-audit image labelled by two annotators where one
decision came while that annotator held no lease on it (source ``unknown``): one tab of an annotator skips
or releases an image, the queue gives it to someone else, and the annotator's other tab, which still shows
it, labels it. ``apply_op`` does not refuse a decision on an image leased to someone else (it does refuse
an undo there).

labels/s is every decision the processes were told is saved, divided by the wall time from the moment all
processes were ready to the last one finishing (median over repeats).

    python -m benchmarks.concurrent_labelling [--quick] [--processes 8] [--labels 500] [--repeats 3]
        [--pg-url postgresql+psycopg://...]     # or LABELLER_BENCH_PG_URL / LABELLER_TEST_PG_URL

PostgreSQL runs in a fresh database created (and dropped) on that server; without a URL it is reported as
skipped. Writes ``benchmarks/results/concurrent_labelling.json`` and ``.md`` (commit, versions, machine) and
exits non-zero when anything was lost or doubled.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import queue
import random
import sqlite3
import statistics
import subprocess
import tempfile
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import numpy as np
import sqlalchemy
from sqlalchemy import Engine, create_engine, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from db.engine import make_engine, reading, sqlite_url, unit_of_work
from db.migrate import upgrade_to_head
from db.schema import (
    Annotation,
    AnnotationKind,
    AnnotationTag,
    Claim,
    Image,
    MainClass,
    ModelVersion,
    Prediction,
    SubClass,
    utcnow,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PG_URL_ENVS = ("LABELLER_BENCH_PG_URL", "LABELLER_TEST_PG_URL")
STRATEGY = "entropy"
BACKENDS = ("sqlite", "postgresql")
LEASE_SECONDS = 600
DECISION_KINDS = ("label", "skip", "unsure")
# A call that raised is tried again this many times (the card resends its outbox until it is answered).
MAX_ATTEMPTS = 30
RECENT = 10  # the Recent list: the decisions an annotator can undo from it
# Annotation sources that are not the Label page's queue (the history editor, bulk labelling, imports...):
# an image labelled through one of them may carry a second annotator's label legitimately.
UNLEASED_SOURCE = "unknown"  # db.schema.AnnotationSource.UNKNOWN: decided when the annotator held no lease
NOT_QUEUED_SOURCES = frozenset({"history", "grid", "explore", "import", "demo", "unreadable", "requested"})
# Main class -> its sub-classes (tags); "other" has none.
TAXONOMY = {"cat": ("tabby", "black", "ginger"), "dog": ("pug", "lab"), "other": ()}
T = TypeVar("T")


# ----------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Mix:
    """How often each kind of action happens (per step of one process)."""

    skip: float = 0.10
    unsure: float = 0.08
    card_undo: float = 0.05  # decide, undo on the card, decide again (one outbox)
    recent_undo: float = 0.04  # undo one of my recent decisions from the Recent list
    relabel: float = 0.04  # change one of my labels in the history editor
    restart: float = 0.03  # resend the last outbox to a fresh LabelSession (a server restart)


@dataclass(frozen=True)
class Config:
    processes: int = 8
    labels: int = 500  # decisions each process saves
    repeats: int = 3
    twins: int = 2  # pairs of processes that are one annotator (two tabs)
    audit_fraction: float = 0.05
    mix: Mix = field(default_factory=Mix)
    seed: int = 0
    start_method: str = "spawn"
    timeout_s: float = 3600.0

    @property
    def images(self) -> int:
        """Enough that nobody runs out: skipped and unsure images go back to the others' queues."""
        return int(self.processes * self.labels * 1.3) + 200


@dataclass(frozen=True)
class AnnotatorSpec:
    """What one process does: save ``labels`` decisions, or work for ``seconds`` from the start signal."""

    index: int
    annotator: str
    labels: int
    seed: int
    mix: Mix = field(default_factory=Mix)
    seconds: float | None = None  # given: work this long (``labels`` is then ignored)
    think_s: tuple[float, float] = (0.0, 0.0)  # pause between steps, uniform in this range


def annotator_specs(config: Config, *, labels: int | None = None, **extra: Any) -> list[AnnotatorSpec]:
    """One spec per process; the first ``2 * twins`` processes are pairs sharing one annotator."""
    specs = []
    for index in range(config.processes):
        name = f"twin-{index // 2}" if index < 2 * config.twins else f"annotator-{index}"
        count = config.labels if labels is None else labels
        specs.append(AnnotatorSpec(index, name, count, config.seed * 1000 + index, config.mix, **extra))
    return specs


# ----------------------------------------------------------------------------------------- ledger


@dataclass(frozen=True)
class Answer:
    """The app's answer to one op, as the process saw it."""

    op_id: str
    kind: str  # label | skip | unsure | undo | undo_annotation
    status: str  # applied | duplicate | rejected
    image_id: int
    annotation_id: int | None
    annotator_id: int
    main_class_id: int | None = None
    tags: tuple[int, ...] = ()
    target_id: int | None = None  # undo_annotation: the row it withdraws


@dataclass
class Ledger:
    """Everything one process was told, and what went wrong on the way."""

    index: int
    annotator: str
    annotator_id: int = 0
    answers: list[Answer] = field(default_factory=list)
    saved: int = 0  # decisions (distinct ops) answered applied or duplicate
    rejected: int = 0
    errors: list[str] = field(default_factory=list)
    retries: int = 0
    restarts: int = 0
    claim_conflicts: list[str] = field(default_factory=list)
    exhausted: int = 0  # refills that found nothing left to label
    started: float = 0.0
    finished: float = 0.0
    crash: str | None = None

    @property
    def locked(self) -> int:
        return sum("database is locked" in error for error in self.errors)


# ----------------------------------------------------------------------------------------- the app's code


def app_api() -> SimpleNamespace:
    """The Label page's services, as the app's page calls them."""
    from labeller.app.services import label_session
    from labeller.app.services.common import load_taxonomy
    from labeller.app.services.label import Decision, correct_annotation

    return SimpleNamespace(
        LabelSession=label_session.LabelSession,
        load_taxonomy=load_taxonomy,
        Decision=Decision,
        correct_annotation=correct_annotation,
    )


class GaveUp(RuntimeError):
    """A call kept failing: the process stops and says so."""


class Annotating:
    """One annotator's Label page, driven by a seeded random hand."""

    def __init__(self, engine: Engine, spec: AnnotatorSpec, ledger: Ledger) -> None:
        from db.queries.annotators import get_or_create_annotator

        self.engine, self.spec, self.ledger = engine, spec, ledger
        self.app = app_api()
        self.rng = random.Random(spec.seed)
        with unit_of_work(engine) as session:
            ledger.annotator_id = get_or_create_annotator(session, spec.annotator).id
            self.taxonomy = self.app.load_taxonomy(session)
        self.annotator_id = ledger.annotator_id
        self.mains = [(main.id, [sub.id for sub in main.sub_classes]) for main in self.taxonomy.main_classes]
        self.session = self.app.LabelSession(self.annotator_id, STRATEGY)
        self.epoch = uuid.uuid4().hex
        self.numbered = 0
        self.last_outbox: dict[str, Any] | None = None
        self.saved_ops: set[str] = set()
        self.recent: list[Answer] = []  # my saved decisions, newest last
        self.labelled: list[int] = []  # images I labelled (for the history editor)
        self.deadline: float | None = None

    # --- the loop

    def run(self) -> None:
        self.deadline = None if self.spec.seconds is None else time.time() + self.spec.seconds
        while not self._done():
            roll = self.rng.random()
            mix = self.spec.mix
            if roll < mix.relabel and self.labelled:
                self.relabel()
            elif roll < mix.relabel + mix.recent_undo and self.recent:
                self.undo_recent()
            elif not self.decide_next():
                if self.deadline is None:
                    break  # nothing left to label
                time.sleep(1.0)
            if self.last_outbox is not None and self.rng.random() < mix.restart:
                self.restart()
            low, high = self.spec.think_s
            if high > 0:
                time.sleep(self.rng.uniform(low, high))
        self._attempt(lambda: self.session.release_window(self.engine))  # the annotator leaves the page

    def _done(self) -> bool:
        if self.deadline is not None:
            return time.time() >= self.deadline
        return self.ledger.saved >= self.spec.labels

    # --- actions

    def decide_next(self) -> bool:
        """Decide the image on screen (sometimes undo it on the card and decide again); False when none."""
        self._attempt(lambda: self.session.refill(self.engine, lease_seconds=LEASE_SECONDS))
        if not self.session.window:
            self.ledger.exhausted += 1
            return False
        self._check_claims()
        item = self.session.window[0]
        after = self._attempt(lambda: self._newest_row(item.image_id))
        ops = [self._decision(item, after, step=1)]
        if self.rng.random() < self.spec.mix.card_undo:
            undo = {"op": self._op_id(), "kind": "undo", "image": item.image_id, "after": after, "step": 2, "target": 1}
            ops += [undo, self._decision(item, after, step=3)]
        self.send(ops)
        return True

    def undo_recent(self) -> None:
        """The Recent list's Undo on one of my last decisions (an ``undo_annotation`` op)."""
        chosen = self.rng.choice(self.recent[-RECENT:])
        self.recent.remove(chosen)
        op = {"op": self._op_id(), "kind": "undo_annotation", "image": chosen.image_id}
        self.send([{**op, "annotation": chosen.annotation_id}])

    def relabel(self) -> None:
        """The history editor: another main class for one of the images I labelled."""
        from db.queries.annotations import AnnotationError

        image_id = self.rng.choice(self.labelled[-50:])
        main_id = self.rng.choice(self.mains)[0]
        decision = self.app.Decision(AnnotationKind.LABEL, main_id)
        op_id = self._op_id()
        try:
            annotation_id = self._attempt(
                lambda: self.app.correct_annotation(
                    self.engine, annotator_id=self.annotator_id, image_id=image_id, decision=decision
                )
            )
        except AnnotationError:
            self.ledger.rejected += 1
            return
        answer = Answer(op_id, "label", "applied", image_id, annotation_id, self.annotator_id, main_id)
        self._keep(answer)

    def restart(self) -> None:
        """The server restarted: a fresh LabelSession gets the card's last outbox again."""
        assert self.last_outbox is not None
        self.ledger.restarts += 1
        self.session = self.app.LabelSession(self.annotator_id, STRATEGY)
        self.epoch = uuid.uuid4().hex
        self.send(self.last_outbox["ops"])

    # --- the card's protocol

    def send(self, ops: list[dict[str, Any]]) -> None:
        outbox = {"epoch": self.epoch, "ops": ops}
        self.last_outbox = outbox
        answers = self._attempt(
            lambda: self.session.receive(self.engine, outbox, self.taxonomy, lease_seconds=LEASE_SECONDS)
        )
        sent = {op["op"]: op for op in ops}
        for result in answers:
            op = sent[result.op_id]
            answer = Answer(
                result.op_id,
                result.kind,
                result.status,
                result.image_id,
                result.annotation_id,
                self.annotator_id,
                op.get("main"),
                tuple(sorted(op.get("tags", ()))),
                op.get("annotation"),
            )
            self._keep(answer)

    def _keep(self, answer: Answer) -> None:
        self.ledger.answers.append(answer)
        if answer.status == "rejected":
            self.ledger.rejected += 1
            return
        if answer.kind not in DECISION_KINDS or answer.op_id in self.saved_ops:
            return
        self.saved_ops.add(answer.op_id)
        self.ledger.saved += 1
        self.recent.append(answer)
        if answer.kind == "label":
            self.labelled.append(answer.image_id)

    def _decision(self, item: Any, after: int, *, step: int) -> dict[str, Any]:
        roll = self.rng.random()
        mix = self.spec.mix
        kind = "skip" if roll < mix.skip else "unsure" if roll < mix.skip + mix.unsure else "label"
        main: int | None = None
        tags: list[int] = []
        if kind == "label" or (kind == "unsure" and self.rng.random() < 0.5):
            main, subs = self.rng.choice(self.mains)
            tags = self.rng.sample(subs, self.rng.randint(0, min(2, len(subs))))
        return {
            "op": self._op_id(),
            "kind": kind,
            "image": item.image_id,
            "after": after,
            "step": step,
            "main": main,
            "tags": tags,
            "strategy": item.strategy,
            "mv": item.model_version_id,
        }

    def _op_id(self) -> str:
        self.numbered += 1
        return f"p{self.spec.index}-{self.numbered}"

    def _newest_row(self, image_id: int) -> int:
        """The card's ``after`` for an image: my newest row on it when it is shown (``card_data``)."""
        from db.queries import label_history

        with reading(self.engine) as session:
            return label_history.newest_rows(session, image_ids=[image_id], annotator_id=self.annotator_id)[image_id]

    def _check_claims(self) -> None:
        """Right after a refill, every image in my window is leased to me, or already decided by me (in
        another tab, which released the lease)."""
        window = [item.image_id for item in self.session.window]

        def read() -> list[int]:
            with reading(self.engine) as session:
                others = session.scalars(
                    select(Claim.image_id).where(
                        Claim.image_id.in_(window), Claim.annotator_id != self.annotator_id, Claim.expires_at > utcnow()
                    )
                ).all()
                if not others:
                    return []
                mine = set(
                    session.scalars(
                        select(Annotation.image_id).where(
                            Annotation.image_id.in_(others),
                            Annotation.annotator_id == self.annotator_id,
                            Annotation.superseded.is_(False),
                        )
                    )
                )
                return [image_id for image_id in others if image_id not in mine]

        for image_id in self._attempt(read):
            self.ledger.claim_conflicts.append(f"image {image_id} in my window is leased to another annotator")

    def _attempt(self, call: Callable[[], T]) -> T:
        """``call()``; a database error is recorded and the call made again, as the card resends."""
        for attempt in range(MAX_ATTEMPTS):
            try:
                return call()
            except SQLAlchemyError as error:
                self.ledger.errors.append(f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
                self.ledger.retries += 1
                time.sleep(min(0.05 * 2**attempt, 2.0))
        raise GaveUp(f"gave up after {MAX_ATTEMPTS} attempts: {self.ledger.errors[-1]}")


def annotator_main(url: str, spec: AnnotatorSpec, ready: Any, go: Any, results: Any) -> None:
    """One annotator process: set up, say so on ``ready``, wait for ``go``, work, put the ledger on ``results``."""
    ledger = Ledger(spec.index, spec.annotator)
    engine = None
    annotating = None
    try:
        engine = make_engine(url)
        annotating = Annotating(engine, spec, ledger)
    except Exception:
        ledger.crash = traceback.format_exc()
    try:
        ready.put(spec.index)
        go.wait(timeout=3600)
        ledger.started = time.time()
        if annotating is not None:
            annotating.run()
    except Exception:
        ledger.crash = traceback.format_exc()
    finally:
        ledger.finished = time.time()
        if engine is not None:
            engine.dispose()
        results.put(ledger)


@dataclass
class Started:
    """Annotator processes at work: wait for their ledgers with :meth:`collect`."""

    processes: list[Any]
    results: Any
    started: float

    def collect(self, timeout_s: float) -> list[Ledger]:
        ledgers: list[Ledger] = []
        deadline = time.monotonic() + timeout_s
        while len(ledgers) < len(self.processes):
            ledgers.append(_next_from(self.results, self.processes, deadline, "reported"))
        for process in self.processes:
            process.join(timeout=60)
        return sorted(ledgers, key=lambda ledger: ledger.index)


def _next_from(channel: Any, processes: Sequence[Any], deadline: float, what: str) -> Any:
    """The next item on ``channel``; an error when the processes died or the deadline passed first."""
    while True:
        try:
            return channel.get(timeout=2)
        except queue.Empty:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not every process {what} in time") from None
            if not any(process.is_alive() for process in processes):
                raise RuntimeError(f"the processes died before every one {what}") from None


def start_annotators(url: str, specs: Sequence[AnnotatorSpec], start_method: str = "spawn") -> Started:
    """Start one process per spec; returns once every one has set up (they then start together)."""
    context = multiprocessing.get_context(start_method)
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    processes = [
        context.Process(target=annotator_main, args=(url, spec, ready, go, results), name=f"annotator-{spec.index}")
        for spec in specs
    ]
    for process in processes:
        process.start()
    deadline = time.monotonic() + 600
    for _ in processes:
        _next_from(ready, processes, deadline, "set up")
    go.set()
    return Started(processes, results, time.time())


# ----------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Row:
    id: int
    image_id: int
    annotator_id: int
    kind: str
    main_class_id: int | None
    superseded: bool
    supersedes_id: int | None
    source: str
    tags: tuple[int, ...]


@dataclass
class Verdict:
    """What :func:`check` found; ``ok`` when nothing was lost, doubled or inconsistent."""

    rows: int = 0
    answers: int = 0
    lost: int = 0
    doubled_current: int = 0  # (image, annotator) pairs with more than one current row
    unreported: int = 0  # rows no op reported writing
    double_written: int = 0  # ops answered "applied" with two different rows (written twice)
    answers_disagree: int = 0  # ops answered "applied" with one row and "duplicate" with another
    history_errors: int = 0  # (image, annotator) histories whose replay differs from the stored rows
    handed_twice: int = 0  # non-audit images the queue leased to two annotators who both labelled them
    # Non-audit images labelled by two annotators, one of them without holding the lease (source "unknown"):
    # the other tab of the same annotator had decided or released it, and someone else was given it.
    decided_unleased: int = 0
    claim_conflicts: int = 0  # seen live: an undecided image in my window leased to someone else
    claims_left: int = 0  # leases held at the end (a session whose window was empty leaves them to expire)
    stale_hints: int = 0  # predictions.labelled disagreeing with the labels (a speed hint only)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # findings that are not failures

    @property
    def doubled(self) -> int:
        return self.doubled_current + self.unreported + self.double_written

    @property
    def ok(self) -> bool:
        return not (self.lost or self.doubled or self.history_errors or self.handed_twice or self.claim_conflicts)

    def as_dict(self) -> dict[str, Any]:
        found = {**dataclasses.asdict(self), "problems": self.problems[:20], "notes": self.notes[:10]}
        return {**found, "doubled": self.doubled, "ok": self.ok}


def load_rows(session: Any) -> dict[int, Row]:
    """Every annotation row with its tags, by id."""
    tags: dict[int, list[int]] = defaultdict(list)
    for annotation_id, sub_class_id in session.execute(select(AnnotationTag.annotation_id, AnnotationTag.sub_class_id)):
        tags[annotation_id].append(sub_class_id)
    columns = (
        Annotation.id,
        Annotation.image_id,
        Annotation.annotator_id,
        Annotation.kind,
        Annotation.main_class_id,
        Annotation.superseded,
        Annotation.supersedes_id,
        Annotation.source,
    )
    return {
        row[0]: Row(*row[:3], str(AnnotationKind(row[3]).value), *row[4:], tuple(sorted(tags.get(row[0], ()))))
        for row in session.execute(select(*columns).order_by(Annotation.id))
    }


def check(engine: Engine, ledgers: Sequence[Ledger], *, baseline_id: int = 0) -> Verdict:
    """Compare the database with what the processes were told (rows up to ``baseline_id`` existed before)."""
    verdict = Verdict()
    with reading(engine) as session:
        rows = load_rows(session)
        audit = set(session.scalars(select(Image.id).where(Image.audit.is_(True))))
        verdict.claims_left = int(session.scalar(select(func.count()).select_from(Claim)) or 0)
        verdict.stale_hints = _stale_hints(session)
    answers = [answer for ledger in ledgers for answer in ledger.answers]
    verdict.rows, verdict.answers = len(rows), len(answers)
    _check_answers(verdict, rows, answers, baseline_id)
    _check_current(verdict, rows, audit)
    _check_history(verdict, rows)
    for ledger in ledgers:
        verdict.claim_conflicts += len(ledger.claim_conflicts)
        verdict.problems += [f"process {ledger.index}: {conflict}" for conflict in ledger.claim_conflicts[:3]]
    return verdict


def _check_answers(verdict: Verdict, rows: dict[int, Row], answers: Sequence[Answer], baseline_id: int) -> None:
    named: set[int] = set()  # rows some op's answer names
    written: dict[str, set[int]] = defaultdict(set)  # op -> the rows it was answered "applied" with
    acknowledged: dict[str, set[int]] = defaultdict(set)  # op -> the rows it was answered "duplicate" with
    lost_ops: set[str] = set()
    undone = {row.supersedes_id for row in rows.values() if row.kind == "undo"}
    for answer in answers:
        if answer.status == "rejected":
            continue
        problem = _answer_problem(answer, rows, undone)
        if problem is not None:
            lost_ops.add(answer.op_id)
            verdict.problems.append(f"lost: op {answer.op_id} ({answer.kind}, image {answer.image_id}): {problem}")
            continue
        if answer.kind == "undo_annotation" and answer.status == "duplicate":
            continue  # names the row it withdrew, not a row of its own
        assert answer.annotation_id is not None
        named.add(answer.annotation_id)
        (written if answer.status == "applied" else acknowledged)[answer.op_id].add(answer.annotation_id)
    verdict.lost = len(lost_ops)
    for op_id, row_ids in written.items():
        if len(row_ids) > 1:
            verdict.double_written += 1
            verdict.problems.append(f"doubled: op {op_id} was applied as rows {sorted(row_ids)}")
        elif acknowledged.get(op_id, row_ids) != row_ids:
            # Not a second row, but a resend answered with someone else's row: the card's ack would be wrong.
            verdict.answers_disagree += 1
            shown = sorted(acknowledged[op_id])
            verdict.problems.append(f"op {op_id} was applied as row {min(row_ids)}, its resend named rows {shown}")
    for row in rows.values():
        if row.id > baseline_id and row.id not in named:
            verdict.unreported += 1
            verdict.problems.append(f"doubled: row {row.id} ({row.kind}, image {row.image_id}) reported by no op")


def _answer_problem(answer: Answer, rows: dict[int, Row], undone: set[int | None]) -> str | None:
    """Why the row an answer names is not the decision it was told is saved (None: it is)."""
    row = rows.get(answer.annotation_id or 0)
    if row is None:
        return f"row {answer.annotation_id} is missing"
    if (row.image_id, row.annotator_id) != (answer.image_id, answer.annotator_id):
        return f"row {row.id} is image {row.image_id} of annotator {row.annotator_id}"
    if answer.kind in DECISION_KINDS:
        expected = (answer.kind, answer.main_class_id, answer.tags)
        if (row.kind, row.main_class_id, row.tags) != expected:
            return f"row {row.id} says {(row.kind, row.main_class_id, row.tags)}, the op {expected}"
    elif answer.kind == "undo" and row.kind != "undo":
        return f"row {row.id} is a {row.kind}, not an undo"
    elif answer.kind == "undo_annotation":
        if answer.status == "applied" and (row.kind != "undo" or row.supersedes_id != answer.target_id):
            return f"row {row.id} is not the undo of row {answer.target_id}"
        if answer.status == "duplicate" and (row.id != answer.target_id or row.id not in undone):
            return f"row {answer.target_id} was never undone"
    return None


def _check_current(verdict: Verdict, rows: dict[int, Row], audit: set[int]) -> None:
    current: dict[tuple[int, int], list[int]] = defaultdict(list)
    labels: dict[int, list[Row]] = defaultdict(list)  # image -> current Label-page labels
    for row in rows.values():
        if row.superseded:
            continue
        current[(row.image_id, row.annotator_id)].append(row.id)
        if row.kind == "label" and row.source not in NOT_QUEUED_SOURCES and row.image_id not in audit:
            labels[row.image_id].append(row)
    for pair, ids in current.items():
        if len(ids) > 1:
            verdict.doubled_current += 1
            verdict.problems.append(f"doubled: image {pair[0]}, annotator {pair[1]} has current rows {ids}")
    for image_id, found in labels.items():
        if len({row.annotator_id for row in found}) < 2:
            continue
        history = [
            f"{row.id}:a{row.annotator_id}:{row.kind}:{row.source}{'' if row.superseded else '*'}"
            for row in rows.values()
            if row.image_id == image_id
        ]
        if any(row.source == UNLEASED_SOURCE for row in found):
            verdict.decided_unleased += 1
            verdict.notes.append(f"image {image_id} decided without the lease (history id:annotator:...): {history}")
        else:
            verdict.handed_twice += 1
            verdict.problems.append(f"handed twice: image {image_id} (history id:annotator:...): {history}")


def replay(history: Sequence[Row], rows: dict[int, Row]) -> tuple[dict[int, bool], list[str]]:
    """The ``superseded`` flag every row of one (image, annotator) history should have, from the rules of
    ``db.queries.annotations`` applied in id order, and where the stored links break those rules."""
    superseded: dict[int, bool] = {}
    broken: list[str] = []
    current: int | None = None
    for row in history:
        if row.kind != "undo":
            if row.supersedes_id != current:
                broken.append(f"row {row.id} supersedes {row.supersedes_id}, the current row was {current}")
            if current is not None:
                superseded[current] = True
            superseded[row.id], current = False, row.id
            continue
        if row.supersedes_id != current or current is None:
            broken.append(f"undo row {row.id} withdraws {row.supersedes_id}, the current row was {current}")
        superseded[row.id] = True
        target = rows.get(row.supersedes_id or 0)
        if target is not None:
            superseded[target.id] = True
        restored = rows.get(target.supersedes_id or 0) if target is not None else None
        current = restored.id if restored is not None and restored.kind != "undo" else None
        if current is not None:
            superseded[current] = False
    return superseded, broken


def _check_history(verdict: Verdict, rows: dict[int, Row]) -> None:
    histories: dict[tuple[int, int], list[Row]] = defaultdict(list)
    for row in rows.values():  # in id order
        histories[(row.image_id, row.annotator_id)].append(row)
    for pair, history in histories.items():
        expected, broken = replay(history, rows)
        wrong = [row.id for row in history if row.superseded != expected.get(row.id, row.superseded)]
        if wrong:
            broken.append(f"rows {wrong} have the wrong superseded flag")
        if broken:
            verdict.history_errors += 1
            verdict.problems.append(f"history of image {pair[0]}, annotator {pair[1]}: {'; '.join(broken[:3])}")


def _stale_hints(session: Any) -> int:
    version_id = session.scalar(select(ModelVersion.id).where(ModelVersion.active.is_(True)).limit(1))
    if version_id is None:
        return 0
    labelled = set(
        session.scalars(
            select(Annotation.image_id).where(Annotation.superseded.is_(False), Annotation.kind == AnnotationKind.LABEL)
        )
    )
    hints = session.execute(
        select(Prediction.image_id, Prediction.labelled).where(Prediction.model_version_id == version_id)
    )
    return sum(bool(hint) != (image_id in labelled) for image_id, hint in hints)


# ----------------------------------------------------------------------------------------- one run


def populate(engine: Engine, images: int, *, audit_fraction: float, seed: int) -> None:
    """A migrated database with a small taxonomy, ``images`` images and an active model version that
    scores every image (the queue walks the entropy index, as in a project with a trained model)."""
    upgrade_to_head(engine)
    rng = np.random.default_rng(seed)
    with unit_of_work(engine) as session:
        for position, (name, subs) in enumerate(TAXONOMY.items()):
            main = MainClass(name=name, shortcut=str(position + 1), position=position)
            main.sub_classes = [SubClass(name=sub, position=index) for index, sub in enumerate(subs)]
            session.add(main)
        version = ModelVersion(name="bench", model_kind="m2", checkpoint_path="none.pt", active=True)
        session.add(version)
        session.flush()
        version_id = version.id
    rows = []
    for number in range(images):
        digest = hashlib.sha256(f"bench-image-{seed}-{number}".encode()).hexdigest()
        rows.append(
            {
                "id": number + 1,
                "sha256": digest,
                "path": f"images/{number}.png",
                "width": 8,
                "height": 8,
                "format": "PNG",
                "file_size": 100,
                "random_key": int(digest[:13], 16) / 16**13,
                "audit": bool(rng.random() < audit_fraction),
            }
        )
    scores = rng.random(images)
    predictions = [
        {
            "model_version_id": version_id,
            "image_id": number + 1,
            "confidence": float(1 - scores[number]),
            **dict.fromkeys(("entropy", "leaf_entropy", "margin", "least_confidence"), float(scores[number])),
        }
        for number in range(images)
    ]
    with unit_of_work(engine) as session:
        session.execute(insert(Image), rows)
        session.execute(insert(Prediction), predictions)


@contextmanager
def fresh_database(backend: str, pg_url: str | None, scratch: Path) -> Iterator[str]:
    """The URL of a new, empty database: a SQLite file in ``scratch``, or a PostgreSQL database created on
    ``pg_url``'s server and dropped afterwards."""
    if backend == "sqlite":
        yield sqlite_url(scratch / f"bench-{uuid.uuid4().hex[:8]}.db")
        return
    assert pg_url is not None
    base = make_url(pg_url)
    name = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def run_once(url: str, config: Config, *, repeat: int = 0) -> dict[str, Any]:
    """Populate the database at ``url``, run the processes, check; one row of results."""
    engine = make_engine(url)
    try:
        populate(engine, config.images, audit_fraction=config.audit_fraction, seed=config.seed + repeat)
        specs = annotator_specs(dataclasses.replace(config, seed=config.seed + repeat))
        started = start_annotators(url, specs, config.start_method)
        ledgers = started.collect(config.timeout_s)
        wall = max(ledger.finished for ledger in ledgers) - started.started
        verdict = check(engine, ledgers)
    finally:
        engine.dispose()
    return summarise(ledgers, verdict, wall)


def summarise(ledgers: Sequence[Ledger], verdict: Verdict, wall: float) -> dict[str, Any]:
    saved = sum(ledger.saved for ledger in ledgers)
    crashes = [f"process {ledger.index}: {ledger.crash}" for ledger in ledgers if ledger.crash]
    errors = [error for ledger in ledgers for error in ledger.errors]
    return {
        "seconds": round(wall, 2),
        "saved": saved,
        "labels_per_s": round(saved / wall, 1) if wall > 0 else 0.0,
        "ops": sum(len(ledger.answers) for ledger in ledgers),
        "rejected": sum(ledger.rejected for ledger in ledgers),
        "restarts": sum(ledger.restarts for ledger in ledgers),
        "errors": len(errors),
        "locked": sum(ledger.locked for ledger in ledgers),
        "retries": sum(ledger.retries for ledger in ledgers),
        "error_kinds": sorted({error.split(":")[0] for error in errors}),
        "error_samples": sorted(set(errors))[:10],
        "exhausted": sum(ledger.exhausted for ledger in ledgers),
        "crashes": crashes,
        "annotators": {ledger.index: f"{ledger.annotator} (id {ledger.annotator_id})" for ledger in ledgers},
        "verdict": verdict.as_dict(),
        "ok": verdict.ok and not crashes,
    }


# ----------------------------------------------------------------------------------------- the benchmark


def measure(config: Config, pg_url: str | None, backends: Sequence[str] = BACKENDS) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="concurrent-labelling-") as scratch:
        for backend in backends:
            if backend == "postgresql" and not pg_url:
                runs[backend] = f"skipped: no PostgreSQL URL (--pg-url or {' / '.join(PG_URL_ENVS)})"
                continue
            runs[backend] = []
            for repeat in range(config.repeats):
                with fresh_database(backend, pg_url, Path(scratch)) as url:
                    run = run_once(url, config, repeat=repeat)
                runs[backend].append(run)
                print(f"{backend} #{repeat + 1}: {_run_line(run)}", flush=True)
    return runs


def _run_line(run: dict[str, Any]) -> str:
    verdict = run["verdict"]
    return (
        f"{run['saved']} decisions in {run['seconds']} s ({run['labels_per_s']}/s), lost {verdict['lost']}, "
        f"doubled {verdict['doubled']}, history errors {verdict['history_errors']}, "
        f"handed twice {verdict['handed_twice']}, errors {run['errors']} (locked {run['locked']})"
    )


def summary_row(backend: str, config: Config, runs: list[dict[str, Any]]) -> dict[str, Any]:
    verdicts = [run["verdict"] for run in runs]
    return {
        "backend": backend,
        "processes": config.processes,
        "decisions_each": config.labels,
        "repeats": len(runs),
        "labels_per_s_median": statistics.median(run["labels_per_s"] for run in runs),
        "saved": sum(run["saved"] for run in runs),
        "rejected": sum(run["rejected"] for run in runs),
        "errors": sum(run["errors"] for run in runs),
        "retries": sum(run["retries"] for run in runs),
        "locked": sum(run["locked"] for run in runs),
        "lost": sum(v["lost"] for v in verdicts),
        "doubled": sum(v["doubled"] for v in verdicts),
        "history_errors": sum(v["history_errors"] for v in verdicts),
        "answers_disagree": sum(v["answers_disagree"] for v in verdicts),
        "handed_twice": sum(v["handed_twice"] for v in verdicts) + sum(v["claim_conflicts"] for v in verdicts),
        "decided_unleased": sum(v["decided_unleased"] for v in verdicts),
        "stale_hints": sum(v["stale_hints"] for v in verdicts),
        "ok": all(run["ok"] for run in runs),
    }


def git_commit(paths: Sequence[str] = ("db", "labeller", "benchmarks")) -> str:
    """HEAD, with ``+dirty`` when tracked files under ``paths`` differ from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *paths],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def postgres_version(pg_url: str | None) -> str | None:
    if not pg_url:
        return None
    engine = create_engine(pg_url)
    try:
        with engine.connect() as connection:
            return str(connection.execute(text("SHOW server_version")).scalar())
    finally:
        engine.dispose()


def versions(pg_url: str | None) -> dict[str, str | None]:
    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": sqlite3.sqlite_version,
        "postgresql": postgres_version(pg_url),
    }
    try:
        found["psycopg"] = version("psycopg")
    except Exception:
        found["psycopg"] = None
    return found


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPUs (shared), load average {os.getloadavg()[0]:.2f} at the end"


def main(
    out_dir: Path,
    quick: bool,
    config: Config | None = None,
    pg_url: str | None = None,
    backends: Sequence[str] = BACKENDS,
) -> dict[str, Any]:
    """``benchmarks.run_all``'s entry point: ``quick`` is 4 processes x 100 decisions, once."""
    config = config or (Config(processes=4, labels=100, repeats=1, twins=1) if quick else Config())
    pg_url = pg_url or next((os.environ[name] for name in PG_URL_ENVS if os.environ.get(name)), None)
    started = time.perf_counter()
    runs = measure(config, pg_url, backends)
    rows = [summary_row(backend, config, found) for backend, found in runs.items() if isinstance(found, list)]
    skipped = {backend: found for backend, found in runs.items() if isinstance(found, str)}
    result = {
        "benchmark": "concurrent_labelling",
        "note": (
            f"{config.processes} annotator processes (spawned; {config.twins} pairs share one annotator) x "
            f"{config.labels} decisions each on one database through the Label page's LabelSession "
            "(refill, card ops incl. undo and resends after a restart, history-editor relabels); labels/s is "
            "the median over repeats. lost/doubled/history_errors/handed_twice must be 0."
            + "".join(f" {backend}: {why}." for backend, why in skipped.items())
        ),
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": dataclasses.asdict(config),
        "images": config.images,
        "runs": runs,
        "rows": rows,
        "ok": all(row["ok"] for row in rows),
        "seconds": round(time.perf_counter() - started, 1),
        "versions": versions(pg_url),
        "machine": machine(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "concurrent_labelling.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "concurrent_labelling.md").write_text(markdown(result))
    if not result["ok"]:
        raise SystemExit(f"concurrent_labelling: something was lost, doubled or inconsistent: {rows}")
    return result


def markdown(result: dict[str, Any]) -> str:
    columns = {
        "backend": "backend",
        "processes": "processes",
        "decisions_each": "decisions each",
        "repeats": "repeats",
        "labels_per_s_median": "labels/s (median)",
        "rejected": "rejected",
        "errors": "errors",
        "retries": "retries",
        "locked": "locked",
        "lost": "lost",
        "doubled": "doubled",
        "history_errors": "history errors",
        "handed_twice": "handed twice",
        "decided_unleased": "decided without the lease",
    }
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row[key]) for key in columns) + " |" for row in result["rows"]]
    lines += [f"| {backend} | {found} |" for backend, found in result["runs"].items() if isinstance(found, str)]
    versions_text = ", ".join(f"{name} {value}" for name, value in result["versions"].items() if value)
    runs = [(backend, run) for backend, found in result["runs"].items() if isinstance(found, list) for run in found]
    problems = [problem for _, run in runs for problem in run["verdict"]["problems"]]
    notes = [f"{backend}: {note}" for backend, run in runs for note in run["verdict"]["notes"]]
    errors = [f"{backend}: {sample}" for backend, run in runs for sample in run["error_samples"]]
    return "\n".join(
        [
            "# Concurrent labelling: nothing lost, nothing doubled",
            "",
            result["note"],
            "",
            *lines,
            "",
            "rejected: ops the app refused as it should (a decision changed in the other tab meanwhile, an undo "
            "of a decision no longer current); they wrote nothing. errors/retries: database errors a call raised "
            "and the card-style resend that followed (locked: 'database is locked' among them). decided without "
            "the lease: see the module docstring; not a lost or doubled row.",
            "",
            f"Result: {'OK' if result['ok'] else 'FAILED'}" + (f"; first problems: {problems[:5]}" if problems else ""),
            "",
            *(["Errors seen (each retried):", "", *[f"- `{error}`" for error in errors], ""] if errors else []),
            *(["Decided without the lease:", "", *[f"- {note}" for note in notes[:6]], ""] if notes else []),
            f"- commit: `{result['commit']}`, {result['date']}, {result['seconds']} s in all",
            f"- versions: {versions_text}",
            f"- machine: {result['machine']}",
            "",
            "Run it with `python -m benchmarks.concurrent_labelling` (`--quick`: 4 x 100, once; `--pg-url URL` "
            "or LABELLER_BENCH_PG_URL for PostgreSQL).",
            "",
        ]
    )


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 processes x 100 decisions, once")
    parser.add_argument("--processes", type=int)
    parser.add_argument("--labels", type=int, help="decisions each process saves")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--twins", type=int, help="pairs of processes that are one annotator")
    parser.add_argument("--pg-url", default=None)
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated: sqlite,postgresql")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _arguments()
    base = Config(processes=4, labels=100, repeats=1, twins=1) if arguments.quick else Config()
    chosen = {
        name: getattr(arguments, name)
        for name in ("processes", "labels", "repeats", "twins")
        if getattr(arguments, name) is not None
    }
    backends = [name for name in arguments.backends.split(",") if name]
    outcome = main(arguments.out, arguments.quick, dataclasses.replace(base, **chosen), arguments.pg_url, backends)
    print(json.dumps(outcome["rows"], indent=2))
