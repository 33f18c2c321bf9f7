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
from replicator.events import decode_or_none
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
    detail a pass would hold it with), or None once it can."""
    first = parking.held_events(conn, item.id, limit=1)
    _, problem = _takeable(conn, node, item.table, first)
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
    """Apply the events ``item`` holds on ``node``, in order, with
    ``apply``, up to the first one the target still cannot take (it stays
    first in the item, whose reason and detail then say why); when none is
    left, the item is closed as resolved ``by``. What the batches did (all
    zero when the item holds nothing, or was decided meanwhile: a batch
    finding it closed applies nothing)."""
    total = Counts()
    note = f"released: its events were applied in order once {item.table!r} could take them"
    while True:
        entries: list[Entry] = []
        problem: tuple[Reason, str] | None = None
        try:
            with node.begin() as conn:
                node.dialect.exclude_writers(conn)
                held = parking.held_events(conn, item.id, limit=batch_size)
                entries, problem = _takeable(conn, node, item.table, held)
                counts = apply(conn, entries, False, item.id) if entries else Counts()
                upto = entries[-1].position if entries else -1
                closed = parking.let_go(
                    conn, item.id, upto, now(), by=by, note=note, reason=problem
                )
            total.add(counts)
        except parking.ItemClosed:
            return total  # decided meanwhile: this batch rolled back
        except RowRefusedError:
            # Rolled back: the target refused a row; which one, only the
            # database knows. One event per transaction finds it.
            if not entries:
                raise
            closed = _singly(node, item, entries, apply, now, by, note, problem, total)
        if closed or problem is not None or not entries:
            return total


def _takeable(
    conn: Connection, node: Node, table: str, held: list[parking.HeldEvent]
) -> tuple[list[Entry], tuple[Reason, str] | None]:
    """The first of ``held`` that the target can take, as entries; and why
    it cannot take the next one (None: it can take them all). An
    undecodable event is taken: applying it parks it as corrupt."""
    shape = node.shape(conn, table)
    entries: list[Entry] = []
    for position, key, payload in held:
        event = decode_or_none(payload)
        if event is not None:
            if shape is None:
                return entries, (Reason.MISSING_TABLE, f"table {table!r} does not exist")
            columns = tuple(event.row) if event.row is not None else ()
            problem = shape_problem(shape, tuple(event.key), columns)
            if problem is not None:
                return entries, problem
        entries.append(Entry(position, table, key, payload, event))
    return entries, None


def _singly(
    node: Node,
    item: parking.Held,
    entries: list[Entry],
    apply: Apply,
    now: Callable[[], dt.datetime],
    by: str,
    note: str,
    problem: tuple[Reason, str] | None,
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
                closed = parking.let_go(
                    conn, item.id, entry.position, now(), by=by, note=note, reason=problem
                )
            total.add(counts)
        except parking.ItemClosed:
            return True
        except RowRefusedError as e:
            try:
                with node.begin() as conn:
                    node.dialect.exclude_writers(conn)
                    counts = reject(
                        conn,
                        node.dialect,
                        entry,
                        Reason(e.reason),
                        f"the target refused the row: {describe(e)}",
                        shape_of=lambda table, conn=conn: node.shape(conn, table),
                        now=now(),
                    )
                    closed = parking.let_go(
                        conn, item.id, entry.position, now(), by=by, note=note, reason=problem
                    )
                total.add(counts)
            except parking.ItemClosed:
                return True
    return closed
