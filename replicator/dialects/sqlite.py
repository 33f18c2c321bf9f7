"""SQLite: ``INSERT ... ON CONFLICT DO UPDATE`` through the driver's ``executemany``.

SQLite has one writer at a time (the database file is locked from the first
write until commit), so reads that decide a write need no row lock.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.dialects.base import (
    Dialect,
    Row,
    last_per_key,
    names,
    placeholders,
    quote,
    update_list,
)


class SQLiteDialect(Dialect):
    name = "sqlite"

    def upsert_rows(
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        if not rows:
            return
        key = [c.name for c in table.primary_key.columns]
        conn.exec_driver_sql(
            f"INSERT INTO {quote(conn, table.name)} ({names(conn, columns)}) "
            f"VALUES ({placeholders(conn, len(columns))}) ON CONFLICT ({names(conn, key)}) "
            f"DO UPDATE SET {update_list(conn, table, columns, 'excluded.{}')}",
            last_per_key(table, columns, rows),
        )
