"""Releasing held events: a table's flood, applied in order once it can be.

Events the target could not take for a structural reason are held, every
event of their table, in one review item (see :mod:`replicator.parking`).
Once the target's table can take the first of them (the table or column
was added, the key changed back), :func:`release` applies them with the
ordinary batch path (versions compared, conflicts settled or parked,
forwarded by a server), in the order they came, one target transaction
per batch; each batch's events leave the item in the transaction that
applies them, so a crash between batches applies none twice and loses
none. An event that still cannot be taken (another column missing, say)
is held again, in a new item that every later event of its table joins.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from sqlalchemy.engine import Connection

from replicator import parking
from replicator.apply import Counts, reject, shape_problem
from replicator.errors import RowRefusedError, describe
from replicator.events import decode_or_none, row_key
from replicator.node import Node
from replicator.outbox import Entry
from replicator.parking import Reason

#: Applies a batch of released entries on the node's connection (in its
#: transaction), as a pass applies what it reads: ``apply(conn, entries,
#: careful, releasing)``, ``releasing`` the held item's id (see
#: :func:`replicator.apply.apply_batch`).
Apply = Callable[[Connection, list[Entry], bool, int | None], Counts]


def blocked(conn: Connection, node: Node, item: parking.Held) -> str | None:
    """Why the target still cannot take the held item's first event (the
    detail a pass would park it with), or None once it can."""
    first = parking.held_events(conn, item.id, limit=1)
    event = decode_or_none(first[0][1]) if first else None
    if event is None:
        return None  # nothing left, or undecodable: applying parks it as corrupt
    shape = node.shape(conn, item.table)
    if shape is None:
        return f"table {item.table!r} does not exist on {node.name}"
    columns = tuple(event.row) if event.row is not None else ()
    problem = shape_problem(shape, tuple(event.key), columns)
    return None if problem is None else problem[1]


def release(
    node: Node,
    item: parking.Held,
    apply: Apply,
    *,
    batch_size: int,
    now: Callable[[], dt.datetime],
    by: str = "replicator",
) -> Counts:
    """Apply every event ``item`` holds on ``node``, in order, with
    ``apply``; then the item is closed as resolved ``by``. What the batches
    did (all zero when the item holds nothing)."""
    total = Counts()
    note = f"released: its events were applied in order once {item.table!r} could take them"
    closed = False
    while not closed:
        entries: list[Entry] = []
        try:
            with node.begin() as conn:
                node.dialect.exclude_writers(conn)
                held = parking.held_events(conn, item.id, limit=batch_size)
                if not held:
                    parking.let_go(conn, item.id, -1, now(), by=by, note=note)
                    break
                entries = [_entry(item.table, position, payload) for position, payload in held]
                counts = apply(conn, entries, False, item.id)
                closed = parking.let_go(conn, item.id, held[-1][0], now(), by=by, note=note)
            total.add(counts)
        except RowRefusedError:
            # Rolled back: the target refused a row; which one, only the
            # database knows. One event per transaction finds it.
            if not entries:
                raise
            closed = _singly(node, item, entries, apply, now, by, note, total)
    return total


def _singly(
    node: Node,
    item: parking.Held,
    entries: list[Entry],
    apply: Apply,
    now: Callable[[], dt.datetime],
    by: str,
    note: str,
    total: Counts,
) -> bool:
    """Apply ``entries`` one per transaction into ``total``, parking those
    the target refuses (as a pass does with the rows of a batch it
    refused); whether the item closed."""
    closed = False
    for entry in entries:
        try:
            with node.begin() as conn:
                node.dialect.exclude_writers(conn)
                counts = apply(conn, [entry], True, item.id)
                closed = parking.let_go(conn, item.id, entry.position, now(), by=by, note=note)
            total.add(counts)
        except RowRefusedError as e:
            with node.begin() as conn:
                node.dialect.exclude_writers(conn)
                total.add(
                    reject(
                        conn,
                        node.dialect,
                        entry,
                        Reason(e.reason),
                        f"the target refused the row: {describe(e)}",
                        shape_of=lambda table, conn=conn: node.shape(conn, table),
                        now=now(),
                    )
                )
                closed = parking.let_go(conn, item.id, entry.position, now(), by=by, note=note)
    return closed


def _entry(table: str, position: int, payload: bytes) -> Entry:
    event = decode_or_none(payload)
    key = row_key(tuple(event.key.values())) if event is not None else parking.HELD_KEY
    return Entry(position, table, key, payload, event)
