"""Several annotators claiming the same images at once through ``app_views.claim_image``, each thread with its
own engine (its own connections), as the app's server processes do: one statement decides each claim, so no
duplicate key, no lost update and no two winners, and a renewal or a take-over writes what the docstring says.
On PostgreSQL a read-then-write claim raised duplicate-key errors on pk_claims and handed an expired image to
two annotators in this test; SQLite's BEGIN IMMEDIATE serialised it anyway. Two tabs of one annotator
refilling their windows at once must not deadlock on the renewals either."""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select, update

from db.engine import make_engine, unit_of_work
from db.queries import app_views
from db.queries.annotators import get_or_create_annotator
from db.schema import AnnotationSource, Claim, utcnow
from labeller.app.services.label_session import LabelSession, WindowItem
from tests.db_helpers import add_images

THREADS = 4
IMAGES = 12
ROUNDS = 6
LEASE = 600
# Each round: every image fresh (no claim), then renewed by its holder, then expired and taken over.
PHASES = ("fresh", "renew", "takeover")
SOURCES = (AnnotationSource.RANKED, AnnotationSource.AUDIT, AnnotationSource.RANDOM, AnnotationSource.REQUESTED)


@dataclass
class Claimer:
    """One annotator in its own thread: what it won in each phase and what went wrong."""

    number: int
    annotator_id: int
    won: dict[int, set[int]] = field(default_factory=dict)  # phase index -> image ids
    errors: list[str] = field(default_factory=list)

    def strategy(self, phase: int) -> str:
        return f"t{self.number}-p{phase}"


Row = tuple[int, datetime, str | None, str | None]  # annotator, expires_at, source, strategy


def _claim_all(url: str, claimer: Claimer, image_ids: list[int], barrier: threading.Barrier) -> None:
    engine = make_engine(url)
    rng = random.Random(claimer.number)
    try:
        for phase in range(ROUNDS * len(PHASES)):
            barrier.wait()  # the main thread has prepared the phase
            order = list(image_ids)
            rng.shuffle(order)
            won: set[int] = set()
            for image_id in order:  # one transaction per claim, as a page's request is
                try:
                    with unit_of_work(engine) as session:
                        if app_views.claim_image(
                            session,
                            image_id=image_id,
                            annotator_id=claimer.annotator_id,
                            lease_seconds=LEASE,
                            source=SOURCES[claimer.number],
                            strategy=claimer.strategy(phase),
                        ):
                            won.add(image_id)
                except Exception as error:  # counted, not raised: the test reports how many and which
                    claimer.errors.append(f"{type(error).__name__}: {str(error).splitlines()[0]}")
            claimer.won[phase] = won
            barrier.wait()  # the main thread checks the phase
    except threading.BrokenBarrierError:
        pass  # the main thread stopped early on a failed check
    finally:
        engine.dispose()


def _rows(engine: Engine) -> dict[int, Row]:
    with unit_of_work(engine) as session:
        return {
            claim.image_id: (claim.annotator_id, claim.expires_at, claim.source, claim.strategy)
            for claim in session.scalars(select(Claim))
        }


def test_threads_claiming_the_same_images_at_once_get_one_claim_each(engine: Engine) -> None:
    image_ids = add_images(engine, IMAGES)
    with unit_of_work(engine) as session:
        claimers = [Claimer(n, get_or_create_annotator(session, f"claimer-{n}").id) for n in range(THREADS)]
    url = engine.url.render_as_string(hide_password=False)
    barrier = threading.Barrier(THREADS + 1, timeout=120)
    threads = [threading.Thread(target=_claim_all, args=(url, c, image_ids, barrier)) for c in claimers]
    for thread in threads:
        thread.start()
    taken_over = kept_by_holder = 0
    try:
        before: dict[int, Row] = {}
        for phase in range(ROUNDS * len(PHASES)):
            kind = PHASES[phase % len(PHASES)]
            with unit_of_work(engine) as session:
                if kind == "fresh":
                    session.execute(delete(Claim))
                elif kind == "takeover":  # every lease runs out at once
                    session.execute(update(Claim).values(expires_at=utcnow() - timedelta(seconds=1)))
            barrier.wait()
            barrier.wait()
            errors = [error for claimer in claimers for error in claimer.errors]
            assert not errors, f"{len(errors)} claims raised in phase {phase} ({kind}): {Counter(errors)}"
            after = _rows(engine)
            assert sorted(after) == image_ids, "every image ends with exactly one claim"
            winners = {image_id: [c for c in claimers if image_id in c.won[phase]] for image_id in image_ids}
            for image_id, won_by in winners.items():
                assert len(won_by) == 1, f"image {image_id} ({kind}) won by {[c.number for c in won_by]}"
                [winner] = won_by
                holder, expires_at, source, strategy = after[image_id]
                assert holder == winner.annotator_id
                mine_before = kind != "fresh" and before[image_id][0] == winner.annotator_id
                if mine_before:  # a renewal: the lease moves on, what served the image stays
                    assert expires_at > before[image_id][1]
                    assert (source, strategy) == before[image_id][2:]
                    kept_by_holder += 1
                else:  # a new claim or a take-over of an expired one records the new holder's
                    assert (source, strategy) == (SOURCES[winner.number].value, winner.strategy(phase))
                    taken_over += kind == "takeover"
                if kind == "renew":
                    assert mine_before, f"image {image_id}: a live claim went to {winner.number}"
            before = after
    finally:
        barrier.abort()  # releases the threads if an assertion stopped the phases early
        for thread in threads:
            thread.join(timeout=60)
    assert taken_over > 0 and kept_by_holder >= ROUNDS * IMAGES


def _refill_rounds(url: str, tab: LabelSession, rounds: int, barrier: threading.Barrier, errors: list[str]) -> None:
    engine = make_engine(url)
    try:
        barrier.wait()
        for _ in range(rounds):
            try:
                tab.refill(engine, lease_seconds=LEASE, size=len(tab.window))
            except Exception as error:
                errors.append(f"{type(error).__name__}: {str(error).splitlines()[0]}")
    finally:
        engine.dispose()


def test_two_tabs_of_one_annotator_renew_the_same_window_without_deadlock(engine: Engine) -> None:
    """Each refill renews its window's claims in one transaction; PostgreSQL keeps every renewed row locked
    until the commit, so two tabs renewing the same images in different orders deadlocked (the benchmark's
    twins). Renewals go in image order, whatever the window's order."""
    image_ids = add_images(engine, 40)
    held = image_ids[:8]
    with unit_of_work(engine) as session:
        twin = get_or_create_annotator(session, "twin").id
        for image_id in held:
            assert app_views.claim_image(
                session, image_id=image_id, annotator_id=twin, lease_seconds=LEASE, source=AnnotationSource.RANKED
            )
    window = [WindowItem(image_id, "entropy", None, False, AnnotationSource.RANKED) for image_id in held]
    tabs = [LabelSession(twin, "entropy", window=list(window)), LabelSession(twin, "entropy", window=window[::-1])]
    url = engine.url.render_as_string(hide_password=False)
    barrier = threading.Barrier(len(tabs))
    errors: list[str] = []
    threads = [threading.Thread(target=_refill_rounds, args=(url, tab, 40, barrier, errors)) for tab in tabs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, f"{len(errors)} refills raised: {Counter(errors)}"
    # Each tab keeps its own order and what served the images.
    assert [item.image_id for item in tabs[0].window] == held
    assert [item.image_id for item in tabs[1].window] == held[::-1]
    assert {item.source for tab in tabs for item in tab.window} == {AnnotationSource.RANKED}
