"""Continuous replication: passes in a loop, as a service (``replicator
run``) or inside the app's own process (:class:`BackgroundSync` in a
thread, :class:`AsyncBackgroundSync` as an asyncio task).

A :class:`Runner` works on the links and sinks whose lock it holds (a link
is a local and the server, both directions; one runner per link and per
sink, see :mod:`replicator.locks`). Each round it:

1. reads every node's outbox head: one cheap query per node, which also
   tells whether the node can be reached;
2. takes the lock of each link and sink it does not hold yet, if the nodes
   it needs can be reached (never waiting: one held elsewhere is tried
   again a second later), and lets go of one whose local it cannot reach;
3. runs the passes whose source has new events since that pass last read
   it, and the sinks whose node's log moved; all of a link's passes (with a
   bootstrap of an empty local) and a sink once per ``interval``, and first
   thing after taking it, whatever the heads say;
4. waits: ``poll`` seconds after a round that found events, growing to
   ``idle_poll`` while nothing happens, never past the next interval. A
   node that cannot be reached, or a link or sink whose work fails, is
   tried again exponentially later with jitter (up to ``backoff_cap``),
   each on its own; when nothing else can run, the runner sleeps until
   the first retry.

So a write reaches the other node within about ``idle_poll`` plus one pass
under light load, and a quiet runner costs one head query per node per
``idle_poll``. It logs one line per pass that read something or failed (and each
pass once per interval: the empty ones in between are only logged at debug
level, and not recorded) and one per change of state (a node lost or back,
a link or sink taken, found held, lost or let go), not one per retry.

Stopping (:meth:`Runner.stop`, which SIGINT/SIGTERM call in ``replicator
run``) lets the current batch commit with its checkpoint; then the runner
releases its locks and returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy.engine import Engine

from replicator import locks, outbox, precision
from replicator.application import Direction, Replicator
from replicator.config import Config
from replicator.errors import DatabaseError, ReplicatorError, SchemaError, describe
from replicator.locks import Lock
from replicator.node import Node
from replicator.remote import Gateway
from replicator.sync import PassResult, SyncPass

log = logging.getLogger("replicator.service")

#: Seconds between attempts to take a link another runner holds.
LOCK_RETRY = 1.0


@dataclass(frozen=True)
class Timing:
    """How a runner paces itself (seconds); see the module doc."""

    interval: float = 15.0
    poll: float = 0.05
    idle_poll: float = 0.25
    backoff: float = 0.5
    backoff_cap: float = 30.0


class Backoff:
    """Exponential backoff with jitter: the n-th delay in a row is drawn
    from [d/2, d] with d = ``first`` * 2**n, capped at ``cap``."""

    def __init__(self, first: float, cap: float, rand: Callable[[], float] = random.random):
        self.first, self.cap, self.rand = first, cap, rand
        self.failures = 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        return delay * (0.5 + self.rand() / 2)

    def reset(self) -> None:
        self.failures = 0


class _Wait:
    """The backoff of one node, link or sink: not tried again before ``until``."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.until = 0.0

    def failed(self, now: float) -> None:
        self.until = now + self.backoff.next()

    def ok(self) -> None:
        self.backoff.reset()
        self.until = 0.0


class Round(msgspec.Struct, kw_only=True):
    """What one round of a runner did: the passes and sink runs it ran
    (often none), and the nodes it could not reach (name -> error)."""

    passes: list[PassResult] = []
    sinks: list[Any] = []  # replicator.sink.SinkResult
    unreachable: dict[str, str] = {}

    @property
    def moved(self) -> bool:
        return any(p.read for p in self.passes) or any(s.read for s in self.sinks)

    @property
    def ok(self) -> bool:
        return (
            not self.unreachable
            and all(p.ok for p in self.passes)
            and all(s.ok for s in self.sinks)
        )


class _Claim:
    """What a runner works on under one lock of its own: a link (a local
    and the server, named by the local) or a sink. ``node`` is the node
    it needs besides the server."""

    def __init__(
        self, kind: str, name: str, node: str, lock: Lock, backoff: Callable[[], Backoff]
    ) -> None:
        self.kind, self.name, self.node, self.lock = kind, name, node, lock
        self.held = False
        self.holder: str | None = None  # who holds it, when another runner does
        self.next_try = 0.0  # when to try to take it again
        self.error: str | None = None  # why it could not be locked, last time
        self.full_at: float | None = None  # when all of its work last ran
        self.wait = _Wait(backoff())  # its own failures
        self.lock_backoff = backoff()

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    def fields(self, **more: Any) -> dict[str, Any]:
        return {self.kind: self.name, **more}


class Runner:
    """Replication over every link of a :class:`Replicator`, and its sinks,
    round after round, until :meth:`stop`. :meth:`run` loops in the calling
    thread; :meth:`step` is one round, for a caller with its own loop.

    ``holder`` names this runner to other runners that find its links
    taken. ``now`` is the monotonic clock it paces itself by.
    """

    def __init__(
        self,
        replicator: Replicator,
        *,
        timing: Timing | None = None,
        direction: Direction | None = None,
        holder: str = "",
        now: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.replicator = replicator
        self.timing = timing or Timing(interval=replicator.config.replication.interval_seconds)
        self.holder = holder or locks.holder_name()
        self.now = now
        self.rand = rand
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.passes = list(replicator.passes(direction))
        self._server_name = replicator.server.name
        locals_ = [
            n for n in replicator.locals if any(n in (p.source, p.target) for p in self.passes)
        ]
        self.nodes: list[Node] = [replicator.server, *locals_]
        self.links = {
            n.name: _Claim("link", n.name, n.name, replicator.lock(n.name), self._backoff)
            for n in locals_
        }
        self.sinks = {
            name: _Claim("sink", name, sink.node.name, replicator.lock(name, "sink"), self._backoff)
            for name, sink in replicator.sinks.items()
        }
        self._running = {local: replicator.lock(local, "pass") for local in self.links}
        self._link_passes = {
            local: [p for p in self.passes if local in (p.source.name, p.target.name)]
            for local in self.links
        }
        self.unreachable: dict[str, tuple[str, float]] = {}  # node -> (error, since)
        self.last: Round | None = None
        self.rounds = 0
        self._seen: dict[tuple[str, str, str], int] = {}  # pass -> source head it read to
        self._sink_seen: dict[str, int] = {}
        self._retry: set[tuple[str, str, str]] = set()
        self._refused: dict[str, str] = {}  # local -> why it cannot be bootstrapped yet
        self._imprecise: dict[str, str] = {}  # local -> the columns the server would round
        self._idle = self.timing.poll
        self._server_head: int | None = None  # through a gateway: the listener's
        # Each node, link and sink backs off on its own: one device away
        # does not slow the others down.
        self._node_waits = {node.name: _Wait(self._backoff()) for node in self.nodes}

    def _backoff(self) -> Backoff:
        return Backoff(self.timing.backoff, self.timing.backoff_cap, self.rand)

    @property
    def claims(self) -> list[_Claim]:
        return [*self.links.values(), *self.sinks.values()]

    # --- the loop ------------------------------------------------------------

    def run(self) -> None:
        """Run rounds until :meth:`stop`; then release the links."""
        log.info(
            f"runner started: {self.holder}, nodes {self._names()}",
            extra={"event": "started", "fields": {"holder": self.holder, "nodes": self._names()}},
        )
        self._listen()
        try:
            while not self.stopping.is_set():
                delay = self.step()
                if self.stopping.is_set():
                    break
                self.wake.wait(delay)
                self.wake.clear()
        finally:
            self.close()
            log.info("runner stopped", extra={"event": "stopped", "fields": {}})

    def _head_of(self, node: Node) -> int:
        """``node``'s head; the server's through a gateway as the listener
        last heard it (asked only until it has)."""
        if node is self.replicator.gateway and self._server_head is not None:
            return self._server_head
        return head_of(node)

    def _listen(self) -> threading.Thread | None:
        """On a device that reaches the server through a sync gateway: a
        thread that holds a long poll open (``Gateway.wait``) and starts
        the next round as soon as the server's log grows, so the device
        learns of new events within a second without polling; None
        elsewhere."""
        gateway = self.replicator.gateway
        if gateway is None:
            return None

        def listen() -> None:
            seen = -1
            backoff = self._backoff()
            while not self.stopping.is_set():
                try:
                    found = gateway.wait(seen, seconds=self.timing.interval)
                except ReplicatorError:
                    self.stopping.wait(backoff.next())
                    continue
                except Exception:  # the client was closed under it: stopping
                    if self.stopping.is_set():
                        return
                    raise
                backoff.reset()
                if found > seen:
                    self._server_head = seen = found
                    self.notify()

        thread = threading.Thread(target=listen, name="replicator-listen", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        """Ask the runner to stop after the current batch (thread-safe)."""
        self.stopping.set()
        self.wake.set()

    def notify(self) -> None:
        """Start the next round now (the app has just written; thread-safe)."""
        self.wake.set()

    def on_signal(self, signum: int, frame: object) -> None:
        """A handler for SIGINT/SIGTERM in the thread that calls :meth:`run`:
        the first signal stops the runner after the current batch, a second
        one at once (KeyboardInterrupt; the open batch rolls back)."""
        if self.stopping.is_set():
            raise KeyboardInterrupt
        # Setting an Event takes its lock, which the interrupted thread may
        # hold (inside wake.wait()): a handler doing it there would wait for
        # itself forever. Another thread can wait for the lock.
        threading.Thread(target=self.stop, name="replicator-stop", daemon=True).start()

    def close(self) -> None:
        """Release every link and sink this runner holds."""
        for claim in self.claims:
            self._release(claim)
        for lock in self._running.values():
            with contextlib.suppress(ReplicatorError):
                lock.release()

    # --- one round -----------------------------------------------------------

    def step(self) -> float:
        """One round (see the module doc); returns how long to wait before
        the next. Never raises for a database problem."""
        self.rounds += 1
        now = self.now()
        current = Round()
        heads = self._heads(current, now)
        reachable = set(heads)
        self._claim(reachable, now)
        ready = []
        for link in self.links.values():
            if not self._ready(link, reachable, now):
                continue
            ready.append(link)
            before = len(current.passes)
            self._run_link(link, heads, now, current)
            # A deferred pass (long writers) is tried again later too.
            if all(p.status == "ok" for p in current.passes[before:]):
                link.wait.ok()
            else:
                link.wait.failed(now)
        for claim in self.sinks.values():
            if self._ready(claim, reachable, now):
                ready.append(claim)
                self._run_sink(claim, heads, now, current)
        self.last = current
        return self._delay(current, now, ready)

    def _needs(self, claim: _Claim) -> set[str]:
        """The nodes a claim's work needs: a link both ends, a sink its node."""
        return {self._server_name, claim.node} if claim.kind == "link" else {claim.node}

    def _ready(self, claim: _Claim, reachable: set[str], now: float) -> bool:
        return (
            claim.held
            and self._needs(claim) <= reachable
            and now >= claim.wait.until
            and not self.stopping.is_set()
        )

    def _full(self, claim: _Claim, now: float) -> bool:
        """Whether all of the claim's work is due (once per interval, and
        first after it was taken)."""
        return claim.full_at is None or now - claim.full_at >= self.timing.interval

    def _heads(self, current: Round, now: float) -> dict[str, int]:
        """Each reachable node's outbox head; records who cannot be reached
        (a node backing off is not asked again before its time)."""
        heads = {}
        for node in self.nodes:
            wait = self._node_waits[node.name]
            if now < wait.until:
                current.unreachable[node.name] = self.unreachable[node.name][0]
                continue
            try:
                heads[node.name] = self._head_of(node)
            except ReplicatorError as e:
                wait.failed(now)
                current.unreachable[node.name] = describe(e)
                self._lost(node.name, describe(e))
            else:
                wait.ok()
                self._found(node.name)
        return heads

    # --- one runner per link and per sink ------------------------------------

    def _claim(self, reachable: set[str], now: float) -> None:
        """Take what is free; let go of what cannot be worked on."""
        for claim in self.claims:
            if claim.node not in reachable:
                if claim.held:  # another runner may reach it: let it
                    self._release(claim)
                    log.warning(
                        f"letting go of {claim.label} while {claim.node} cannot be reached",
                        extra={"event": f"{claim.kind}_released", "fields": claim.fields()},
                    )
                continue
            if not self._needs(claim) <= reachable:
                continue  # a link's lock lives on the server
            if not claim.held and now < claim.next_try:
                continue
            try:
                if claim.held and claim.lock.held():
                    continue
                if claim.held:
                    claim.held = False
                    log.warning(
                        f"lost the lock of {claim.label}; taking it again when it is free",
                        extra={"event": f"{claim.kind}_lost", "fields": claim.fields()},
                    )
                if claim.lock.acquire(self.holder):
                    claim.held, claim.holder, claim.error, claim.full_at = True, None, None, None
                    claim.lock_backoff.reset()
                    what = (
                        f"syncing link {claim.name} <-> {self._server_name}"
                        if claim.kind == "link"
                        else f"feeding sink {claim.name} from {claim.node}"
                    )
                    log.info(what, extra={"event": f"{claim.kind}_taken", "fields": claim.fields()})
                    continue
                holder = claim.lock.holder() or "another runner"
                claim.next_try = now + LOCK_RETRY
            except ReplicatorError as e:
                self._lock_failed(claim, describe(e), now)
                continue
            claim.error = None
            if holder != claim.holder:
                claim.holder = holder
                log.warning(
                    f"{claim.label} is held by {holder}; waiting for it",
                    extra={"event": f"{claim.kind}_held", "fields": claim.fields(holder=holder)},
                )

    def _release(self, claim: _Claim) -> None:
        with contextlib.suppress(ReplicatorError):
            claim.lock.release()
        claim.held = False

    def _lock_failed(self, claim: _Claim, error: str, now: float) -> None:
        """The server answers but the lock cannot be taken (its schema is
        behind, say): nothing runs on it; say so once, and try again with
        backoff."""
        claim.next_try = now + claim.lock_backoff.next()
        if error != claim.error:
            claim.error = error
            log.warning(
                f"cannot take the lock of {claim.label}: {error}; nothing runs on it",
                extra={"event": f"{claim.kind}_error", "fields": claim.fields(error=error)},
            )

    # --- running passes and sinks --------------------------------------------

    def _run_link(self, link: _Claim, heads: dict[str, int], now: float, current: Round) -> None:
        full = self._full(link, now)
        due = [p for p in self._link_passes[link.name] if full or self._moved(p, heads)]
        if not due:
            return
        lossy = self._lossy(due[0], full)
        if lossy is not None:
            # Rounded values would make the replicas differ for good: no
            # pass either way until the server keeps them (see precision).
            for sync_pass in due if full else ():
                result = sync_pass.refused(lossy)
                current.passes.append(result)
                _log_pass(result)
            return
        running = self._mark(self._running[link.name])
        ran = 0
        try:
            for sync_pass in due:
                if self.stopping.is_set():
                    break
                target = sync_pass.target
                if target.name in self._refused and not full:
                    continue  # it lacks tables: its next full round tries again
                if (
                    full
                    and target.role == "local"
                    and not any(p.target is target for p in due[:ran])
                ):
                    refusal = self._bootstrap(target)
                    if refusal is not None:
                        # Its checkpoint must not move past rows it could not take.
                        result = sync_pass.refused(refusal)
                        current.passes.append(result)
                        _log_pass(result)
                        continue
                head = self._head(sync_pass.source, heads)
                result = sync_pass.run(self.stopping.is_set, record_empty=full)
                ran += 1
                current.passes.append(result)
                _log_pass(result, quiet=not full)
                key = _key(sync_pass)
                if result.status == "ok" and head is not None:
                    self._seen[key] = head
                    self._retry.discard(key)
                else:
                    self._retry.add(key)
                if result.applied or result.parked:
                    heads.pop(target.name, None)  # moved: read again when needed
        finally:
            if running:
                with contextlib.suppress(ReplicatorError):
                    self._running[link.name].release()
        if full and ran == len(due):
            link.full_at = now

    def _lossy(self, sync_pass: SyncPass, full: bool) -> str | None:
        """Why the link of ``sync_pass`` must not run (a column its server
        keeps less precisely than its local), or None; asked again on each
        full round, remembered in between."""
        local = sync_pass.source if sync_pass.source.role == "local" else sync_pass.target
        if full:
            try:
                precision.check(self.replicator.server, local)
                self._imprecise.pop(local.name, None)
            except DatabaseError:
                pass  # the pass itself says what is wrong with the node
            except SchemaError as e:
                self._imprecise[local.name] = str(e)
            except ReplicatorError:
                pass  # the pass itself says what is wrong with the node
        return self._imprecise.get(local.name)

    def _bootstrap(self, node: Node) -> str | None:
        """Bootstrap ``node`` if it is empty; why it cannot be, or None.
        A node refused (it lacks tables the server has) gets no pass from
        the server until a full round bootstraps it."""
        try:
            done = self.replicator.bootstrap_if_empty(node)
        except SchemaError as e:
            self._refused[node.name] = str(e)
            return str(e)
        self._refused.pop(node.name, None)
        if done is not None:
            rows = sum(done.rows.values())
            log.info(
                f"bootstrapped {node.name} from the server up to {done.position} ({rows} rows)",
                extra={"event": "bootstrapped", "fields": {"node": node.name, "rows": rows}},
            )
        return None

    def _mark(self, lock: Lock) -> bool:
        """Show other processes a pass is running (``replicator status``)."""
        try:
            return lock.acquire(self.holder)
        except ReplicatorError:
            return False

    def _moved(self, sync_pass: SyncPass, heads: dict[str, int]) -> bool:
        key = _key(sync_pass)
        if key in self._retry:
            return True
        head = self._head(sync_pass.source, heads)
        return head is None or head > self._seen.get(key, -1)

    def _head(self, node: Node, heads: dict[str, int]) -> int | None:
        """``node``'s outbox head, read again when a pass has moved it; None
        when it cannot be read (the pass then finds out why)."""
        if node.name not in heads:
            try:
                heads[node.name] = self._head_of(node)
            except ReplicatorError:
                return None
        return heads[node.name]

    def _run_sink(self, claim: _Claim, heads: dict[str, int], now: float, current: Round) -> None:
        """Run the sink when its node's log moved (or its interval is up)."""
        sink = self.replicator.sinks[claim.name]
        full = self._full(claim, now)
        head = self._head(sink.node, heads)
        if not full and head is not None and head <= self._sink_seen.get(claim.name, -1):
            return
        result = sink.run()
        current.sinks.append(result)
        _log_sink(result)
        if not result.ok:
            claim.wait.failed(now)
            return
        claim.wait.ok()
        if result.status == "ok":  # deferred: try again next round
            if head is not None:
                self._sink_seen[claim.name] = head
            if full:
                claim.full_at = now

    def _delay(self, current: Round, now: float, ready: list[_Claim]) -> float:
        """How long to wait: soon after events, longer while idle, never
        past the next interval of what could run; when nothing could run
        (every node, link and sink in reach is backing off or held
        elsewhere), until the first may be tried again."""
        if current.moved:
            self._idle = self.timing.poll
        else:
            self._idle = min(self._idle * 2, self.timing.idle_poll)
        interval = self.timing.interval
        due = [
            max(c.full_at + interval, c.wait.until) - now for c in ready if c.full_at is not None
        ]
        delay = min(self._idle, *due) if due else self._idle
        if not ready:
            waits = [*self._node_waits.values(), *(c.wait for c in self.claims)]
            retries = [w.until - now for w in waits if w.until > now] + [
                c.next_try - now for c in self.claims if not c.held and c.next_try > now
            ]
            delay = min(retries, default=delay)
        return max(0.0, delay)

    # --- reachability --------------------------------------------------------

    def _lost(self, node: str, error: str) -> None:
        if node in self.unreachable:
            return
        self.unreachable[node] = (error, self.now())
        log.warning(
            f"node {node} is unreachable: {error}; retrying with backoff "
            f"(at most {self.timing.backoff_cap:g} s apart)",
            extra={"event": "node_unreachable", "fields": {"node": node, "error": error}},
        )

    def _found(self, node: str) -> None:
        if node not in self.unreachable:
            return
        _, since = self.unreachable.pop(node)
        seconds = round(self.now() - since, 3)
        log.info(
            f"node {node} is reachable again after {seconds:g} s",
            extra={"event": "node_reachable", "fields": {"node": node, "seconds": seconds}},
        )

    def _names(self) -> str:
        return ", ".join(n.name for n in self.nodes)


def head_of(node: Node | Gateway) -> int:
    """How far ``node``'s log reaches: its outbox head, or through a sync
    gateway what the server's log has committed."""
    if isinstance(node, Gateway):
        return node.head()
    with node.connect() as conn:
        return outbox.head(conn)


def _key(sync_pass: SyncPass) -> tuple[str, str, str]:
    return sync_pass.source.name, sync_pass.target.name, sync_pass.channel


_PASS_FIELDS = ("read", "applied", "skipped", "conflicts", "parked", "failed", "seconds")


def _log_pass(result: PassResult, quiet: bool = False) -> None:
    """One line for the pass; at debug level when ``quiet`` and it read
    nothing (as it is then not recorded either)."""
    fields = {
        "source": result.source,
        "target": result.target,
        "channel": result.channel,
        **{name: getattr(result, name) for name in _PASS_FIELDS},
        "status": result.status,
    }
    if result.conflicts_by_policy:
        fields["conflicts_by_policy"] = dict(result.conflicts_by_policy)
    if result.error:
        fields["error"] = result.error
    level = logging.INFO if result.ok else logging.WARNING
    if quiet and result.ok and not result.read:
        level = logging.DEBUG
    log.log(
        level,
        f"pass {result.source} -> {result.target} [{result.channel}]",
        extra={"event": "pass", "fields": fields},
    )


def _log_sink(result: Any) -> None:
    names = ("read", "upserted", "deleted", "parked", "lag", "seconds", "status")
    fields = {"sink": result.sink, "node": result.node, **{n: getattr(result, n) for n in names}}
    if result.error:
        fields["error"] = result.error
    level = logging.INFO if result.ok else logging.WARNING
    log.log(level, f"sink {result.sink}", extra={"event": "sink", "fields": fields})


# --- in the app's process ------------------------------------------------------


def _replicator_of(
    source: Config | Replicator, engines: dict[str, Engine] | None
) -> tuple[Replicator, bool]:
    """The replicator to run, and whether it is ours to close."""
    if isinstance(source, Replicator):
        if engines:
            raise TypeError("engines go with a Config; this Replicator has its nodes already")
        return source, False
    return Replicator(source, engines=engines), True


class _InProcess:
    """What the thread and the asyncio forms share: a runner over the
    app's engines, named as ``what`` to other runners."""

    what = "background sync"

    def __init__(
        self,
        source: Config | Replicator,
        *,
        engines: dict[str, Engine] | None = None,
        timing: Timing | None = None,
        direction: Direction | None = None,
    ) -> None:
        self.replicator, self._owned = _replicator_of(source, engines)
        self.runner = Runner(
            self.replicator,
            timing=timing,
            direction=direction,
            holder=locks.holder_name(self.what),
        )

    @property
    def last(self) -> Round | None:
        """The last round (None before the first)."""
        return self.runner.last


class BackgroundSync(_InProcess):
    """Replication in a background thread of the app's process::

        engine = sqlalchemy.create_engine("duckdb:///app.duckdb")
        replicator.capture(engine, node="phone")
        with BackgroundSync(config, engines={"phone": engine}):
            ...  # the app runs; its writes replicate within about a second

    It shares the app's ``engines`` (node name -> engine): the required way
    for a DuckDB file, which one process at a time may open for writing.
    ``source`` is a :class:`Config` (the replicator is made and closed
    here) or a :class:`Replicator` (left open). ``timing`` and
    ``direction`` are the :class:`Runner`'s. :meth:`notify` after a write
    starts a round at once instead of at the next poll.
    """

    def __init__(self, source: Config | Replicator, **options: Any) -> None:
        super().__init__(source, **options)
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> BackgroundSync:
        if self._thread is not None:
            raise RuntimeError("this BackgroundSync has been started already")
        self._thread = threading.Thread(target=self._run, name="replicator-sync", daemon=True)
        self._thread.start()
        return self

    def notify(self) -> None:
        self.runner.notify()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the current batch, release the links, and wait for the
        thread; closes the replicator if it was made here. Raises
        TimeoutError when the thread is still running after ``timeout``
        seconds, and what ended the thread early, if anything did."""
        self.runner.stop()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.running:
            raise TimeoutError(f"the background sync is still running after {timeout} s")
        if self._owned:
            self.replicator.close()
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            self.runner.run()
        except Exception as e:  # a bug or a configuration error: stop() raises it
            self.error = e
            log.exception("background sync stopped: %s", e)

    def __enter__(self) -> BackgroundSync:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AsyncBackgroundSync(_InProcess):
    """Replication as an asyncio task of the app's event loop::

        async with AsyncBackgroundSync(config, engines={"phone": engine}) as sync:
            ...  # await the app; sync.notify() after a write

    The rounds run in a worker thread (the database drivers block); the
    waiting between them is on the event loop. ``await start()`` /
    ``await stop()`` or ``async with``; arguments as for
    :class:`BackgroundSync`.
    """

    what = "asyncio background sync"

    def __init__(self, source: Config | Replicator, **options: Any) -> None:
        super().__init__(source, **options)
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> AsyncBackgroundSync:
        if self._task is not None:
            raise RuntimeError("this AsyncBackgroundSync has been started already")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="replicator-sync")
        return self

    def notify(self) -> None:
        """Start the next round now (from the loop or any thread)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def stop(self) -> None:
        """Finish the current batch, release the links and end the task
        (re-raising what ended it early, if anything did)."""
        self.runner.stopping.set()
        self.notify()
        try:
            if self._task is not None:
                await self._task
        finally:
            if self._owned:
                self.replicator.close()

    async def _run(self) -> None:
        assert self._wake is not None
        runner = self.runner
        step: asyncio.Future[float] | None = None
        try:
            while not runner.stopping.is_set():
                step = asyncio.ensure_future(asyncio.to_thread(runner.step))
                delay = await asyncio.shield(step)
                if runner.stopping.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self._wake.clear()
        finally:
            # Cancelled (the app's loop is ending): a round may still be
            # writing in its thread. Let it end its batch before letting go
            # of the links, or another runner could start on them meanwhile.
            runner.stopping.set()
            if step is not None and not step.done():
                with contextlib.suppress(Exception):
                    await step
            await asyncio.to_thread(runner.close)

    async def __aenter__(self) -> AsyncBackgroundSync:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


__all__ = ["AsyncBackgroundSync", "BackgroundSync", "Backoff", "Round", "Runner", "Timing"]
