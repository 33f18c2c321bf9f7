"""Integer keys made on any node, online or offline, that never collide.

Most apps key their tables by an integer the database generates
(``id = Column(Integer, primary_key=True)``). Two nodes that insert while
apart would each generate the same next number, and replication would take
two different rows for one. As SQL Server's merge replication does with
identity ranges, the server *leases* each local blocks of keys, one range
per table, never the same key twice; capture gives every new row of such a
table (ORM unit of work and bulk inserts alike) the next key of the node's
block, in the transaction that inserts it. The app's models and code do not
change.

* A block is leased by the server (:func:`lease`, recorded in
  ``replicator_key_leases``) and stored on the local
  (``replicator_key_blocks``) during a replication pass between the two
  (:func:`refill`), whenever the local has fewer than half a block left for
  a table: a device that syncs now and then never runs out.
* A local that has used every key it holds (offline for longer than a block
  lasts) cannot insert into that table: the flush fails with a
  :class:`~replicator.errors.CaptureError` naming the table and saying to
  sync; nothing is written, and no key is ever guessed.
* On MariaDB the server numbers its own rows itself (AUTO_INCREMENT, or
  the sequence the models name), and every block starts above that number,
  which is then moved past the block (:func:`keep_out`): the server's rows,
  captured or not, never take a leased key, and rows applied with leased
  keys below its counter do not move it. A server on SQLite or DuckDB gives
  its captured rows keys from blocks it leases itself.
* Leases of a table serialise on its row of ``replicator_key_ranges``: no
  two blocks overlap, whoever asks at the same moment.
* A block starts above every key the server's table holds, every key the
  local's table holds, and every earlier block: an existing database
  adopts leasing without any row being rewritten.
* A node that has never replicated (no role recorded yet) lets the database
  generate keys as before.
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.dialects import Dialect
from replicator.dialects.base import TableShape
from replicator.errors import CaptureError, DatabaseError
from replicator.tables import (
    app_table_names,
    key_blocks,
    key_leases,
    key_ranges,
    log,
    sequences,
)

if TYPE_CHECKING:
    from replicator.node import Node

Role = Literal["server", "local"]

#: Keys per block. A local leases another block when fewer than half of
#: one are left: it can then insert at least this many rows per table
#: between syncs before it runs out.
BLOCK = 10_000
#: On MariaDB, how far above the server's own next AUTO_INCREMENT value a
#: block starts: the server's app may insert that many rows in the moment
#: between reading the counter and moving it above the block.
GAP = 1_000


def role_of(conn: Connection) -> Role | None:
    """The role this database last replicated as (None: never)."""
    return conn.execute(sa.select(log.c.role).where(log.c.id == 1)).scalar()


def mark(conn: Connection, role: Role) -> None:
    """Record that this database replicates as ``role`` (in ``conn``'s
    transaction; nothing when it already says so)."""
    conn.execute(
        log.update().where(log.c.id == 1, log.c.role.is_distinct_from(role)).values(role=role)
    )


def remaining(conn: Connection) -> dict[str, int]:
    """How many leased keys this node has left, by table; empty when it
    holds no blocks."""
    c = key_blocks.c
    left = sa.func.sum(sa.case((c.next_key <= c.last_key, c.last_key - c.next_key + 1), else_=0))
    return {
        table: int(count)
        for table, count in conn.execute(sa.select(c.table_name, left).group_by(c.table_name))
    }


def take(conn: Connection, dialect: Dialect, table: str, count: int) -> list[int]:
    """``count`` unused keys of ``table`` from this node's blocks, marked used
    in ``conn``'s transaction (a rollback gives them back; the blocks stay
    locked until it ends where writers are concurrent); lowest blocks
    first. Raises :class:`CaptureError` when the blocks hold fewer."""
    c = key_blocks.c
    blocks = conn.execute(
        dialect.lock_rows(
            sa.select(c.first_key, c.next_key, c.last_key)
            .where(c.table_name == table, c.next_key <= c.last_key)
            .order_by(c.first_key)
        )
    ).all()
    keys: list[int] = []
    for first, start, last in blocks:
        if len(keys) == count:
            break
        end = min(last, start + count - len(keys) - 1)
        keys.extend(range(start, end + 1))
        conn.execute(
            key_blocks.update()
            .where(c.table_name == table, c.first_key == first)
            .values(next_key=end + 1)
        )
    if len(keys) < count:
        raise CaptureError(
            f"no keys left for new rows of {table!r} on this node: it has used every key the "
            f"server leased it ({len(keys)} left, {count} needed). Sync with the server to "
            "lease more (a sync keeps a block ahead); nothing was written"
        )
    return keys


def leased_tables(conn: Connection) -> set[str]:
    """The tables whose keys this server has leased blocks of."""
    return set(conn.execute(sa.select(key_leases.c.table_name).distinct()).scalars())


def give(conn: Connection, table: str, first: int, last: int) -> None:
    """Store a leased block ``first..last`` of ``table`` on this node."""
    conn.execute(
        key_blocks.insert().values(table_name=table, first_key=first, last_key=last, next_key=first)
    )


def lease(
    conn: Connection,
    dialect: Dialect,
    table: str,
    holder: str,
    size: int = BLOCK,
    above: int = 0,
) -> tuple[int, int]:
    """Lease ``size`` keys of ``table`` to node ``holder``: ``(first, last)``.

    Runs on the server, in ``conn``'s transaction. The block starts where the
    last one ended (``replicator_key_ranges``, read with a row lock), and
    above every key the server's table holds, ``above`` (the largest key the
    holder's table holds), and, with a :data:`GAP`, the next number the
    server's database would give the table itself (AUTO_INCREMENT, or the
    sequence the models number it with; see :func:`keep_out`, to call once
    this commits). Two leases racing serialise on the range's row (DuckDB
    fails the later transaction instead; retry it), so no key is ever
    leased twice.
    """
    floor = max(_largest_key(conn, dialect, table), above)
    own = _own_next(conn, dialect, table)
    if own is not None:
        floor = max(floor, own - 1 + GAP)
    r = key_ranges.c
    found = conn.execute(
        dialect.lock_rows(sa.select(r.next_key).where(r.table_name == table))
    ).scalar()
    first = max(found or 1, floor + 1)
    last = first + size - 1
    if found is None:  # a race to create it fails one side with a duplicate key
        conn.execute(key_ranges.insert().values(table_name=table, next_key=last + 1))
    else:
        conn.execute(key_ranges.update().where(r.table_name == table).values(next_key=last + 1))
    conn.execute(
        key_leases.insert().values(
            table_name=table,
            first_key=first,
            last_key=last,
            holder=holder,
            leased_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
        )
    )
    return first, last


def _own_next(conn: Connection, dialect: Dialect, table: str) -> int | None:
    """The next number the server's database would give ``table`` itself,
    where it numbers the table (AUTO_INCREMENT, a recorded sequence) and
    can be kept out of blocks; None otherwise."""
    if not dialect.keeps_generated_keys_out:
        return None
    if dialect.generated_key(conn, table) is not None:
        return dialect.next_generated_key(conn, table)
    c = sequences.c
    sequence = conn.execute(sa.select(c.sequence_name).where(c.table_name == table)).scalar()
    return None if sequence is None else dialect.next_sequence_value(conn, sequence)


def keep_out(conn: Connection, dialect: Dialect, table: str, last: int) -> int | None:
    """Move the server's own numbering of ``table`` (MariaDB's
    AUTO_INCREMENT) above ``last``, the end of a block it leased, so that
    rows inserted without capture never take the block's keys. ``conn``
    must not be in a transaction (the DDL commits). Returns the key column,
    None where the database does not number the table itself."""
    key = dialect.generated_key(conn, table) if dialect.keeps_generated_keys_out else None
    if key is not None and dialect.next_generated_key(conn, table) <= last:
        dialect.skip_generated_keys(conn, table, last)
    # A sequence the models number it with (see record_sequences) moves too.
    c = sequences.c
    sequence = conn.execute(sa.select(c.sequence_name).where(c.table_name == table)).scalar()
    if sequence is not None:
        dialect.keep_ahead(conn, sequence, last)
        conn.commit()
    conn.rollback()
    return key


def _unused(conn: Connection, table: str, key: str, first: int, last: int) -> bool:
    """Whether no row of ``table`` holds a key of ``first..last``."""
    taken = conn.execute(
        sa.text(
            f"SELECT COUNT(*) FROM {_quote(conn, table)} "
            f"WHERE {_quote(conn, key)} BETWEEN :first AND :last"
        ),
        {"first": first, "last": last},
    ).scalar()
    conn.rollback()
    return not taken


def take_or_lease(
    conn: Connection, dialect: Dialect, node: str, table: str, count: int
) -> list[int]:
    """On the server: :func:`take`, after leasing itself a block when it
    lacks keys (in ``conn``'s transaction)."""
    if remaining(conn).get(table, 0) < count:
        give(conn, table, *lease(conn, dialect, table, node, max(BLOCK, count)))
    return take(conn, dialect, table, count)


def record_sequences(conn: Connection, dialect: Dialect, found: dict[str, str]) -> None:
    """Record which sequence the app's models number each table's key with
    (table -> sequence), in ``conn``'s transaction."""
    c = sequences.c
    stored = dict(conn.execute(sa.select(c.table_name, c.sequence_name)).all())
    changed = [(t, s) for t, s in found.items() if stored.get(t) != s]
    if changed:
        dialect.upsert_rows(conn, sequences, ("table_name", "sequence_name"), changed)


def sequences_of(
    conn: Connection, dialect: Dialect, shapes: dict[str, TableShape]
) -> dict[str, str]:
    """The sequence each of these integer-keyed tables is numbered with
    (recorded by capture, or declared as the key's default), by table."""
    c = sequences.c
    recorded = dict(
        conn.execute(sa.select(c.table_name, c.sequence_name).where(c.table_name.in_(shapes))).all()
    )
    for table, shape in shapes.items():
        if table not in recorded:
            found = dialect.default_sequence(conn, table, shape.key[0])
            if found is not None:
                recorded[table] = found
    return recorded


def _largest_key(conn: Connection, dialect: Dialect, table: str, key: str | None = None) -> int:
    """The largest key ``table`` holds in its integer key column (``key``,
    looked up when not given); 0 when empty or not integer-keyed."""
    if key is None:
        shape = dialect.describe(conn, table)
        key = shape.integer_key if shape is not None else None
    if key is None:
        return 0
    found = conn.execute(
        sa.text(f"SELECT MAX({_quote(conn, key)}) FROM {_quote(conn, table)}")
    ).scalar()
    return int(found or 0)


def ceiling(conn: Connection, dialect: Dialect, table: str, holder: str) -> int:
    """The largest key of ``table`` that ``holder`` can rightly hold: the
    largest the server's table holds, or the end of the last block leased
    to it. A holder that claims more is not believed (a lease above it
    would move everyone's numbering)."""
    c = key_leases.c
    leased = conn.execute(
        sa.select(sa.func.max(c.last_key)).where(c.table_name == table, c.holder == holder)
    ).scalar()
    return max(_largest_key(conn, dialect, table), int(leased or 0))


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def refill(local: Node, server: Node, size: int = BLOCK) -> dict[str, tuple[int, int]]:
    """Lease ``local`` a block of ``size`` keys for each of its integer-keyed
    tables where it holds fewer than half a block, and record both nodes'
    roles: table -> the block leased (empty when none was needed). Cheap
    when nothing is needed (a runner calls it before every pass).

    The lease commits on the server before the block is stored on the local:
    a failure in between loses keys, never gives one twice.
    """

    def lease_from_server(needed: dict[str, int]) -> dict[str, tuple[int, int]]:
        if server not in _marked or needed:
            _keep_own_blocks_out(server)
        _marked.add(server)
        found = {}
        for table, above in needed.items():
            block = leased_block(server, table, local.name, size, above)
            if block is not None:
                found[table] = block
        return found

    return refill_with(local, lease_from_server, size)


def refill_with(
    local: Node,
    lease_blocks: Callable[[dict[str, int]], dict[str, tuple[int, int]]],
    size: int = BLOCK,
) -> dict[str, tuple[int, int]]:
    """:func:`refill` with the server's side done by ``lease_blocks``
    (table -> the largest key ``local``'s table holds, for the tables that
    need a block; it returns the blocks it leased), called also when none
    is needed: the server records its role then. Through the sync gateway
    (:mod:`replicator.remote`) that is a request to the gateway."""
    with local.begin() as conn:
        if local not in _marked:
            mark(conn, "local")
        left = remaining(conn)
        need = {}
        for table in app_table_names(conn):
            shape = local.shape(conn, table)
            key = shape.integer_key if shape is not None else None
            if key is not None and left.get(table, 0) < size // 2:
                need[table] = _largest_key(conn, local.dialect, table, key)
    leased = lease_blocks(need)
    _marked.add(local)
    if leased:
        with local.begin() as conn:
            for table, (first, last) in leased.items():
                give(conn, table, first, last)
    return leased


def leased_block(
    server: Node, table: str, holder: str, size: int, above: int
) -> tuple[int, int] | None:
    """Lease ``holder`` a block of ``table`` on ``server`` (its own
    transaction, tried three times while other leases race it); None when
    the block turned out to hold a key a row already took."""
    for attempt in range(3):
        try:
            with server.begin() as conn:
                block = lease(conn, server.dialect, table, holder, size, above)
        except DatabaseError:
            if attempt == 2:
                raise
            continue  # another lease moved the range first (or made it): again
        with server.connect() as conn:
            key = keep_out(conn, server.dialect, table, block[1])
            # A row inserted on the server without capture while the
            # counter was still below the block: the block is never used.
            if key is not None and not _unused(conn, table, key, *block):
                continue
        return block
    return None


def prepare_server(server: Node) -> None:
    """Record ``server``'s role and keep its own numbering out of the blocks
    (once per process, and before every lease)."""
    _keep_own_blocks_out(server)
    _marked.add(server)


def _keep_own_blocks_out(server: Node) -> None:
    """Record the server's role, and move its own numbering above the blocks
    its capture leased itself (SQLite, DuckDB: a sequence the models name),
    so that rows it inserts without capture stay out of them; done when a
    process first links to it and whenever it leases."""
    with server.begin() as conn:
        mark(conn, "server")
        c = key_blocks.c
        own = {
            table: last
            for table, last in conn.execute(
                sa.select(c.table_name, sa.func.max(c.last_key)).group_by(c.table_name)
            )
        }
    kept = _kept_out.setdefault(server.url, {})
    for table, last in own.items():
        if kept.get(table) != last:
            with server.connect() as conn:
                keep_out(conn, server.dialect, table, last)
            kept[table] = last


# The server (by URL) -> the end of its own last block per table whose
# keep_out has run in this process.
_kept_out: dict[str, dict[str, int]] = {}
# The nodes whose role this process has recorded (a node object per config
# entry; a new one records it again).
_marked: weakref.WeakSet[Node] = weakref.WeakSet()
