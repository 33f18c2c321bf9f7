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

This is the engine; :mod:`replicator.application` sits above it and runs
every configured link and channel (its :class:`~replicator.application.Replicator`).
The engine never imports it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import msgspec

from replicator import checkpoints, conflicts, keys, outbox, parking, release, retention
from replicator.apply import Counts, Settlement, apply_batch, reject, remove_orphans
from replicator.checkpoints import DEFAULT_CHANNEL
from replicator.clock import utcnow
from replicator.errors import ConfigurationError, ReplicatorError, RowRefusedError, describe
from replicator.events import Operation
from replicator.node import Node
from replicator.outbox import Entry
from replicator.parking import Reason
from replicator.scope import in_scope
from replicator.tables import sync_runs


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

    def progress(self, position: int, horizon: int) -> PassProgress:
        """How far this pass has got: at ``position`` of ``horizon``."""
        return PassProgress(
            source=self.source,
            target=self.target,
            channel=self.channel,
            read=self.read,
            applied=self.applied,
            position=position,
            horizon=horizon,
        )


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
        self.settle = settlement(target, policy, policies)

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
        # From a database server, the next batch is read (and decoded) in a
        # second thread while this one applies the current batch: the wait
        # for the server and the target's writing overlap. (An embedded
        # source is read under the interpreter's lock: a thread only slowed
        # the target's work down.) The checkpoint stays the authority: a
        # batch read ahead is used only if it starts at the checkpoint that
        # the target transaction reads.
        read_ahead = self._reads_ahead()
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replicator-read")
        pending: tuple[int, Future] | None = None
        try:
            self._lease_keys()
            self._release_held(counts)
            horizon, through, log_id = self._bounds()
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
                        if read_ahead and reached < horizon:
                            pending = (reached, ahead.submit(self._read, reached, horizon))
                        entries = unhandled = self._in_scope(tconn, batch)
                        applied = self._apply(tconn, entries)
                        self._advance(tconn, reached, started, log_id)
                    counts.add(applied)
                except RowRefusedError:
                    if not entries:
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
                    progress(result.progress(reached, horizon))
                if stop is not None and stop():
                    break
        except ConfigurationError:
            raise
        except ReplicatorError as e:
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

    def _release_held(self, counts: Counts) -> None:
        """Before reading on: apply the events held on the target for this
        channel's tables that the target can take now (see
        :mod:`replicator.release`), so that they go before the newer events
        of their table, which join a held item for as long as one is open."""
        with self.target.connect() as conn:
            ready = [
                item
                for item in parking.held_items(conn).values()
                if self._carries(item.table) and release.blocked(conn, self.target, item) is None
            ]
        for item in ready:
            counts.add(
                release_held(
                    self.target,
                    item,
                    settle=self.settle,
                    now=self.now,
                    batch_size=self.batch_size,
                )
            )

    def _carries(self, table: str) -> bool:
        """Whether this pass's channel carries ``table``."""
        return (self.tables is None or table in self.tables) and table not in self.exclude_tables

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
        after = checkpoints.stored(tconn, name, self.channel, log_id)
        if after is not None:
            return after, after
        others = checkpoints.of_log(tconn, name, log_id) if log_id else {}
        return 0, min(others.values(), default=0)

    def _apply(self, tconn: Any, entries: list[Entry], careful: bool = False) -> Counts:
        return _applier(self.target, self.settle, self.now)(tconn, entries, careful, None)

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
            except RowRefusedError as e:
                if self._delete_after_orphans(entry, upto, started, counts, log_id):
                    continue
                with self.target.begin() as tconn:
                    self.target.dialect.exclude_writers(tconn)
                    counts.add(
                        reject(
                            tconn,
                            self.target.dialect,
                            entry,
                            Reason(e.reason),
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
        except RowRefusedError:
            return False
        swept.read = 0
        counts.add(swept)
        counts.add(applied)
        return True

    def _advance(self, tconn: Any, upto: int, started: dt.datetime, log_id: str | None) -> None:
        checkpoints.advance(
            tconn, self.target.dialect, self.source.name, self.channel, upto, started, log_id
        )

    def _bounds(self) -> tuple[int | None, int, str | None]:
        """The source's horizon (None: deferred, see :class:`PassResult`),
        the position its retention has pruned through, and its log's id."""
        with self.source.connect() as conn:
            return (
                self.source.dialect.horizon(conn),
                retention.pruned_through(conn),
                retention.log_id(conn),
            )

    def _reads_ahead(self) -> bool:
        """Whether reading the source waits on a server (see :meth:`run`)."""
        return not self.source.dialect.embedded

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

    def _recorders(self) -> tuple[Node, ...]:
        """Where a pass is recorded, first choice first."""
        return (self.target, self.source)

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
        for node in self._recorders():
            if node.name in skip:
                continue  # known to be away: asking again costs a connect timeout
            try:
                with node.begin() as conn:
                    conn.execute(sync_runs.insert(), row)
                return
            except ReplicatorError:
                continue


def _naive(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(tzinfo=None)


def settlement(
    target: Node, policy: str = "latest_timestamp", policies: Mapping[str, str] | None = None
) -> Settlement | None:
    """How ``target`` settles conflicts: by ``policies`` (table -> policy
    name, see :mod:`replicator.conflicts`), else by ``policy``, when it is
    the server; None for a local (it leaves conflicts to the server)."""
    if target.role != "server":
        return None
    return Settlement(
        target.name,
        {t: (name, conflicts.load(name)) for t, name in (policies or {}).items()},
        (policy, conflicts.load(policy)),
    )


def release_held(
    target: Node,
    item: parking.Held,
    *,
    settle: Settlement | None,
    now: Callable[[], dt.datetime] = utcnow,
    batch_size: int = 1000,
    by: str = "replicator",
) -> Counts:
    """Apply the events ``item`` holds on ``target`` now, in order, as a pass
    would (see :mod:`replicator.release`), conflicts settled by ``settle``."""
    apply = _applier(target, settle, now)
    return release.release(target, item, apply, batch_size=batch_size, now=now, by=by)


def _applier(
    target: Node, settle: Settlement | None, now: Callable[[], dt.datetime]
) -> release.Apply:
    """How a pass applies a batch on ``target`` (in the caller's transaction)."""

    def apply(tconn: Any, entries: list[Entry], careful: bool, releasing: int | None) -> Counts:
        return apply_batch(
            tconn,
            target.dialect,
            entries,
            shape_of=lambda table: target.shape(tconn, table),
            settle=settle,
            now=now(),
            careful=careful,
            # The server always logs; a local while a sink follows it.
            log=settle is not None or checkpoints.followed(tconn, target.name),
            own=target.name,
            releasing=releasing,
        )

    return apply


def replicate(source: Node, target: Node, **options: Any) -> PassResult:
    """One pass from ``source`` to ``target``; ``options`` as for :class:`SyncPass`."""
    return SyncPass(source, target, **options).run()


__all__ = [
    "PassProgress",
    "PassResult",
    "SyncPass",
    "release_held",
    "replicate",
    "settlement",
]
