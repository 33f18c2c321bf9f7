"""Checkpoints: how far a target has applied a source's outbox, per channel.

A checkpoint lives on the *target* and advances in the same transaction as
the effects of the events it covers (spec invariant 3), so a crash anywhere
leaves the two consistent: a restarted pass resumes after the last
committed batch, and never re-applies or skips one. This is eventsourcing's
tracking record, one row per (source, channel) instead of one per event.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator.dialects import Dialect
from replicator.tables import checkpoints

#: The channel every table belongs to unless the configuration assigns it another.
DEFAULT_CHANNEL = "default"

_COLUMNS = ("source", "channel", "position", "updated_at", "log_id")


def get(conn: Connection, source: str, channel: str, log_id: str | None = None) -> int:
    """The source position applied up to on this node; 0 if never synced,
    and 0 when it counts positions of another log than ``log_id`` (the
    source was made anew and numbers its outbox from 1 again)."""
    return stored(conn, source, channel, log_id) or 0


def stored(conn: Connection, source: str, channel: str, log_id: str | None = None) -> int | None:
    """As :func:`get`, but None when there is no checkpoint at all."""
    c = checkpoints.c
    found = conn.execute(
        sa.select(c.position, c.log_id).where(c.source == source, c.channel == channel)
    ).first()
    if found is None:
        return None
    if log_id and found.log_id and found.log_id != log_id:
        return 0
    return found.position


def position(conn: Connection, source: str, channel: str, log_id: str | None) -> int | None:
    """The position applied up to on this node, None when there is no
    checkpoint of ``source``'s log ``log_id`` (never applied, or applied
    from a log the source has since made anew)."""
    c = checkpoints.c
    found = conn.execute(
        sa.select(c.position, c.log_id).where(c.source == source, c.channel == channel)
    ).first()
    if found is None or (log_id and found.log_id and found.log_id != log_id):
        return None
    return found.position


#: How the channels of the vector sinks that follow a node's own log begin
#: (``sink:NAME``); the items they park carry it as their policy.
SINK_PREFIX = "sink:"


def followed(conn: Connection, node: str) -> bool:
    """Whether a vector sink follows this node's log (it has registered a
    checkpoint on it): then the node logs what it applies, too."""
    c = checkpoints.c
    # The node's few checkpoints, matched here: a LIKE on the channel cost
    # DuckDB 6 ms per batch of a pass.
    channels = conn.execute(sa.select(c.channel).where(c.source == node)).scalars()
    return any(channel.startswith(SINK_PREFIX) for channel in channels)


def advance(
    conn: Connection,
    dialect: Dialect,
    source: str,
    channel: str,
    position: int,
    now: dt.datetime,
    log_id: str | None = None,
) -> None:
    """Record that everything up to ``position`` of the source's log
    ``log_id`` is applied (in ``conn``'s transaction, which must be the one
    that applied it)."""
    naive_utc = now.astimezone(dt.UTC).replace(tzinfo=None)
    dialect.upsert_rows(
        conn, checkpoints, _COLUMNS, [(source, channel, position, naive_utc, log_id)]
    )


def all_of(conn: Connection) -> dict[tuple[str, str], int]:
    """Every checkpoint on this node: (source, channel) -> position."""
    c = checkpoints.c
    return {(s, ch): p for s, ch, p in conn.execute(sa.select(c.source, c.channel, c.position))}


def of_log(conn: Connection, source: str, log_id: str) -> dict[str, int]:
    """This node's checkpoints for ``source`` by channel, counting only those
    of its log ``log_id`` (others as 0)."""
    c = checkpoints.c
    rows = conn.execute(sa.select(c.channel, c.position, c.log_id).where(c.source == source)).all()
    return {ch: (p if not lid or lid == log_id else 0) for ch, p, lid in rows}
