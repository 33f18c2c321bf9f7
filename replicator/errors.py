"""The replicator's exceptions: one hierarchy, translated at the boundaries.

A caller catches :class:`ReplicatorError` for anything the replicator raises,
or one of the subclasses when it would react differently: fix the
configuration, wait for the network, look at the review queue.
"""

from __future__ import annotations

import re

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


def describe(error: Exception) -> str:
    """A one-line account of ``error``: a replicator error's message, a
    node without the replicator's tables as :data:`NOT_INITIALIZED`, or a
    driver's exception (the original one SQLAlchemy wraps) by type."""
    if isinstance(error, ReplicatorError):
        return str(error)
    if not_initialized(error):
        return NOT_INITIALIZED
    orig = getattr(error, "orig", None)
    return f"{type(orig or error).__name__}: {orig or error}".splitlines()[0]


def not_initialized(error: BaseException) -> bool:
    """Whether ``error`` says one of the replicator's tables does not exist."""
    orig = getattr(error, "orig", None) or error
    return _MISSING_TABLE.search(str(orig)) is not None


class ReplicatorError(Exception):
    """Base class of every error the replicator raises on purpose."""


class ConfigurationError(ReplicatorError):
    """The configuration (file, key, value) or a call's arguments are wrong.

    The CLI maps it to exit code 2.
    """


class SchemaError(ReplicatorError):
    """The replicator's tables are missing or out of date on a node."""


class CaptureError(ReplicatorError):
    """A write cannot be captured (e.g. its table has no primary key)."""


class ConnectivityError(ReplicatorError):
    """A node cannot be reached."""


class ApplyError(ReplicatorError):
    """An event cannot be applied to a target node."""


class ReviewError(ReplicatorError):
    """A review item does not exist, is no longer open, or its decision
    cannot be written (the node refused the row); nothing changed."""
