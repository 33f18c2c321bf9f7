"""The sync gateway as a Starlette application: the protocol's endpoints
(:mod:`replicator.protocol`) in front of the server's database.

Every endpoint but ``/v1/health`` takes the device's token first: a token
that is missing, forged, expired or revoked gets 401 and nothing else (the
reason goes to the gateway's log, never to the device). Then the device's
rate (429), the body's size (413) and shape (400, naming what is wrong),
and only then the library call (:mod:`replicator.devices`), in a worker
thread, with the :class:`~replicator.devices.Device` the token names.

A gateway process holds no state of its own: checkpoints, review items and
the revocation list live in the server's database, so any number of
processes serve the same devices behind any balancer. A device waiting for
new events (``/v1/wait``) is answered when the server's log grows, whoever
wrote it: each process has one :class:`Watcher` that reads the log's head
from the database a few times a second while somebody waits, instead of
each device polling (MariaDB itself is the notification channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import msgspec
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from replicator import devices
from replicator.clock import utcnow
from replicator.config import Config, GatewayConfig, load
from replicator.devices import Device, OutOfStep, Rules
from replicator.errors import ConnectivityError, ReplicatorError, describe
from replicator.events import NODE_NAME
from replicator.gateway import tokens
from replicator.gateway.limits import Malformed, RateLimit, TooLarge, read_body
from replicator.node import Node
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
    Push,
    Wait,
    Where,
    framed,
)

log = logging.getLogger("replicator.gateway")
T = TypeVar("T")
_ENCODER = msgspec.msgpack.Encoder()
_JSON = msgspec.json.Encoder()
#: Answers larger than this are gzip-compressed for devices that take it.
COMPRESS_ABOVE = 64 * 1024


def problem(status: int, error: str, detail: str = "", **headers: str) -> Response:
    return Response(
        _JSON.encode(Problem(error=error, detail=detail)),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def answer(message: Any, status: int = 200) -> Response:
    return Response(_ENCODER.encode(message), status_code=status, media_type=MEDIA_TYPE)


class Revocations:
    """The server's revocation list as this process knows it: read again
    when it is older than ``seconds`` (0: on every request)."""

    def __init__(self, server: Node, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.server, self.seconds, self.clock = server, seconds, clock
        self._ids: set[str] = set()
        self._read_at: float | None = None
        self._lock = threading.Lock()

    def current(self) -> set[str]:
        with self._lock:
            now = self.clock()
            if self._read_at is None or now - self._read_at >= self.seconds:
                self._ids = devices.revoked(self.server)
                self._read_at = now
            return self._ids


class Watcher:
    """The server log's head, read every ``interval`` seconds while any
    device waits, and the waits it ends."""

    def __init__(self, server: Node, interval: float = 0.1) -> None:
        self.server, self.interval = server, interval
        self.head: int | None = None
        self._changed = asyncio.Condition()
        self._waiting = 0
        self._task: asyncio.Task | None = None

    async def past(self, after: int, seconds: float) -> None:
        """Return once the head is past ``after`` or ``seconds`` have gone."""
        self._waiting += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())
        try:
            async with self._changed:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.head is not None and self.head > after),
                    seconds,
                )
        except TimeoutError:
            pass
        finally:
            self._waiting -= 1

    async def _watch(self) -> None:
        while self._waiting:
            try:
                head = await run_in_threadpool(devices.head, self.server)
            except ReplicatorError as e:
                log.warning("cannot read the server log's head: %s", describe(e))
                head = self.head
            if head != self.head:
                async with self._changed:
                    self.head = head
                    self._changed.notify_all()
            await asyncio.sleep(self.interval)
        self._task = None

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Gateway:
    """The endpoints, over ``server`` with ``rules`` and ``settings``;
    tokens are checked with ``secret`` at ``now``."""

    def __init__(
        self,
        server: Node,
        rules: Rules,
        settings: GatewayConfig,
        secret: str,
        *,
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        tokens.check_secret(secret)
        self.server, self.rules, self.settings = server, rules, settings
        self.secret, self.now = secret, now
        self.revocations = Revocations(server, settings.revocation_seconds)
        self.rate = RateLimit(settings.requests_per_second, settings.burst)
        self.watcher = Watcher(server)

    # --- what every request goes through ----------------------------------

    async def _device(self, request: Request) -> Device | Response:
        """The device the request's token names, or the response refusing it."""
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return problem(401, "unauthorized", **{"WWW-Authenticate": "Bearer"})
        try:
            revoked = await run_in_threadpool(self.revocations.current)
        except ConnectivityError as e:
            log.warning("cannot read the revocation list: %s", describe(e))
            return problem(503, "unavailable", "the server database cannot be reached")
        try:
            claims = tokens.verify(token.strip(), self.secret, now=self.now(), revoked=revoked)
        except tokens.TokenError as e:
            log.info("refused a token from %s: %s", _client(request), e)
            return problem(401, "unauthorized", **{"WWW-Authenticate": "Bearer"})
        if not NODE_NAME.match(claims.device) or claims.device == self.server.name:
            # Signed, yet naming no device a node could be (or the server).
            log.warning("refused a token for device %r", claims.device)
            return problem(401, "unauthorized", **{"WWW-Authenticate": "Bearer"})
        wait = self.rate.take(claims.device)
        if wait:
            return problem(
                429,
                "too many requests",
                f"at most {self.settings.requests_per_second:g} requests per second",
                **{"Retry-After": str(max(1, round(wait)))},
            )
        return Device(claims.device, claims.scope)

    async def _body(self, request: Request, kind: type[T]) -> T | Response:
        try:
            raw = await read_body(request, self.settings.max_body_bytes)
        except ClientDisconnect:
            # The device went away mid-body: nothing of it is used, and
            # nobody is there to read an answer.
            return problem(400, "malformed body", "the body was cut short")
        except TooLarge:
            return problem(
                413,
                "too large",
                f"the body is larger than {self.settings.max_body_bytes} bytes "
                "(gateway.max_body_bytes); send smaller batches",
            )
        except Malformed as e:
            return problem(400, "malformed body", str(e))
        try:
            return msgspec.msgpack.decode(raw, type=kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            return problem(400, "malformed body", f"{kind.__name__}: {e}")

    def endpoint(
        self, kind: type[T], work: Callable[[Device, T], Any]
    ) -> Callable[[Request], Awaitable[Response]]:
        """A route's handler: token, rate and body checked, then ``work``
        (run in a worker thread) answered as msgpack."""

        async def handle(request: Request) -> Response:
            admitted = await self._admit(request, kind)
            if isinstance(admitted, Response):
                return admitted
            device, message = admitted
            try:
                return answer(await run_in_threadpool(work, device, message))
            except OutOfStep as e:
                channel = getattr(message, "channel", "")
                return answer(Checkpoint(channel=channel, position=e.checkpoint), status=409)
            except ConnectivityError as e:
                log.warning("%s for %s: %s", request.url.path, device.name, describe(e))
                return problem(503, "unavailable", "the server database cannot be reached")
            except ReplicatorError as e:
                log.error("%s for %s failed: %s", request.url.path, device.name, describe(e))
                return problem(500, "internal error", "the gateway's log says why")

        return handle

    # --- the endpoints ------------------------------------------------------

    def checkpoint(self, device: Device, where: Where) -> Checkpoint:
        found = devices.checkpoint(self.server, device, where.channel, where.log_id)
        return Checkpoint(channel=where.channel, position=found)

    def push(self, device: Device, push: Push) -> Any:
        return devices.accept_push(self.server, device, push, self.rules, self.now)

    def bounds(self, device: Device, where: Where) -> Bounds:
        return devices.bounds(self.server)

    def pull(self, device: Device, pull: Pull) -> Any:
        return devices.pull(self.server, device, pull, self.rules)

    def lease(self, device: Device, lease: Lease) -> Leased:
        block = devices.lease_keys(self.server, device, lease.table, lease.above, self.rules)
        if block is None:
            return Leased(table=lease.table)
        return Leased(table=lease.table, first=block[0], last=block[1])

    async def _admit(self, request: Request, kind: type[T]) -> tuple[Device, T] | Response:
        """The request's device and body, or the response refusing it."""
        device = await self._device(request)
        if isinstance(device, Response):
            return device
        message = await self._body(request, kind)
        if isinstance(message, Response):
            return message
        return device, message

    async def wait(self, request: Request) -> Response:
        admitted = await self._admit(request, Wait)
        if isinstance(admitted, Response):
            return admitted
        _, message = admitted
        await self.watcher.past(message.after, min(message.seconds, self.settings.wait_seconds))
        if self.watcher.head is None:  # it never could read the log
            return problem(503, "unavailable", "the server database cannot be reached")
        # From the watcher: thousands of waits ending cost no query each.
        return answer(Head(position=self.watcher.head))

    async def bootstrap(self, request: Request) -> Response:
        admitted = await self._admit(request, Where)
        if isinstance(admitted, Response):
            return admitted
        device, where = admitted
        frames = _Producer(
            lambda: devices.snapshot(self.server, device, self.rules, where.from_table)
        )
        return StreamingResponse(frames.chunks(), media_type="application/octet-stream")

    async def health(self, request: Request) -> Response:
        return Response(
            _JSON.encode(Health(status="ok", server=self.server.name)),
            media_type="application/json",
        )


class _Producer:
    """A bootstrap's frames, made in a thread of their own (one database
    connection holds the snapshot for the whole stream) and handed over
    through a queue of a few frames: memory stays bounded however large
    the snapshot, and a device that goes away stops the thread."""

    def __init__(self, frames: Callable[[], Iterator[Frame]], depth: int = 4) -> None:
        self.frames, self.queue = frames, queue.Queue(maxsize=depth)
        self.gone = threading.Event()

    def _produce(self) -> None:
        try:
            for frame in self.frames():
                if not self._put(framed(frame)):
                    return
        except Exception as e:  # the stream ends without its last frame
            log.warning("a bootstrap stream failed: %s", describe(e))
        finally:
            self._put(None)  # the end

    def _put(self, chunk: bytes | None) -> bool:
        """Hand ``chunk`` over once there is room; False when the device
        has gone meanwhile."""
        while not self.gone.is_set():
            try:
                self.queue.put(chunk, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    async def chunks(self) -> Any:
        thread = threading.Thread(target=self._produce, name="replicator-bootstrap", daemon=True)
        thread.start()
        try:
            while True:
                chunk = await run_in_threadpool(self.queue.get)
                if chunk is None:
                    return
                yield chunk
        finally:
            self.gone.set()


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def create_app(
    server: Node,
    rules: Rules,
    settings: GatewayConfig,
    secret: str,
    *,
    now: Callable[[], dt.datetime] = utcnow,
) -> Starlette:
    """The gateway's ASGI application (see the module's doc). Raises
    :class:`~replicator.errors.ConfigurationError` for a missing or short
    ``secret``."""
    gateway = Gateway(server, rules, settings, secret, now=now)
    prefix = f"/{VERSION}"
    calls = {
        "checkpoint": gateway.endpoint(Where, gateway.checkpoint),
        "push": gateway.endpoint(Push, gateway.push),
        "bounds": gateway.endpoint(Where, gateway.bounds),
        "pull": gateway.endpoint(Pull, gateway.pull),
        "keys": gateway.endpoint(Lease, gateway.lease),
        "tables": gateway.endpoint(Where, lambda device, where: devices.tables(server)),
        "wait": gateway.wait,
        "bootstrap": gateway.bootstrap,
    }
    routes = [Route(f"{prefix}/health", gateway.health, methods=["GET"])] + [
        Route(f"{prefix}/{name}", call, methods=["POST"]) for name, call in calls.items()
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gateway.watcher.close()
        server.dispose()

    return Starlette(
        routes=routes,
        middleware=[Middleware(GZipMiddleware, minimum_size=COMPRESS_ABOVE)],
        lifespan=lifespan,
    )


#: Connections a gateway process keeps to the server database (and as many
#: more at peaks): its worker threads' share of MariaDB's max_connections.
POOL_SIZE = 20


def from_config(config: Config, secret: str | None) -> Starlette:
    """The gateway for the server of ``config`` (its ``[gateway]``, tables
    and replication settings), signing with ``secret``."""
    settings = config.nodes[config.server]
    server = Node(
        config.server,
        url=settings.url,
        role="server",
        connect_timeout=settings.connect_timeout,
        # Waits hold no connection; pushes, pulls and leases each hold one.
        engine_options={"pool_size": POOL_SIZE, "max_overflow": POOL_SIZE},
    )
    tables = config.tables
    rules = Rules(
        read_only=frozenset(config.gateway.read_only),
        unscoped={t: s.unscoped for t, s in tables.items()},
        policy=config.replication.policy,
        policies={t: s.policy for t, s in tables.items() if s.policy is not None},
        key_block=config.replication.key_block,
    )
    return create_app(server, rules, config.gateway, tokens.check_secret(secret).decode())


#: Where ``replicator serve`` tells its worker processes the configuration is.
CONFIG_ENV = "REPLICATOR_GATEWAY_CONFIG"


def from_environment() -> Starlette:
    """The gateway for the configuration file named by :data:`CONFIG_ENV`
    (uvicorn's factory in each worker process of ``replicator serve``)."""
    return from_config(load(os.environ[CONFIG_ENV]), os.environ.get(tokens.SECRET_ENV))
