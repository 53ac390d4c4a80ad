"""Migrations on real databases of both dialects: the schema they build matches the models, and data
written under an older revision survives the upgrade."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import IntegrityError

from db.engine import make_engine, unit_of_work
from db.migrate import alembic_config, upgrade_to_head
from db.schema import Annotation, AnnotationKind, Annotator, Base
from tests.db_helpers import add_images, add_taxonomy

BEFORE_ONE_CURRENT = "fa618513e342"


def _upgrade_to(engine: Engine, revision: str) -> None:
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_migrated_schema_matches_the_models(engine) -> None:
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_the_database_refuses_a_second_current_annotation(engine) -> None:
    image_id = add_images(engine, 1)[0]
    taxonomy = add_taxonomy(engine)
    with unit_of_work(engine) as session:
        annotator = Annotator(name="a")
        session.add(annotator)
        session.flush()
        row = {"image_id": image_id, "annotator_id": annotator.id, "kind": AnnotationKind.LABEL, "source": "test"}
        session.execute(insert(Annotation), [{**row, "main_class_id": taxonomy.loops, "superseded": False}])
        # Superseded rows and other annotators' rows are unconstrained.
        session.execute(insert(Annotation), [{**row, "main_class_id": taxonomy.lines, "superseded": True}] * 2)
    with pytest.raises(IntegrityError), unit_of_work(engine) as session:
        session.execute(insert(Annotation), [{**row, "main_class_id": taxonomy.lines, "superseded": False}])


def test_upgrade_keeps_the_newest_of_doubled_current_annotations(database_url: str) -> None:
    """A PostgreSQL database written before the unique index may hold two current rows for one pair: the
    upgrade keeps the newest current and flags the older superseded, deleting nothing."""
    engine = make_engine(database_url)
    try:
        _upgrade_to(engine, BEFORE_ONE_CURRENT)
        image_ids = add_images(engine, 2)
        taxonomy = add_taxonomy(engine)
        with unit_of_work(engine) as session:
            annotators = [Annotator(name="a"), Annotator(name="b")]
            session.add_all(annotators)
            session.flush()
            base = {"kind": AnnotationKind.LABEL, "source": "test", "superseded": False}
            rows = [
                {**base, "image_id": image_ids[0], "annotator_id": annotators[0].id, "main_class_id": taxonomy.loops},
                {**base, "image_id": image_ids[0], "annotator_id": annotators[0].id, "main_class_id": taxonomy.lines},
                {**base, "image_id": image_ids[0], "annotator_id": annotators[1].id, "main_class_id": taxonomy.loops},
                {**base, "image_id": image_ids[1], "annotator_id": annotators[0].id, "main_class_id": taxonomy.loops},
                {**base, "image_id": image_ids[1], "annotator_id": annotators[0].id, "main_class_id": taxonomy.loops},
                {**base, "image_id": image_ids[1], "annotator_id": annotators[0].id, "main_class_id": taxonomy.lines},
            ]
            for row in rows:  # one at a time, so ids follow the list's order
                session.execute(insert(Annotation), [row])
        upgrade_to_head(engine)
        with unit_of_work(engine) as session:
            assert session.scalar(select(func.count()).select_from(Annotation)) == len(rows)
            current = session.execute(
                select(Annotation.image_id, Annotation.annotator_id, Annotation.main_class_id)
                .where(Annotation.superseded.is_(False))
                .order_by(Annotation.image_id, Annotation.annotator_id)
            ).all()
        assert current == [
            (image_ids[0], annotators[0].id, taxonomy.lines),
            (image_ids[0], annotators[1].id, taxonomy.loops),
            (image_ids[1], annotators[0].id, taxonomy.lines),
        ]
    finally:
        engine.dispose()
