"""Conflicts by policy in the record of each replication pass.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("replicator_sync_runs", sa.Column("conflict_policies", sa.Text))


def downgrade() -> None:
    op.drop_column("replicator_sync_runs", "conflict_policies")
