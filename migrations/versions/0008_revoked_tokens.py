"""The sync gateway's revocation list: device tokens it refuses, by id.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

NODE = sa.String(64).with_variant(
    mysql.VARCHAR(64, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
)


def upgrade() -> None:
    op.create_table(
        "replicator_revoked_tokens",
        sa.Column("token_id", sa.String(64), nullable=False),
        sa.Column("device", NODE, nullable=False),
        sa.Column("revoked_at", sa.DateTime, nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("token_id", name="pk_replicator_revoked_tokens"),
    )


def downgrade() -> None:
    op.drop_table("replicator_revoked_tokens")
