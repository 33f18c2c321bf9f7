"""The application: every link, channel and sink of a configuration, run as
one :class:`Replicator`.

The engine below (:mod:`replicator.sync`) runs one pass over one link and
channel; this layer wires a :class:`~replicator.config.Config` into nodes,
passes, locks, bootstraps, sinks, reviews and pruning (as eventsourcing's
application sits on its recorders). One ``sync`` runs local -> server for
every local first, then server -> local, so it carries a change from one
local through the server to every other local.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Literal

import msgspec
from sqlalchemy.engine import Engine

from replicator import conflicts, locks, outbox, precision, remote, retention
from replicator.bootstrap import BootstrapResult, is_empty
from replicator.bootstrap import bootstrap as bootstrap_node
from replicator.checkpoints import DEFAULT_CHANNEL
from replicator.clock import HybridLogicalClock, utcnow
from replicator.config import Config, duration
from replicator.errors import (
    ConfigurationError,
    ConnectivityError,
    DatabaseError,
    ReplicatorError,
    SchemaError,
    describe,
)
from replicator.locks import Lock
from replicator.node import Node
from replicator.remote import Gateway, PullPass, PushPass, is_gateway_url
from replicator.retention import PruneResult
from replicator.review import ReviewQueue
from replicator.sink import ChromaSink, SinkResult, check
from replicator.sync import PassProgress, PassResult, SyncPass, settlement

Direction = Literal["up", "down", "bidirectional"]


class SyncResult(msgspec.Struct, kw_only=True):
    """The passes of one ``sync``, in the order they ran, and the empty
    locals it bootstrapped first: each local's name and its
    :class:`~replicator.bootstrap.BootstrapResult` (the position it got,
    the rows it was given per table)."""

    passes: list[PassResult]
    bootstrapped: dict[str, BootstrapResult] = {}
    sinks: list[SinkResult] = []  # run after the passes
    # What another runner holds, left alone: a local's name for its link,
    # sink:NAME for a sink; each with its holder.
    held: dict[str, str] = {}

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.passes) and all(s.ok for s in self.sinks)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


#: How :attr:`SyncResult.held` names a sink.
SINK_HELD = "sink:"


def _local_of_link(source: Node, target: Node) -> str:
    return source.name if source.role == "local" else target.name


def _local_of(sync_pass: SyncPass) -> str:
    """The local end of a pass's link."""
    return _local_of_link(sync_pass.source, sync_pass.target)


def _gateway(config: Config, name: str) -> Gateway:
    """The server ``name`` of ``config``, reached through a sync gateway
    with the token the config gives or names."""
    settings = config.nodes[name]
    token = settings.token
    if not token:
        token = os.environ.get(settings.token_env, "").strip()
        if not token:
            raise ConfigurationError(
                f"{config.path or '<config>'}: nodes.{name}.token_env: the environment "
                f"variable {settings.token_env} is not set (it should hold this device's token)"
            )
    return Gateway(name, settings.url, token, connect_timeout=settings.connect_timeout)


def _check_policies(config: Config) -> None:
    """Import every custom policy now, so a bad one is a configuration
    error naming its key, not a failure in the middle of a pass."""
    named = [("replication.policy", config.replication.policy)] + [
        (f"tables.{table}.policy", s.policy)
        for table, s in config.tables.items()
        if s.policy is not None
    ]
    for key, name in named:
        try:
            conflicts.load(name)
        except ConfigurationError as e:
            raise ConfigurationError(f"{config.path or '<config>'}: {key}: {e}") from e


class Replicator:
    """Every link and channel of a configuration.

    ``engines`` maps node names to engines to use instead of making new ones
    (an app's own engine for its DuckDB file).
    """

    def __init__(self, config: Config, engines: Mapping[str, Engine] | None = None) -> None:
        engines = engines or {}
        self.config = config
        self.nodes: dict[str, Node] = {}
        self.gateway: Gateway | None = None
        for name, settings in config.nodes.items():
            if is_gateway_url(settings.url):
                self.gateway = _gateway(config, name)
                self.nodes[name] = self.gateway  # type: ignore[assignment]
            else:
                self.nodes[name] = Node.from_config(name, settings, engines.get(name))
        _check_policies(config)
        self.sinks = self._sinks()

    @property
    def server(self) -> Node:
        """The server node (a :class:`~replicator.remote.Gateway` when this
        is a device that reaches it through the sync gateway)."""
        return self.nodes[self.config.server]

    @property
    def locals(self) -> list[Node]:
        return [self.nodes[name] for name in self.config.locals]

    def channels(self) -> list[tuple[str, frozenset[str] | None, frozenset[str], int]]:
        """``(name, tables, excluded tables, batch size)`` per channel, by priority."""
        assigned: dict[str, set[str]] = {}
        for table, settings in self.config.tables.items():
            assigned.setdefault(settings.channel, set()).add(table)
        elsewhere = frozenset(
            t for name, tables in assigned.items() if name != DEFAULT_CHANNEL for t in tables
        )
        default_size = self.config.replication.batch_size
        found = [(DEFAULT_CHANNEL, None, elsewhere, default_size, 100)]
        for name, settings in self.config.channels.items():
            size = settings.batch_size or default_size
            if name == DEFAULT_CHANNEL:
                found[0] = (name, None, elsewhere, size, settings.priority)
            else:
                found.append(
                    (name, frozenset(assigned.get(name, ())), frozenset(), size, settings.priority)
                )
        found.sort(key=lambda c: (c[4], c[0]))
        return [c[:4] for c in found]

    def links(self, direction: Direction | None = None) -> list[tuple[Node, Node]]:
        """The (source, target) pairs of a sync, in the order they run."""
        direction = direction or self.config.replication.direction
        if direction not in ("up", "down", "bidirectional"):
            raise ConfigurationError(
                f"direction must be up, down or bidirectional, not {direction!r}"
            )
        up = [(node, self.server) for node in self.locals]
        down = [(self.server, node) for node in self.locals]
        return {"up": up, "down": down, "bidirectional": up + down}[direction]

    @property
    def policies(self) -> dict[str, str]:
        """The tables that name a conflict policy of their own, with it."""
        return {t: s.policy for t, s in self.config.tables.items() if s.policy is not None}

    def passes(self, direction: Direction | None = None) -> Iterable[SyncPass]:
        unscoped = {t: s.unscoped for t, s in self.config.tables.items()}
        for source, target in self.links(direction):
            kind = SyncPass
            if self.gateway is not None:
                kind = PullPass if source is self.server else PushPass
            for channel, tables, excluded, size in self.channels():
                yield kind(
                    source,
                    target,
                    channel=channel,
                    tables=tables,
                    exclude_tables=excluded,
                    batch_size=size,
                    key_block=self.config.replication.key_block,
                    unscoped=unscoped,
                    policy=self.config.replication.policy,
                    policies=self.policies,
                )

    def sync(
        self,
        direction: Direction | None = None,
        *,
        stop: Callable[[], bool] | None = None,
        progress: Callable[[PassProgress], None] | None = None,
    ) -> SyncResult:
        """One pass per link and channel; a failing channel does not stop
        the others (its result says why). A local that is empty (new, or
        emptied) is bootstrapped before its first pass from the server
        (``result.bootstrapped`` says with what). A local that lacks tables
        the server's passes would carry is not: its passes from the server
        do not run but fail, saying which tables to create (its checkpoint
        must not pass rows it could not take); the next sync after they
        exist bootstraps it. A local with a column the server keeps less
        precisely (see :mod:`replicator.precision`) gets no pass either way:
        they fail, naming the column and the fix. Then each vector sink
        follows its node's log.

        A link (a local and the server) that another runner is working on
        (``replicator run``, a background sync, another ``sync``) is left
        alone: ``result.held`` names it and its holder. ``stop`` is asked
        after every committed batch; once it returns True, nothing more
        runs. ``progress`` gets each pass's :class:`PassProgress` after
        every committed batch (see :meth:`SyncPass.run`).
        """
        result = SyncResult(passes=[])
        stop = stop or (lambda: False)
        tried: dict[str, BootstrapResult | None] = {}
        refused: dict[str, str] = {}  # a local that lacks tables it needs: why
        # A local whose values the server would round: why (None: it would not).
        # Asked once per sync and local, before anything is written.
        lossy: dict[str, str | None] = {}
        away = self._away(direction)
        with self._held(direction, result.held, away) as mine:
            for sync_pass in self.passes(direction):
                if stop() or _local_of(sync_pass) not in mine:
                    continue
                ends = [n.name for n in (sync_pass.source, sync_pass.target) if n.name in away]
                if ends:  # said once per node, not once per pass and lock
                    result.passes.append(sync_pass.refused(away[ends[0]], unreachable=ends))
                    continue
                local = _local_of(sync_pass)
                if local not in lossy:
                    try:
                        precision.check(self.server, self.nodes[local])
                        lossy[local] = None
                    except DatabaseError:
                        lossy[local] = None  # the pass says what is wrong with the node
                    except SchemaError as e:
                        lossy[local] = str(e)
                    except ReplicatorError:
                        lossy[local] = None  # the pass says what is wrong with the node
                why = lossy[local]
                if why is not None:
                    # Both ways: what a local sends would be rounded on the
                    # server, and the replicas would differ for good.
                    result.passes.append(sync_pass.refused(why))
                    continue
                target = sync_pass.target
                if target.role == "local" and target.name not in tried:
                    try:
                        tried[target.name] = self.bootstrap_if_empty(target)
                    except SchemaError as e:
                        tried[target.name] = None
                        refused[target.name] = str(e)
                if target.name in refused:
                    # Its checkpoint must not move past rows it could not take.
                    result.passes.append(sync_pass.refused(refused[target.name]))
                    continue
                result.passes.append(sync_pass.run(stop, progress=progress))
            result.sinks = [
                sink.away(away[sink.node.name]) if sink.node.name in away else sink.run()
                for name, sink in self.sinks.items()
                if SINK_HELD + name in mine and not stop()
            ]
        result.bootstrapped = {n: b for n, b in tried.items() if b is not None}
        return result

    def lock(self, name: str, kind: Literal["link", "pass", "sink"] = "link") -> Lock:
        """A lock that one runner at a time holds (see :mod:`replicator.locks`):
        ``link`` by whatever works on the link between the server and the
        local ``name``, ``pass`` while a pass runs over it (both on the
        server, where every runner of the link goes), ``sink`` by whatever
        runs the sink ``name`` (a lock file in its collection's directory,
        which every runner of the sink opens, even while the server is away)."""
        if kind == "sink":
            sink = self.sink(name)
            return locks.in_directory(sink.path, f"replicator-sink-{name}.lock", name)
        if self.gateway is not None:
            # A device cannot lock on the server: its runners share its own database.
            return self.node(name).lock(f"{kind}-{name}")
        return self.server.lock(f"{kind}-{name}")

    def _away(self, direction: Direction | None) -> dict[str, str]:
        """The nodes of ``direction``'s links that cannot be reached, each
        with why: one connection attempt each (the pool keeps it for the
        passes), so a server that does not answer costs one connect timeout
        per sync, not one per pass and lock."""
        away = {}
        nodes = [n for link in self.links(direction) for n in link]
        nodes += [sink.node for sink in self.sinks.values()]
        for node in dict.fromkeys(nodes):
            try:
                with node.connect():
                    pass
            except ConnectivityError as e:
                away[node.name] = str(e)
        return away

    @contextmanager
    def _held(
        self, direction: Direction | None, held: dict[str, str], away: Mapping[str, str]
    ) -> Iterator[set[str]]:
        """Take the locks of every link of ``direction`` (and its pass lock)
        and of every sink; yields what was taken (a local's name for its
        link, ``sink:NAME`` for a sink) and fills ``held`` with the others
        and their holders. A server that cannot be reached cannot be locked:
        its passes and sinks then run anyway, and fail saying why; any other
        failure to lock (a schema without ``replicator_runners``) is raised.
        A server in ``away`` is not asked."""
        holder = locks.holder_name("replicator sync")
        taken: list[Lock] = []
        mine: set[str] = set()
        wanted = [
            (local, self.lock(local), self.lock(local, "pass"))
            for local in dict.fromkeys(_local_of_link(s, t) for s, t in self.links(direction))
        ] + [(SINK_HELD + name, self.lock(name, "sink"), None) for name in self.sinks]
        try:
            for name, lock, running in wanted:
                if running is not None and self.server.name in away:
                    mine.add(name)  # its passes say the server is away
                    continue
                try:
                    if not lock.acquire(holder):
                        held[name] = lock.holder() or "another runner"
                        continue
                    taken.append(lock)
                    if running is not None and running.acquire(holder):
                        taken.append(running)
                except ConnectivityError:
                    pass  # the server cannot be reached: what runs will say so
                mine.add(name)
            yield mine
        finally:
            for lock in reversed(taken):
                with suppress(ReplicatorError):
                    lock.release()

    def bootstrap(
        self, name: str, progress: Callable[[int, int | None], None] | None = None
    ) -> BootstrapResult:
        """Bootstrap the empty local ``name`` from the server (see
        :mod:`replicator.bootstrap`); ``progress(rows done, rows in all)``."""
        node = self.node(name)
        if node.role != "local":
            raise ConfigurationError(f"node {name} is the server; only a local is bootstrapped")
        try:
            if self.gateway is not None:
                return remote.bootstrap(
                    self.gateway,
                    node,
                    channels=[channel for channel, *_ in self.channels()],
                    progress=progress,
                )
            return bootstrap_node(
                self.server,
                node,
                channels=[channel for channel, *_ in self.channels()],
                unscoped={t: s.unscoped for t, s in self.config.tables.items()},
                progress=progress,
            )
        except DatabaseError as e:
            raise ReplicatorError(f"bootstrapping {name} failed: {describe(e)}") from e

    def review(
        self,
        *,
        now: Callable[[], dt.datetime] = utcnow,
        clock: HybridLogicalClock | None = None,
    ) -> ReviewQueue:
        """The review queues of every node, as one :class:`~replicator.review.ReviewQueue`
        (``now`` and ``clock`` go to it)."""
        policy, policies = self.config.replication.policy, self.policies
        return ReviewQueue(
            # A device reviews its own queue; the server's is the server's.
            [node for node in self.nodes.values() if node is not self.gateway],
            now=now,
            clock=clock,
            settle=lambda node: settlement(node, policy, policies),
        )

    def bootstrap_if_empty(self, node: Node) -> BootstrapResult | None:
        """Bootstrap the local ``node`` from the server when it is empty and
        the server's log is not; returns what it copied, or None when it
        needed none (or a node could not be reached: its pass says why).

        Raises :class:`SchemaError` when ``node`` lacks tables the server
        has: then no pass from the server may run to it either, or its
        checkpoint would pass rows it never received."""
        try:
            if self.gateway is not None:
                # The local first: asking the gateway costs a request.
                if not is_empty(node) or not self.gateway.bounds().horizon:
                    return None
            else:
                with self.server.connect() as conn:
                    if not outbox.head(conn):
                        return None  # nothing to copy: the log is the whole story
            if not is_empty(node):
                return None
            return self.bootstrap(node.name)
        except DatabaseError:
            return None  # the pass reports what is wrong with the node
        except SchemaError:
            raise
        except ReplicatorError:
            return None  # the pass reports what is wrong with the node

    def prune(self, keep: dt.timedelta | None = None) -> PruneResult:
        """Delete outbox events every reader has applied and older than
        ``keep`` (default: the configured retention); see
        :mod:`replicator.retention`."""
        keep = keep if keep is not None else duration(self.config.replication.retention)
        channels = [channel for channel, *_ in self.channels()]
        # The server reads a local's log only when the locals send theirs.
        up = self.config.replication.direction in ("up", "bidirectional")
        outboxes = [(self.server, [(n, channels) for n in self.locals])] + [
            (node, [(self.server, channels)] if up else []) for node in self.locals
        ]
        if self.gateway is not None:
            # The server prunes its own log; what the server has applied of a
            # device's is not asked for through the gateway yet: a device
            # that sends its changes keeps them.
            outboxes = [(node, []) for node in self.locals if not up]
        for node, readers in outboxes:  # a node's sinks read its own log
            followers = [s.channel for s in self.sinks.values() if s.node is node]
            if followers:
                readers.append((node, followers))
        try:
            return retention.prune(outboxes, keep, utcnow)
        except DatabaseError as e:
            raise ReplicatorError(f"pruning failed: {describe(e)}") from e

    def node(self, name: str) -> Node:
        """The configured node called ``name``; ConfigurationError if none is."""
        if name not in self.nodes:
            known = ", ".join(self.nodes)
            raise ConfigurationError(f"no node {name!r} in {self.config.path} (nodes: {known})")
        return self.nodes[name]

    def _sinks(self) -> dict[str, ChromaSink]:
        """The configured vector sinks (see :mod:`replicator.sink`); a
        relative ``path`` is relative to the configuration file. Empty when
        none are configured."""
        base = Path(self.config.path).parent if self.config.path else Path()
        found: dict[str, ChromaSink] = {}
        for name, settings in self.config.sinks.items():
            try:
                check(name, settings)
            except ConfigurationError as e:
                raise ConfigurationError(f"{self.config.path or '<config>'}: {e}") from e
            found[name] = ChromaSink(
                name, settings, self.nodes[settings.node], path=base / settings.path
            )
        return found

    def sink(self, name: str) -> ChromaSink:
        """The configured sink called ``name``; ConfigurationError if none is."""
        if name not in self.sinks:
            known = ", ".join(self.sinks) or "none are configured"
            raise ConfigurationError(f"no sink {name!r} in {self.config.path} (sinks: {known})")
        return self.sinks[name]

    def close(self) -> None:
        for sink in self.sinks.values():
            sink.close()
        for node in self.nodes.values():
            node.dispose()

    def __enter__(self) -> Replicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SINK_HELD", "Direction", "Replicator", "SyncResult"]
