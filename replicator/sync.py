"""Replication passes: stream a source's outbox after the target's checkpoint
and apply it to the target, batch by batch.

A pass over one *link* (source node -> target node) and one *channel* (a
group of tables with its own checkpoint) runs::

    horizon = the source's commit-order horizon         (Dialect.horizon)
    repeat, one target transaction per batch:
        after  = the target's checkpoint for (source, channel)
        batch  = source events after it, up to the horizon (outbox.read_batch)
        apply the batch; advance the checkpoint; commit  (invariant 3)

so a crash at any point leaves the checkpoint and the applied effects
consistent, and the next pass resumes exactly where the last commit ended.
Each pass is recorded in the target's ``replicator_sync_runs``.

:class:`Replicator` runs every configured link and channel: local -> server
for every local first, then server -> local, so one ``sync`` carries a
change from one local through the server to every other local.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import Any, Literal

import msgspec
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from replicator import checkpoints, conflicts, keys, locks, outbox, precision, retention
from replicator.apply import Counts, Settlement, apply_batch, reject, remove_orphans
from replicator.bootstrap import BootstrapResult, is_empty
from replicator.bootstrap import bootstrap as bootstrap_node
from replicator.checkpoints import DEFAULT_CHANNEL
from replicator.clock import utcnow
from replicator.config import Config
from replicator.errors import (
    ConfigurationError,
    ConnectivityError,
    ReplicatorError,
    SchemaError,
    describe,
)
from replicator.events import Operation
from replicator.locks import Lock
from replicator.node import Node
from replicator.outbox import Entry
from replicator.parking import Reason
from replicator.scope import in_scope
from replicator.tables import sync_runs

Direction = Literal["up", "down", "bidirectional"]


class PassResult(Counts, kw_only=True):
    """What one pass over one link and channel did: its :class:`Counts`
    (``failed``: the events of the batch that could not be applied), and
    how it ended.

    ``status`` is ``ok``, ``deferred`` (the source's writers held the
    outbox too long to establish what has committed: nothing was read this
    time, nothing skipped; the next pass catches up) or ``failed`` (then
    ``error`` says why; the batches committed before the failure stay
    committed). ``conflicts_by_policy`` counts ``conflicts`` by the policy
    that settled or parked them (``identical`` when both sides had made the
    same change).
    """

    source: str
    target: str
    channel: str
    seconds: float = 0.0
    status: str = "ok"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


class PassProgress(msgspec.Struct, frozen=True, kw_only=True):
    """How far a running pass over one link and channel has got, reported
    after each batch it commits: ``read`` and ``applied`` count events as in
    its :class:`PassResult` so far; ``position`` is the source position it
    has seen everything up to, out of ``horizon`` (where this pass stops).
    When the pass ends ``ok``, its last report has ``position == horizon``
    and the counts of its result."""

    source: str
    target: str
    channel: str
    read: int
    applied: int
    position: int
    horizon: int


class SyncResult(msgspec.Struct, kw_only=True):
    """The passes of one ``sync``, in the order they ran, and the empty
    locals it bootstrapped first: each local's name and its
    :class:`~replicator.bootstrap.BootstrapResult` (the position it got,
    the rows it was given per table)."""

    passes: list[PassResult]
    bootstrapped: dict[str, BootstrapResult] = {}
    sinks: list[Any] = []  # each a replicator.sink.SinkResult, run after the passes
    # What another runner holds, left alone: a local's name for its link,
    # sink:NAME for a sink; each with its holder.
    held: dict[str, str] = {}

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.passes) and all(s.ok for s in self.sinks)

    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


class SyncPass:
    """One pass over one link and channel. :meth:`run` it (again and again).

    ``tables`` limits the pass to those tables (None: all), less
    ``exclude_tables``. ``unscoped`` maps a table that has none of a scoped
    local's scope columns to ``"all"`` (replicated whole, the default) or
    ``"none"`` (not replicated to or from that local). When the target is
    the server, conflicts are settled by ``policies`` (table -> policy
    name, see :mod:`replicator.conflicts`), else by ``policy``.
    """

    def __init__(
        self,
        source: Node,
        target: Node,
        *,
        channel: str = DEFAULT_CHANNEL,
        tables: Collection[str] | None = None,
        exclude_tables: Collection[str] = (),
        batch_size: int = 1000,
        unscoped: Mapping[str, str] | None = None,
        policy: str = "latest_timestamp",
        policies: Mapping[str, str] | None = None,
        now: Callable[[], dt.datetime] = utcnow,
        key_block: int = keys.BLOCK,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be at least 1, got {batch_size}")
        self.source, self.target, self.channel = source, target, channel
        self.tables = None if tables is None else frozenset(tables)
        self.exclude_tables = frozenset(exclude_tables)
        self.batch_size = batch_size
        self.key_block = key_block
        self.unscoped = dict(unscoped or {})
        self.now = now
        self.settle = None
        if target.role == "server":
            self.settle = Settlement(
                target.name,
                {t: (name, conflicts.load(name)) for t, name in (policies or {}).items()},
                (policy, conflicts.load(policy)),
            )

    def refused(self, error: str, unreachable: Collection[str] = ()) -> PassResult:
        """The result of this pass when it must not run (its target lacks
        tables the source has, say): ``failed``, ``error`` saying why;
        nothing was read or applied. It is recorded in
        ``replicator_sync_runs`` like a pass that ran, so ``status`` shows
        why the target gets nothing."""
        result = PassResult(
            source=self.source.name,
            target=self.target.name,
            channel=self.channel,
            status="failed",
            error=error,
        )
        self._record(result, self.now(), skip=unreachable)
        return result

    def run(
        self,
        stop: Callable[[], bool] | None = None,
        *,
        record_empty: bool = True,
        progress: Callable[[PassProgress], None] | None = None,
    ) -> PassResult:
        """Apply everything the source has committed after the checkpoint.

        ``stop`` is asked after each committed batch: when it returns True
        the pass ends there (its checkpoint committed; the next pass goes
        on from it). ``progress`` is called with a :class:`PassProgress`
        after each committed batch (never when there is nothing to read).
        The pass is recorded in ``replicator_sync_runs``,
        unless it read nothing and ended ``ok`` and ``record_empty`` is
        False (a runner polling often records its empty passes only once
        per interval). Never raises for a database problem: the result
        says ``failed`` and why (a configuration error is raised).
        """
        result = PassResult(source=self.source.name, target=self.target.name, channel=self.channel)
        started, clock = self.now(), time.perf_counter()
        counts = result  # a pass counts into its result
        unhandled: list[Entry] = []  # the events a failure leaves unapplied
        # The next batch is read (and decoded) in a second thread while this
        # one applies the current batch: the source's reading and the
        # target's writing overlap. The checkpoint stays the authority: a
        # batch read ahead is used only if it starts at the checkpoint that
        # the target transaction reads.
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replicator-read")
        pending: tuple[int, Future] | None = None
        try:
            self._lease_keys()
            with self.source.connect() as conn:
                horizon = self.source.dialect.horizon(conn)
                through = retention.pruned_through(conn)
                log_id = retention.log_id(conn)
            if horizon is None:
                result.status = "deferred"
            while horizon is not None:
                batch, entries = [], []
                try:
                    with self.target.begin() as tconn:
                        self.target.dialect.exclude_writers(tconn)
                        after, applied_to = self._checkpoint(tconn, log_id)
                        # Never skip what retention deleted.
                        retention.check_reader(
                            self.source.name, self.target.name, applied_to, through
                        )
                        if after >= horizon:
                            break
                        if pending is not None and pending[0] == after:
                            batch, reached = pending[1].result()
                        else:
                            batch, reached = self._read(after, horizon)
                        pending = None
                        if reached < horizon:
                            pending = (reached, ahead.submit(self._read, reached, horizon))
                        entries = unhandled = self._in_scope(tconn, batch)
                        applied = self._apply(tconn, entries)
                        self._advance(tconn, reached, started, log_id)
                    counts.add(applied)
                except DBAPIError as e:
                    if not entries or self.target.dialect.refusal(e) is None:
                        raise
                    # The target refused a row (a constraint, a value); which
                    # one, only the database knows, and DuckDB has aborted the
                    # whole transaction. Apply the batch again one event per
                    # transaction, and park the events it refuses.
                    singly = self._apply_singly(entries, reached, started, counts, log_id)
                    for remaining in singly:
                        unhandled = remaining
                counts.read += len(batch) - len(entries)
                counts.skipped += len(batch) - len(entries)
                unhandled = []
                if progress is not None:
                    progress(
                        PassProgress(
                            source=result.source,
                            target=result.target,
                            channel=result.channel,
                            read=result.read,
                            applied=result.applied,
                            position=reached,
                            horizon=horizon,
                        )
                    )
                if stop is not None and stop():
                    break
        except ConfigurationError:
            raise
        except (ReplicatorError, SQLAlchemyError) as e:
            result.status = "failed"
            result.error = describe(e)
            counts.failed += len(unhandled)
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)
        result.seconds = round(time.perf_counter() - clock, 6)
        if record_empty or result.read or result.status != "ok":
            self._record(result, started)
        return result

    def _lease_keys(self) -> None:
        """Keep the local of a link between a local and the server a block of
        keys ahead for its integer-keyed tables (see :mod:`replicator.keys`)."""
        ends = {self.source.role: self.source, self.target.role: self.target}
        if len(ends) == 2:
            keys.refill(ends["local"], ends["server"], self.key_block)

    def _checkpoint(self, tconn: Any, log_id: str | None) -> tuple[int, int]:
        """Where this channel resumes, and how far the target has applied
        the source's log for the retention check.

        The first is the channel's checkpoint (0 when it counts an older
        copy of the source's log, or there is none yet). A channel without
        one, while the source's other channels have theirs, is new: its
        tables were carried by those channels so far, so it reads from the
        start (what is applied is skipped) but is as far as their lowest.
        """
        name = self.source.name
        if checkpoints.exists(tconn, name, self.channel):
            after = checkpoints.get(tconn, name, self.channel, log_id)
            return after, after
        others = checkpoints.of_log(tconn, name, log_id) if log_id else {}
        return 0, min(others.values(), default=0)

    def _apply(self, tconn: Any, entries: list[Entry], careful: bool = False) -> Counts:
        return apply_batch(
            tconn,
            self.target.dialect,
            entries,
            shape_of=lambda table: self.target.shape(tconn, table),
            settle=self.settle,
            now=self.now(),
            careful=careful,
            # The server always logs; a local while a sink follows it.
            log=self.settle is not None or checkpoints.followed(tconn, self.target.name),
            own=self.target.name,
        )

    def _apply_singly(
        self,
        entries: list[Entry],
        reached: int,
        started: dt.datetime,
        counts: Counts,
        log_id: str | None,
    ) -> Iterator[list[Entry]]:
        """Apply ``entries`` one per target transaction (each with its
        checkpoint), parking those the target refuses, into ``counts``.
        Yields the entries not yet handled before handling each."""
        for i, entry in enumerate(entries):
            yield entries[i:]
            upto = reached if i == len(entries) - 1 else entry.position
            try:
                with self.target.begin() as tconn:
                    self.target.dialect.exclude_writers(tconn)
                    counts.add(self._apply(tconn, [entry], careful=True))
                    self._advance(tconn, upto, started, log_id)
            except DBAPIError as e:
                refusal = self.target.dialect.refusal(e)
                if refusal is None:
                    raise
                if self._delete_after_orphans(entry, upto, started, counts, log_id):
                    continue
                with self.target.begin() as tconn:
                    self.target.dialect.exclude_writers(tconn)
                    counts.add(
                        reject(
                            tconn,
                            self.target.dialect,
                            entry,
                            Reason(refusal),
                            f"the target refused the row: {describe(e)}",
                            shape_of=lambda table: self.target.shape(tconn, table),
                            now=self.now(),
                        )
                    )
                    self._advance(tconn, upto, started, log_id)
        yield []

    def _delete_after_orphans(
        self, entry: Entry, upto: int, started: dt.datetime, counts: Counts, log_id: str | None
    ) -> bool:
        """A delete the target refused because rows refer to its row: remove
        (and park) those rows in a transaction of their own, then apply the
        delete in another; whether that worked. DuckDB checks foreign keys
        against the start of a transaction, so a parent and the rows that
        refer to it cannot go in one."""
        if entry.event is None or entry.event.op is not Operation.DELETE:
            return False
        if not self.target.dialect.deletes_children_first_in_own_transaction:
            return False  # refused for another reason: removing its children would not help
        shape_of = self.target.shape
        try:
            with self.target.begin() as tconn:
                self.target.dialect.exclude_writers(tconn)
                swept = remove_orphans(
                    tconn,
                    self.target.dialect,
                    entry,
                    shape_of=lambda table: shape_of(tconn, table),
                    settle=self.settle,
                    now=self.now(),
                )
            with self.target.begin() as tconn:
                self.target.dialect.exclude_writers(tconn)
                applied = self._apply(tconn, [entry], careful=True)
                self._advance(tconn, upto, started, log_id)
        except DBAPIError as e:
            if self.target.dialect.refusal(e) is None:
                raise
            return False
        swept.read = 0
        counts.add(swept)
        counts.add(applied)
        return True

    def _advance(self, tconn: Any, upto: int, started: dt.datetime, log_id: str | None) -> None:
        checkpoints.advance(
            tconn, self.target.dialect, self.source.name, self.channel, upto, started, log_id
        )

    def _read(self, after: int, horizon: int) -> tuple[list[Entry], int]:
        with self.source.connect() as conn:
            return outbox.read_batch(
                conn, after=after, upto=horizon, limit=self.batch_size, **self.reads()
            )

    def reads(self) -> dict[str, Any]:
        """Which of the source's events this pass reads, as the filters of
        :func:`replicator.outbox.read_batch`."""
        # A local's log also holds what it applied; it sends only its own
        # changes. The server sends everything but the target's own.
        own = self.source.role == "local"
        return {
            "origin": self.source.name if own else None,
            "exclude_origin": None if own else self.target.name,
            "tables": self.tables,
            "exclude_tables": self.exclude_tables,
        }

    # --- scopes ------------------------------------------------------------

    def _in_scope(self, tconn: Any, entries: list[Entry]) -> list[Entry]:
        return in_scope(self.source, self.target, self.unscoped, tconn, entries)

    # --- recording -------------------------------------------------------------

    def _record(self, result: PassResult, started: dt.datetime, skip: Collection[str] = ()) -> None:
        row = {
            "source": result.source,
            "target": result.target,
            "channel": result.channel,
            "started_at": _naive(started),
            "finished_at": _naive(self.now()),
            "status": result.status,
            "events_read": result.read,
            "events_applied": result.applied,
            "events_skipped": result.skipped,
            "conflicts": result.conflicts,
            "conflict_policies": msgspec.json.encode(result.conflicts_by_policy).decode(),
            "parked": result.parked,
            "failed": result.failed,
            "seconds": result.seconds,
            "error": result.error,
        }
        # On the target; on the source when the target cannot be reached.
        for node in (self.target, self.source):
            if node.name in skip:
                continue  # known to be away: asking again costs a connect timeout
            try:
                with node.begin() as conn:
                    conn.execute(sync_runs.insert(), row)
                return
            except (ReplicatorError, SQLAlchemyError):
                continue


#: How :attr:`SyncResult.held` names a sink.
SINK_HELD = "sink:"


def _local_of_link(source: Node, target: Node) -> str:
    return source.name if source.role == "local" else target.name


def _local_of(sync_pass: SyncPass) -> str:
    """The local end of a pass's link."""
    return _local_of_link(sync_pass.source, sync_pass.target)


def _naive(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


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


def replicate(source: Node, target: Node, **options: Any) -> PassResult:
    """One pass from ``source`` to ``target``; ``options`` as for :class:`SyncPass`."""
    return SyncPass(source, target, **options).run()


class Replicator:
    """Every link and channel of a configuration.

    ``engines`` maps node names to engines to use instead of making new ones
    (an app's own engine for its DuckDB file).
    """

    def __init__(self, config: Config, engines: Mapping[str, Engine] | None = None) -> None:
        engines = engines or {}
        self.config = config
        self.nodes = {
            name: Node.from_config(name, settings, engines.get(name))
            for name, settings in config.nodes.items()
        }
        _check_policies(config)
        self.sinks = self._sinks()

    @property
    def server(self) -> Node:
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

    def passes(self, direction: Direction | None = None) -> Iterable[SyncPass]:
        unscoped = {t: s.unscoped for t, s in self.config.tables.items()}
        policies = {t: s.policy for t, s in self.config.tables.items() if s.policy is not None}
        for source, target in self.links(direction):
            for channel, tables, excluded, size in self.channels():
                yield SyncPass(
                    source,
                    target,
                    channel=channel,
                    tables=tables,
                    exclude_tables=excluded,
                    batch_size=size,
                    key_block=self.config.replication.key_block,
                    unscoped=unscoped,
                    policy=self.config.replication.policy,
                    policies=policies,
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
                    except SchemaError as e:
                        lossy[local] = str(e)
                    except (ReplicatorError, SQLAlchemyError):
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
        server = self.server
        return server.dialect.lock(server.get_engine(), f"{kind}-{name}")

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
                except (ConnectivityError, OperationalError):
                    pass  # the server cannot be reached: what runs will say so
                mine.add(name)
            yield mine
        finally:
            for lock in reversed(taken):
                with suppress(ReplicatorError, SQLAlchemyError):
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
            return bootstrap_node(
                self.server,
                node,
                channels=[channel for channel, *_ in self.channels()],
                unscoped={t: s.unscoped for t, s in self.config.tables.items()},
                progress=progress,
            )
        except SQLAlchemyError as e:
            raise ReplicatorError(f"bootstrapping {name} failed: {describe(e)}") from e

    def review(self, **options: Any) -> Any:
        """The review queues of every node, as one :class:`replicator.review.ReviewQueue`
        (``options`` go to it)."""
        from replicator.review import ReviewQueue

        return ReviewQueue(self.nodes.values(), **options)

    def bootstrap_if_empty(self, node: Node) -> BootstrapResult | None:
        """Bootstrap the local ``node`` from the server when it is empty and
        the server's log is not; returns what it copied, or None when it
        needed none (or a node could not be reached: its pass says why).

        Raises :class:`SchemaError` when ``node`` lacks tables the server
        has: then no pass from the server may run to it either, or its
        checkpoint would pass rows it never received."""
        try:
            with self.server.connect() as conn:
                if not outbox.head(conn):
                    return None  # nothing to copy: the log is the whole story
            if not is_empty(node):
                return None
            return self.bootstrap(node.name)
        except SchemaError:
            raise
        except (ReplicatorError, SQLAlchemyError):
            return None  # the pass reports what is wrong with the node

    def prune(self, keep: dt.timedelta | None = None) -> Any:
        """Delete outbox events every reader has applied and older than
        ``keep`` (default: the configured retention); see
        :mod:`replicator.retention`. Returns its ``PruneResult``."""
        from replicator.config import duration

        keep = keep if keep is not None else duration(self.config.replication.retention)
        channels = [channel for channel, *_ in self.channels()]
        # The server reads a local's log only when the locals send theirs.
        up = self.config.replication.direction in ("up", "bidirectional")
        outboxes = [(self.server, [(n, channels) for n in self.locals])] + [
            (node, [(self.server, channels)] if up else []) for node in self.locals
        ]
        for node, readers in outboxes:  # a node's sinks read its own log
            followers = [s.channel for s in self.sinks.values() if s.node is node]
            if followers:
                readers.append((node, followers))
        try:
            return retention.prune(outboxes, keep, utcnow)
        except SQLAlchemyError as e:
            raise ReplicatorError(f"pruning failed: {describe(e)}") from e

    def node(self, name: str) -> Node:
        """The configured node called ``name``; ConfigurationError if none is."""
        if name not in self.nodes:
            known = ", ".join(self.nodes)
            raise ConfigurationError(f"no node {name!r} in {self.config.path} (nodes: {known})")
        return self.nodes[name]

    def _sinks(self) -> dict[str, Any]:
        """The configured vector sinks (see :mod:`replicator.sink`); a
        relative ``path`` is relative to the configuration file."""
        if not self.config.sinks:
            return {}
        from pathlib import Path

        from replicator.sink import ChromaSink, check

        base = Path(self.config.path).parent if self.config.path else Path()
        found = {}
        for name, settings in self.config.sinks.items():
            try:
                check(name, settings)
            except ConfigurationError as e:
                raise ConfigurationError(f"{self.config.path or '<config>'}: {e}") from e
            found[name] = ChromaSink(
                name, settings, self.nodes[settings.node], path=base / settings.path
            )
        return found

    def sink(self, name: str) -> Any:
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


__all__ = [
    "DEFAULT_CHANNEL",  # re-exported: it lives in replicator.checkpoints
    "ConnectivityError",
    "PassProgress",
    "PassResult",
    "Replicator",
    "SyncPass",
    "SyncResult",
    "replicate",
]
