"""The replicator's exceptions: one hierarchy, translated at the boundaries.

A caller catches :class:`ReplicatorError` for anything the replicator raises,
or one of the subclasses when it would react differently: fix the
configuration, wait for the network, look at the review queue.

What a database driver raises (SQLAlchemy's exceptions) becomes a
:class:`DatabaseError` where a node opens its connections and transactions
(:meth:`replicator.node.Node.connect`, :meth:`~replicator.node.Node.begin`,
:meth:`~replicator.node.Node.lock`), with the driver's exception as its
``__cause__`` and :func:`describe`'s account of it as its message. Catch
:class:`DatabaseError` where SQLAlchemy's ``SQLAlchemyError`` was caught:

- :class:`ConnectionLostError` (also a :class:`ConnectivityError`): the
  connection broke while the block ran;
- :class:`NotInitializedError` (also a :class:`SchemaError`): a replicator
  table does not exist, said as :data:`NOT_INITIALIZED`;
- :class:`RowRefusedError`: the database refused a row (a constraint, a
  value it cannot store); its ``reason`` says which;
- :class:`DatabaseError` itself for anything else.

This module imports no SQLAlchemy: the ``replicator`` command imports it to
start.
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: What a node whose replicator tables do not exist is said to be.
NOT_INITIALIZED = "not initialized (run replicator init)"

# A missing replicator table, as SQLite ("no such table: replicator_outbox",
# or "main.replicator_outbox"), MariaDB (1146, "Table 'db.replicator_outbox'
# doesn't exist") and DuckDB ("Catalog Error: Table with name
# replicator_outbox does not exist!") say it. The whole phrase, not the
# name alone: MariaDB's "Table 'replicator_outbox' already exists" (1050)
# is something else.
_MISSING_TABLE = re.compile(
    r"no such table: (?:\w+\.)?replicator_\w+"
    r"|Table '(?:[^'.]*\.)?replicator_\w+' doesn't exist"
    r"|Table with name replicator_\w+ does not exist"
)


def describe(error: BaseException) -> str:
    """A one-line account of ``error``: a replicator error's message, a
    node without the replicator's tables as :data:`NOT_INITIALIZED`, or a
    driver's exception (the original one SQLAlchemy wraps) by type. The
    message of a :class:`DatabaseError` is this account of its cause."""
    if isinstance(error, ReplicatorError):
        return str(error)
    if not_initialized(error):
        return NOT_INITIALIZED
    orig = getattr(error, "orig", None)
    return f"{type(orig or error).__name__}: {orig or error}".splitlines()[0]


def not_initialized(error: BaseException) -> bool:
    """Whether ``error`` says one of the replicator's tables does not exist."""
    if isinstance(error, NotInitializedError):
        return True
    orig = getattr(error, "orig", None) or error
    return _MISSING_TABLE.search(str(orig)) is not None


class ReplicatorError(Exception):
    """Base class of every error the replicator raises on purpose."""


class ConfigurationError(ReplicatorError):
    """The configuration (file, key, value) or a call's arguments are wrong.

    The CLI maps it to exit code 2.
    """


class ArgumentError(ConfigurationError):
    """An argument of a call is wrong. The message names arguments by the
    call's parameter names in backquotes (```take` must be server or
    local``), and :attr:`arguments` lists them, so that a command line can
    name its options instead (see :meth:`naming`)."""

    def __init__(self, message: str, *arguments: str) -> None:
        super().__init__(message)
        self.arguments = arguments

    def naming(self, spell: Callable[[str], str]) -> str:
        """The message with each argument's name spelled by ``spell``
        (``lambda name: "--" + name``)."""
        text = str(self)
        for name in self.arguments:
            text = text.replace(f"`{name}`", spell(name))
        return text


class SchemaError(ReplicatorError):
    """The replicator's tables are missing or out of date on a node."""


class CaptureError(ReplicatorError):
    """A write cannot be captured (e.g. its table has no primary key)."""


class ConnectivityError(ReplicatorError):
    """A node cannot be reached."""


class AccessDeniedError(ReplicatorError):
    """The sync gateway refused a device's token (missing, forged, expired
    or revoked): nothing more will work until the device has a new one."""


class ApplyError(ReplicatorError):
    """An event cannot be applied to a target node."""


class DatabaseError(ReplicatorError):
    """A database failed a statement, a commit or a connection's return to
    the pool; the driver's exception is its ``__cause__``, and its message is
    what :func:`describe` says of that exception (see the module doc)."""


class ConnectionLostError(ConnectivityError, DatabaseError):
    """The connection to a node broke while it was in use."""


class NotInitializedError(SchemaError, DatabaseError):
    """A replicator table does not exist on a node: its message is
    :data:`NOT_INITIALIZED`."""


class RowRefusedError(DatabaseError):
    """The database refused a row: ``reason`` is ``constraint_violation``
    (a key, a unique or foreign key, a check) or ``invalid_value`` (a value
    the column cannot store), as the review queue records it."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason)
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0])


class ReviewError(ReplicatorError):
    """A review item does not exist, is no longer open, or its decision
    cannot be written (the node refused the row); nothing changed."""
