"""The concurrency benchmark's checker (benchmarks/concurrent_labelling.py) on a tiny real run: it passes a
clean run and it fails one with a duplicate current row, a lost row or a wrong superseded flag."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, delete, select, text, update

from benchmarks.concurrent_labelling import (
    Config,
    Ledger,
    annotator_specs,
    app_api,
    check,
    populate,
    start_annotators,
)
from db.engine import make_engine, sqlite_url, unit_of_work
from db.schema import CURRENT_ANNOTATION_INDEX, Annotation, AnnotationTag

# Two processes as one annotator (two tabs): the hardest case for the history, and every op kind happens.
TINY = Config(processes=2, labels=20, repeats=1, twins=1, start_method="fork", timeout_s=120)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Iterator[tuple[Engine, list[Ledger]]]:
    url = sqlite_url(tmp_path_factory.mktemp("concurrent") / "tiny.db")
    engine = make_engine(url)
    populate(engine, TINY.images, audit_fraction=TINY.audit_fraction, seed=0)
    mix = dataclasses.replace(TINY.mix, card_undo=0.2, recent_undo=0.15, relabel=0.15, restart=0.2)
    specs = annotator_specs(dataclasses.replace(TINY, mix=mix))
    # Forked, not spawned as in the benchmark: the processes inherit the app's modules, imported once here,
    # which keeps this test to seconds.
    app_api()
    ledgers = start_annotators(url, specs, TINY.start_method).collect(TINY.timeout_s)
    yield engine, ledgers
    engine.dispose()


def test_a_clean_run_passes(tiny_run) -> None:
    engine, ledgers = tiny_run
    assert [ledger.crash for ledger in ledgers] == [None, None]
    # A process stops once it has `labels` saved; its last send may save two (a decision, an undo on the card
    # and a new decision), so it can end one over.
    saved = [ledger.saved for ledger in ledgers]
    assert all(TINY.labels <= count <= TINY.labels + 1 for count in saved), saved
    verdict = check(engine, ledgers)
    assert verdict.ok, verdict.problems
    assert (verdict.lost, verdict.doubled, verdict.history_errors) == (0, 0, 0)
    assert verdict.rows >= 2 * TINY.labels


def test_the_checker_finds_what_was_done_wrong(tiny_run) -> None:
    """One test, in order, since each injection changes the database for the next."""
    engine, ledgers = tiny_run
    with unit_of_work(engine) as session:
        # A duplicate current row, as two sessions inserting at once would leave without the unique index.
        session.execute(text(f"DROP INDEX {CURRENT_ANNOTATION_INDEX}"))
        current = session.scalars(select(Annotation).where(Annotation.superseded.is_(False)).limit(1)).one()
        session.add(
            Annotation(image_id=current.image_id, annotator_id=current.annotator_id, kind=current.kind, source="app")
        )
    verdict = check(engine, ledgers)
    assert not verdict.ok
    assert verdict.doubled_current == 1
    assert verdict.unreported == 1
    assert verdict.lost == 0

    newest = max(a.annotation_id or 0 for ledger in ledgers for a in ledger.answers if a.status == "applied")
    with unit_of_work(engine) as session:
        # A decision a process was told is saved, gone (with its tags, and the link to it from a later row).
        touched = {current.image_id, session.get(Annotation, newest).image_id}
        session.execute(update(Annotation).where(Annotation.supersedes_id == newest).values(supersedes_id=None))
        session.execute(delete(AnnotationTag).where(AnnotationTag.annotation_id == newest))
        session.execute(delete(Annotation).where(Annotation.id == newest))
    assert check(engine, ledgers).lost >= 1

    before = check(engine, ledgers).history_errors
    with unit_of_work(engine) as session:
        # An old decision flagged current again on a pair nothing else touched.
        old = session.scalars(
            select(Annotation)
            .where(Annotation.superseded.is_(True), Annotation.kind != "undo", Annotation.image_id.not_in(touched))
            .limit(1)
        ).one()
        old.superseded = False
    assert check(engine, ledgers).history_errors == before + 1
