"""MariaDB (and MySQL) through pymysql.

pymysql turns ``executemany`` of an ``INSERT`` into one multi-row statement,
so inserts and ``ON DUPLICATE KEY UPDATE`` upserts go to the server in one
round trip per batch. InnoDB reads a snapshot unless asked to lock, hence
``FOR UPDATE`` where a read decides a write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.mysql import insert
from sqlalchemy.engine import Connection

from replicator.dialects.base import Dialect, last_per_key


class MariaDBDialect(Dialect):
    name = "mariadb"

    def upsert_rows(
        self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
    ) -> None:
        if not rows:
            return
        stmt = insert(table)
        key = {c.name for c in table.primary_key.columns}
        stmt = stmt.on_duplicate_key_update(
            {c.name: stmt.inserted[c.name] for c in table.columns if c.name not in key}
        )
        conn.execute(stmt, last_per_key(table, rows))

    def lock_rows(self, select: sa.Select) -> sa.Select:
        # A locking read sees the latest committed row, not the transaction's
        # snapshot: two writers of one row then cannot both derive their next
        # version from the same old one.
        return select.with_for_update()
