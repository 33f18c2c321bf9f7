"""The interface every dialect module implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

Row = tuple[Any, ...]


class Dialect(abc.ABC):
    """Bulk paths and locking for one database.

    The defaults are plain SQLAlchemy Core and correct everywhere; a dialect
    overrides what its database does faster or differently.
    """

    name = "default"

    def insert_rows(
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
    ) -> None:
        """Insert ``rows`` (tuples of ``columns``' values) in one batched
        statement; nothing when empty.

        Values go to the driver as they are (no SQLAlchemy type processing,
        which costs more than the insert itself on the capture path), so they
        must be plain DB-API values: str, int, float, bool, bytes, None.
        """
        if rows:
            conn.exec_driver_sql(
                f"INSERT INTO {quote(conn, table.name)} ({names(conn, columns)}) "
                f"VALUES ({placeholders(conn, len(columns))})",
                list(rows),
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
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Row]
    ) -> list[Row]:
        """Upsert version-state rows, advancing existing ones in the database.

        For a new key the row is inserted as given. For an existing key, the
        stored ``version`` vector gets its ``origin`` entry incremented, ``hlc``
        becomes the larger of the given one and the stored one plus one, and
        the other columns take the given values. Returns ``(row_key, version,
        hlc)`` as stored, for every row (in no particular order). Keys must be
        distinct. Only for databases that set :attr:`advances_versions_in_sql`.
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


def values_list(conn: Connection, columns: int, rows: int) -> str:
    """``(?, ?), (?, ?), ...``: a multi-row VALUES list of placeholders."""
    one = f"({placeholders(conn, columns)})"
    return ", ".join([one] * rows)


def returning_upsert(
    conn: Connection, sql: str, rows: Sequence[Row], chunk: int = 500
) -> list[Row]:
    """Run a multi-row ``INSERT ... VALUES {values} ... RETURNING`` over ``rows``.

    ``sql`` holds ``{values}`` where the VALUES list goes. One statement per
    ``chunk`` rows (drivers cannot return rows from ``executemany``).
    """
    returned: list[Row] = []
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        statement = sql.format(values=values_list(conn, len(part[0]), len(part)))
        flat = tuple(value for row in part for value in row)
        returned.extend(tuple(r) for r in conn.exec_driver_sql(statement, flat))
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
