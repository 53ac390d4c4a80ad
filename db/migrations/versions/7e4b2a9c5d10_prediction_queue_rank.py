"""predictions.queue_rank: the app serves the order core.acquisition ranks

Revision ID: 7e4b2a9c5d10
Revises: 3c9d0e6a1b27
Create Date: 2026-11-30 00:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7e4b2a9c5d10"
down_revision: str | None = "3c9d0e6a1b27"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("queue_rank", sa.Integer(), nullable=True))
        batch.create_index("ix_predictions_queue_rank", ["model_version_id", "labelled", "queue_rank"])


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_index("ix_predictions_queue_rank")
        batch.drop_column("queue_rank")
