"""The replicator's exceptions: one hierarchy, translated at the boundaries.

A caller catches :class:`ReplicatorError` for anything the replicator raises,
or one of the subclasses when it would react differently: fix the
configuration, wait for the network, look at the review queue.
"""

from __future__ import annotations


def describe(error: Exception) -> str:
    """A one-line account of ``error``: a replicator error's message, or a
    driver's exception (the original one SQLAlchemy wraps) by type."""
    if isinstance(error, ReplicatorError):
        return str(error)
    orig = getattr(error, "orig", None)
    return f"{type(orig or error).__name__}: {orig or error}".splitlines()[0]


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
