"""Conflict settlement: what a settlement kept, and conflicts by policy in
the record of each replication pass.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copies of the types in replicator.tables as of this revision.


def exact(length: int) -> sa.types.TypeEngine:
    # Byte-for-byte comparison on MariaDB (its default collation ignores case).
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


TABLE_NAME = exact(128)
ROW_KEY = exact(512)


def upgrade() -> None:
    op.add_column("replicator_sync_runs", sa.Column("conflict_policies", sa.Text))
    op.create_table(
        "replicator_settlements",
        sa.Column("table_name", TABLE_NAME, nullable=False),
        sa.Column("row_key", ROW_KEY, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("kept", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("table_name", "row_key", name="pk_replicator_settlements"),
    )


def downgrade() -> None:
    op.drop_table("replicator_settlements")
    op.drop_column("replicator_sync_runs", "conflict_policies")
