"""Per-row causal versions: version vectors and the table that holds them.

A row's version maps each node to the number of changes that node has made
to the row. A node that changes a row increments its own entry of the row's
current vector, so the new vector *descends* from everything the node had
seen of the row. Two versions then compare exactly:

* ``a`` descends from ``b`` (every entry >=, one >): ``a`` saw ``b``;
  sequential edits, never a conflict;
* neither descends from the other: the edits were concurrent.

``replicator_row_versions`` keeps each row's current vector (deleted rows
keep theirs as a tombstone), updated in the same transaction as the row.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple

import msgspec
from sqlalchemy.engine import Connection

from replicator.dialects import Dialect, for_connection
from replicator.dialects.base import placeholders
from replicator.tables import row_versions

VersionVector = dict[str, int]


class Order(enum.Enum):
    EQUAL = "equal"
    BEFORE = "before"  # a happened before b: b descends from a
    AFTER = "after"  # a descends from b
    CONCURRENT = "concurrent"


def compare(a: Mapping[str, int], b: Mapping[str, int]) -> Order:
    """How version ``a`` relates to version ``b`` (missing entries are 0)."""
    a_ahead = b_ahead = False
    for node in a.keys() | b.keys():
        x, y = a.get(node, 0), b.get(node, 0)
        if x > y:
            a_ahead = True
        elif y > x:
            b_ahead = True
    if a_ahead and b_ahead:
        return Order.CONCURRENT
    if a_ahead:
        return Order.AFTER
    if b_ahead:
        return Order.BEFORE
    return Order.EQUAL


def increment(version: Mapping[str, int] | None, node: str) -> VersionVector:
    """The version of a change that ``node`` makes to a row at ``version``."""
    new = dict(version) if version else {}
    new[node] = new.get(node, 0) + 1
    return new


def merge(*versions: Mapping[str, int]) -> VersionVector:
    """The least version that descends from (or equals) all of ``versions``."""
    merged: VersionVector = {}
    for version in versions:
        for node, count in version.items():
            if count > merged.get(node, 0):
                merged[node] = count
    return merged


class RowVersion(msgspec.Struct, frozen=True, gc=False):
    """What a node knows about one of its rows' current version.

    Neither it nor :class:`~replicator.events.ChangeEvent` is tracked by the
    garbage collector (``gc=False``): a pass makes one per event, they never
    refer back to themselves, and collecting them cost about 9% of a pass."""

    version: VersionVector
    hlc: int
    origin: str
    deleted: bool


_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder(VersionVector).decode


def load(
    conn: Connection, table: str, keys: Collection[str], dialect: Dialect | None = None
) -> dict[str, RowVersion]:
    """The stored versions of ``table``'s rows with ``keys``; ``{}`` for none.

    Keys without a stored version (rows never captured or replicated) are
    absent from the result. A plain read: it sees this transaction's own
    writes, and otherwise its snapshot.
    """
    dialect = dialect or for_connection(conn)
    found: dict[str, RowVersion] = {}
    keys = list(keys)
    head = (
        "SELECT row_key, version, hlc, origin, deleted FROM replicator_row_versions "
        f"WHERE table_name = {placeholders(conn, 1)} AND "
    )
    for start in range(0, len(keys), dialect.in_chunk):
        condition, params = dialect.where_in(
            conn, ("row_key",), [(k,) for k in keys[start : start + dialect.in_chunk]]
        )
        for key, version, hlc, origin, deleted in conn.exec_driver_sql(
            head + condition, (table, *params)
        ).all():
            found[key] = RowVersion(_json_decode(version), hlc, origin, bool(deleted))
    return found


def load_many(
    conn: Connection, dialect: Dialect, keys: Mapping[str, Collection[str]]
) -> dict[str, dict[str, RowVersion]]:
    """:func:`load` for several tables at once: table -> key -> version.

    Columnar databases (DuckDB) look everything up in one statement, since
    each statement costs them milliseconds; the others per table.
    """
    if not dialect.columnar:
        return {table: load(conn, table, table_keys, dialect) for table, table_keys in keys.items()}
    pairs = [(table, key) for table, table_keys in keys.items() for key in table_keys]
    found: dict[str, dict[str, RowVersion]] = {table: {} for table in keys}
    if not pairs:
        return found
    condition, params = dialect.where_in(conn, ("table_name", "row_key"), pairs)
    for table, key, version, hlc, origin, deleted in conn.exec_driver_sql(
        "SELECT table_name, row_key, version, hlc, origin, deleted "
        f"FROM replicator_row_versions WHERE {condition}",
        params,
    ).all():
        found[table][key] = RowVersion(_json_decode(version), hlc, origin, bool(deleted))
    return found


_COLUMNS = ("table_name", "row_key", "version", "hlc", "origin", "deleted")


def store(
    conn: Connection,
    dialect: Dialect,
    rows: Mapping[tuple[str, str], RowVersion],
    absent: Collection[tuple[str, str]] = (),
) -> None:
    """Write rows' versions as given (``(table, row key) -> version``),
    replacing what is stored; nothing for none. For a node that decided a
    row's version itself (applying, settling, resolving a review item).

    ``absent``: rows this transaction found without a stored version. On a
    database with one writer at a time (not :attr:`Dialect.concurrent_writers`)
    nothing else can have stored one since, so theirs are inserted, which
    costs DuckDB a third less than an upsert; elsewhere every row is upserted.
    """
    new, replaced = [], []
    inserting = bool(absent) and not dialect.concurrent_writers
    for (table, key), v in rows.items():
        row = (table, key, _json_encode(v.version).decode(), v.hlc, v.origin, v.deleted)
        (new if inserting and (table, key) in absent else replaced).append(row)
    hoist = ("table_name", "origin", "deleted")
    if new:
        dialect.insert_rows(conn, row_versions, _COLUMNS, new, hoist=hoist)
    dialect.upsert_rows(conn, row_versions, _COLUMNS, replaced, hoist=hoist, unique=True)


class Bump(NamedTuple):
    """One change a node makes to one row, before it has its version."""

    key: str
    hlc: int  # the clock's proposal; raised above the row's previous one if needed
    deleted: bool


def advance(
    conn: Connection, dialect: Dialect, table: str, node: str, bumps: Sequence[Bump]
) -> list[tuple[VersionVector, int]]:
    """Record that ``node`` changed each of ``table``'s rows once.

    Returns each row's new version and timestamp, in the order of ``bumps``
    (whose keys must be distinct). The version descends from the row's latest
    committed one, whatever concurrent transactions did before, and the
    timestamp is greater than the row's previous one.

    The caller has already written the row itself, so it holds the row's
    lock: no other writer can change the row's version until it commits.
    What is left is to read the *latest* version, not a stale snapshot.
    Where the database can (MariaDB, SQLite), one upsert computes the
    increment from the stored row and returns the result (``RETURNING``):
    no read before it, so no stale snapshot, and on MariaDB no locking read,
    which would take gap locks on keys that do not exist yet and deadlock
    concurrent inserts. DuckDB (one writing process, write-write conflicts
    detected) reads, then upserts its columnar batch.
    """
    keys = [bump.key for bump in bumps]
    if dialect.advances_versions_in_sql:
        constants = {
            "table_name": table,
            "origin": node,
            "version": _json_encode({node: 1}).decode(),  # where the row is new
        }
        deleted = bumps[0].deleted if bumps else False
        if all(b.deleted is deleted for b in bumps):  # a flush's inserts, updates or deletes
            constants["deleted"] = deleted
            columns: tuple[str, ...] = ("row_key", "hlc")
            rows: list[tuple] = [(b.key, b.hlc) for b in bumps]
        else:
            columns, rows = ("row_key", "hlc", "deleted"), list(bumps)  # Bump: key, hlc, deleted
        returned = dialect.upsert_advancing_version(conn, row_versions, columns, rows, constants)
        if len(returned) == 1 == len(keys) and returned[0][0] == keys[0]:
            return [(_json_decode(returned[0][1]), returned[0][2])]
        stored = {key: (_json_decode(version), hlc) for key, version, hlc in returned}
        return [stored[key] for key in keys]
    if len(bumps) == 1:
        # One edit a transaction, the usual case of an app: a columnar
        # statement costs DuckDB about a millisecond more than a plain one
        # for a single row, and an upsert about twice an update. The row's
        # version is read by key, then updated, or inserted where it has none.
        (bump,) = bumps
        p = placeholders(conn, 1)
        found = conn.exec_driver_sql(
            "SELECT version, hlc FROM replicator_row_versions "
            f"WHERE table_name = {p} AND row_key = {p}",
            (table, bump.key),
        ).first()
        if found is None:
            version, hlc = {node: 1}, bump.hlc
            conn.exec_driver_sql(
                f"INSERT INTO replicator_row_versions ({', '.join(_COLUMNS)}) "
                f"VALUES ({placeholders(conn, len(_COLUMNS))})",
                (table, bump.key, _json_encode(version).decode(), hlc, node, bump.deleted),
            )
        else:
            version = increment(_json_decode(found[0]), node)
            hlc = max(bump.hlc, found[1] + 1)
            conn.exec_driver_sql(
                f"UPDATE replicator_row_versions SET version = {p}, hlc = {p}, origin = {p}, "
                f"deleted = {p} WHERE table_name = {p} AND row_key = {p}",
                (_json_encode(version).decode(), hlc, node, bump.deleted, table, bump.key),
            )
        return [(version, hlc)]
    current = load(conn, table, keys, dialect)
    results: list[tuple[VersionVector, int]] = []
    rows = []
    for b in bumps:
        seen = current.get(b.key)
        version = increment(seen.version if seen else None, node)
        hlc = max(b.hlc, seen.hlc + 1) if seen else b.hlc
        rows.append((table, b.key, _json_encode(version).decode(), hlc, node, b.deleted))
        results.append((version, hlc))
    dialect.upsert_rows(conn, row_versions, _COLUMNS, rows)
    return results
