"""How far each outbox has been pruned.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pruned = op.create_table(
        "replicator_pruned",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("pruned_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_replicator_pruned"),
    )
    op.bulk_insert(pruned, [{"id": 1, "position": 0, "pruned_at": None}])


def downgrade() -> None:
    op.drop_table("replicator_pruned")
