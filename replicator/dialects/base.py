"""The interface every dialect module implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


class Dialect(abc.ABC):
    """Bulk paths and locking for one database.

    The defaults are plain SQLAlchemy Core and correct everywhere; a dialect
    overrides what its database does faster or differently.
    """

    name = "default"

    def insert_rows(
        self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
    ) -> None:
        """Insert ``rows`` with one (batched) statement; nothing when empty."""
        if rows:
            conn.execute(table.insert(), list(rows))

    @abc.abstractmethod
    def upsert_rows(
        self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
    ) -> None:
        """Insert or replace ``rows`` by ``table``'s primary key, in one statement.

        When a key repeats, the last row for it wins; nothing when empty.
        """

    def lock_rows(self, select: sa.Select) -> sa.Select:
        """``select`` made to lock what it reads until the transaction ends.

        Used when a read decides what is written next (a row's version):
        under concurrent writers the read must see the latest committed value,
        not a snapshot. Databases with a single writer need no lock.
        """
        return select


def last_per_key(table: sa.Table, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with one row per primary key, the last one given for it."""
    key_columns = [c.name for c in table.primary_key.columns]
    by_key = {tuple(row[c] for c in key_columns): row for row in rows}
    return list(by_key.values())
