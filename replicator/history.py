"""A row's history, read from a node's outbox: who changed what, when; and
the row as it was at a moment.

The server's outbox holds every node's changes (and its settlements), so
its history of a row is the whole story; a local's holds its own changes,
and also those it applied while a vector sink follows it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator import outbox
from replicator.clock import from_datetime, to_datetime
from replicator.errors import ConfigurationError
from replicator.events import ChangeEvent, Operation, row_key
from replicator.tables import app_table_names
from replicator.tables import outbox as outbox_table


class Change(msgspec.Struct, kw_only=True):
    """One change of a row, for people: ``changed`` maps each column to its
    ``[before, after]`` (before is None where unknown or for an insert)."""

    position: int
    event_id: str
    origin: str
    at: dt.datetime
    table: str
    key: dict[str, Any]
    op: str
    changed: dict[str, list[Any]]
    version: dict[str, int]


def key_text(key: str) -> str:
    """A row key as given on the command line, in canonical form.

    A JSON array is the key as stored (``'["u-42", "listening"]'``); a
    single JSON value (``5``) or bare text (``v-1``) is a one-column key.
    """
    try:
        value = json.loads(key)
    except ValueError:
        return row_key([key])
    return row_key(value if isinstance(value, list) else [value])


def changes(
    conn: Connection,
    *,
    table: str | None = None,
    key: str | None = None,
    last: int | None = None,
) -> Iterator[Change]:
    """The node's changes (of one table, of one row), oldest first, read as
    they are iterated; nothing when there are none. ``last`` keeps only the
    newest ``last`` of them (still oldest first).

    Raises :class:`ConfigurationError` when ``table`` is neither a table of
    the node nor named by any event in its log (a typo, most likely).
    """
    if table is not None:
        _check_table(conn, table)
    after = 0
    if last is not None:
        c = outbox_table.c
        select = sa.select(c.position).order_by(c.position.desc()).offset(last).limit(1)
        if table is not None:
            select = select.where(c.table_name == table)
        if key is not None:
            select = select.where(c.row_key == key)
        after = conn.execute(select).scalar() or 0
    # Not a generator itself: a bad table is refused when called, before
    # anything is printed.
    return (_change(p, e) for p, e in outbox.read(conn, after=after, table=table, key=key))


def count(conn: Connection, *, table: str | None = None, key: str | None = None) -> int:
    """How many changes :func:`changes` lists for the same arguments; 0 when none."""
    c = outbox_table.c
    select = sa.select(sa.func.count()).select_from(outbox_table)
    if table is not None:
        select = select.where(c.table_name == table)
    if key is not None:
        select = select.where(c.row_key == key)
    return conn.execute(select).scalar_one()


def _check_table(conn: Connection, table: str) -> None:
    if table in app_table_names(conn):
        return
    c = outbox_table.c
    logged = conn.execute(sa.select(c.position).where(c.table_name == table).limit(1)).first()
    if logged is None:
        known = ", ".join(app_table_names(conn)) or "none"
        raise ConfigurationError(
            f"no table {table!r} in the database or its log (its tables: {known})"
        )


def row_at(conn: Connection, table: str, key: str, moment: dt.datetime) -> dict[str, Any] | None:
    """The row as the node's log has it at ``moment`` (naive means UTC): the
    row after its last change made up to then; None if it did not exist."""
    limit = from_datetime(moment + dt.timedelta(milliseconds=1))
    row = None
    for _, event in outbox.read(conn, table=table, key=key):
        if event.hlc < limit:
            row = event.row
    return row


def _change(position: int, event: ChangeEvent) -> Change:
    if event.op is Operation.INSERT:
        changed = {c: [None, v] for c, v in (event.row or {}).items()}
    elif event.op is Operation.DELETE:
        changed = {c: [v, None] for c, v in event.changed.items()}
    else:
        changed = {c: [old, (event.row or {}).get(c)] for c, old in event.changed.items()}
    return Change(
        position=position,
        event_id=event.event_id,
        origin=event.origin,
        at=to_datetime(event.hlc),
        table=event.table,
        key=event.key,
        op=event.op.value,
        changed=changed,
        version=event.version,
    )
