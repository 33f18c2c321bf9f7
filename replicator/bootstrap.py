"""Bootstrap: give a new or emptied local the server's current rows (within
its scope) and the position they stand at, instead of the whole log.

The snapshot and its position must agree exactly: every event at or below
the position is reflected in the rows read, none above it is. The server's
dialect opens a consistent snapshot while no capturing transaction is in
flight (:meth:`Dialect.snapshot`), reads the outbox's largest position in
it, and the rows and their versions are read in that snapshot while the
server goes on taking writes. The local gets those rows and versions and a
checkpoint at the position for every channel, in one transaction, so the
next sync applies exactly the log's tail: no gap, no duplicate.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator import checkpoints, outbox, retention, values
from replicator.checkpoints import DEFAULT_CHANNEL
from replicator.clock import utcnow
from replicator.dialects.base import TableShape
from replicator.errors import ReplicatorError, SchemaError
from replicator.events import row_key
from replicator.node import Node
from replicator.tables import app_table_names, row_versions
from replicator.tables import checkpoints as checkpoints_table

VERSION_COLUMNS = ("table_name", "row_key", "version", "hlc", "origin", "deleted")
# Rows fetched and written at a time.
_CHUNK = 5000


class BootstrapResult(msgspec.Struct, kw_only=True):
    """What a bootstrap copied: rows per table, and the log position the
    local now stands at (its checkpoint for the server)."""

    node: str
    server: str
    position: int
    rows: dict[str, int]
    seconds: float = 0.0
    resumed: int = 0  # through a gateway: how often a cut stream was resumed

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


def is_empty(node: Node) -> bool:
    """Whether ``node`` has no rows in its app tables, no events of its own
    and no checkpoint: a new or emptied replica."""
    with node.connect() as conn:
        # A sink's checkpoint on the node's own log does not count.
        if outbox.head(conn) or any(s != node.name for s, _ in checkpoints.all_of(conn)):
            return False
        for table in app_table_names(conn):
            if conn.execute(sa.select(sa.literal(1)).select_from(sa.table(table)).limit(1)).first():
                return False
    return True


def bootstrap(
    server: Node,
    node: Node,
    *,
    channels: Collection[str] = (DEFAULT_CHANNEL,),
    unscoped: Mapping[str, str] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    now: Callable[[], dt.datetime] = utcnow,
) -> BootstrapResult:
    """Copy the server's current rows (within ``node``'s scope) and their
    versions into the empty local ``node``, and set its checkpoints.

    Every server table the local's passes would carry is copied: ``unscoped``
    as for a sync pass, a table without the scope's columns is copied whole
    (``"all"``, the default) or not at all (``"none"``).

    ``progress(done, total)`` counts rows: it is called after every chunk
    copied, ``total`` being the rows in scope (one COUNT per table in the
    snapshot, run only when ``progress`` is given; the signature admits
    None, "unknown", for progress displays shared with other operations),
    and once at the end with ``done == total``, the rows copied (also when
    there were none).

    Raises :class:`ReplicatorError` when ``node`` is not empty (its own
    changes would be lost), and :class:`SchemaError`, naming them, when
    some of those tables do not exist on ``node`` yet: a checkpoint set past
    rows that were not copied would leave it without them for good. Nothing
    is written then.
    """
    clock = time.perf_counter()
    if not is_empty(node):
        raise ReplicatorError(
            f"node {node.name} is not empty (it has rows, changes or checkpoints); "
            "bootstrap only fills a new or emptied replica"
        )
    unscoped = dict(unscoped or {})
    tables = carried_tables(server, node, unscoped)
    copied: dict[str, int] = {}
    with node.begin() as target, server.dialect.snapshot(server.get_engine()) as (source, position):
        plan = []
        for table in tables:
            shape, source_shape = node.shape(target, table), server.shape(source, table)
            columns = [c for c in shape.columns if c in source_shape.columns]
            scope = node.scope if all(c in columns for c in node.scope) else {}
            plan.append((table, columns, scope))
        total = _count(source, plan) if progress is not None else None
        done = 0

        def advance(rows: int) -> None:
            nonlocal done
            done += rows
            if progress is not None:
                progress(done, total)

        for table, columns, scope in plan:
            copied[table] = _copy(source, target, server, node, table, columns, scope, advance)
        if progress is not None:
            progress(done, done)
        # A log pruned to its end still stands at the pruned position.
        position = max(position, retention.pruned_through(source))
        stand_at(target, node, server.name, channels, position, retention.log_id(source), now())
    return BootstrapResult(
        node=node.name,
        server=server.name,
        position=position,
        rows=copied,
        seconds=round(time.perf_counter() - clock, 6),
    )


def stand_at(
    target: Connection,
    node: Node,
    server: str,
    channels: Collection[str],
    position: int,
    log_id: str | None,
    moment: dt.datetime,
) -> None:
    """Set the bootstrapped ``node``'s checkpoints for ``server``'s log
    (``log_id``) at ``position`` on every channel, in ``target``'s
    transaction, the one that wrote its rows."""
    for channel in channels:
        checkpoints.advance(target, node.dialect, server, channel, position, moment, log_id)
    # Its rows came without events in its log: its sinks start over.
    c = checkpoints_table.c
    target.execute(checkpoints_table.delete().where(c.source == node.name))


def carried_tables(server: Node, node: Node, unscoped: Mapping[str, str]) -> list[str]:
    """The server's tables that ``node``'s passes carry (all of them, less
    those without the scope's columns that ``unscoped`` keeps off a scoped
    local), each checked to exist on ``node``.

    Raises :class:`SchemaError` naming those that do not exist there (or
    have no primary key): a checkpoint must not pass rows it did not copy.
    """
    with server.connect() as conn:
        found = []
        for table in app_table_names(conn):
            shape = server.shape(conn, table)
            if shape is None:
                continue
            unscoped_here = node.scope and not all(c in shape.columns for c in node.scope)
            if unscoped_here and unscoped.get(table, "all") == "none":
                continue
            found.append(table)
    node.forget_shapes()  # the app may have created its tables since they were looked at
    with node.connect() as conn:
        missing = [table for table in found if node.shape(conn, table) is None]
    if missing:
        node.forget_shapes()
        raise SchemaError(
            f"cannot bootstrap {node.name}: the server's "
            + ("table " if len(missing) == 1 else "tables ")
            + ", ".join(missing)
            + f" {'does' if len(missing) == 1 else 'do'} not exist on {node.name} (or "
            "lack a primary key); create the app's tables there first (for example "
            "Base.metadata.create_all(engine)) and sync again. Nothing was copied and its "
            "checkpoint did not move"
        )
    return found


def _count(source: Connection, plan: list[tuple[str, list[str], Mapping[str, object]]]) -> int:
    """How many rows the plan copies (one COUNT per table, in the snapshot)."""
    total = 0
    for table, columns, scope in plan:
        bare = sa.table(table, *(sa.column(c) for c in columns))
        select = sa.select(sa.func.count()).select_from(bare)
        total += source.execute(select.where(*(bare.c[c] == v for c, v in scope.items()))).scalar()
    return total


def _copy(
    source: Connection,
    target: Connection,
    server: Node,
    node: Node,
    table: str,
    columns: list[str],
    scope: Mapping[str, object],
    advance: Callable[[int], None],
) -> int:
    """Copy one table's rows in the scope, then their versions; the count.
    ``advance(n)`` after each chunk of ``n`` rows.

    One result streams at a time: a second query on the source connection
    would cut a streaming result short (pymysql, DuckDB), so the versions
    are read after the rows, keeping only the copied rows' keys.
    """
    shape = node.shape(target, table)
    source_shape = server.shape(source, table)
    assert shape is not None and source_shape is not None  # both have the table
    copied: set[str] = set()
    for rows in read_rows(source, source_shape, columns, scope):
        copied.update(write_rows(target, node, shape, columns, rows))
        advance(len(rows))
    for found in read_versions(source, table, copied):
        node.dialect.upsert_rows(target, row_versions, VERSION_COLUMNS, found)
    return len(copied)


def read_rows(
    source: Connection, shape: TableShape, columns: list[str], scope: Mapping[str, object]
) -> Iterator[list[list[Any]]]:
    """The rows of the table of ``shape`` in ``scope`` (``columns`` of
    each), in chunks, their values as events carry them (a key's as the
    log says: SQLite keeps a UUID as CHAR(32))."""
    held = shape.kinds_held(outbox.last_key(source, shape.name))
    typed = [held.get(c) for c in columns]
    bare = sa.table(shape.name, *(sa.column(c) for c in columns))
    select = sa.select(bare).where(*(bare.c[c] == v for c, v in scope.items()))
    # Read whole before the caller reads anything else on ``source``: a
    # second query on it would cut a streaming result short (pymysql, DuckDB).
    result = source.execution_options(stream_results=True, yield_per=_CHUNK).execute(select)
    for rows in result.partitions(_CHUNK):
        yield [list(map(values.typed, row, typed)) for row in rows]


def write_rows(
    target: Connection, node: Node, shape: TableShape, columns: list[str], rows: list[list[Any]]
) -> list[str]:
    """Write ``rows`` (values as events carry them) into ``node``'s table
    of ``shape``; their row keys."""
    kinds = [shape.kind(c) for c in columns]
    written = [tuple(map(node.dialect.written, row, kinds)) for row in rows]
    node.dialect.upsert_rows(target, shape.table(), columns, written)
    at = [columns.index(c) for c in shape.key]
    return [row_key([row[i] for i in at]) for row in rows]


def read_versions(source: Connection, table: str, keys: set[str]) -> Iterator[list[tuple]]:
    """The live versions of ``table``'s rows with these row keys, in
    chunks, as :data:`VERSION_COLUMNS`."""
    c = row_versions.c
    versions = source.execution_options(stream_results=True, yield_per=_CHUNK).execute(
        sa.select(*(c[name] for name in VERSION_COLUMNS)).where(
            c.table_name == table, sa.not_(c.deleted)
        )
    )
    for found in versions.partitions(_CHUNK):
        wanted = [tuple(r) for r in found if r.row_key in keys]
        if wanted:
            yield wanted
