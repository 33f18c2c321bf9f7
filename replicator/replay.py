"""Replay: apply the log to a node again, from a position or a point in time.

The log is the server's outbox: it holds every change, the server's own,
every local's (forwarded unchanged) and the server's settlements. Replaying
it onto a node re-applies events ``start..end`` (of every origin, the
node's own included; within a scoped local's scope) with the usual rules,
so it is idempotent and never overwrites blindly:

* an event the node has not reflected yet (its version descends from the
  node's) is applied;
* an event older than the node's version of the row is skipped: the row has
  changed since, and that later change is in the log (or on its way there);
* an event whose version the node claims to hold is written again only if
  the node's row differs from it: a row changed bypassing capture (by hand,
  or by a bug) gets its logged state back;
* an event concurrent with the node's own unsent change is skipped, as in a
  sync: the server settles the two when that change arrives.

A dry run does all of it in one transaction that is rolled back, and
reports what it would insert, update, delete and which conflicts it meets.
Afterwards the node's checkpoints for the log are correct: advanced to the
replay's end when the replay began at or before them, untouched otherwise.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Mapping

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator import checkpoints, outbox, retention
from replicator.apply import Counts, apply_batch
from replicator.checkpoints import DEFAULT_CHANNEL
from replicator.clock import from_datetime, utcnow
from replicator.errors import ConfigurationError, ReplicatorError
from replicator.node import Node
from replicator.outbox import Entry
from replicator.remote import Gateway
from replicator.scope import in_scope
from replicator.tables import outbox as outbox_table


class ReplayResult(Counts, kw_only=True):
    """What a replay did (or, with ``dry_run``, would do): its
    :class:`Counts`, where ``conflicts`` counts the events concurrent with
    the node's own unsent changes (left for the server to settle).

    ``start`` and ``end`` are the positions replayed; ``checkpoint`` the
    node's checkpoint for the log afterwards (None when the node replays its
    own log).
    """

    node: str
    log: str
    start: int
    end: int
    dry_run: bool
    checkpoint: int | None = None
    seconds: float = 0.0

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


def first_position_since(conn: Connection, moment: dt.datetime) -> int:
    """The first outbox position whose event was made at or after ``moment``
    (naive means UTC); one past the last position when there is none."""
    c = outbox_table.c
    found = conn.execute(
        sa.select(sa.func.min(c.position)).where(c.hlc >= from_datetime(moment))
    ).scalar()
    return found if found is not None else outbox.head(conn) + 1


#: Batches applied per node transaction (a failure rolls back that many at
#: most; DuckDB 2.0 fails far larger upsert transactions internally). One
#: on DuckDB, which checks foreign keys against a transaction's start.
COMMIT_EVERY = 10


def replay(
    log: Node | Gateway,
    node: Node,
    *,
    start: int,
    end: int | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
    unscoped: Mapping[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    now: Callable[[], dt.datetime] = utcnow,
) -> ReplayResult:
    """Replay ``log``'s outbox from ``start`` to ``end`` (default: all that
    has committed) onto ``node``; see the module's docstring.

    ``start`` 0 is where a checkpoint starts: like 1, the whole log (the
    result's ``start`` is then 1). ``progress(done, total)`` counts
    positions: it is called after every ``batch_size`` events applied, also
    within one large source transaction (which is still applied in one
    node transaction), with ``done`` rising to ``total`` (``end - start +
    1``) at the last call; never when there is nothing to replay.

    Raises :class:`ConfigurationError` for a negative ``start`` or
    ``batch_size`` below 1, and :class:`ReplicatorError` when the log's
    writers keep it from telling what has committed, or a database error
    fails the replay (the batches committed before stay applied, up to
    :data:`COMMIT_EVERY` batches each; replaying again is harmless).
    """
    if start < 0:
        raise ConfigurationError(f"a replay starts at a log position, 0 or more, not {start}")
    if batch_size < 1:
        raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
    start = max(start, 1)  # the log's first position is 1
    clock = time.perf_counter()
    if isinstance(log, Gateway):
        bounds = log.bounds()
        horizon, through, log_id = bounds.horizon, bounds.pruned_through, bounds.log_id
    else:
        with log.connect() as conn:
            horizon = log.dialect.horizon(conn)
            through = retention.pruned_through(conn)
            log_id = retention.log_id(conn)
    if horizon is None:
        raise ReplicatorError(
            f"node {log.name}: its writers held the outbox too long to tell what has "
            "committed; try the replay again"
        )
    if start <= through and node.name != log.name:
        raise ReplicatorError(
            f"events up to position {through} of {log.name}'s log were deleted by retention: "
            f"replay from {through + 1} or later, or bootstrap the node"
        )
    upto = horizon if end is None else min(end, horizon)
    result = ReplayResult(node=node.name, log=log.name, start=start, end=upto, dry_run=dry_run)
    counts = result  # the replay counts into its result

    def read(after: int) -> tuple[list[Entry], int]:
        if isinstance(log, Gateway):  # cut to the device's scope by the server
            return log.read_log(after, upto, batch_size)
        with log.connect() as conn:
            return outbox.read_batch(
                conn, after=after, upto=upto, limit=batch_size, exclude_origin=None
            )

    def apply(tconn: Connection, after: int, logs: bool) -> int:
        entries, reached = read(after)
        # A batch holds whole source transactions, so one large transaction
        # is one large batch: it is applied in slices of batch_size, all in
        # this node transaction, so that progress is reported as it goes.
        for at in range(0, max(len(entries), 1), batch_size):
            part = entries[at : at + batch_size]
            kept = in_scope(log, node, unscoped or {}, tconn, part)
            counts.add(
                apply_batch(
                    tconn,
                    node.dialect,
                    kept,
                    shape_of=lambda table: node.shape(tconn, table),
                    settle=None,
                    now=now(),
                    restore=True,
                    log=logs,
                    own=node.name,
                )
            )
            counts.read += len(part) - len(kept)
            counts.skipped += len(part) - len(kept)
            if progress is not None:
                last = at + batch_size >= len(entries)
                progress((reached if last else part[-1].position) - start + 1, upto - start + 1)
        return reached

    position = start - 1
    if dry_run:
        with node.connect() as tconn:
            transaction = tconn.begin()
            try:
                node.dialect.exclude_writers(tconn)
                logs = checkpoints.followed(tconn, node.name)
                while position < upto:
                    position = apply(tconn, position, logs)
            finally:
                transaction.rollback()
    else:
        # DuckDB cannot delete a parent in the transaction that deleted its
        # children (see Dialect.deletes_children_first_in_own_transaction):
        # a batch per transaction there, so that later batches' deletes go.
        batches_per_transaction = (
            1 if node.dialect.deletes_children_first_in_own_transaction else COMMIT_EVERY
        )
        while position < upto:
            # Several batches per transaction: nothing but the checkpoints at
            # the end tells where a replay stands, so committing each batch
            # bought nothing and cost a sixth of a SQLite replay.
            with node.begin() as tconn:
                node.dialect.exclude_writers(tconn)
                logs = checkpoints.followed(tconn, node.name)
                for _ in range(batches_per_transaction):
                    position = apply(tconn, position, logs)
                    if position >= upto:
                        break
        if node.name != log.name:
            result.checkpoint = _advance_checkpoints(node, log.name, log_id, start, upto, now())
    result.conflicts += result.held  # on a replay, a held event is the conflict it meets
    result.seconds = round(time.perf_counter() - clock, 6)
    return result


def _advance_checkpoints(
    node: Node, log: str, log_id: str | None, start: int, upto: int, moment: dt.datetime
) -> int:
    """Move the node's checkpoints for ``log`` to ``upto`` where the replay
    covered everything after them (it began at or before them); return the
    default channel's checkpoint afterwards."""
    with node.begin() as tconn:
        stored = checkpoints.of_log(tconn, log, log_id) if log_id else {}
        if not stored and start <= 1:
            stored = {DEFAULT_CHANNEL: 0}
        for channel, position in stored.items():
            if start - 1 <= position < upto:
                checkpoints.advance(tconn, node.dialect, log, channel, upto, moment, log_id)
                stored[channel] = upto
    return stored.get(DEFAULT_CHANNEL, 0)
