"""one current annotation per (image, annotator)

Revision ID: 3c9d0e6a1b27
Revises: fa618513e342
Create Date: 2026-12-02 10:00:00.000000

Databases written before this revision on PostgreSQL may hold two current rows for one pair (the race
this index closes). The newest stays current and the older ones are flagged superseded, never deleted,
so the unique index can be built and nothing in the history is lost.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3c9d0e6a1b27"
down_revision: str | None = "fa618513e342"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ux_annotations_one_current"


def upgrade() -> None:
    annotations = sa.table(
        "annotations",
        sa.column("id", sa.Integer),
        sa.column("image_id", sa.Integer),
        sa.column("annotator_id", sa.Integer),
        sa.column("superseded", sa.Boolean),
    )
    newer = annotations.alias("newer")
    op.execute(
        annotations.update()
        .where(
            annotations.c.superseded.is_(False),
            sa.exists().where(
                newer.c.image_id == annotations.c.image_id,
                newer.c.annotator_id == annotations.c.annotator_id,
                newer.c.superseded.is_(False),
                newer.c.id > annotations.c.id,
            ),
        )
        .values(superseded=True)
    )
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.create_index(
            INDEX,
            ["image_id", "annotator_id"],
            unique=True,
            sqlite_where=sa.text("NOT superseded"),
            postgresql_where=sa.text("NOT superseded"),
        )


def downgrade() -> None:
    with op.batch_alter_table("annotations", schema=None) as batch_op:
        batch_op.drop_index(INDEX, sqlite_where=sa.text("NOT superseded"), postgresql_where=sa.text("NOT superseded"))
