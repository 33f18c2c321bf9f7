"""SQLite: ``INSERT ... ON CONFLICT DO UPDATE`` through the driver's ``executemany``.

SQLite has one writer at a time (the database file is locked from the first
write until commit), so reads that decide a write need no row lock. Version
state is still advanced inside the upsert, because with ``RETURNING`` that
saves a read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.dialects.base import (
    NO_CONSTANTS,
    Dialect,
    Row,
    execute_values,
    last_per_key,
    names,
    placeholders,
    quote,
    update_list,
    value_group,
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

    advances_versions_in_sql = True

    def upsert_advancing_version(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        constants: Mapping[str, Any] = NO_CONSTANTS,
    ) -> list[Row]:
        if not rows:
            return []
        path = """'$."' || excluded.origin || '"'"""
        key = [c.name for c in table.primary_key.columns]
        # In DO UPDATE, a bare column is the stored row; `excluded` the new one.
        return execute_values(
            conn,
            f"INSERT INTO {quote(conn, table.name)} ({names(conn, [*constants, *columns])}) "
            f"VALUES {{values}} ON CONFLICT ({names(conn, key)}) DO UPDATE SET "
            f"version = json_set(version, {path}, "
            f"coalesce(json_extract(version, {path}), 0) + 1), "
            "hlc = max(excluded.hlc, hlc + 1), origin = excluded.origin, "
            "deleted = excluded.deleted RETURNING row_key, version, hlc",
            value_group(conn, len(columns), constants),
            rows,
            returning=True,
        )
