"""claims.source and claims.strategy: the decision records what served the image, not what was asked

Annotations written before this revision keep their ``source``: "app" (the Label page, which did not
record what served the image; its ``strategy`` is the one the annotator asked for), "grid", "import",
"history", "demo" or "unreadable" (all still in db.schema.AnnotationSource). Claims taken before it have
no source; a decision that fulfils one records "unknown".

Revision ID: c4e7a2d91b36
Revises: 9d2c6b4e1a73
Create Date: 2026-12-01 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4e7a2d91b36"
down_revision: str | None = "9d2c6b4e1a73"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("claims") as batch:
        batch.add_column(sa.Column("source", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("strategy", sa.String(length=32), nullable=True))


def downgrade() -> None:
    # The annotations' sources stay: the older code reads any text there.
    with op.batch_alter_table("claims") as batch:
        batch.drop_column("strategy")
        batch.drop_column("source")
