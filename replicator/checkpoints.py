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

_COLUMNS = ("source", "channel", "position", "updated_at")


def get(conn: Connection, source: str, channel: str) -> int:
    """The source position applied up to on this node; 0 if never synced."""
    c = checkpoints.c
    position = conn.execute(
        sa.select(c.position).where(c.source == source, c.channel == channel)
    ).scalar()
    return position or 0


def advance(
    conn: Connection, dialect: Dialect, source: str, channel: str, position: int, now: dt.datetime
) -> None:
    """Record that everything up to ``position`` is applied (in ``conn``'s
    transaction, which must be the one that applied it)."""
    naive_utc = now.astimezone(dt.UTC).replace(tzinfo=None)
    dialect.upsert_rows(conn, checkpoints, _COLUMNS, [(source, channel, position, naive_utc)])


def all_of(conn: Connection) -> dict[tuple[str, str], int]:
    """Every checkpoint on this node: (source, channel) -> position."""
    c = checkpoints.c
    return {(s, ch): p for s, ch, p in conn.execute(sa.select(c.source, c.channel, c.position))}
