"""replicator: event-sourced change-log replication for SQLAlchemy apps.

::

    import replicator
    replicator.migrate(engine)                 # the replicator's tables, via alembic
    replicator.capture(engine, node="local")   # every ORM write -> replicator_outbox
"""

from __future__ import annotations

from replicator.capture import Capture, capture
from replicator.clock import HybridLogicalClock
from replicator.errors import (
    ApplyError,
    CaptureError,
    ConfigurationError,
    ConnectivityError,
    ReplicatorError,
    SchemaError,
)
from replicator.events import ChangeEvent, Operation
from replicator.migration import migrate

__all__ = [
    "ApplyError",
    "Capture",
    "CaptureError",
    "ChangeEvent",
    "ConfigurationError",
    "ConnectivityError",
    "HybridLogicalClock",
    "Operation",
    "ReplicatorError",
    "SchemaError",
    "capture",
    "migrate",
]
