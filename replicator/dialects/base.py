"""The interface every dialect module implements."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

Row = tuple[Any, ...]
NO_CONSTANTS: Mapping[str, Any] = {}


class Dialect(abc.ABC):
    """Bulk paths and locking for one database.

    The defaults are plain SQLAlchemy Core and correct everywhere; a dialect
    overrides what its database does faster or differently.
    """

    name = "default"

    def insert_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        constants: Mapping[str, Any] = NO_CONSTANTS,
    ) -> None:
        """Insert ``rows`` (tuples of ``columns``' values) with one multi-row
        statement per :data:`CHUNK` rows; nothing when empty.

        ``constants`` are columns with the same value in every row: they are
        written into the statement once instead of bound once per row
        (pymysql escapes every bound value in Python). Values go to the
        driver as they are (no SQLAlchemy type processing, which costs more
        than the insert itself on the capture path), so they must be plain
        DB-API values: str, int, float, bool, bytes, None.
        """
        execute_values(
            conn,
            f"INSERT INTO {quote(conn, table.name)} ({names(conn, [*constants, *columns])}) "
            "VALUES {values}",
            value_group(conn, len(columns), constants),
            rows,
        )

    @abc.abstractmethod
    def upsert_rows(
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        """Insert or replace ``rows`` by ``table``'s primary key, in one statement.

        ``columns`` must include the primary key. When a key repeats, the last
        row for it wins; nothing when empty. Values as for :meth:`insert_rows`.
        """

    #: Whether :meth:`upsert_advancing_version` is implemented (see
    #: :func:`replicator.versions.advance` for why a database would need it).
    advances_versions_in_sql = False

    def upsert_advancing_version(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        constants: Mapping[str, Any] = NO_CONSTANTS,
    ) -> list[Row]:
        """Upsert version-state rows, advancing existing ones in the database.

        For a new key the row is inserted as given. For an existing key, the
        stored ``version`` vector gets its ``origin`` entry incremented, ``hlc``
        becomes the larger of the given one and the stored one plus one, and
        the other columns take the given values. Returns ``(row_key, version,
        hlc)`` as stored, for every row (in no particular order). Keys must be
        distinct; ``constants`` as for :meth:`insert_rows`. Only for databases
        that set :attr:`advances_versions_in_sql`.
        """
        raise TypeError(f"{type(self).__name__} does not advance versions in SQL")

    def lock_rows(self, select: sa.Select) -> sa.Select:
        """``select`` made to lock what it reads until the transaction ends.

        Used when a read decides what is written next (a row's version):
        under concurrent writers the read must see the latest committed value,
        not a snapshot. Databases with a single writer need no lock.
        """
        return select


def quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def names(conn: Connection, columns: Sequence[str]) -> str:
    return ", ".join(quote(conn, c) for c in columns)


def placeholders(conn: Connection, count: int) -> str:
    marker = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric_dollar": "?"}[
        conn.dialect.paramstyle
    ]
    return ", ".join([marker] * count)


# Rows per multi-row statement: at ~5 values a row, far below SQLite's and
# MariaDB's limits on bound parameters and statement size.
CHUNK = 1000


def literal(conn: Connection, value: Any) -> str:
    """``value`` as an SQL literal of this database, safely quoted."""
    return str(
        sa.literal(value).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    )


def value_group(conn: Connection, count: int, constants: Mapping[str, Any] = NO_CONSTANTS) -> str:
    """``('const', ?, ?)``: the constants' literals, then ``count`` placeholders."""
    parts = [literal(conn, value) for value in constants.values()]
    return f"({', '.join([*parts, placeholders(conn, count)])})"


def execute_values(
    conn: Connection, sql: str, group: str, rows: Sequence[Row], *, returning: bool = False
) -> list[Row]:
    """Run ``sql`` with ``{values}`` replaced by ``group`` once per row.

    One statement per :data:`CHUNK` rows. With ``returning``, the rows the
    statements return (drivers return none from ``executemany``).
    """
    returned: list[Row] = []
    for start in range(0, len(rows), CHUNK):
        part = rows[start : start + CHUNK]
        statement = sql.format(values=", ".join([group] * len(part)))
        result = conn.exec_driver_sql(statement, tuple(v for row in part for v in row))
        if returning:
            returned.extend(tuple(r) for r in result)
    return returned


def last_per_key(table: sa.Table, columns: Sequence[str], rows: Sequence[Row]) -> list[Row]:
    """``rows`` with one row per primary key, the last one given for it."""
    at = [list(columns).index(c.name) for c in table.primary_key.columns]
    by_key = {tuple(row[i] for i in at): row for row in rows}
    return list(by_key.values()) if len(by_key) < len(rows) else list(rows)


def update_list(conn: Connection, table: sa.Table, columns: Sequence[str], template: str) -> str:
    """``a = <template>, ...`` over the non-key columns; ``{}`` is the column."""
    key = {c.name for c in table.primary_key.columns}
    return ", ".join(
        f"{quote(conn, c)} = {template.format(quote(conn, c))}" for c in columns if c not in key
    )
