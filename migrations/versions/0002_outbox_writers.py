"""The outbox writers' lock row, for reading the outbox in commit order.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    writers = op.create_table(
        "replicator_outbox_writers",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_replicator_outbox_writers"),
    )
    op.bulk_insert(writers, [{"id": 1}])


def downgrade() -> None:
    op.drop_table("replicator_outbox_writers")
