"""Applying a batch of change events to a target node, in its transaction.

Per table, one look-up of the stored row versions decides each event:

* the event's version descends from the target's (or the target has none):
  the change is applied;
* the target has this version already, or a newer one: skipped (this is
  what makes re-delivery a no-op);
* neither descends from the other: a conflict, settled by
  :func:`replicator.conflicts.latest_timestamp`; the row's version becomes
  the merge of both, so the settled row never conflicts with either again.

The batch is then written with one bulk statement per table and kind
(deletes, upserts by column set, version state) through the dialect. Writes
go through Core on plain tables, which capture ignores: an applied event is
never captured again (no echo). A server forwards every event it applied
or settled to its outbox, unchanged, so other nodes receive it with its
original origin and version.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, fields

import msgspec
from sqlalchemy.engine import Connection

from replicator import conflicts, outbox, versions
from replicator.dialects import Dialect
from replicator.dialects.base import TableShape
from replicator.errors import ApplyError
from replicator.events import Operation
from replicator.outbox import Entry
from replicator.tables import row_versions
from replicator.versions import Order, RowVersion

_VERSION_COLUMNS = ("table_name", "row_key", "version", "hlc", "origin", "deleted")
_encode_json = msgspec.json.Encoder().encode


@dataclass
class Counts:
    """What happened to the events of a batch or a pass."""

    read: int = 0
    applied: int = 0
    skipped: int = 0
    conflicts: int = 0
    parked: int = 0
    failed: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def apply_batch(
    conn: Connection,
    dialect: Dialect,
    entries: list[Entry],
    *,
    shape_of: Callable[[str], TableShape | None],
    forward: bool,
) -> Counts:
    """Apply ``entries`` (in position order) on ``conn``'s node.

    ``shape_of`` gives a target table's columns and key (None if it does not
    exist). With ``forward``, the events applied or settled are appended to
    this node's outbox as they are. Raises :class:`ApplyError` for an event
    the target cannot take (missing table or column); the caller's
    transaction then rolls back as a whole. Nothing happens for no entries.
    """
    counts = Counts(read=len(entries))
    by_table: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        by_table.setdefault(entry.event.table, []).append(i)
    shapes = {}
    for table in by_table:
        shapes[table] = shape_of(table)
        if shapes[table] is None:
            raise ApplyError(f"table {table!r} does not exist on the target")
    current = versions.load_many(
        conn, dialect, {t: {entries[i].row_key for i in ix} for t, ix in by_table.items()}
    )
    kept = [False] * len(entries)
    changed_versions: dict[tuple[str, str], RowVersion] = {}
    for table, indexes in by_table.items():
        decided = _decide(
            [entries[i] for i in indexes], current.get(table, {}), counts, kept, indexes
        )
        _write_rows(conn, dialect, shapes[table], *decided[:2])
        changed_versions.update(((table, key), v) for key, v in decided[2].items())
    dialect.upsert_rows(
        conn,
        row_versions,
        _VERSION_COLUMNS,
        [
            (table, key, _encode_json(v.version).decode(), v.hlc, v.origin, v.deleted)
            for (table, key), v in changed_versions.items()
        ],
        hoist=("table_name", "origin", "deleted"),
    )
    if forward:
        outbox.append_encoded(
            conn,
            dialect,
            [
                (e.event.origin, e.event.table, e.row_key, e.event.hlc, e.payload)
                for e, keep in zip(entries, kept, strict=True)
                if keep
            ],
        )
    return counts


def _decide(
    entries: list[Entry],
    current: dict[str, RowVersion],
    counts: Counts,
    kept: list[bool],
    indexes: list[int],
) -> tuple[dict[str, dict], dict[str, dict], dict[str, RowVersion]]:
    """One table's events against its rows' versions: the rows to upsert and
    to delete (the last effect per key), and the versions that changed."""
    upserts: dict[str, dict] = {}
    deletes: dict[str, dict] = {}
    changed: dict[str, RowVersion] = {}
    for entry, index in zip(entries, indexes, strict=True):
        event, key = entry.event, entry.row_key
        seen = current.get(key)
        order = Order.AFTER if seen is None else versions.compare(event.version, seen.version)
        if order is Order.EQUAL or order is Order.BEFORE:
            counts.skipped += 1
            continue
        kept[index] = True
        version = event.version
        if order is Order.CONCURRENT:
            counts.conflicts += 1
            version = versions.merge(seen.version, event.version)
            if not conflicts.latest_timestamp((event.hlc, event.origin), (seen.hlc, seen.origin)):
                # The target's row stays; its version now covers both sides.
                current[key] = changed[key] = RowVersion(
                    version, seen.hlc, seen.origin, seen.deleted
                )
                continue
        deleted = event.op is Operation.DELETE
        if deleted:
            deletes[key] = event.key
            upserts.pop(key, None)
        else:
            upserts[key] = event.row
            deletes.pop(key, None)
        current[key] = changed[key] = RowVersion(version, event.hlc, event.origin, deleted)
        counts.applied += 1
    return upserts, deletes, changed


def _write_rows(
    conn: Connection,
    dialect: Dialect,
    shape: TableShape,
    upserts: dict[str, dict],
    deletes: dict[str, dict],
) -> None:
    table = shape.table()
    if deletes:
        keys = list(deletes.values())
        _check_key(shape, tuple(keys[0]))
        dialect.delete_rows(conn, table, shape.key, [tuple(k.values()) for k in keys])
    by_columns: dict[tuple[str, ...], list[tuple]] = {}
    for row in upserts.values():
        columns = tuple(row)
        by_columns.setdefault(columns, []).append(tuple(_plain(v) for v in row.values()))
    for columns, rows in by_columns.items():
        _check_columns(shape, columns)
        dialect.upsert_rows(conn, table, columns, rows)


def _plain(value: object) -> object:
    """A value as the database driver takes it (JSON documents as text)."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return value


def _check_key(shape: TableShape, key: tuple[str, ...]) -> None:
    if key != shape.key:
        raise ApplyError(
            f"table {shape.name!r}: events are keyed by {', '.join(key)} but the target's "
            f"primary key is ({', '.join(shape.key)})"
        )


def _check_columns(shape: TableShape, columns: tuple[str, ...]) -> None:
    unknown = [c for c in columns if c not in shape.columns]
    if unknown:
        raise ApplyError(
            f"table {shape.name!r}: the target has no column {', '.join(map(repr, unknown))}"
        )
    missing = [c for c in shape.key if c not in columns]
    if missing:
        raise ApplyError(f"table {shape.name!r}: events lack key column(s) {', '.join(missing)}")
