"""``replicator demo``: the reference app on two embedded nodes, replicated.

Creates, in a directory, a local node (DuckDB or SQLite: the user's device)
and a server node (a SQLite file standing in for MariaDB), installs the
replicator's tables on both and turns capture on. The app then writes on
both sides (a study session on the device; a tutor's additions on the
server), and one ``sync`` runs every pass. Then both sides edit the same
row of each table while apart, each table under another conflict policy,
and a second ``sync`` settles them, parking the one left to a person, who
then resolves it; a third ``sync`` carries the decision, and the device's
documents follow into a ChromaDB collection (offline embeddings), where
one similarity query runs. The demo returns
what was captured, what each pass did, each conflict's outcome, the parked
item and its resolution, and both sides' tables afterwards. The directory
also gets a ``replicator.toml`` naming both nodes, to try the commands on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from replicator import outbox
from replicator.application import Replicator
from replicator.capture import capture
from replicator.config import loads
from replicator.events import ChangeEvent
from replicator.migration import migrate
from replicator.resources import load_example
from replicator.review import Decided, Listed
from replicator.sink import SinkResult
from replicator.sync import PassResult

STORES = ("duckdb", "sqlite")
#: The reference apps ``replicator demo --app`` runs: this module's, and
#: :mod:`replicator.demo_relational`'s.
APPS = ("learning", "relational")
USER = "u-42"
#: The document a person writes to settle the parked conflict.
MERGED = "Café con leche y churros, o café solo con tostadas."
#: What the demo looks for in the device's vector store.
QUERY = "churros con café"
# The device's documents, followed into a ChromaDB collection next to it.
SINK = """
[sinks.documents]
kind = "chroma"
node = "{node}"
path = "chroma"
collection = "documents"
table = "documents"
id_column = "document_id"
text_column = "content"
metadata_columns = ["user_id", "language", "filename"]
"""


# Each table's conflict policy: one of each kind.
POLICIES = {
    "vocabulary_items": "latest_timestamp",
    "user_profiles": "server_wins",
    "conversations": "local_wins",
    "learning_progress": "merge_fields",
    "messages": "replicator_examples.learning_app:keep_longer_message",
    "documents": "manual_review",
}


@dataclass(frozen=True)
class TableState:
    table: str
    server: list[tuple[Any, ...]]
    local: list[tuple[Any, ...]]
    differing: int  # rows not the same on both sides

    @property
    def equal(self) -> bool:
        return not self.differing


@dataclass(frozen=True)
class Conflict:
    """Both sides changed one row while apart; what each wrote, what both hold now."""

    table: str
    policy: str
    local: dict[str, Any]
    server: dict[str, Any]
    now_server: dict[str, Any] | None
    now_local: dict[str, Any] | None


@dataclass(frozen=True)
class DemoRun:
    url: str
    server_url: str
    events: list[tuple[int, ChangeEvent]]  # captured on the local node, first sync
    server_events: list[tuple[int, ChangeEvent]]  # captured on the server, first sync
    passes: list[PassResult]
    conflict_passes: list[PassResult]
    conflicts: list[Conflict]
    parked: list[Listed]  # open after the second sync
    resolution: Decided  # a person's decision on the parked item
    resolution_passes: list[PassResult]  # the sync that carried it
    sinks: list[SinkResult]  # the device's documents in its vector store, that sync
    search: list[tuple[str, str, float]]  # QUERY's nearest documents there
    tables: list[TableState]


@contextmanager
def embedded_nodes(
    directory: Path, store: str, node: str, app: Any, scope: dict[str, Any] | None = None
) -> Iterator[tuple[dict[str, str], dict[str, sa.Engine], dict[str, sessionmaker]]]:
    """A local ``node`` (a ``store`` file) and a server (a SQLite file) in
    ``directory``, made anew: the replicator's tables and ``app``'s on both,
    each captured (the local within ``scope``). Yields their URLs, engines
    and session factories by node name; stops capture and closes them after."""
    if store not in STORES:
        raise ValueError(f"store must be one of {STORES}, not {store!r}")
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
            handles.append(
                capture(factories[name], node=name, scope=scope if name == node else None)
            )
        yield urls, engines, factories
    finally:
        for handle in handles:
            handle.stop()
        for engine in engines.values():
            engine.dispose()


def run(directory: Path, store: str = "duckdb", node: str = "local") -> DemoRun:
    """Run the demo in ``directory`` (its previous demo databases are replaced)."""
    app = load_example("learning_app")
    scope = {"user_id": USER}
    with embedded_nodes(directory, store, node, app, scope) as (urls, engines, factories):
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
        app.run_session(factories[node], user_id=USER, now=now)
        _tutor_edits(app, factories["server"])
        text = (
            f'[nodes.server]\nurl = "{urls["server"]}"\nrole = "server"\n\n'
            f'[nodes.{node}]\nurl = "{urls[node]}"\nrole = "local"\n'
            f'scope = {{ user_id = "{USER}" }}\n\n'
            + "".join(f'[tables.{t}]\npolicy = "{p}"\n' for t, p in POLICIES.items())
            + SINK.format(node=node)
        )
        # Kept next to the databases, so the commands can be tried on them.
        (directory / "replicator.toml").write_text(text)
        config = loads(text, directory / "replicator.toml")
        with Replicator(config, engines=engines) as replicator:
            passes = replicator.sync().passes
            with engines[node].connect() as conn:  # its own (its log also holds what it applied)
                events = [(p, e) for p, e in outbox.read(conn) if e.origin == node]
            with engines["server"].connect() as conn:
                server_events = [(p, e) for p, e in outbox.read(conn) if e.origin == "server"]
            edits = _concurrent_edits(app, factories[node], factories["server"])
            conflict_passes = replicator.sync().passes
            queue = replicator.review()
            parked = queue.list().items
            # A person reads both versions and writes one that keeps both.
            resolution = queue.resolve(parked[0].ref, merge={"content": MERGED}, by="demo")
            last = replicator.sync()
            resolution_passes, sinks = last.passes, last.sinks
            search = replicator.sinks["documents"].query(QUERY, n=2)
        conflicts = [
            Conflict(
                table,
                POLICIES[table],
                local,
                server,
                _values(engines["server"], app.Base.metadata.tables[table], key),
                _values(engines[node], app.Base.metadata.tables[table], key),
            )
            for table, key, local, server in edits
        ]
        tables = []
        for table in app.Base.metadata.sorted_tables:
            server_rows = _rows(engines["server"], table, USER)
            local_rows = _rows(engines[node], table, USER)
            tables.append(
                TableState(
                    table.name,
                    server_rows,
                    local_rows,
                    _differing(table, server_rows, local_rows),
                )
            )
    return DemoRun(
        urls[node],
        urls["server"],
        events,
        server_events,
        passes,
        conflict_passes,
        conflicts,
        parked,
        resolution,
        resolution_passes,
        sinks,
        search,
        tables,
    )


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


def _concurrent_edits(
    app: Any, local: sessionmaker, server: sessionmaker
) -> list[tuple[str, tuple, dict[str, Any], dict[str, Any]]]:
    """The same row of every table changed on both sides (the device first),
    between two syncs: ``(table, key, local changes, server changes)``."""
    with local() as session:

        def one(model: Any, **where: Any) -> tuple:
            row = session.scalars(sa.select(model).filter_by(**where)).one()
            return tuple(sa.inspect(row).identity)

        edits = [
            (
                "vocabulary_items",
                one(app.VocabularyItem, word="café"),
                {"translation": "coffee, a café"},
                {"translation": "a coffee"},
            ),
            (
                "user_profiles",
                (USER,),
                {"display_name": "Ada L."},
                {"display_name": "Ada Lovelace"},
            ),
            (
                "conversations",
                one(app.Conversation, user_id=USER),
                {"title": "Ordering food and drinks"},
                {"title": "Food (reviewed)"},
            ),
            ("learning_progress", (USER, "listening"), {"xp": 55}, {"level": 3}),
            (
                "messages",
                one(app.Message, role="tutor"),
                {"content": "¡Muy bien! ¿Algo más?"},
                {"content": "¡Muy bien!!"},
            ),
            (
                "documents",
                one(app.Document, filename="menu.txt"),
                {"content": "Café con leche y churros."},
                {"content": "Café solo, tostadas."},
            ),
        ]
    models = {m.__tablename__: m for m in app.Base.__subclasses__()}
    for factory, side in ((local, 2), (server, 3)):
        with factory.begin() as session:
            for edit in edits:
                row = session.get(models[edit[0]], edit[1])
                for column, value in edit[side].items():
                    setattr(row, column, value)
    return edits


def _values(engine: sa.Engine, table: sa.Table, key: tuple) -> dict[str, Any] | None:
    """One row by its key (None when it is absent)."""
    where = [column == value for column, value in zip(table.primary_key, key, strict=True)]
    with engine.connect() as conn:
        row = conn.execute(sa.select(table).where(*where)).mappings().first()
    return None if row is None else dict(row)


def _differing(table: sa.Table, server: list[tuple], local: list[tuple]) -> int:
    """How many rows (by key) are absent on one side or hold other values."""
    at = [list(table.columns).index(c) for c in table.primary_key]
    by_key = [{tuple(row[i] for i in at): row for row in rows} for rows in (server, local)]
    keys = by_key[0].keys() | by_key[1].keys()
    return sum(by_key[0].get(k) != by_key[1].get(k) for k in keys)


def _rows(engine: sa.Engine, table: sa.Table, user: str) -> list[tuple[Any, ...]]:
    """The user's rows of ``table``, in key order."""
    with engine.connect() as conn:
        select = sa.select(table).where(table.c.user_id == user).order_by(*table.primary_key)
        return [tuple(row) for row in conn.execute(select)]
