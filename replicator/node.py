"""A node: one database that takes part in replication, by name.

A node's name is its identity: it is the ``origin`` of every event captured
on it, and the ``source`` of every checkpoint a target keeps for it.

A node is also where driver exceptions become the project's (as
eventsourcing's ``SQLiteTransaction.__exit__`` does): what SQLAlchemy raises
opening a connection, inside a :meth:`Node.connect` or :meth:`Node.begin`
block, at its commit, or in a :meth:`Node.lock`, leaves the node as one of
:mod:`replicator.errors`, raised ``from`` the driver's exception:

==================================================  ==========================
what happened                                       what the caller gets
==================================================  ==========================
the connection cannot be made, or breaks as it      :class:`ConnectivityError`
goes back to the pool                               ("node N (url) cannot be
                                                    reached: ...")
the connection broke inside the block (SQLAlchemy   :class:`ConnectionLostError`
saw a disconnect); in a lock, any OperationalError  (a ConnectivityError)
a replicator table does not exist                   :class:`NotInitializedError`
                                                    (a SchemaError), message
                                                    :data:`NOT_INITIALIZED`
the database refused a row (the dialect's           :class:`RowRefusedError`,
``refusal``: a constraint, a value)                 ``reason`` set
anything else SQLAlchemy raised                     :class:`DatabaseError`
==================================================  ==========================

Every one but the first is a :class:`DatabaseError` whose message is what
:func:`~replicator.errors.describe` says of the driver's exception, so a
caller that caught ``SQLAlchemyError`` catches :class:`DatabaseError` (and
one that caught both the project's and SQLAlchemy's, :class:`ReplicatorError`),
with the same text. What the project raises inside a block passes unchanged.

Code that must react to a driver error before its transaction ends (park
the row an IntegrityError refused, say) still catches it *inside* the block;
only what escapes the block is translated. Connections a dialect opens on
an engine itself (its ``snapshot``) are outside the boundary unless they are
opened inside a node's block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, SQLAlchemyError

from replicator.config import NodeConfig
from replicator.dialects import Dialect, for_connection, for_url
from replicator.dialects.base import TableShape
from replicator.errors import (
    NOT_INITIALIZED,
    ConfigurationError,
    ConnectionLostError,
    ConnectivityError,
    DatabaseError,
    NotInitializedError,
    RowRefusedError,
    describe,
    not_initialized,
)
from replicator.events import NODE_NAME
from replicator.locks import Lock

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
    #: More arguments for the engine the node makes itself (its pool's size).
    engine_options: Mapping[str, Any] = field(default_factory=dict)
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
                self.engine = sa.create_engine(url, **self.engine_options)
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
        reached, or when the connection breaks as it goes back to the pool.
        A SQLAlchemy error escaping the block becomes a
        :class:`DatabaseError` (see the module doc for which)."""
        engine = self.get_engine()
        try:
            conn = engine.connect()
        except DBAPIError as e:
            raise self._unreachable(e.orig) from e
        except SQLAlchemyError as e:  # the pool's own (a checkout timed out)
            raise self.translated(e) from e
        try:
            yield conn
        except BaseException as e:
            # What the block raised says more than a failed check-in would.
            with suppress(Exception):
                conn.close()
            if isinstance(e, SQLAlchemyError):
                raise self.translated(e) from e
            if isinstance(e, _driver_error(engine)):
                # The driver's own, where SQLAlchemy does not wrap it (a call
                # on the raw connection: MariaDB's isolation level for a
                # horizon): a network cut there is a lost connection too.
                lost = engine.dialect.is_disconnect(e, None, None)
                raise (ConnectionLostError if lost else DatabaseError)(describe(e)) from e
            raise
        try:
            conn.close()
        except (DBAPIError, _driver_error(engine)) as e:
            # The pool resets a connection as it takes it back (on MariaDB a
            # COMMIT to restore the isolation level); when the network has
            # gone, the driver's own error comes out of that reset,
            # unwrapped by SQLAlchemy. A caller that catches the project's
            # errors (a runner's pass) must still see it as one.
            with suppress(Exception):
                conn.invalidate()
            raise self._unreachable(e) from e
        except SQLAlchemyError as e:
            raise self.translated(e) from e

    def translated(self, error: SQLAlchemyError, *, lock: bool = False) -> DatabaseError:
        """What ``error``, raised by SQLAlchemy while this node was in use, is
        in the project's terms (the table in the module doc); ``lock``: it
        came from one of the node's locks, whose statements fail
        operationally only when their connection cannot be made or broke."""
        if not_initialized(error):
            return NotInitializedError(NOT_INITIALIZED)
        lost = isinstance(error, DisconnectionError) or (
            isinstance(error, DBAPIError) and error.connection_invalidated
        )
        if lost or (lock and isinstance(error, OperationalError)):
            return ConnectionLostError(describe(error))
        if isinstance(error, DBAPIError):
            reason = self.dialect.refusal(error)
            if reason is not None:
                return RowRefusedError(describe(error), reason)
        return DatabaseError(describe(error))

    def _unreachable(self, why: BaseException | None) -> ConnectivityError:
        text = str(why)
        if "timed out" in text:
            text = f"no answer within {self.connect_timeout:g} s (connect_timeout): {text}"
        return ConnectivityError(f"node {self.name} ({self.masked_url}) cannot be reached: {text}")

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in a transaction that commits when the block ends
        (rolls back when it raises); errors as for :meth:`connect`, a failed
        commit included."""
        with self.connect() as conn, conn.begin():
            yield conn

    def lock(self, name: str) -> Lock:
        """The lock called ``name`` that lives with this node's database (see
        :mod:`replicator.locks` and the dialect's ``lock``); what the driver
        raises in its methods is translated as for :meth:`connect`."""
        return _TranslatedLock(self, self.dialect.lock(self.get_engine(), name))

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


class _TranslatedLock(Lock):
    """A dialect's lock on ``node``'s database (a MariaDB advisory lock
    opens connections of its own), behind the node's error boundary;
    ``inner`` is the dialect's lock."""

    def __init__(self, node: Node, lock: Lock) -> None:
        self.node, self.inner, self.name = node, lock, lock.name

    @contextmanager
    def _translating(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as e:
            raise self.node.translated(e, lock=True) from e

    def acquire(self, holder: str) -> bool:
        with self._translating():
            return self.inner.acquire(holder)

    def held(self) -> bool:
        with self._translating():
            return self.inner.held()

    def release(self) -> None:
        with self._translating():
            self.inner.release()

    def holder(self) -> str | None:
        with self._translating():
            return self.inner.holder()


def _driver_error(engine: Engine) -> type[BaseException]:
    """The DB-API's base error class of ``engine``'s driver (or SQLAlchemy's
    wrapper of it, where the driver has none)."""
    return getattr(engine.dialect.loaded_dbapi, "Error", DBAPIError)
