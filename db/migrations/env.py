"""Alembic environment: always run programmatically through ``db.migrate`` with a live connection."""

from alembic import context

from db.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copy
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
