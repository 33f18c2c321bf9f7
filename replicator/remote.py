"""A device's side of the sync gateway: the server reached over HTTP with a
token instead of a database URL with a password.

:class:`Gateway` is the server as a device sees it (a node's ``url`` of
``https://...`` or ``http://...`` with a ``token``): it speaks
:mod:`replicator.protocol` with `httpx`_, retrying what a flaky network
cuts. The passes over it are the engine's own, with the server's end made
of requests:

* :class:`PushPass` (local -> server) reads the local's own events after the
  server's checkpoint for it and pushes them a batch at a time; the server
  applies each push in one transaction with its checkpoint
  (:mod:`replicator.devices`), so a push retried after a cut or a killed
  gateway applies nothing twice, and the next push starts where the
  server says it stands.
* :class:`PullPass` (server -> local) is a :class:`~replicator.sync.SyncPass`
  whose reads are pulls: each batch is applied in one local transaction
  with the local's checkpoint, as with a server reached directly.

Only a 2xx answer counts: anything else is retried (a cut connection, a
timeout, 429 after its ``Retry-After``, 502-504) up to ``attempts`` times,
then the pass fails saying why and the next one starts over from the
checkpoints. A 401 is not retried (:class:`~replicator.errors.AccessDeniedError`).

.. _httpx: https://www.python-httpx.org/
"""

from __future__ import annotations

import datetime as dt
import gzip
import random
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import msgspec

from replicator import bootstrap as local_bootstrap
from replicator import keys
from replicator.apply import Counts
from replicator.bootstrap import VERSION_COLUMNS, BootstrapResult, is_empty
from replicator.checkpoints import DEFAULT_CHANNEL
from replicator.clock import utcnow
from replicator.config import GATEWAY_SCHEMES
from replicator.devices import OutOfStep, decode, encode
from replicator.errors import (
    AccessDeniedError,
    ConfigurationError,
    ConnectionLostError,
    ConnectivityError,
    ReplicatorError,
    SchemaError,
    describe,
)
from replicator.node import Node
from replicator.outbox import Entry
from replicator.protocol import (
    MEDIA_TYPE,
    VERSION,
    Bounds,
    Checkpoint,
    Frame,
    Head,
    Health,
    Lease,
    Leased,
    Problem,
    Pull,
    Pulled,
    Push,
    Pushed,
    Tables,
    Wait,
    Where,
    unframed,
)
from replicator.sync import PassProgress, PassResult, SyncPass
from replicator.tables import row_versions

T = TypeVar("T")

#: A request body larger than this is sent gzip-compressed.
COMPRESS_ABOVE = 64 * 1024
_ENCODER = msgspec.msgpack.Encoder()


class TooLargeError(ReplicatorError):
    """The gateway refused a request as larger than it takes (HTTP 413)."""


def is_gateway_url(url: str) -> bool:
    """Whether a node's ``url`` names a sync gateway, not a database."""
    return url.startswith(GATEWAY_SCHEMES)


class Gateway:
    """The server node, reached through the sync gateway at ``url`` with
    ``token``. It stands where a server :class:`~replicator.node.Node`
    would in a device's :class:`~replicator.application.Replicator`; it
    holds no database connection and no credentials but the token.

    ``timeout`` bounds each request's connect and each read (a wait is
    given its own), ``attempts`` how often a request is tried before the
    pass fails; ``sleep`` and ``rand`` are replaced by tests.
    """

    role = "server"

    def __init__(
        self,
        name: str,
        url: str,
        token: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        attempts: int = 5,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token:
            raise ConfigurationError(f"node {name}: a gateway url needs a token")
        self.name, self.url = name, url.rstrip("/")
        self.scope: dict[str, Any] = {}
        self.unleased: set[str] = set()  # tables the gateway gives this device no keys of
        self.attempts, self.sleep, self.rand = attempts, sleep, rand
        self.timeout = timeout
        self._client = httpx.Client(
            base_url=f"{self.url}/{VERSION}",
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": MEDIA_TYPE,
                "Accept": MEDIA_TYPE,
            },
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            transport=transport,
        )

    @property
    def masked_url(self) -> str:
        return self.url  # a gateway's URL holds no secret: the token is a header

    # --- what a Node offers its callers ---------------------------------

    @contextmanager
    def connect(self) -> Iterator[None]:
        """Check that the gateway answers (its health; a cut connection is
        tried again twice, a busy gateway resets some): :class:`ConnectivityError`
        saying why when it does not."""
        for attempt in range(3):
            try:
                response = self._client.get("/health")
                break
            except httpx.ConnectError as e:
                raise self._unreachable(e) from e  # nobody listens: say so at once
            except httpx.TransportError as e:
                if attempt == 2:
                    raise self._unreachable(e) from e
                self.sleep(self._backoff(attempt + 1, describe(e)))
        if response.status_code != 200:
            raise ConnectivityError(
                f"node {self.name} (gateway {self.url}) is not ready: HTTP {response.status_code}"
            )
        yield None

    def health(self) -> Health:
        with self.connect():
            pass
        return msgspec.json.decode(self._client.get("/health").content, type=Health)

    def forget_shapes(self) -> None:
        pass  # the gateway looks at the server's tables itself

    def dispose(self) -> None:
        self._client.close()

    # --- the protocol ---------------------------------------------------

    def checkpoint(self, channel: str, log_id: str | None) -> int:
        found = self._call("/checkpoint", Where(channel=channel, log_id=log_id), Checkpoint)
        return found.position

    def push(self, push: Push) -> Pushed:
        return self._call("/push", push, Pushed)

    def bounds(self, channel: str = DEFAULT_CHANNEL) -> Bounds:
        return self._call("/bounds", Where(channel=channel), Bounds)

    def pull(self, pull: Pull) -> Pulled:
        return self._call("/pull", pull, Pulled)

    def wait(self, after: int, seconds: float = 25.0) -> int:
        """The server log's head once it is past ``after``, or after
        ``seconds`` as it is (a long poll: one request, no database polled
        by the device)."""
        found = self._call(
            "/wait", Wait(after=after, seconds=seconds), Head, timeout=seconds + self.timeout
        )
        return found.position

    def tables(self) -> Tables:
        """The server's app tables' declared column types."""
        return self._call("/tables", Where(channel=DEFAULT_CHANNEL), Tables)

    def head(self) -> int:
        """How far the server's log has committed (0 when it cannot tell
        now): what a runner compares to know whether to pull."""
        return self.bounds().horizon or 0

    def read_log(self, after: int, upto: int, limit: int) -> tuple[list[Entry], int]:
        """The server's log after ``after`` up to ``upto`` as this device may
        see it, its own events included (a replay's read)."""
        pulled = self.pull(
            Pull(channel=DEFAULT_CHANNEL, after=after, upto=upto, limit=limit, own=True)
        )
        return decode(pulled.events), pulled.reached

    def lease(self, table: str, above: int) -> tuple[int, int] | None:
        leased = self._call("/keys", Lease(table=table, above=above), Leased)
        if leased.first is None or leased.last is None:
            return None
        return leased.first, leased.last

    def snapshot(self, channel: str = DEFAULT_CHANNEL, from_table: str = "") -> Iterator[Frame]:
        """The frames of a bootstrap (see :class:`~replicator.protocol.Frame`),
        from table ``from_table`` on (by name; "": all), as they arrive;
        :class:`ConnectionLostError` when the stream is cut."""
        body = _ENCODER.encode(Where(channel=channel, from_table=from_table))
        try:
            with self._client.stream("POST", "/bootstrap", content=body) as response:
                if response.status_code != 200:
                    response.read()
                    self._refused("/bootstrap", response)
                for frame in unframed(response.iter_bytes()):
                    yield frame
                    if frame.done:
                        return
        except httpx.TransportError as e:
            raise ConnectionLostError(
                f"the bootstrap stream from gateway {self.url} was cut: {describe(e)}"
            ) from e
        raise ConnectionLostError(f"the bootstrap stream from gateway {self.url} ended early")

    def _call(self, path: str, message: Any, answer: type[T], timeout: float | None = None) -> T:
        body = _ENCODER.encode(message)
        headers = {}
        if len(body) > COMPRESS_ABOVE:
            body, headers = gzip.compress(body, compresslevel=1), {"Content-Encoding": "gzip"}
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                self.sleep(self._backoff(attempt, problem))
            try:
                response = self._client.post(
                    path,
                    content=body,
                    headers=headers,
                    timeout=self._client.timeout if timeout is None else timeout,
                )
            except httpx.TransportError as e:
                problem = describe(e)
                continue
            if response.status_code == 200:
                try:
                    return msgspec.msgpack.decode(response.content, type=answer)
                except msgspec.DecodeError as e:  # cut short by a proxy: ask again
                    problem = f"an unreadable answer: {e}"
                    continue
            if response.status_code in (429, 500, 502, 503, 504):
                problem = f"HTTP {response.status_code}"
                retry = response.headers.get("Retry-After", "")
                if retry.isdigit():
                    problem += f" (retry after {retry} s)"
                    self.sleep(float(retry))
                continue
            if response.status_code == 409:
                found = msgspec.msgpack.decode(response.content, type=Checkpoint)
                raise OutOfStep(found.position)
            self._refused(path, response)
        raise ConnectivityError(
            f"node {self.name} (gateway {self.url}) did not answer {path} "
            f"after {self.attempts} attempts: {problem}"
        )

    def _backoff(self, attempt: int, problem: str) -> float:
        """Seconds before try ``attempt`` (1, 2, ...): doubling from 0.1 s,
        at most 5 s, with jitter so that devices cut together do not
        come back together."""
        return min(5.0, 0.1 * 2 ** (attempt - 1)) * (0.5 + self.rand())

    def _refused(self, path: str, response: httpx.Response) -> None:
        if response.status_code == 413:
            raise TooLargeError(
                f"gateway {self.url} refused {path} (HTTP 413): the request is larger than "
                "it takes (its gateway.max_body_bytes)"
            )
        if response.status_code == 401:
            raise AccessDeniedError(
                f"gateway {self.url} refused this device's token (HTTP 401): it is missing, "
                "expired, revoked or not signed by this server; ask for a new token"
            )
        try:
            problem = msgspec.json.decode(response.content, type=Problem)
            said = problem.error + (f": {problem.detail}" if problem.detail else "")
        except msgspec.DecodeError:
            said = response.text[:200]
        raise ReplicatorError(
            f"gateway {self.url} refused {path} (HTTP {response.status_code}): {said}"
        )

    def _unreachable(self, error: BaseException) -> ConnectivityError:
        return ConnectivityError(
            f"node {self.name} (gateway {self.url}) cannot be reached: {describe(error)}"
        )


def refill_keys(local: Node, gateway: Gateway, size: int = keys.BLOCK) -> None:
    """Keep ``local`` a block of keys ahead for its integer-keyed tables,
    leased through the gateway (see :func:`replicator.keys.refill`)."""

    def lease_blocks(needed: dict[str, int]) -> dict[str, tuple[int, int]]:
        found = {}
        for table, above in needed.items():
            if table in gateway.unleased:
                continue
            block = gateway.lease(table, above)
            if block is None:
                # Read-only for devices, or not the server's: not asked again
                # by this process (a request per pass otherwise).
                gateway.unleased.add(table)
            else:
                found[table] = block
        return found

    keys.refill_with(local, lease_blocks, size)


class PullPass(SyncPass):
    """A pass from the server, through ``source`` (a :class:`Gateway`), to
    the local ``target``: a :class:`~replicator.sync.SyncPass` whose reads
    are pulls (the gateway leaves out the local's own events and cuts the
    rest to its token's scope)."""

    source: Gateway  # type: ignore[assignment]

    def _bounds(self) -> tuple[int | None, int, str | None]:
        found = self.source.bounds(self.channel)
        return found.horizon, found.pruned_through, found.log_id

    def _read(self, after: int, horizon: int) -> tuple[list[Entry], int]:
        pulled = self.source.pull(
            Pull(
                channel=self.channel,
                after=after,
                upto=horizon,
                limit=self.batch_size,
                tables=None if self.tables is None else sorted(self.tables),
                exclude_tables=sorted(self.exclude_tables),
            )
        )
        return decode(pulled.events), pulled.reached

    def _reads_ahead(self) -> bool:
        return True  # a pull waits on the network

    def _lease_keys(self) -> None:
        refill_keys(self.target, self.source, self.key_block)

    def _recorders(self) -> tuple[Node, ...]:
        return (self.target,)


class PushPass(SyncPass):
    """A pass from the local ``source`` to the server through ``target`` (a
    :class:`Gateway`): the local's own events after the server's checkpoint
    for it, pushed a batch at a time (see the module's doc)."""

    target: Gateway  # type: ignore[assignment]

    def run(
        self,
        stop: Callable[[], bool] | None = None,
        *,
        record_empty: bool = True,
        progress: Callable[[PassProgress], None] | None = None,
    ) -> PassResult:
        """As :meth:`SyncPass.run`: never raises for a database or network
        problem (the result says ``failed`` and why)."""
        result = PassResult(source=self.source.name, target=self.target.name, channel=self.channel)
        started, clock = self.now(), time.perf_counter()
        try:
            self._lease_keys()
            horizon, through, log_id = self._bounds()
            if horizon is None:
                result.status = "deferred"
            else:
                self._push_all(result, horizon, through, log_id, stop, progress)
        except ConfigurationError:
            raise
        except ReplicatorError as e:
            result.status = "failed"
            result.error = describe(e)
        result.seconds = round(time.perf_counter() - clock, 6)
        if record_empty or result.read or result.status != "ok":
            self._record(result, started)
        return result

    def _push_all(
        self,
        result: PassResult,
        horizon: int,
        through: int,
        log_id: str | None,
        stop: Callable[[], bool] | None,
        progress: Callable[[PassProgress], None] | None,
    ) -> None:
        after = self.target.checkpoint(self.channel, log_id)
        while after < horizon:
            batch, reached = self._read(after, horizon)
            try:
                pushed = self._push(batch, after, reached, log_id, through)
            except OutOfStep as e:
                if e.checkpoint >= after:
                    raise ReplicatorError(
                        f"the server stands at {e.checkpoint} for {self.source.name} "
                        f"and refused a push from {after}"
                    ) from e
                after = e.checkpoint  # it lacks what lies between: send that first
                continue
            counts = Counts()
            counts.add(pushed.counts)
            result.add(counts)
            after = pushed.checkpoint
            if pushed.status == "failed":
                result.status, result.error = "failed", pushed.error
                return
            if progress is not None:
                progress(result.progress(after, horizon))
            if stop is not None and stop():
                return

    def _push(
        self, batch: list[Entry], after: int, reached: int, log_id: str | None, through: int
    ) -> Pushed:
        """Push ``batch``; a batch larger than the gateway takes is pushed in
        halves (a source transaction too, then: the server applies it in
        parts rather than never). A single event too large fails the pass."""
        while True:
            push = Push(
                channel=self.channel,
                after=after,
                reached=reached,
                log_id=log_id,
                pruned_through=through,
                events=encode(batch),
            )
            try:
                return self.target.push(push)
            except TooLargeError:
                if len(batch) <= 1:
                    raise
                batch = batch[: len(batch) // 2]
                reached = batch[-1].position

    def _lease_keys(self) -> None:
        refill_keys(self.source, self.target, self.key_block)

    def _recorders(self) -> tuple[Node, ...]:
        return (self.source,)


def bootstrap(
    gateway: Gateway,
    node: Node,
    *,
    channels: Collection[str] = (DEFAULT_CHANNEL,),
    progress: Callable[[int, int | None], None] | None = None,
    now: Callable[[], dt.datetime] = utcnow,
) -> BootstrapResult:
    """Bootstrap the empty local ``node`` through the gateway, as
    :func:`replicator.bootstrap.bootstrap` does from a server reached
    directly: the rows of its token's scope and their versions, streamed,
    written in one local transaction with its checkpoints, so a failure
    anywhere leaves the node as empty as it was. ``progress(rows, None)``
    after each chunk.

    A stream cut by the network is resumed, up to the gateway's
    ``attempts``: the tables received whole are kept, and the one under way
    is asked for again from a new snapshot (its rows are upserted over
    what came of it). The node's checkpoint is the *first* snapshot's
    position, so the passes after it apply every change made between the
    snapshots; what a later snapshot already holds they skip, by version,
    like any event a replica already reflects. ``result.resumed`` counts
    the resumptions.
    """
    clock = time.perf_counter()
    if not is_empty(node):
        raise ReplicatorError(
            f"node {node.name} is not empty (it has rows, changes or checkpoints); "
            "bootstrap only fills a new or emptied replica"
        )
    copied: dict[str, int] = {}
    position: int | None = None
    log_id: str | None = None
    resumed, done, under_way = 0, 0, ""
    with node.begin() as target:
        while True:
            frames = gateway.snapshot(from_table=under_way)
            try:
                header = next(frames)
                if position is None:
                    _check_tables(node, target, header.tables)
                    position, log_id = header.position or 0, header.log_id
                elif header.log_id != log_id:
                    raise ReplicatorError(
                        f"the server's log was replaced while {node.name} was bootstrapped "
                        "(its id changed); bootstrap again"
                    )
                columns: list[str] = []
                picks: list[int] = []
                for frame in frames:
                    if frame.done:
                        break
                    shape = node.shape(target, frame.table)
                    assert shape is not None
                    if frame.columns:
                        under_way = frame.table
                        columns = [c for c in frame.columns if c in shape.columns]
                        picks = [frame.columns.index(c) for c in columns]
                        copied[frame.table] = 0
                    elif frame.rows:
                        rows = [[row[i] for i in picks] for row in frame.rows]
                        local_bootstrap.write_rows(target, node, shape, columns, rows)
                        copied[frame.table] += len(rows)
                        done += len(rows)
                        if progress is not None:
                            progress(done, None)
                    elif frame.versions:
                        node.dialect.upsert_rows(
                            target,
                            row_versions,
                            VERSION_COLUMNS,
                            [tuple(v) for v in frame.versions],
                        )
                break
            except ConnectionLostError:
                resumed += 1
                if resumed >= gateway.attempts:
                    raise
                gateway.sleep(gateway._backoff(resumed, "a cut bootstrap"))
            finally:
                frames.close()  # type: ignore[attr-defined]
        local_bootstrap.stand_at(target, node, gateway.name, channels, position, log_id, now())
    return BootstrapResult(
        node=node.name,
        server=gateway.name,
        position=position,
        rows=copied,
        seconds=round(time.perf_counter() - clock, 6),
        resumed=resumed,
    )


def _check_tables(node: Node, target: Any, tables: list[str]) -> None:
    """Raise :class:`SchemaError` naming the server's ``tables`` the local
    lacks (nothing has been written yet)."""
    node.forget_shapes()  # the app may have created its tables since
    missing = [t for t in tables if node.shape(target, t) is None]
    if missing:
        node.forget_shapes()
        raise SchemaError(
            f"cannot bootstrap {node.name}: the server's tables "
            f"{', '.join(missing)} do not exist on {node.name} (or lack a primary "
            "key); create the app's tables there first and sync again. Nothing "
            "was copied and its checkpoint did not move"
        )


__all__ = [
    "COMPRESS_ABOVE",
    "Gateway",
    "PullPass",
    "PushPass",
    "bootstrap",
    "is_gateway_url",
    "refill_keys",
]
