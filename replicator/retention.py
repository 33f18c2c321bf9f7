"""Retention: delete outbox events that every reader has applied and that
are older than the retention period, and refuse readers that fell behind.

Each outbox has its readers: the server's is read by every configured
local, a local's by the server. An event may go once every reader's
checkpoint (on every channel) has passed it and it is older than the
retention period. Each outbox records how far it has been pruned
(``replicator_log``); a reader whose checkpoint is below that has lost
events it never applied, and a pass from that outbox refuses to run for it
(see :func:`check_reader`) instead of silently skipping them: it must be
emptied and bootstrapped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator import checkpoints
from replicator.clock import from_datetime
from replicator.errors import ReplicatorError
from replicator.node import Node
from replicator.tables import log, outbox


class Pruned(msgspec.Struct, kw_only=True):
    """One outbox's pruning: events deleted, the position it is now pruned
    through, the lowest checkpoint of its readers, and readers that are
    behind it (by name, with their checkpoint)."""

    node: str
    deleted: int
    through: int
    acknowledged: int
    behind: dict[str, int] = {}
    unreachable: list[str] = []


class PruneResult(msgspec.Struct, kw_only=True):
    outboxes: list[Pruned]

    @property
    def behind(self) -> dict[str, str]:
        """Reader -> the outbox it fell behind."""
        return {reader: p.node for p in self.outboxes for reader in p.behind}

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


def pruned_through(conn: Connection) -> int:
    """The position up to which this node's outbox may have been pruned (0: never)."""
    return conn.execute(sa.select(log.c.pruned_position).where(log.c.id == 1)).scalar() or 0


def log_id(conn: Connection) -> str | None:
    """The identity of this node's outbox (see ``replicator_log``)."""
    return conn.execute(sa.select(log.c.log_id).where(log.c.id == 1)).scalar()


def check_reader(source: str, reader: str, checkpoint: int, through: int) -> None:
    """Raise when ``reader``'s checkpoint for ``source`` is below the
    position ``source`` has pruned ``through``: the events between are gone."""
    if checkpoint < through:
        raise ReplicatorError(
            f"node {reader} is behind {source}'s pruned log: it has applied up to "
            f"position {checkpoint}, but events up to {through} were deleted by retention. "
            f"Empty it (delete its database or its app tables' rows and replicator tables) "
            f"and run `replicator bootstrap --node {reader}`"
        )


def prune(
    outboxes: list[tuple[Node, list[tuple[Node, list[str]]]]],
    retention: dt.timedelta,
    now: Callable[[], dt.datetime],
) -> PruneResult:
    """Prune each ``(node, its readers with their channels)``: delete the
    events every reader has applied on each of its channels and that are
    older than ``retention``. (A node whose vector sinks follow its log is
    a reader of its own outbox, on the sinks' channels.)"""
    result = PruneResult(outboxes=[])
    cutoff = from_datetime(now() - retention)
    for node, readers in outboxes:
        positions: dict[str, int] = {}
        unreachable = []
        with node.connect() as conn:
            identity = log_id(conn)
        for reader, channels in readers:
            try:
                with reader.connect() as conn:
                    stored = checkpoints.of_log(conn, node.name, identity)
            except ReplicatorError:
                unreachable.append(reader.name)
                continue
            positions[reader.name] = min(stored.get(ch, 0) for ch in channels)
        # An unreachable reader may need everything: keep it all.
        acknowledged = 0 if unreachable else min(positions.values(), default=0)
        with node.begin() as conn:
            c = outbox.c
            # The newest event always stays: SQLite numbers a new row after
            # the largest one left, and a position must never come back.
            newest = conn.execute(sa.select(sa.func.max(c.position))).scalar() or 0
            doomed = sa.and_(c.position <= acknowledged, c.position < newest, c.hlc < cutoff)
            deleted, last = conn.execute(
                sa.select(sa.func.count(), sa.func.max(c.position)).where(doomed)
            ).one()
            if deleted:
                conn.execute(outbox.delete().where(doomed))
            through = max(pruned_through(conn), last or 0)
            if last:
                conn.execute(
                    log.update()
                    .where(log.c.id == 1)
                    .values(
                        pruned_position=through,
                        pruned_at=now().astimezone(dt.UTC).replace(tzinfo=None),
                    )
                )
        result.outboxes.append(
            Pruned(
                node=node.name,
                deleted=deleted,
                through=through,
                acknowledged=acknowledged,
                behind={r: p for r, p in positions.items() if p < through},
                unreachable=unreachable,
            )
        )
    return result
