"""A node: one database that takes part in replication, by name.

A node's name is its identity: it is the ``origin`` of every event captured
on it, and the ``source`` of every checkpoint a target keeps for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from replicator.capture import NODE_NAME
from replicator.config import NodeConfig
from replicator.dialects import Dialect, for_connection, for_url
from replicator.dialects.base import TableShape
from replicator.errors import ConfigurationError, ConnectivityError

Role = Literal["server", "local"]

#: ``connecting(node, url)``: a node's own engine is about to open a new
#: database connection (``url`` without its password).
Connecting = Callable[[str, str], None]
#: ``finished(node, url, error)``: that attempt is over; ``error`` is None
#: when the connection was made, else what the driver raised.
Finished = Callable[[str, str, BaseException | None], None]

_listeners: list[tuple[Connecting, Finished | None]] = []


@contextmanager
def on_connect(connecting: Connecting, finished: Finished | None = None) -> Iterator[None]:
    """While the block runs, call ``connecting(node, url)`` before each new
    database connection a node makes (not when the pool hands out one it
    holds), and ``finished(node, url, error)`` once the attempt is over
    (``error`` None: connected), so that a command can say which node it is
    waiting for, and stop saying it. The URL never holds a password.
    Listeners are called in the thread that connects, and what they raise
    fails the connection: keep them quick and quiet. Engines the app passed
    in are not watched, nor MariaDB's lock connections (made with the same
    timeout, after the node's own first connection)."""
    listener = (connecting, finished)
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def _announce(name: str, where: str) -> Callable[..., Any]:
    """A ``do_connect`` listener telling :func:`on_connect`'s listeners
    about each new connection of node ``name`` (at ``where``)."""

    def connecting(dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        watching = tuple(_listeners)
        for before, _ in watching:
            before(name, where)
        after = [finished for _, finished in watching if finished is not None]
        if not after:
            return None  # SQLAlchemy connects as usual
        # Connect here (as SQLAlchemy would: the dialect's connect) to see
        # how the attempt ends; the connection returned is the one used.
        try:
            connection = dialect.connect(*cargs, **cparams)
        except BaseException as e:
            for finished in after:
                finished(name, where, e)
            raise
        for finished in after:
            finished(name, where, None)
        return connection

    return connecting


@dataclass(eq=False)
class Node:
    """A database taking part in replication.

    ``engine`` is optional: without one, the node makes its own from ``url``
    when first used. Pass the app's engine for a DuckDB file the app holds
    open (DuckDB lets one process at a time write a file). ``scope`` limits
    what a local node holds: only rows whose columns have these values.
    """

    name: str
    url: str = ""
    role: Role = "local"
    scope: Mapping[str, Any] = field(default_factory=dict)
    engine: Engine | None = None
    #: Seconds a connection attempt to a server waits for it to answer.
    connect_timeout: float = 5.0
    _own_engine: bool = field(default=False, repr=False)
    _shapes: dict[str, TableShape | None] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not NODE_NAME.match(self.name):
            raise ConfigurationError(
                f"node name {self.name!r}: use letters, digits and _.:- (at most 64)"
            )
        if self.role not in ("server", "local"):
            raise ConfigurationError(f"node {self.name}: role must be server or local")
        if self.engine is None and not self.url:
            raise ConfigurationError(f"node {self.name}: needs a url or an engine")
        if self.engine is not None and not self.url:
            self.url = self.engine.url.render_as_string(hide_password=False)
        if self.engine is not None:
            # Replicated rows keep their references on every node.
            for_connection(self.engine).enforce_foreign_keys(self.engine)

    @classmethod
    def from_config(cls, name: str, settings: NodeConfig, engine: Engine | None = None) -> Node:
        return cls(
            name=name,
            url=settings.url,
            role=settings.role,
            scope=settings.scope,
            engine=engine,
            connect_timeout=settings.connect_timeout,
        )

    @property
    def masked_url(self) -> str:
        """The URL with any password hidden, for messages and logs."""
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def get_engine(self) -> Engine:
        if self.engine is None:
            try:
                given = sa.engine.make_url(self.url)
                found = for_url(given)
                url = (
                    given
                    if found is None
                    else found.with_connect_timeout(given, self.connect_timeout)
                )
                self.engine = sa.create_engine(url)
                if found is not None:
                    found.after_connect_timeout(self.engine, given)
                    found.enforce_foreign_keys(self.engine)
            except Exception as e:
                raise ConfigurationError(
                    f"node {self.name}: cannot use {self.masked_url}: {e}"
                ) from e
            self._own_engine = True
            sa.event.listen(self.engine, "do_connect", _announce(self.name, self.masked_url))

        return self.engine

    @property
    def dialect(self) -> Dialect:
        return for_connection(self.get_engine())

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A connection; :class:`ConnectivityError` when the node cannot be
        reached, or when the connection breaks as it goes back to the pool."""
        engine = self.get_engine()
        try:
            conn = engine.connect()
        except DBAPIError as e:
            raise self._unreachable(e.orig) from e
        try:
            yield conn
        except BaseException:
            # What the block raised says more than a failed check-in would.
            with suppress(Exception):
                conn.close()
            raise
        try:
            conn.close()
        except (DBAPIError, _driver_error(engine)) as e:
            # The pool resets a connection as it takes it back (on MariaDB a
            # COMMIT to restore the isolation level); when the network has
            # gone, the driver's own error comes out of that reset,
            # unwrapped by SQLAlchemy. A caller that catches the project's
            # and SQLAlchemy's errors (a runner's pass) must still see it.
            with suppress(Exception):
                conn.invalidate()
            raise self._unreachable(e) from e

    def _unreachable(self, why: BaseException | None) -> ConnectivityError:
        text = str(why)
        if "timed out" in text:
            text = f"no answer within {self.connect_timeout:g} s (connect_timeout): {text}"
        return ConnectivityError(f"node {self.name} ({self.masked_url}) cannot be reached: {text}")

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction that commits when the block ends."""
        with self.connect() as conn, conn.begin():
            yield conn

    def shape(self, conn: Connection, table: str) -> TableShape | None:
        """The columns and key of one of the node's app tables (cached)."""
        if table not in self._shapes:
            self._shapes[table] = self.dialect.describe(conn, table)
        return self._shapes[table]

    def forget_shapes(self) -> None:
        """Drop cached table shapes (after the node's schema changed)."""
        self._shapes.clear()

    def dispose(self) -> None:
        """Close the connections of an engine the node made itself."""
        if self._own_engine and self.engine is not None:
            self.engine.dispose()
            self.engine = None
            self._own_engine = False


def _driver_error(engine: Engine) -> type[BaseException]:
    """The DB-API's base error class of ``engine``'s driver (or SQLAlchemy's
    wrapper of it, where the driver has none)."""
    return getattr(engine.dialect.loaded_dbapi, "Error", DBAPIError)
