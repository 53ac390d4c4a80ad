"""input_embeddings: the UMAP map of the backbone's features (or pixels) shown before any model version

Revision ID: e5a1c7b3d209
Revises: c4e7a2d91b36
Create Date: 2026-12-01 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e5a1c7b3d209"
down_revision: str | None = "c4e7a2d91b36"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "input_embeddings",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("input", sa.String(length=200), nullable=False),
        sa.Column("umap_x", sa.Float(), nullable=False),
        sa.Column("umap_y", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.id"],
            name=op.f("fk_input_embeddings_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_input_embeddings")),
    )


def downgrade() -> None:
    op.drop_table("input_embeddings")
