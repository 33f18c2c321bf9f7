"""SQLite: ``INSERT ... ON CONFLICT DO UPDATE`` through ``executemany``.

SQLite has one writer at a time (the database file is locked from the first
write until commit), so reads that decide a write need no row lock.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import Connection

from replicator.dialects.base import Dialect, last_per_key


class SQLiteDialect(Dialect):
    name = "sqlite"

    def upsert_rows(
        self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
    ) -> None:
        if not rows:
            return
        stmt = insert(table)
        key = [c.name for c in table.primary_key.columns]
        stmt = stmt.on_conflict_do_update(
            index_elements=key,
            set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in key},
        )
        conn.execute(stmt, last_per_key(table, rows))
