"""Verify: do the server and a local hold the same rows (within the local's
scope)? Compared by checksums, without copying tables around.

Each side streams a table's rows once and folds every row's hash into one of
:data:`BUCKETS` buckets chosen by its key: a bucket's checksum is the sum of
its rows' hashes, so neither row order nor the databases' collations
matter. Only the buckets whose checksums differ are read again, and their
rows compared by key, to name the keys that differ. Memory holds the bucket
sums and the rows of differing buckets only.

Values are compared as the app sees them, not as each driver returns them:
dates, decimals, booleans and JSON documents are put in one canonical form
first (SQLite returns dates as text and MariaDB booleans as integers).
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.events import row_key
from replicator.node import Node
from replicator.tables import app_table_names

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
            sides = [(sconn, scope), (lconn, scope)]
            sums = [_checksums(conn, table, columns, shape.key, where) for conn, where in sides]
            differing_buckets = {b for b in range(BUCKETS) if sums[0][0][b] != sums[1][0][b]}
            differing: list[str] = []
            if differing_buckets:
                rows = [
                    _rows_in(conn, table, columns, shape.key, where, differing_buckets)
                    for conn, where in sides
                ]
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


def _stream(
    conn: Connection, table: str, columns: list[str], key: tuple[str, ...], scope: Mapping
) -> Iterator[tuple[str, str]]:
    """Every row as (row key, canonical text of its values)."""
    bare = sa.table(table, *(sa.column(c) for c in columns))
    select = sa.select(bare).where(*(bare.c[c] == v for c, v in scope.items()))
    at = [columns.index(c) for c in key]
    result = conn.execution_options(stream_results=True, yield_per=2000).execute(select)
    for row in result:
        values = [_canonical(v) for v in row]
        yield row_key([values[i] for i in at]), json.dumps(values, separators=(",", ":"))


def _checksums(
    conn: Connection, table: str, columns: list[str], key: tuple[str, ...], scope: Mapping
) -> tuple[list[int], int]:
    sums = [0] * BUCKETS
    count = 0
    for rkey, text in _stream(conn, table, columns, key, scope):
        sums[_bucket(rkey)] = (sums[_bucket(rkey)] + _hash(text)) & _MASK
        count += 1
    return sums, count


def _rows_in(
    conn: Connection,
    table: str,
    columns: list[str],
    key: tuple[str, ...],
    scope: Mapping,
    buckets: set[int],
) -> dict[str, str]:
    return {
        rkey: text
        for rkey, text in _stream(conn, table, columns, key, scope)
        if _bucket(rkey) in buckets
    }


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=4).digest()) % BUCKETS


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())


def _canonical(value: Any) -> Any:
    """One form per value, whichever database it came from."""
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
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.dumps(json.loads(value), sort_keys=True)
        except ValueError:
            return value
    if isinstance(value, str) and len(value) >= 10 and value[4:5] == "-" and value[7:8] == "-":
        try:  # SQLite keeps dates as text
            parsed = (dt.date if len(value) == 10 else dt.datetime).fromisoformat(value)
        except ValueError:
            return value
        return _canonical_time(parsed)
    return value


def _canonical_time(value: dt.datetime | dt.date | dt.time) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(sep=" ", timespec="microseconds")
    return value.isoformat()
