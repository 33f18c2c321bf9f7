"""MariaDB (10.5 or later, for ``INSERT ... RETURNING``) through pymysql.

pymysql escapes every bound value in Python, so batches go as multi-row
statements with batch-wide values written in once (see the base dialect).
InnoDB reads a snapshot unless asked to lock, hence ``FOR UPDATE`` where a
read decides a write; version state instead advances inside the upsert,
where a duplicate primary key locks only its own index record (a locking
read of absent keys would take gap locks and deadlock concurrent inserts).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from replicator.dialects.base import Dialect


class MariaDBDialect(Dialect):
    name = "mariadb"
    on_conflict = "ON DUPLICATE KEY UPDATE"
    incoming = "VALUES({})"
    json_set, json_get, greatest = "JSON_SET", "JSON_VALUE", "GREATEST"

    def stored(self, column: sa.Column) -> Callable[[Any], Any] | None:
        # DATETIME and TIME keep `fsp` fractional digits (none by default)
        # and truncate the rest.
        if isinstance(column.type, sa.DateTime | sa.Time):
            unit = 10 ** (6 - (getattr(column.type, "fsp", None) or 0))
            if unit == 1:
                return None

            def truncated(value: Any) -> Any:
                if isinstance(value, dt.datetime | dt.time):
                    return value.replace(microsecond=value.microsecond // unit * unit)
                return value

            return truncated
        return super().stored(column)

    def json_member(self, name_sql: str) -> str:
        return f"""CONCAT('$."', {name_sql}, '"')"""

    def lock_rows(self, select: sa.Select) -> sa.Select:
        # A locking read sees the latest committed row, not the transaction's
        # snapshot.
        return select.with_for_update()
