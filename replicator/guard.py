"""What a device may write through the sync gateway: every pushed event
checked against the device's token before the server applies anything.

A device is trusted for nothing but its token's claims, so an event it
pushes is refused (*forbidden*, see :mod:`replicator.devices`) unless all
of these hold:

* **It is well formed for the server's table.** An app table (never one of
  the replicator's own), not read-only for devices; the event's table and
  row key are the ones it was sent under; its key names exactly the
  table's key columns, with values of their kinds; its row and its
  previous values name only the table's columns, and its row's key is its
  key. (A malformed event would otherwise be held for a person, and hold
  every user's later events of the table with it.)
* **It is the device's own** (its origin is the token's device).
* **It stays in the scope.** Its row after the change, and the values it
  says the row had, are in the token's scope; and so is the row as the
  *server* holds it, found the way the database finds it (a key that
  differs only by case or trailing spaces is the same row on MariaDB), so
  a forged "before" cannot take over or delete another user's row.
* **It counts no change it cannot know of.** Its version counts no more
  changes by another node than the server knows of for the row (a device
  learns of others' changes only from the server); an inflated count
  would make its change win, and theirs be skipped, without a conflict.
* **Its delete takes nothing of anybody else's.** A delete is refused while
  rows outside the scope refer to the row (a cascade, or the replicator's
  own orphan sweep, would remove them).

Scope values are compared as :class:`Claimed` text, exactly (no case or
accent folding), and a UUID by its value whichever way it is written.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator import versions
from replicator.dialects.base import TableShape
from replicator.events import Operation, row_key
from replicator.node import Node
from replicator.outbox import Entry
from replicator.tables import app_table_names, is_replicator_table


class Claimed(str):
    """A scope value from a token (always text), equal to a column's value
    that reads the same: ``Claimed("42") == 42``, and a UUID whether it is
    written with hyphens or as 32 hex digits (SQLite keeps the latter)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other is None:
            return False
        if isinstance(other, uuid.UUID):
            return _uuid_hex(self) == other.hex
        text = other if isinstance(other, str) else str(other)
        if str.__eq__(self, text):
            return True
        mine = _uuid_hex(self)
        return mine is not None and mine == _uuid_hex(text)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


def _uuid_hex(text: str) -> str | None:
    if len(text) not in (32, 36):
        return None
    try:
        return uuid.UUID(text).hex
    except ValueError:
        return None


def narrowed(scope: Mapping[str, Claimed], columns: Collection[str]) -> dict[str, Claimed]:
    """The part of ``scope`` a table with ``columns`` has. A table with some
    of a scope's columns (``tenant`` of ``tenant`` and ``user``) is cut by
    those: it is not a table without the scope, carried whole."""
    return {column: value for column, value in scope.items() if column in columns}


def in_scope(row: Mapping[str, Any], scope: Mapping[str, Claimed]) -> bool:
    """Whether ``row`` (as events carry it, or as the database returns it)
    has every column of ``scope`` at its value."""
    return all(column in row and value == row[column] for column, value in scope.items())


def forbidden(
    conn: Connection,
    server: Node,
    device: str,
    scope: Mapping[str, Claimed],
    entries: list[Entry],
    *,
    read_only: Collection[str] = (),
    unscoped: Mapping[str, str] | None = None,
) -> dict[int, str]:
    """Why each of these pushed entries is forbidden to ``device`` with
    ``scope`` (empty: every row), by position; entries it may write are
    absent. ``read_only`` tables devices may not write; ``unscoped`` says
    whether a table without the scope's columns is carried to a scoped
    device (``"all"``, the default) or not (``"none"``). Undecodable
    entries are left to the pass (it parks them as corrupt). Reads the
    server's rows in ``conn``."""
    unscoped = unscoped or {}
    why: dict[int, str] = {}
    looked_up: dict[str, list[Entry]] = {}  # table -> entries to check against the server
    for entry in entries:
        event = entry.event
        if event is None:
            continue
        table = event.table
        shape = _shape(conn, server, table)
        problem = _malformed(entry, device, shape, read_only)
        if problem is not None and (shape is None or problem.startswith(_NO_COLUMN)):
            # The table may have been made or changed since it was looked at
            # (a gateway runs for long): look again.
            server.forget_shapes()
            shape = _shape(conn, server, table)
            problem = _malformed(entry, device, shape, read_only)
        if problem is None and scope and shape is not None:
            table_scope = narrowed(scope, shape.columns)
            if not table_scope:
                if unscoped.get(table, "all") == "none":
                    problem = f"table {table} is not carried to scoped devices"
            else:
                problem = _outside(event, table_scope)
        if problem is not None:
            why[entry.position] = problem
        elif scope:
            looked_up.setdefault(table, []).append(entry)
    for table, found in looked_up.items():
        shape = server.shape(conn, table)
        assert shape is not None
        why.update(_against_server(conn, server, shape, scope, found))
    why.update(_beyond_known(conn, server, device, [e for e in entries if e.position not in why]))
    if why:
        # The later events of a row refused above build on what was
        # refused: they are refused too.
        refused = {(e.table, e.row_key) for e in entries if e.position in why}
        for entry in entries:
            if (entry.table, entry.row_key) in refused and entry.position not in why:
                why[entry.position] = "an earlier event of the row was forbidden"
    return why


#: How :func:`_malformed` starts to say an event names a column the table lacks.
_NO_COLUMN = "the table has no column"


def _shape(conn: Connection, server: Node, table: str) -> TableShape | None:
    """The server's app table ``table`` (None: none, or the replicator's)."""
    return None if is_replicator_table(table) else server.shape(conn, table)


def _malformed(
    entry: Entry, device: str, shape: TableShape | None, read_only: Collection[str]
) -> str | None:
    """Why ``entry`` is not an event ``device`` may send at all (None: it is)."""
    event = entry.event
    assert event is not None
    table = event.table
    if event.origin != device:
        return f"the event was made by {event.origin!r}, not by this device"
    if table != entry.table:
        return "the event's table is not the one it was sent under"
    if is_replicator_table(table) or shape is None:
        return f"the server has no app table {table}"
    if table in read_only:
        return f"table {table} is read-only for devices"
    if tuple(event.key) != shape.key:
        return f"its key names {list(event.key)}, not the table's key {list(shape.key)}"
    for column, value in event.key.items():
        kind = shape.kind(column)
        wrong = value is None or (
            (not isinstance(value, int) or isinstance(value, bool))
            if kind is int
            else (kind is str and not isinstance(value, str))
        )
        if wrong:
            return f"its key's {column} is {value!r}, not a value of the column's type"
    if entry.row_key != row_key(list(event.key.values())):
        return "the event's row key is not the one it was sent under"
    if (event.row is None) != (event.op is Operation.DELETE):
        return f"an {event.op} {'without' if event.row is None else 'with'} a row"
    columns = set(shape.columns)
    unknown = set(event.changed) - columns
    if event.row is not None:
        unknown |= set(event.row) - columns
        if any(event.row.get(c) != v for c, v in event.key.items()):
            return "its row's key is not its key"
    if unknown:
        return f"{_NO_COLUMN} {', '.join(sorted(unknown))}"
    return None


def _beyond_known(
    conn: Connection, server: Node, device: str, entries: list[Entry]
) -> dict[int, str]:
    """The entries whose version counts more changes by another node than
    the server knows of for the row: a device can only have learnt of
    others' changes from the server, and an inflated count would make its
    change win over theirs, and theirs be skipped, without a conflict."""
    keys: dict[str, set[str]] = {}
    for entry in entries:
        if entry.event is not None:
            keys.setdefault(entry.table, set()).add(entry.row_key)
    if not keys:
        return {}
    known = versions.load_many(conn, server.dialect, keys)
    why = {}
    for entry in entries:
        if entry.event is None:
            continue
        stored = known.get(entry.table, {}).get(entry.row_key)
        have = stored.version if stored is not None else {}
        for node, count in entry.event.version.items():
            if node != device and count > have.get(node, 0):
                why[entry.position] = (
                    f"its version counts {count} changes by {node}; the server knows of "
                    f"{have.get(node, 0)}"
                )
                break
    return why


def _outside(event: Any, scope: Mapping[str, Claimed]) -> str | None:
    """Why an event's own values put it outside ``scope`` (None: they do not)."""
    if event.op is not Operation.DELETE:
        row = event.row or {}
        for column, value in scope.items():
            if column not in row or value != row[column]:
                return f"its row has {column} = {row.get(column)!r}, outside the device's scope"
    for column, value in scope.items():
        if column in event.changed and value != event.changed[column]:
            return f"its row had {column} = {event.changed[column]!r}, outside the device's scope"
    return None


def _against_server(
    conn: Connection,
    server: Node,
    shape: TableShape,
    scope: Mapping[str, Claimed],
    entries: list[Entry],
) -> dict[int, str]:
    """The entries of ``shape``'s table refused by the rows the server
    holds for their keys: a row outside the scope (the table's, when it has
    the scope's columns), or rows outside it that refer to a row deleted."""
    why: dict[int, str] = {}
    table_scope = narrowed(scope, shape.columns)
    by_key: dict[tuple, list[Entry]] = {}
    for entry in entries:
        assert entry.event is not None
        by_key.setdefault(_loose(entry.event.key.values()), []).append(entry)
    for raw in _rows_with_keys(conn, server, shape, [e[0].event.key for e in by_key.values()]):
        matched = by_key.get(_loose(raw[c] for c in shape.key))
        # A row the database matched that no key matches even loosely (a
        # collation folding more than case and spaces): refuse them all.
        hit = matched if matched is not None else entries
        if table_scope and not in_scope(raw, table_scope):
            for entry in hit:
                why[entry.position] = "the server's row is outside the device's scope"
            continue
        for entry in hit:
            if entry.event.op is Operation.DELETE and entry.position not in why:
                referring = _referred_by_others(conn, server, shape, raw, scope)
                if referring is not None:
                    why[entry.position] = referring
    return why


def _loose(values: Iterator[Any] | Any) -> tuple:
    """A key as a database might compare it: text folded in case and
    accents and without trailing spaces (MariaDB's default collations),
    a UUID as its hex digits."""
    found = []
    for value in values:
        if isinstance(value, uuid.UUID):
            value = value.hex
        if isinstance(value, str):
            value = unicodedata.normalize("NFKD", value)
            value = "".join(c for c in value if not unicodedata.combining(c)).casefold().rstrip()
        found.append(value)
    return tuple(found)


def _rows_with_keys(
    conn: Connection, server: Node, shape: TableShape, keys: list[Mapping[str, Any]]
) -> Iterator[Mapping[str, Any]]:
    """The server's rows of ``shape``'s table with these keys, as the
    database matches them (raw values)."""
    dialect = server.dialect
    quoted = conn.dialect.identifier_preparer.quote(shape.name)
    for start in range(0, len(keys), dialect.in_chunk):
        chunk = keys[start : start + dialect.in_chunk]
        condition, params = dialect.where_in(
            conn, shape.key, [dialect.written_key(k.values()) for k in chunk]
        )
        yield from conn.exec_driver_sql(
            f"SELECT * FROM {quoted} WHERE {condition}", params
        ).mappings()


#: Rows read to see whether a deleted row is referred to from outside the scope.
_REFERRING_LIMIT = 1000


def _referred_by_others(
    conn: Connection,
    server: Node,
    shape: TableShape,
    raw: Mapping[str, Any],
    scope: Mapping[str, Claimed],
) -> str | None:
    """Why deleting the server's row ``raw`` of ``shape``'s table would take
    rows that are not the device's (None: it would not)."""
    for name in app_table_names(conn):
        child = server.shape(conn, name)
        if child is None:
            continue
        for columns, parent, parent_columns in child.parents:
            if parent != shape.name or any(raw.get(c) is None for c in parent_columns):
                continue
            child_scope = narrowed(scope, child.columns)
            bare = sa.table(name, *(sa.column(c) for c in (*columns, *child_scope)))
            select = (
                sa.select(*(bare.c[c] for c in child_scope))
                if child_scope
                else sa.select(sa.literal(1))
            )
            select = select.select_from(bare).where(
                *(bare.c[c] == raw[p] for c, p in zip(columns, parent_columns, strict=True))
            )
            for row in conn.execute(select.limit(_REFERRING_LIMIT)).mappings():
                if not child_scope or not in_scope(row, child_scope):
                    return f"rows of {name} that are not the device's refer to this row"
    return None
