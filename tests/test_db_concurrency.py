"""Several real OS processes writing to one database at once: nothing lost, no image handed out twice."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

from sqlalchemy import func, select

from db.engine import unit_of_work
from db.queries.annotators import get_or_create_annotator
from db.schema import Annotation, Claim
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
