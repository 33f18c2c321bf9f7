"""Each node's log: its identity, and how far retention has pruned it; the
identity of the log each checkpoint counts positions of.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    log = op.create_table(
        "replicator_log",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("log_id", sa.String(32), nullable=False),
        sa.Column("pruned_position", sa.BigInteger, nullable=False),
        sa.Column("pruned_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_replicator_log"),
    )
    # A new identity for every database: a replica made anew (its file
    # deleted and created again) numbers its outbox from 1 again.
    op.bulk_insert(
        log, [{"id": 1, "log_id": uuid.uuid4().hex, "pruned_position": 0, "pruned_at": None}]
    )
    op.add_column("replicator_checkpoints", sa.Column("log_id", sa.String(32)))


def downgrade() -> None:
    op.drop_column("replicator_checkpoints", "log_id")
    op.drop_table("replicator_log")
