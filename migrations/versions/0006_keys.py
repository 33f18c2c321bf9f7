"""Integer keys made on any node without colliding: the blocks of keys a
node may give new rows, the leases the server gave out, the sequences the
app's models number tables with, and each database's role in replication.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_EXACT = {
    n: sa.String(n).with_variant(
        mysql.VARCHAR(n, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )
    for n in (64, 128)
}


def upgrade() -> None:
    op.create_table(
        "replicator_key_blocks",
        sa.Column("table_name", _EXACT[128], nullable=False),
        sa.Column("first_key", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("last_key", sa.BigInteger, nullable=False),
        sa.Column("next_key", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("table_name", "first_key", name="pk_replicator_key_blocks"),
    )
    op.create_table(
        "replicator_key_leases",
        sa.Column("table_name", _EXACT[128], nullable=False),
        sa.Column("first_key", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("last_key", sa.BigInteger, nullable=False),
        sa.Column("holder", _EXACT[64], nullable=False),
        sa.Column("leased_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("table_name", "first_key", name="pk_replicator_key_leases"),
    )
    op.create_table(
        "replicator_key_ranges",
        sa.Column("table_name", _EXACT[128], nullable=False),
        sa.Column("next_key", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("table_name", name="pk_replicator_key_ranges"),
    )
    op.create_table(
        "replicator_sequences",
        sa.Column("table_name", _EXACT[128], nullable=False),
        sa.Column("sequence_name", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("table_name", name="pk_replicator_sequences"),
    )
    op.add_column("replicator_log", sa.Column("role", sa.String(16)))


def downgrade() -> None:
    op.drop_column("replicator_log", "role")
    op.drop_table("replicator_sequences")
    op.drop_table("replicator_key_ranges")
    op.drop_table("replicator_key_leases")
    op.drop_table("replicator_key_blocks")
