"""replicator: event-sourced change-log replication for SQLAlchemy apps.

::

    import replicator
    replicator.migrate(engine)                 # the replicator's tables, via alembic
    replicator.capture(engine, node="local")   # every ORM write -> replicator_outbox

    config = replicator.load_config("replicator.toml")
    with replicator.Replicator(config) as r:   # every link and channel
        result = r.sync()                      # one pass each: a SyncResult

    with replicator.BackgroundSync(config, engines={"phone": engine}):
        ...                                    # the app runs; its writes replicate
"""

from __future__ import annotations

from replicator.capture import Capture, capture
from replicator.clock import HybridLogicalClock
from replicator.config import Config
from replicator.config import load as load_config
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
from replicator.node import Node
from replicator.service import AsyncBackgroundSync, BackgroundSync, Runner, Timing
from replicator.sync import PassResult, Replicator, SyncPass, SyncResult, replicate

__all__ = [
    "ApplyError",
    "AsyncBackgroundSync",
    "BackgroundSync",
    "Capture",
    "CaptureError",
    "ChangeEvent",
    "Config",
    "ConfigurationError",
    "ConnectivityError",
    "HybridLogicalClock",
    "Node",
    "Operation",
    "PassResult",
    "Replicator",
    "ReplicatorError",
    "Runner",
    "SchemaError",
    "SyncPass",
    "SyncResult",
    "Timing",
    "capture",
    "load_config",
    "migrate",
    "replicate",
]
