"""The outbox: every node's append-only log of change events.

Capture appends to it in the same transaction as the change itself; a
replication pass reads it after a checkpoint. One row per event, positioned by
an auto-incrementing ``position``; the event travels msgpack-encoded in
``payload``, with the fields that queries filter on copied into columns.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.dialects import Dialect
from replicator.events import ChangeEvent, decode_event, decode_or_none, encode_event
from replicator.tables import outbox

_COLUMNS = ("origin", "table_name", "row_key", "hlc", "payload")


def append(conn: Connection, dialect: Dialect, events: Iterable[tuple[str, ChangeEvent]]) -> None:
    """Append events (each paired with its row key) in one batched statement.

    The caller's transaction decides: the events commit or roll back with it.
    Does nothing for an empty batch.
    """
    append_encoded(
        conn, dialect, [(e.origin, e.table, key, e.hlc, encode_event(e)) for key, e in events]
    )


def append_encoded(
    conn: Connection, dialect: Dialect, rows: Sequence[tuple[str, str, str, int, bytes]]
) -> None:
    """Append already encoded events: ``(origin, table, row key, hlc, payload)``.

    The replication engine forwards events it applied this way, unchanged.
    """
    if not rows:
        return
    dialect.guard_append(conn)
    # Capture appends one node's changes, often to one table.
    dialect.insert_rows(conn, outbox, _COLUMNS, rows, hoist=("origin", "table_name"))


def head(conn: Connection) -> int:
    """The largest position in the outbox; 0 when the outbox is empty."""
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(outbox.c.position), 0))).scalar_one()


def last_key(conn: Connection, table: str) -> dict | None:
    """The key of the latest decodable event of ``table`` in the log, as
    events carry keys of that table (None when the log holds none)."""
    select = (
        sa.select(outbox.c.payload)
        .where(outbox.c.table_name == table)
        .order_by(outbox.c.position.desc())
        .limit(20)  # a few, in case the latest cannot be decoded
    )
    for payload in conn.execute(select).scalars():
        event = decode_or_none(payload)
        if event is not None:
            return event.key
    return None


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


class Entry(NamedTuple):
    """One event as read for replication: where it is, and the event.

    ``event`` is None when the payload cannot be decoded: the replication
    engine parks such an entry (with ``table`` and ``row_key`` from the
    outbox's columns) instead of stopping at it.
    """

    position: int
    table: str
    row_key: str
    payload: bytes
    event: ChangeEvent | None


def read_batch(
    conn: Connection,
    *,
    after: int,
    upto: int,
    limit: int,
    origin: str | None = None,
    exclude_origin: str | None = None,
    tables: Collection[str] | None = None,
    exclude_tables: Collection[str] = (),
) -> tuple[list[Entry], int]:
    """The next batch for a replication pass, and how far it reaches.

    Events with ``after < position <= upto`` (``upto`` a horizon, see
    :meth:`Dialect.horizon`), in position order: at most ``limit``, except
    that a batch never ends inside a source transaction (it takes the rest
    of the last event's transaction). Only events made by ``origin`` are
    read when it is given; events made by ``exclude_origin`` (the target
    itself), and those of tables not in ``tables`` or in
    ``exclude_tables``, are left out. The second value is the position the
    reader has now seen everything up to: ``upto`` when the batch is short,
    else the last event's position. ``([], upto)`` when nothing is left.
    """
    c = outbox.c
    select = sa.select(c.position, c.table_name, c.row_key, c.payload).order_by(c.position)
    select = _filtered(select, origin, exclude_origin, tables, exclude_tables)

    def fetch(start: int, count: int) -> list[Any]:
        return conn.execute(select.where(c.position > start, c.position <= upto).limit(count)).all()

    entries = [
        Entry(p, t, key, payload, decode_or_none(payload))
        for p, t, key, payload in fetch(after, limit)
    ]
    if len(entries) < limit:
        return entries, upto
    if entries[-1].event is None:  # no transaction to complete
        return entries, entries[-1].position
    txid = entries[-1].event.txid
    while True:  # the rest of the last transaction
        more = fetch(entries[-1].position, _TAIL)
        # Decoded one by one up to the first event of another transaction:
        # the next batch reads (and decodes) the rest again.
        for p, t, key, payload in more:
            event = decode_or_none(payload)
            if event is None or event.txid != txid:
                return entries, entries[-1].position
            entries.append(Entry(p, t, key, payload, event))
        if len(more) < _TAIL:
            return entries, entries[-1].position


# Events read at a time when completing a batch's last transaction.
_TAIL = 200


def pending(
    conn: Connection,
    *,
    after: int,
    origin: str | None = None,
    exclude_origin: str | None = None,
    tables: Collection[str] | None = None,
    exclude_tables: Collection[str] = (),
) -> tuple[int, int | None]:
    """How many committed events after ``after`` a pass with these filters
    (as for :func:`read_batch`) has still to read, and the timestamp of
    the oldest of them; ``(0, None)`` when none."""
    c = outbox.c
    select = sa.select(sa.func.count(), sa.func.min(c.hlc)).where(c.position > after)
    count, oldest = conn.execute(
        _filtered(select, origin, exclude_origin, tables, exclude_tables)
    ).one()
    return count, oldest


def _filtered(
    select: sa.Select,
    origin: str | None,
    exclude_origin: str | None,
    tables: Collection[str] | None,
    exclude_tables: Collection[str],
) -> sa.Select:
    c = outbox.c
    if origin is not None:
        select = select.where(c.origin == origin)
    if exclude_origin is not None:
        select = select.where(c.origin != exclude_origin)
    if tables is not None:
        select = select.where(c.table_name.in_(sorted(tables)))
    if exclude_tables:
        select = select.where(c.table_name.not_in(sorted(exclude_tables)))
    return select
