"""The outbox: every node's append-only log of change events.

Capture appends to it in the same transaction as the change itself; a
replication pass reads it after a checkpoint. One row per event, positioned by
an auto-incrementing ``position``; the event travels msgpack-encoded in
``payload``, with the fields that queries filter on copied into columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.dialects import Dialect
from replicator.events import ChangeEvent, decode_event, encode_event
from replicator.tables import outbox

_COLUMNS = ("origin", "table_name", "row_key", "hlc", "payload")


def append(conn: Connection, dialect: Dialect, events: Iterable[tuple[str, ChangeEvent]]) -> None:
    """Append events (each paired with its row key) in one batched statement.

    The caller's transaction decides: the events commit or roll back with it.
    Does nothing for an empty batch.
    """
    rows = [(e.origin, e.table, key, e.hlc, encode_event(e)) for key, e in events]
    # Capture appends one node's changes, often to one table.
    dialect.insert_rows(conn, outbox, _COLUMNS, rows, hoist=("origin", "table_name"))


def head(conn: Connection) -> int:
    """The largest position in the outbox; 0 when the outbox is empty."""
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(outbox.c.position), 0))).scalar_one()


def read(
    conn: Connection,
    *,
    after: int = 0,
    limit: int | None = None,
    table: str | None = None,
    key: str | None = None,
) -> Iterator[tuple[int, ChangeEvent]]:
    """Committed events after position ``after``, in position order.

    Optionally only those of one ``table`` (and one row ``key`` in it). This
    is the plain listing (for ``log`` and inspection); nothing when empty.
    """
    c = outbox.c
    select = sa.select(c.position, c.payload).where(c.position > after).order_by(c.position)
    if table is not None:
        select = select.where(c.table_name == table)
    if key is not None:
        select = select.where(c.row_key == key)
    if limit is not None:
        select = select.limit(limit)
    for position, payload in conn.execute(select):
        yield position, decode_event(payload)
