"""Where replication stands now: per link and channel, how far the target
has applied the source's log and how far behind it is; per node, whether
it can be reached and how many review items it has open; per vector sink,
its lag. Read-only, and a node that cannot be reached is reported, not
raised (``replicator status``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
import sqlalchemy as sa

from replicator import checkpoints, keys, outbox, parking, retention
from replicator.application import Replicator
from replicator.clock import to_datetime, utcnow
from replicator.errors import ReplicatorError, describe, not_initialized
from replicator.remote import Gateway
from replicator.sync import SyncPass
from replicator.tables import sync_runs


class LinkStatus(msgspec.Struct, kw_only=True):
    """One link and channel. ``head`` is the source's last position and
    ``checkpoint`` the target's (None: it has applied nothing of the
    source's current log yet). ``lag`` counts the events this link has
    still to carry (those the pass would read: a local's own, the server's
    but for the target's own, of the channel's tables), ``lag_seconds``
    how long ago the oldest of them was made, by its origin's hybrid clock
    (0 when none): a change an offline device made days ago counts days. ``last_sync`` is the end
    of its last successful pass (ISO 8601, UTC). ``syncing``: a pass over
    the link is running now, by ``runner`` (whoever holds the link).
    ``reachable`` is False when either node cannot be read, ``error`` says
    why; the figures it could not read are None."""

    source: str
    target: str
    channel: str
    head: int | None = None
    checkpoint: int | None = None
    lag: int | None = None
    lag_seconds: float | None = None
    last_sync: str | None = None
    syncing: bool = False
    runner: str | None = None
    reachable: bool = True
    error: str | None = None


class NodeStatus(msgspec.Struct, kw_only=True):
    """One node: ``reachable`` False when it could not be read (``error``
    says why); ``initialized`` False when it answers but has no replicator
    tables (``error`` then says to run ``replicator init``)."""

    name: str
    role: str
    url: str  # its password masked
    reachable: bool = True
    initialized: bool = True
    error: str | None = None
    head: int | None = None
    open_review_items: int | None = None
    #: Keys left in the blocks leased to it, by integer-keyed table (see
    #: :mod:`replicator.keys`); empty when it holds none.
    keys: dict[str, int] = {}


class SinkStatus(msgspec.Struct, kw_only=True):
    sink: str
    node: str
    lag: int | None = None
    documents: int | None = None  # None: the collection is missing (or unreadable)
    runner: str | None = None  # who runs it now (holds its lock)
    error: str | None = None


class Status(msgspec.Struct, kw_only=True):
    links: list[LinkStatus]
    nodes: list[NodeStatus]
    sinks: list[SinkStatus] = []
    open_review_items: int = 0

    @property
    def reachable(self) -> bool:
        return all(n.reachable for n in self.nodes)

    @property
    def ok(self) -> bool:
        """Every node reachable and initialized."""
        return all(n.reachable and n.initialized for n in self.nodes)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


def status(replicator: Replicator, now: dt.datetime | None = None) -> Status:
    """Read the state of every link, node and sink (see :class:`Status`)."""
    now = now or utcnow()
    logs: dict[str, str | None] = {}  # node -> the identity of its log
    nodes = {name: _node(node, logs) for name, node in replicator.nodes.items()}
    runners = _runners(replicator, nodes)
    links = [_link(p, nodes, logs, runners, now) for p in replicator.passes()]
    sinks = [_sink(replicator, name, sink, nodes) for name, sink in replicator.sinks.items()]
    return Status(
        links=links,
        nodes=list(nodes.values()),
        sinks=sinks,
        open_review_items=sum(n.open_review_items or 0 for n in nodes.values()),
    )


def _node(node: Any, logs: dict[str, str | None]) -> NodeStatus:
    found = NodeStatus(name=node.name, role=node.role, url=node.masked_url)
    try:
        if isinstance(node, Gateway):
            # The server's own queue and keys are not a device's to read.
            bounds = node.bounds()
            logs[node.name], found.head = bounds.log_id, bounds.horizon
            return found
        with node.connect() as conn:
            logs[node.name] = retention.log_id(conn)
            found.head = outbox.head(conn)
            found.open_review_items = parking.open_count(conn)
            found.keys = keys.remaining(conn)
    except ReplicatorError as e:
        if not_initialized(e):
            found.initialized = False
        else:
            found.reachable = False
        found.error = describe(e)
    return found


def _runners(
    replicator: Replicator, nodes: dict[str, NodeStatus]
) -> dict[str, tuple[str | None, bool]]:
    """Per local: who holds its link, and whether a pass is running (not
    asked of a server that could not be read: one wait for it is enough)."""
    found: dict[str, tuple[str | None, bool]] = {}
    server = nodes[replicator.server.name]
    if not (server.reachable and server.initialized):
        return found
    for local in replicator.config.locals:
        try:
            holder = replicator.lock(local).holder()
            running = replicator.lock(local, "pass").holder() is not None
        except ReplicatorError:
            holder, running = None, False
        found[local] = (holder, running)
    return found


def _link(
    sync_pass: SyncPass,
    nodes: dict[str, NodeStatus],
    logs: dict[str, str | None],
    runners: dict[str, tuple[str | None, bool]],
    now: dt.datetime,
) -> LinkStatus:
    source, target = sync_pass.source, sync_pass.target
    local = source.name if source.role == "local" else target.name
    runner, running = runners.get(local, (None, False))
    found = LinkStatus(
        source=source.name,
        target=target.name,
        channel=sync_pass.channel,
        head=nodes[source.name].head,
        syncing=running,
        runner=runner,
    )
    for end in (source, target):  # a node that could not be read is not asked again
        if not (nodes[end.name].reachable and nodes[end.name].initialized):
            found.reachable, found.error = False, f"{end.name}: {nodes[end.name].error}"
            return found
    try:
        if isinstance(target, Gateway):
            found.checkpoint = target.checkpoint(sync_pass.channel, logs.get(source.name))
        else:
            with target.connect() as conn:
                found.checkpoint = checkpoints.position(
                    conn, source.name, sync_pass.channel, logs.get(source.name)
                )
        # A device records its passes over a gateway itself.
        recorder = source if isinstance(target, Gateway) else target
        with recorder.connect() as conn:
            found.last_sync = _last_success(conn, sync_pass)
        if isinstance(source, Gateway):
            return found  # what the server has for the device only the server counts
        with source.connect() as conn:
            found.lag, oldest = outbox.pending(
                conn, after=max(found.checkpoint or 0, 0), **sync_pass.reads()
            )
        found.lag_seconds = (
            0.0 if oldest is None else max(0.0, (now - to_datetime(oldest)).total_seconds())
        )
    except ReplicatorError as e:
        found.reachable, found.error = False, describe(e)
    return found


def _last_success(conn: Any, sync_pass: SyncPass) -> str | None:
    """The end of the link's last successful pass recorded on this node."""
    c = sync_runs.c
    last = conn.execute(
        sa.select(sa.func.max(c.finished_at)).where(
            c.source == sync_pass.source.name,
            c.target == sync_pass.target.name,
            c.channel == sync_pass.channel,
            c.status == "ok",
        )
    ).scalar()
    return iso(last)


def iso(moment: dt.datetime | None) -> str | None:
    """A stored (naive UTC) time as ISO 8601 text with a ``Z``."""
    if moment is None:
        return None
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"


def _sink(replicator: Replicator, name: str, sink: Any, nodes: dict[str, NodeStatus]) -> SinkStatus:
    found = SinkStatus(sink=name, node=sink.node.name)
    node = nodes.get(sink.node.name)
    try:
        # The lock file and the collection are local files: read even when
        # the node is away.
        found.runner = replicator.lock(name, "sink").holder()
        if node is not None and not (node.reachable and node.initialized):
            # Not asked again: one wait for a node that does not answer is enough.
            found.error = f"{node.name}: {node.error}"
        else:
            found.lag = sink.lag()
        found.documents = sink.count()
    except ReplicatorError as e:
        found.error = describe(e)
    return found
