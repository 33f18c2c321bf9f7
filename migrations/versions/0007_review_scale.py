"""The review queue at the scale an outage leaves: how many events each item
holds (listed without reading them), an index that pages open items oldest
first, and the events a held item keeps in order, one row each, so that a
flood refused for one structural reason is one item that grows by inserts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
ROW_KEY = sa.String(512).with_variant(
    mysql.VARCHAR(512, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)


def upgrade() -> None:
    # NULL for items parked before this revision: their count is read from
    # their events when listed.
    op.add_column("replicator_review_items", sa.Column("event_count", sa.BigInteger))
    op.create_index(
        "ix_replicator_review_items_status_detected_at",
        "replicator_review_items",
        ["status", "detected_at"],
    )
    op.create_table(
        "replicator_review_events",
        sa.Column("item_id", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("position", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("row_key", ROW_KEY, nullable=False),
        sa.Column("payload", BLOB, nullable=False),
        sa.PrimaryKeyConstraint("item_id", "position", name="pk_replicator_review_events"),
    )


def downgrade() -> None:
    op.drop_table("replicator_review_events")
    op.drop_index("ix_replicator_review_items_status_detected_at", "replicator_review_items")
    op.drop_column("replicator_review_items", "event_count")
