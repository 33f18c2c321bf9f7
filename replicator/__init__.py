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

The names below are imported when first used (PEP 562), so that importing
the package, and starting the ``replicator`` command, does not pay for
SQLAlchemy, DuckDB or ChromaDB until something needs them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# Public name -> the module that defines it (and its name there).
_EXPORTS: dict[str, tuple[str, str]] = {
    "Capture": ("replicator.capture", "Capture"),
    "capture": ("replicator.capture", "capture"),
    "HybridLogicalClock": ("replicator.clock", "HybridLogicalClock"),
    "Config": ("replicator.config", "Config"),
    "load_config": ("replicator.config", "load"),
    "ApplyError": ("replicator.errors", "ApplyError"),
    "CaptureError": ("replicator.errors", "CaptureError"),
    "ConfigurationError": ("replicator.errors", "ConfigurationError"),
    "ConnectivityError": ("replicator.errors", "ConnectivityError"),
    "DatabaseError": ("replicator.errors", "DatabaseError"),
    "ReplicatorError": ("replicator.errors", "ReplicatorError"),
    "SchemaError": ("replicator.errors", "SchemaError"),
    "ChangeEvent": ("replicator.events", "ChangeEvent"),
    "Operation": ("replicator.events", "Operation"),
    "migrate": ("replicator.migration", "migrate"),
    "Node": ("replicator.node", "Node"),
    "AsyncBackgroundSync": ("replicator.service", "AsyncBackgroundSync"),
    "BackgroundSync": ("replicator.service", "BackgroundSync"),
    "Runner": ("replicator.service", "Runner"),
    "Timing": ("replicator.service", "Timing"),
    "PassProgress": ("replicator.sync", "PassProgress"),
    "PassResult": ("replicator.sync", "PassResult"),
    "Replicator": ("replicator.application", "Replicator"),
    "SyncPass": ("replicator.sync", "SyncPass"),
    "SyncResult": ("replicator.application", "SyncResult"),
    "replicate": ("replicator.sync", "replicate"),
}

__all__ = [  # the names of _EXPORTS (a test checks that the two agree)
    "ApplyError",
    "AsyncBackgroundSync",
    "BackgroundSync",
    "Capture",
    "CaptureError",
    "ChangeEvent",
    "Config",
    "ConfigurationError",
    "ConnectivityError",
    "DatabaseError",
    "HybridLogicalClock",
    "Node",
    "Operation",
    "PassProgress",
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


def __getattr__(name: str) -> Any:
    if name == "__version__":  # the installed distribution's, so it cannot drift
        from importlib.metadata import version

        return version("replicator")
    if name not in _EXPORTS:
        raise AttributeError(f"module 'replicator' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """``replicator.capture`` is the function, as it was when the package
    imported its names eagerly: the import system would otherwise set the
    submodule ``replicator.capture`` over it once that module is loaded.
    The module itself stays importable (``sys.modules``)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "capture" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:
    from replicator.application import Replicator, SyncResult
    from replicator.capture import Capture, capture
    from replicator.clock import HybridLogicalClock
    from replicator.config import Config
    from replicator.config import load as load_config
    from replicator.errors import (
        ApplyError,
        CaptureError,
        ConfigurationError,
        ConnectivityError,
        DatabaseError,
        ReplicatorError,
        SchemaError,
    )
    from replicator.events import ChangeEvent, Operation
    from replicator.migration import migrate
    from replicator.node import Node
    from replicator.service import AsyncBackgroundSync, BackgroundSync, Runner, Timing
    from replicator.sync import PassProgress, PassResult, SyncPass, replicate
