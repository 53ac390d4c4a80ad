"""Several real OS processes writing to one database at once: nothing lost, no image handed out twice."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import pytest
from sqlalchemy import func, select

from db.engine import make_engine, unit_of_work
from db.migrate import upgrade_to_head
from db.queries.annotations import AnnotationError, record_annotation, undo_annotation
from db.queries.annotators import get_or_create_annotator
from db.schema import Annotation, AnnotationKind, Claim
from tests.db_helpers import add_images, add_model_version, add_taxonomy, claim_and_label, record_many

PROCESSES = 3


def _pool() -> ProcessPoolExecutor:
    # spawn: a fresh interpreter per worker, as the real app and worker processes are.
    return ProcessPoolExecutor(max_workers=PROCESSES, mp_context=multiprocessing.get_context("spawn"))


def test_concurrent_writers_on_one_sqlite_file_lose_nothing(sqlite_engine) -> None:
    image_ids = add_images(sqlite_engine, 50)
    taxonomy = add_taxonomy(sqlite_engine)
    url = sqlite_engine.url.render_as_string(hide_password=False)
    rounds = 300
    with _pool() as pool:
        futures = [
            pool.submit(record_many, url, f"writer-{n}", image_ids, [taxonomy.loops, taxonomy.lines], rounds)
            for n in range(PROCESSES)
        ]
        recorded = sum(future.result(timeout=300) for future in futures)
    assert recorded == PROCESSES * rounds
    with unit_of_work(sqlite_engine) as session:
        assert session.scalar(select(func.count()).select_from(Annotation)) == PROCESSES * rounds
        # Exactly one current decision per (image, annotator), however the writers interleaved.
        current = session.execute(
            select(Annotation.image_id, Annotation.annotator_id, func.count())
            .where(Annotation.superseded.is_(False))
            .group_by(Annotation.image_id, Annotation.annotator_id)
        ).all()
        assert len(current) == PROCESSES * len(image_ids)
        assert {count for _, _, count in current} == {1}


def test_processes_claiming_next_images_never_get_the_same_image(engine) -> None:
    image_ids = add_images(engine, 400)
    taxonomy = add_taxonomy(engine)
    # Every image scored the same: all processes race for the same top of the index.
    version = add_model_version(engine, dict.fromkeys(image_ids, 0.5))
    assert version == 1
    url = engine.url.render_as_string(hide_password=False)
    rounds = 100
    with _pool() as pool:
        futures = [
            pool.submit(claim_and_label, url, f"annotator-{n}", taxonomy.loops, rounds) for n in range(PROCESSES)
        ]
        served = [future.result(timeout=300) for future in futures]
    everything = [image_id for batch in served for image_id in batch]
    assert [len(batch) for batch in served] == [rounds] * PROCESSES
    assert len(set(everything)) == len(everything), "an image was handed to two annotators"
    with unit_of_work(engine) as session:
        assert session.scalar(select(func.count()).select_from(Annotation)) == PROCESSES * rounds
        assert session.scalar(select(func.count()).select_from(Claim)) == 0  # every claim fulfilled


def test_one_annotator_in_several_processes_keeps_one_current_annotation(engine) -> None:
    """The same annotator labelling the same few images from several sessions at once (two browser tabs):
    on PostgreSQL ``SELECT ... FOR UPDATE`` locks nothing when no current row exists yet, so without the
    partial unique index two current rows appeared and the pair could never be relabelled."""
    image_ids = add_images(engine, 3)
    taxonomy = add_taxonomy(engine)
    with unit_of_work(engine) as session:
        get_or_create_annotator(session, "twin")
    url = engine.url.render_as_string(hide_password=False)
    rounds = 200
    with _pool() as pool:
        futures = [
            pool.submit(record_many, url, "twin", image_ids, [taxonomy.loops, taxonomy.lines], rounds)
            for _ in range(PROCESSES)
        ]
        recorded = sum(future.result(timeout=300) for future in futures)
    assert recorded == PROCESSES * rounds
    with unit_of_work(engine) as session:
        assert session.scalar(select(func.count()).select_from(Annotation)) == PROCESSES * rounds
        current = session.execute(
            select(Annotation.image_id, func.count())
            .where(Annotation.superseded.is_(False))
            .group_by(Annotation.image_id)
            .order_by(Annotation.image_id)
        ).all()
        assert current == [(image_id, 1) for image_id in image_ids]
        # Every row but the current one was superseded by exactly one later row: the history is one chain.
        supersedes = session.scalars(select(Annotation.supersedes_id).where(Annotation.supersedes_id.is_not(None)))
        chained = list(supersedes)
        assert len(chained) == len(set(chained)) == PROCESSES * rounds - len(image_ids)


def test_an_undo_that_lost_the_race_undoes_nothing(postgres_url) -> None:
    """Two tabs of one annotator undo the same decision at once (PostgreSQL, READ COMMITTED). The Label
    page's undo reads the decision first (``apply_op``, ``undo_from_history``), then ``undo_annotation`` locks
    it: the lock must see the winner's commit, not the copy read before it, or a second UNDO row is written
    for a decision that was no longer current."""
    engine = make_engine(postgres_url)
    try:
        upgrade_to_head(engine)
        add_images(engine, 1)
        taxonomy = add_taxonomy(engine)
        with unit_of_work(engine) as session:
            annotator_id = get_or_create_annotator(session, "twin").id
            first = record_annotation(
                session, image_id=1, annotator_id=annotator_id, kind=AnnotationKind.LABEL, main_class_id=taxonomy.loops
            ).id
            decision = record_annotation(
                session, image_id=1, annotator_id=annotator_id, kind=AnnotationKind.LABEL, main_class_id=taxonomy.lines
            ).id
        with pytest.raises(AnnotationError, match="no longer current"), unit_of_work(engine) as late:
            seen = late.get(Annotation, decision)  # the late tab reads it as current (and keeps it)...
            assert seen is not None and seen.superseded is False
            with unit_of_work(engine) as early:
                undo_annotation(early, decision, annotator_id)  # ...the other tab undoes it and commits...
            undo_annotation(late, decision, annotator_id)  # ...then the late tab's undo locks it
        with unit_of_work(engine) as session:
            rows = session.execute(
                select(Annotation.id, Annotation.kind, Annotation.superseded).order_by(Annotation.id)
            ).all()
        assert [(kind, superseded) for _, kind, superseded in rows] == [
            (AnnotationKind.LABEL, False),  # restored by the one undo
            (AnnotationKind.LABEL, True),
            (AnnotationKind.UNDO, True),
        ]
        assert rows[0].id == first
    finally:
        engine.dispose()


def test_a_decision_after_the_other_tab_undid_supersedes_the_restored_row(postgres_url) -> None:
    """The Label page reads the annotator's rows on the image (``label_history.rows_after``) before it records
    a decision; if the other tab's undo restores one of those rows meanwhile, the decision supersedes the
    restored row (the first attempt, from the copy read before, collides on the unique index; the retry
    reads it again)."""
    engine = make_engine(postgres_url)
    try:
        upgrade_to_head(engine)
        add_images(engine, 1)
        taxonomy = add_taxonomy(engine)
        with unit_of_work(engine) as session:
            annotator_id = get_or_create_annotator(session, "twin").id
            first = record_annotation(
                session, image_id=1, annotator_id=annotator_id, kind=AnnotationKind.LABEL, main_class_id=taxonomy.loops
            ).id
            second = record_annotation(
                session, image_id=1, annotator_id=annotator_id, kind=AnnotationKind.LABEL, main_class_id=taxonomy.lines
            ).id
        with unit_of_work(engine) as late:
            seen = late.scalars(select(Annotation).where(Annotation.image_id == 1).order_by(Annotation.id)).all()
            assert [row.superseded for row in seen] == [True, False]
            with unit_of_work(engine) as early:
                undo_annotation(early, second, annotator_id)  # the other tab: the first label is current again
            third = record_annotation(
                late, image_id=1, annotator_id=annotator_id, kind=AnnotationKind.SKIP, main_class_id=None
            )
            assert third.supersedes_id == first
        with unit_of_work(engine) as session:
            current = session.scalars(select(Annotation.id).where(Annotation.superseded.is_(False))).all()
        assert current == [third.id]
    finally:
        engine.dispose()


def test_an_undo_restores_the_row_it_replaced_as_it_is_now(postgres_url) -> None:
    """A copy of the replaced row read while it was still current must not make the undo skip restoring it
    (the ORM writes nothing when the copy already says "current"): the pair would be left with none."""
    engine = make_engine(postgres_url)
    try:
        upgrade_to_head(engine)
        add_images(engine, 1)
        taxonomy = add_taxonomy(engine)
        with unit_of_work(engine) as session:
            annotator_id = get_or_create_annotator(session, "twin").id
            first = record_annotation(
                session, image_id=1, annotator_id=annotator_id, kind=AnnotationKind.LABEL, main_class_id=taxonomy.loops
            ).id
        with unit_of_work(engine) as late:
            seen = late.get(Annotation, first)  # read while it is the current decision, and kept
            assert seen is not None and seen.superseded is False
            with unit_of_work(engine) as early:
                second = record_annotation(
                    early, image_id=1, annotator_id=annotator_id, kind=AnnotationKind.SKIP, main_class_id=None
                ).id
            undo_annotation(late, second, annotator_id)
        with unit_of_work(engine) as session:
            current = session.scalars(select(Annotation.id).where(Annotation.superseded.is_(False))).all()
        assert current == [first]
    finally:
        engine.dispose()
