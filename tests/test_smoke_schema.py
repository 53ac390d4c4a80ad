from sqlalchemy import inspect

from db.migrate import current_revision, head_revision


def test_migrations_create_every_table_at_head(engine) -> None:
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"images", "annotations", "predictions", "jobs", "job_events", "claims"} <= tables
