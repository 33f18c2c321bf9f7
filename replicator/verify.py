"""Verify: do the server and a local hold the same rows (within the local's
scope)? Compared by checksums, without copying tables around.

Each side streams a table's rows once and folds every row's hash into one of
:data:`BUCKETS` buckets chosen by its key: a bucket's checksum is the sum of
its rows' hashes, so neither row order nor the databases' collations
matter. Only the buckets whose checksums differ are read again, and their
rows compared by key, to name the keys that differ. Memory holds the bucket
sums and the rows of differing buckets only.

Values are compared as the app sees them, not as each driver returns them:
typed by their columns' kinds (see :mod:`replicator.values`: SQLite returns
dates as text and MariaDB booleans as integers), then dates, decimals,
booleans and JSON documents put in one canonical form.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.dialects.base import TableShape
from replicator.events import row_key
from replicator.node import Node
from replicator.tables import app_table_names
from replicator.values import Kind, is_json, typed

BUCKETS = 1024
_MASK = (1 << 64) - 1


class TableCheck(msgspec.Struct, kw_only=True):
    """One table compared: rows on each side and the keys that differ
    (missing on one side, or holding other values)."""

    table: str
    server_rows: int
    local_rows: int
    differing: list[str]


class VerifyResult(msgspec.Struct, kw_only=True):
    server: str
    node: str
    tables: list[TableCheck]

    @property
    def equal(self) -> bool:
        return not any(t.differing for t in self.tables)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


def verify(
    server: Node,
    node: Node,
    *,
    tables: list[str] | None = None,
    unscoped: Mapping[str, str] | None = None,
) -> VerifyResult:
    """Compare the tables both nodes have (or ``tables``), within ``node``'s
    scope; a table without the scope's columns is compared whole, unless
    ``unscoped`` says ``"none"`` for it."""
    unscoped = dict(unscoped or {})
    checks = []
    with server.connect() as sconn, node.connect() as lconn:
        names = tables or sorted(set(app_table_names(sconn)) | set(app_table_names(lconn)))
        for table in names:
            shape, local_shape = server.shape(sconn, table), node.shape(lconn, table)
            if (
                local_shape is None
                and shape is not None
                and node.scope
                and not all(c in shape.columns for c in node.scope)
                and unscoped.get(table, "all") == "none"
            ):
                continue  # kept off this local on purpose: nothing to compare
            if shape is None or local_shape is None:
                # A table one side lacks differs as a whole.
                missing = server.name if shape is None else node.name
                checks.append(
                    TableCheck(
                        table=table,
                        server_rows=0,
                        local_rows=0,
                        differing=[f"(table missing on {missing})"],
                    )
                )
                continue
            columns = [c for c in local_shape.columns if c in shape.columns]
            scope = node.scope if all(c in columns for c in node.scope) else {}
            if node.scope and not scope and unscoped.get(table, "all") == "none":
                continue
            sides = [
                (conn, _Read(table, columns, shape.key, _kinds(own, other, columns), scope))
                for conn, own, other in ((sconn, shape, local_shape), (lconn, local_shape, shape))
            ]
            sums = [_checksums(conn, read) for conn, read in sides]
            differing_buckets = {b for b in range(BUCKETS) if sums[0][0][b] != sums[1][0][b]}
            differing: list[str] = []
            if differing_buckets:
                rows = [_rows_in(conn, read, differing_buckets) for conn, read in sides]
                differing = sorted(
                    k for k in rows[0].keys() | rows[1].keys() if rows[0].get(k) != rows[1].get(k)
                )
            checks.append(
                TableCheck(
                    table=table,
                    server_rows=sums[0][1],
                    local_rows=sums[1][1],
                    differing=differing,
                )
            )
    return VerifyResult(server=server.name, node=node.name, tables=checks)


class _Read(NamedTuple):
    """What one side reads of a table: its columns (with their kinds, see
    :mod:`replicator.values`), key and the local's scope."""

    table: str
    columns: list[str]
    key: tuple[str, ...]
    kinds: Mapping[str, Kind]
    scope: Mapping


def _stream(conn: Connection, read: _Read) -> Iterator[tuple[str, str]]:
    """Every row as (row key, canonical text of its values)."""
    columns = read.columns
    bare = sa.table(read.table, *(sa.column(c) for c in columns))
    select = sa.select(bare).where(*(bare.c[c] == v for c, v in read.scope.items()))
    at = [columns.index(c) for c in read.key]
    kinds = [read.kinds.get(c) for c in columns]
    forms = [_document if is_json(kind) else _canonical for kind in kinds]
    result = conn.execution_options(stream_results=True, yield_per=2000).execute(select)
    for row in result:
        found = [form(typed(v, kind)) for v, kind, form in zip(row, kinds, forms, strict=True)]
        yield row_key([found[i] for i in at]), json.dumps(found, separators=(",", ":"))


def _checksums(conn: Connection, read: _Read) -> tuple[list[int], int]:
    """Per bucket, the sum of its rows' hashes; and the number of rows."""
    sums = [0] * BUCKETS
    count = 0
    for rkey, text in _stream(conn, read):
        sums[_bucket(rkey)] = (sums[_bucket(rkey)] + _hash(text)) & _MASK
        count += 1
    return sums, count


def _rows_in(conn: Connection, read: _Read, buckets: set[int]) -> dict[str, str]:
    return {rkey: text for rkey, text in _stream(conn, read) if _bucket(rkey) in buckets}


def _kinds(own: TableShape, other: TableShape, columns: list[str]) -> dict[str, Kind]:
    """The kinds one side's values are read as: its own, or the other
    side's where its own is text (or unknown) and the other's says more
    (SQLite keeps a UUID column as CHAR(32), DuckDB as UUID), a JSON
    column's aside (each side decodes its documents as its driver needs)."""
    found = {}
    for column in columns:
        mine, theirs = own.kind(column), other.kind(column)
        if mine in (str, None) and theirs is not None and not is_json(theirs):
            mine = theirs
        found[column] = mine
    return found


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest()) % BUCKETS


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())


def _document(value: Any) -> str:
    """A JSON column's document as one text: its type kept (the string "1",
    the number 1 and true differ, as do a list and the text of one)."""
    return json.dumps(value, sort_keys=True, default=str)


def _canonical(value: Any) -> Any:
    """One form per value, whichever database it came from (given as the
    event would carry it: see :func:`replicator.values.typed`)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return _canonical_time(value)
    if isinstance(value, dt.timedelta):
        return str(value.total_seconds())
    if isinstance(value, uuid.UUID):
        return str(value)
    # Numbers as decimal text: 5, 5.0 and Decimal("5.00") are one value
    # (a NUMERIC column reads back as a float or an int from SQLite).
    if isinstance(value, float):
        value = decimal.Decimal(repr(value))
    if isinstance(value, int | decimal.Decimal):
        return format(decimal.Decimal(value).normalize(), "f")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return value


def _canonical_time(value: dt.datetime | dt.date | dt.time) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ", timespec="microseconds")
    return value.isoformat()
