"""The replicator's tables: outbox, row versions, checkpoints, review items, sync runs.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the types in replicator.tables as of this revision.


def exact(length: int) -> sa.types.TypeEngine:
    # Byte-for-byte comparison on MariaDB (its default collation ignores case).
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


NODE = exact(64)
TABLE_NAME = exact(128)
ROW_KEY = exact(512)
BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def serial(name: str, table: str) -> sa.Column:
    return sa.Column(
        name, SERIAL, primary_key=True, autoincrement=True, info={"sequence": f"{table}_{name}_seq"}
    )


def upgrade() -> None:
    op.create_table(
        "replicator_outbox",
        serial("position", "replicator_outbox"),
        sa.Column("origin", NODE, nullable=False),
        sa.Column("table_name", TABLE_NAME, nullable=False),
        sa.Column("row_key", ROW_KEY, nullable=False),
        sa.Column("hlc", sa.BigInteger, nullable=False),
        sa.Column("payload", BLOB, nullable=False),
        sa.PrimaryKeyConstraint("position", name="pk_replicator_outbox"),
    )

    op.create_table(
        "replicator_row_versions",
        sa.Column("table_name", TABLE_NAME, nullable=False),
        sa.Column("row_key", ROW_KEY, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("hlc", sa.BigInteger, nullable=False),
        sa.Column("origin", NODE, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("table_name", "row_key", name="pk_replicator_row_versions"),
        sqlite_with_rowid=False,
    )

    op.create_table(
        "replicator_checkpoints",
        sa.Column("source", NODE, nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("position", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("source", "channel", name="pk_replicator_checkpoints"),
    )

    op.create_table(
        "replicator_review_items",
        serial("id", "replicator_review_items"),
        sa.Column("table_name", TABLE_NAME, nullable=False),
        sa.Column("row_key", ROW_KEY, nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", TEXT, nullable=False),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("base", BLOB),
        sa.Column("local", BLOB),
        sa.Column("remote", BLOB),
        sa.Column("events", BLOB),
        sa.Column("detected_at", sa.DateTime, nullable=False),
        sa.Column("resolved_at", sa.DateTime),
        sa.Column("resolved_by", sa.String(128)),
        sa.Column("resolution", TEXT),
        sa.PrimaryKeyConstraint("id", name="pk_replicator_review_items"),
    )
    op.create_index(
        "ix_replicator_review_items_status_table_name",
        "replicator_review_items",
        ["status", "table_name"],
    )
    op.create_index(
        "ix_replicator_review_items_table_name_row_key",
        "replicator_review_items",
        ["table_name", "row_key"],
    )

    op.create_table(
        "replicator_sync_runs",
        serial("id", "replicator_sync_runs"),
        sa.Column("source", NODE, nullable=False),
        sa.Column("target", NODE, nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("events_read", sa.Integer, nullable=False),
        sa.Column("events_applied", sa.Integer, nullable=False),
        sa.Column("events_skipped", sa.Integer, nullable=False),
        sa.Column("conflicts", sa.Integer, nullable=False),
        sa.Column("parked", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("error", TEXT),
        sa.PrimaryKeyConstraint("id", name="pk_replicator_sync_runs"),
    )
    op.create_index("ix_replicator_sync_runs_started_at", "replicator_sync_runs", ["started_at"])


def downgrade() -> None:
    for table in (
        "replicator_sync_runs",
        "replicator_review_items",
        "replicator_checkpoints",
        "replicator_row_versions",
        "replicator_outbox",
    ):
        op.drop_table(table)
