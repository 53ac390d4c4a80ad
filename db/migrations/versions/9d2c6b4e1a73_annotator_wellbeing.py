"""annotator_wellbeing: per-annotator image-safety settings and exposure counts kept in the database

Revision ID: 9d2c6b4e1a73
Revises: 5b8e1f3a9c42
Create Date: 2026-11-30 00:52:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9d2c6b4e1a73"
down_revision: str | None = "5b8e1f3a9c42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "annotator_wellbeing",
        sa.Column("annotator_id", sa.Integer(), nullable=False),
        sa.Column("blur", sa.Boolean(), nullable=True),
        sa.Column("greyscale", sa.Boolean(), nullable=True),
        sa.Column("blur_px", sa.Integer(), nullable=False),
        sa.Column("reveal_on_hold", sa.Boolean(), nullable=False),
        sa.Column("exposure_day", sa.Date(), nullable=True),
        sa.Column("exposures_today", sa.Integer(), nullable=False),
        sa.Column("exposures_since_break", sa.Integer(), nullable=False),
        sa.Column("break_started_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["annotator_id"],
            ["annotators.id"],
            name=op.f("fk_annotator_wellbeing_annotator_id_annotators"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("annotator_id", name=op.f("pk_annotator_wellbeing")),
    )


def downgrade() -> None:
    op.drop_table("annotator_wellbeing")
