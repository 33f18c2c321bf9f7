"""SQLite: ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``.

SQLite has one writer at a time (the database file is locked from the first
write until commit), so reads that decide a write need no row lock; its JSON
functions and ``RETURNING`` let version state advance in one upsert. The
statements themselves are the base dialect's.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.dialects.base import Dialect, last_position
from replicator.values import Kind


class SQLiteDialect(Dialect):
    name = "sqlite"

    as_given = Dialect.as_given - {Decimal, uuid.UUID, dt.datetime, dt.time}

    def written(self, value: Any, kind: Kind = None) -> Any:
        # sqlite3 binds neither decimals, UUIDs nor times. A NUMERIC column
        # takes a decimal's text as the number (SQLAlchemy binds a float: the
        # same REAL); a UUID goes as SQLAlchemy's Uuid keeps it, 32 hex
        # digits; dates and times as SQLAlchemy writes them (microseconds
        # always), so that their text sorts and compares as the app's own.
        if isinstance(value, Decimal):
            return str(value)
        if isinstance(value, uuid.UUID):
            return value.hex
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            return value.strftime("%Y-%m-%d %H:%M:%S.%f")
        if isinstance(value, dt.time) and value.tzinfo is None:
            return value.strftime("%H:%M:%S.%f")
        return super().written(value, kind)

    def rounded(self, scale: int) -> Callable[[Any], Any]:
        # NUMERIC is stored as a float; SQLAlchemy formats it to the scale.
        return lambda value: None if value is None else Decimal(f"{float(value):.{scale}f}")

    @contextmanager
    def snapshot(self, engine: sa.Engine) -> Iterator[tuple[Connection, int]]:
        # The sqlite3 module begins transactions only before writes: begin
        # explicitly, so every read sees the same state (writers wait until
        # the snapshot ends, unless the database is in WAL mode).
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN")
            try:
                yield conn, last_position(conn)
            finally:
                conn.rollback()

    def enforce_foreign_keys(self, engine: sa.Engine) -> None:
        # SQLite checks foreign keys only on connections that ask, and the
        # request is ignored inside a transaction: hence at connect. Without
        # it a child whose parent another node deleted would be kept.
        if not sa.event.contains(engine, "connect", _foreign_keys_on):
            sa.event.listen(engine, "connect", _foreign_keys_on)

    def exclude_writers(self, conn: Connection) -> None:
        # A pass's first statement, before the driver begins a transaction:
        # connections an app's pool opened before the node existed check
        # foreign keys too.
        conn.exec_driver_sql("PRAGMA foreign_keys = ON")


def _foreign_keys_on(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()
