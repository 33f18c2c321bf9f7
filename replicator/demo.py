"""``replicator demo``: the reference app on an embedded store, with capture on.

Creates a fresh local database (DuckDB or SQLite) in a directory, installs
the replicator's tables, turns capture on, runs a short study session of the
example app and returns the events it captured.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from replicator import outbox
from replicator.capture import capture
from replicator.events import ChangeEvent
from replicator.migration import migrate
from replicator.resources import load_example

STORES = ("duckdb", "sqlite")


@dataclass(frozen=True)
class DemoRun:
    url: str
    events: list[tuple[int, ChangeEvent]]


def run(directory: Path, store: str = "duckdb", node: str = "local") -> DemoRun:
    """Run the demo in ``directory`` (its previous demo database is replaced)."""
    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}, not {store!r}")
    app = load_example("learning_app")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{node}.{store}"
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    url = f"{store}:///{path}"
    engine = sa.create_engine(url)
    try:
        migrate(engine)
        app.Base.metadata.create_all(engine)
        session_factory = sessionmaker(bind=engine)
        handle = capture(session_factory, node=node)
        try:
            app.run_session(session_factory, user_id="u-42", now=dt.datetime.now(dt.UTC))
        finally:
            handle.stop()
        with engine.connect() as conn:
            events = list(outbox.read(conn))
    finally:
        engine.dispose()
    return DemoRun(url=url, events=events)
