"""MariaDB (and MySQL) through pymysql.

pymysql turns ``executemany`` of an ``INSERT`` into one multi-row statement,
so inserts and ``ON DUPLICATE KEY UPDATE`` upserts go to the server in one
round trip per batch. InnoDB reads a snapshot unless asked to lock, hence
``FOR UPDATE`` where a read decides a write.
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


class MariaDBDialect(Dialect):
    name = "mariadb"

    def upsert_rows(
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        if not rows:
            return
        # pymysql rewrites this executemany into one multi-row INSERT.
        conn.exec_driver_sql(
            f"INSERT INTO {quote(conn, table.name)} ({names(conn, columns)}) "
            f"VALUES ({placeholders(conn, len(columns))}) "
            f"ON DUPLICATE KEY UPDATE {update_list(conn, table, columns, 'VALUES({})')}",
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
        # For a duplicate primary key InnoDB locks just that index record, no
        # gap, so concurrent writers of different rows never wait on each
        # other here. MariaDB evaluates the assignments left to right: the
        # version and hlc expressions read the stored values before `origin`
        # is overwritten.
        # RETURNING gives the rows as stored after the update.
        path = "CONCAT('$.\"', VALUES(origin), '\"')"
        return execute_values(
            conn,
            f"INSERT INTO {quote(conn, table.name)} ({names(conn, [*constants, *columns])}) "
            "VALUES {values} ON DUPLICATE KEY UPDATE "
            f"version = JSON_SET(version, {path}, COALESCE(JSON_VALUE(version, {path}), 0) + 1), "
            "hlc = GREATEST(VALUES(hlc), hlc + 1), origin = VALUES(origin), "
            "deleted = VALUES(deleted) RETURNING row_key, version, hlc",
            value_group(conn, len(columns), constants),
            rows,
            returning=True,
        )

    def lock_rows(self, select: sa.Select) -> sa.Select:
        # A locking read sees the latest committed row, not the transaction's
        # snapshot: two writers of one row then cannot both derive their next
        # version from the same old one.
        return select.with_for_update()
