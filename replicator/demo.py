"""``replicator demo``: the reference app on two embedded nodes, replicated.

Creates, in a directory, a local node (DuckDB or SQLite: the user's device)
and a server node (a SQLite file standing in for MariaDB), installs the
replicator's tables on both and turns capture on. The app then writes on
both sides (a study session on the device; a tutor's additions on the
server), one ``sync`` runs every pass, and the demo returns what was
captured, what each pass did and both sides' tables afterwards.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from replicator import outbox
from replicator.capture import capture
from replicator.config import loads
from replicator.events import ChangeEvent
from replicator.migration import migrate
from replicator.resources import load_example
from replicator.sync import PassResult, Replicator

STORES = ("duckdb", "sqlite")
USER = "u-42"


@dataclass(frozen=True)
class TableState:
    table: str
    server: list[tuple[Any, ...]]
    local: list[tuple[Any, ...]]

    @property
    def equal(self) -> bool:
        return self.server == self.local


@dataclass(frozen=True)
class DemoRun:
    url: str
    server_url: str
    events: list[tuple[int, ChangeEvent]]  # captured on the local node
    server_events: list[tuple[int, ChangeEvent]]  # captured on the server
    passes: list[PassResult]
    tables: list[TableState]


def run(directory: Path, store: str = "duckdb", node: str = "local") -> DemoRun:
    """Run the demo in ``directory`` (its previous demo databases are replaced)."""
    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}, not {store!r}")
    app = load_example("learning_app")
    directory.mkdir(parents=True, exist_ok=True)
    paths = {node: directory / f"{node}.{store}", "server": directory / "server.sqlite"}
    for path in paths.values():
        for stale in (path, path.with_name(path.name + ".wal")):
            stale.unlink(missing_ok=True)
    urls = {node: f"{store}:///{paths[node]}", "server": f"sqlite:///{paths['server']}"}
    engines = {name: sa.create_engine(url) for name, url in urls.items()}
    handles = []
    try:
        factories = {}
        for name, engine in engines.items():
            migrate(engine)
            app.Base.metadata.create_all(engine)
            factories[name] = sessionmaker(bind=engine)
            scope = {"user_id": USER} if name == node else None
            handles.append(capture(factories[name], node=name, scope=scope))
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        app.run_session(factories[node], user_id=USER, now=now)
        _tutor_edits(app, factories["server"])
        config = loads(
            f"""
            [nodes.server]
            url = "{urls["server"]}"
            role = "server"
            [nodes.{node}]
            url = "{urls[node]}"
            role = "local"
            scope = {{ user_id = "{USER}" }}
            """
        )
        with Replicator(config, engines=engines) as replicator:
            passes = replicator.sync().passes
        with engines[node].connect() as conn:
            events = list(outbox.read(conn))
        with engines["server"].connect() as conn:
            server_events = [(p, e) for p, e in outbox.read(conn) if e.origin == "server"]
        tables = [
            TableState(
                table.name, _rows(engines["server"], table, USER), _rows(engines[node], table, USER)
            )
            for table in app.Base.metadata.sorted_tables
        ]
    finally:
        for handle in handles:
            handle.stop()
        for engine in engines.values():
            engine.dispose()
    return DemoRun(urls[node], urls["server"], events, server_events, passes, tables)


def _tutor_edits(app: Any, factory: sessionmaker) -> None:
    """Writes made on the server meanwhile: a tutor adds for the user, and for another."""
    with factory.begin() as session:
        session.add_all(
            [
                app.VocabularyItem(user_id=USER, word="pan", translation="bread"),
                app.VocabularyItem(user_id="u-7", word="queso", translation="cheese"),
                app.Document(
                    user_id=USER,
                    language="es",
                    filename="tips.txt",
                    content="Pide la cuenta al final: ¿Me trae la cuenta, por favor?",
                ),
            ]
        )


def _rows(engine: sa.Engine, table: sa.Table, user: str) -> list[tuple[Any, ...]]:
    """The user's rows of ``table``, in key order."""
    with engine.connect() as conn:
        select = sa.select(table).where(table.c.user_id == user).order_by(*table.primary_key)
        return [tuple(row) for row in conn.execute(select)]
