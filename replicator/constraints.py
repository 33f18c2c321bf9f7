"""Why a target refused a row, in the app's terms: which unique value
another row holds, or which parent row is missing.

The database says only that a constraint failed, in its own words (and
MariaDB's upsert not even that, see ``dialects/mariadb.py: key_guard``).
When a replication pass parks an event the target refused, these checks
name the column, the value and the other row, so that a person can decide.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Connection

from replicator.dialects import Dialect
from replicator.dialects.base import TableShape
from replicator.parking import Reason


def explain(
    conn: Connection, dialect: Dialect, shape: TableShape, row: Mapping[str, Any]
) -> tuple[Reason, str] | None:
    """Why ``shape``'s table cannot hold ``row`` next to its other rows:
    ``(UNIQUE_VIOLATION, ...)`` when another row (another primary key) holds
    one of its unique values, ``(MISSING_PARENT, ...)`` when a row it refers
    to by a foreign key does not exist; None when neither is the case."""
    key = {c: row[c] for c in shape.key if c in row}
    for columns in shape.unique:
        values = [row.get(c) for c in columns]
        if any(v is None for v in values) or not all(c in row for c in columns):
            continue  # NULLs never clash
        for other in _rows(conn, dialect, shape.name, columns, values, shape.key):
            if other != tuple(key.get(c) for c in shape.key):
                held = ", ".join(f"{c} = {v!r}" for c, v in zip(columns, values, strict=True))
                owner = ", ".join(f"{c}={v!r}" for c, v in zip(shape.key, other, strict=True))
                return (
                    Reason.UNIQUE_VIOLATION,
                    f"{shape.name}: {held} is held by another row ({owner}), which was left "
                    "as it is",
                )
    for columns, parent, parent_columns in shape.parents:
        values = [row.get(c) for c in columns]
        if any(v is None for v in values) or not all(c in row for c in columns):
            continue
        if not _rows(conn, dialect, parent, parent_columns, values, parent_columns):
            refers = ", ".join(f"{c} = {v!r}" for c, v in zip(columns, values, strict=True))
            return (
                Reason.MISSING_PARENT,
                f"{shape.name}: {refers} refers to a row of {parent} "
                f"({', '.join(parent_columns)}) that does not exist here (deleted, or not "
                "arrived)",
            )
    return None


def _rows(
    conn: Connection,
    dialect: Dialect,
    table: str,
    columns: tuple[str, ...],
    values: list[Any],
    selected: tuple[str, ...],
) -> list[tuple[Any, ...]]:
    """``selected`` of the rows of ``table`` whose ``columns`` equal ``values``."""
    condition, params = dialect.where_in(conn, columns, [tuple(values)])
    quote = conn.dialect.identifier_preparer.quote
    names = ", ".join(quote(c) for c in selected)
    return [
        tuple(r)
        for r in conn.exec_driver_sql(
            f"SELECT {names} FROM {quote(table)} WHERE {condition}", params
        ).all()
    ]
