"""taxonomy_changes: merges and renames are recorded so that they can be undone

Revision ID: 5b8e1f3a9c42
Revises: 7e4b2a9c5d10
Create Date: 2026-11-30 00:45:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b8e1f3a9c42"
down_revision: str | None = "7e4b2a9c5d10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "taxonomy_changes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("undo_of", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["undo_of"], ["taxonomy_changes.id"], name=op.f("fk_taxonomy_changes_undo_of_taxonomy_changes")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_taxonomy_changes")),
        sa.UniqueConstraint("undo_of", name=op.f("uq_taxonomy_changes_undo_of")),
    )


def downgrade() -> None:
    op.drop_table("taxonomy_changes")
