"""How replication has done: the passes recorded in every node's
``replicator_sync_runs`` over the last days, totalled and per link
(``replicator stats``). Only recorded figures; a node that cannot be read
is named, and its runs are missing from the totals.

A pass is recorded once, on its target (on its source when the target
could not be reached), so the nodes' records add up without overlap.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any

import msgspec
import sqlalchemy as sa

from replicator.application import Replicator
from replicator.clock import utcnow
from replicator.errors import ConfigurationError, ReplicatorError, describe
from replicator.status import iso
from replicator.tables import sync_runs


class Totals(msgspec.Struct, kw_only=True):
    """Recorded passes: how many (``succeeded`` ended ``ok``; ``deferred``
    found the source's writers holding its outbox and read nothing;
    ``failed``), the events they applied, the conflicts settled or parked
    (``conflicts_by_policy`` by the policy that did), what they parked,
    their mean and 95th-percentile duration in seconds (None without a
    pass), and when the last successful one ended (ISO 8601, UTC)."""

    passes: int = 0
    succeeded: int = 0
    deferred: int = 0
    failed: int = 0
    read: int = 0
    applied: int = 0
    conflicts: int = 0
    conflicts_by_policy: dict[str, int] = {}
    parked: int = 0
    mean_seconds: float | None = None
    p95_seconds: float | None = None
    last_success: str | None = None
    last_failure: str | None = None
    last_error: str | None = None


class LinkTotals(Totals, kw_only=True):
    source: str
    target: str
    channel: str


class Stats(Totals, kw_only=True):
    """The totals of every recorded pass since ``since`` (``days`` ago),
    and the same per link and channel in ``links``."""

    days: float
    since: str
    links: list[LinkTotals] = []
    unreachable: dict[str, str] = {}

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


_COLUMNS = (
    "source",
    "target",
    "channel",
    "finished_at",
    "status",
    "events_read",
    "events_applied",
    "conflicts",
    "conflict_policies",
    "parked",
    "seconds",
    "error",
)


def stats(replicator: Replicator, days: float = 7, now: dt.datetime | None = None) -> Stats:
    """The recorded passes of the last ``days`` days, on every node."""
    if not days > 0:
        raise ConfigurationError(f"days must be more than 0, got {days:g}")
    now = now or utcnow()
    since = (now - dt.timedelta(days=days)).astimezone(dt.UTC).replace(tzinfo=None)
    runs: list[Any] = []
    unreachable = {}
    c = sync_runs.c
    select = (
        sa.select(*(c[name] for name in _COLUMNS))
        .where(c.started_at >= since)
        .order_by(c.started_at)
    )
    for name, node in replicator.nodes.items():
        if node is replicator.gateway:
            continue  # a device records its own passes
        try:
            with node.connect() as conn:
                runs.extend(conn.execute(select).all())
        except ReplicatorError as e:
            unreachable[name] = describe(e)
    by_link: dict[tuple[str, str, str], list[Any]] = {}
    for run in runs:
        by_link.setdefault((run.source, run.target, run.channel), []).append(run)
    result = Stats(days=days, since=iso(since) or "", unreachable=unreachable)
    _total(result, runs)
    for (source, target, channel), link_runs in sorted(by_link.items()):
        link = LinkTotals(source=source, target=target, channel=channel)
        _total(link, link_runs)
        result.links.append(link)
    return result


def _total(totals: Totals, runs: Iterable[Any]) -> None:
    seconds = []
    policies: dict[str, int] = {}
    last_success = last_failure = None
    for run in runs:
        totals.passes += 1
        if run.status == "ok":
            totals.succeeded += 1
        elif run.status == "deferred":
            totals.deferred += 1
        else:
            totals.failed += 1
            if last_failure is None or run.finished_at >= last_failure:
                last_failure, totals.last_error = run.finished_at, run.error
        if run.status == "ok" and (last_success is None or run.finished_at > last_success):
            last_success = run.finished_at
        totals.read += run.events_read
        totals.applied += run.events_applied
        totals.conflicts += run.conflicts
        totals.parked += run.parked
        for policy, n in msgspec.json.decode(run.conflict_policies or "{}").items():
            policies[policy] = policies.get(policy, 0) + n
        seconds.append(run.seconds)
    totals.conflicts_by_policy = dict(sorted(policies.items()))
    if seconds:
        totals.mean_seconds = round(sum(seconds) / len(seconds), 6)
        totals.p95_seconds = round(percentile(seconds, 95), 6)
    totals.last_success, totals.last_failure = iso(last_success), iso(last_failure)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]
