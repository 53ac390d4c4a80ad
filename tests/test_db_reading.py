"""Read units of work: on SQLite they begin DEFERRED so that a long read (an export) never blocks a label,
and on both dialects they refuse to write."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import Engine, insert, text
from sqlalchemy.exc import DBAPIError

from db.engine import ReadOnlyError, make_engine, reading, unit_of_work
from db.migrate import upgrade_to_head
from db.queries.annotations import current_labels, record_annotation
from db.queries.annotators import get_or_create_annotator
from db.schema import Annotation, AnnotationKind, Annotator
from tests.db_helpers import add_images, add_taxonomy


def _label_everything(engine: Engine, image_ids: list[int], main_class_id: int) -> int:
    with unit_of_work(engine) as session:
        annotator_id = get_or_create_annotator(session, "bulk").id
        session.execute(
            insert(Annotation),
            [
                {
                    "image_id": image_id,
                    "annotator_id": annotator_id,
                    "kind": AnnotationKind.LABEL,
                    "main_class_id": main_class_id,
                    "superseded": False,
                    "source": "test",
                }
                for image_id in image_ids
            ],
        )
    return annotator_id


def test_a_label_saved_during_a_long_export_read_is_not_blocked(sqlite_engine: Engine) -> None:
    image_ids = add_images(sqlite_engine, 5_000)
    taxonomy = add_taxonomy(sqlite_engine)
    _label_everything(sqlite_engine, image_ids[:-1], taxonomy.loops)
    with unit_of_work(sqlite_engine) as session:
        annotator_id = get_or_create_annotator(session, "annotator").id
    # The annotator's app process has its own engine, as in production.
    writer = make_engine(sqlite_engine.url.render_as_string(hide_password=False))
    outcome: dict[str, object] = {}

    def save_a_label() -> None:
        started = time.perf_counter()
        try:
            with unit_of_work(writer) as session:
                record_annotation(
                    session,
                    image_id=image_ids[-1],
                    annotator_id=annotator_id,
                    kind=AnnotationKind.LABEL,
                    main_class_id=taxonomy.lines,
                )
            outcome["seconds"] = time.perf_counter() - started
        except DBAPIError as error:  # "database is locked" after the busy timeout
            outcome["error"] = error

    try:
        with reading(sqlite_engine) as session:
            labels = current_labels(session)  # streamed, as the export reads it
            first = next(labels)
            thread = threading.Thread(target=save_a_label)
            thread.start()
            thread.join(timeout=10)
            assert not thread.is_alive(), "the label waited for the export's read to finish"
            rest = list(labels)
        assert "error" not in outcome
        assert outcome["seconds"] < 5
        # The read is one snapshot: it began before the label was saved, so it does not include it.
        assert len([first, *rest]) == len(image_ids) - 1
        with reading(sqlite_engine) as session:
            assert len(list(current_labels(session))) == len(image_ids)
    finally:
        thread.join()
        writer.dispose()


def test_reading_refuses_orm_writes(engine: Engine) -> None:
    with pytest.raises(ReadOnlyError), reading(engine) as session:
        session.add(Annotator(name="sneaky"))
        session.flush()
    with reading(engine) as session:
        assert session.query(Annotator).count() == 0


@pytest.mark.postgres
def test_reading_is_read_only_on_postgresql(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    upgrade_to_head(engine)
    try:
        with pytest.raises(DBAPIError, match="read-only transaction"), reading(engine) as session:
            session.execute(text("INSERT INTO annotators (name, created_at) VALUES ('x', now())"))
    finally:
        engine.dispose()
