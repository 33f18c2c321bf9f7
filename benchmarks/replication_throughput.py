"""How fast does one replication pass move captured events to another database?

Two directions, each measured against what the target database can take at
most, and both against a peer library; then the whole ``replicator sync``
command, as a process, against the same raw limit:

* **SQLite -> MariaDB** and **MariaDB -> DuckDB**: ``--events`` change events
  (default 100,000: about 70% inserts and 30% updates of the reference app's
  tables, mostly messages and vocabulary items) are written with capture on,
  through the ORM (bulk ``insert(Model)`` and by-primary-key ``update(Model)``
  statements, 500 events per transaction), on a fresh source database. The
  target gets the replicator's tables and empty app tables, and one
  ``replicator.sync.replicate(source, target, batch_size=1000)`` pass is
  timed: events/s = applied events / wall seconds. Afterwards every app table
  on the target must hold exactly the source's rows.
* **Raw limit**: the row image of every one of those events (the full row
  after the insert or update, in event order) is written into fresh, empty
  copies of the app tables on the same kind of target, with the fastest
  batched upsert its driver offers, 1,000 row images per batch:
  MariaDB: pymysql ``executemany`` of ``INSERT ... ON DUPLICATE KEY UPDATE``
  (pymysql sends it as multi-row statements); DuckDB: one columnar
  ``INSERT INTO t SELECT unnest(?), ... ON CONFLICT (key) DO UPDATE`` per
  table and batch, with one list per column and the batch compacted to the
  last image per key (a repeated key in one DuckDB upsert keeps the *first*
  row). Statement parameters are prepared before the clock starts, so the
  limit is the database's and the driver's, not Python's. Both commit
  cadences are timed (after every batch and after every 10 batches), each on
  fresh tables; the faster one is the limit. rows/s = row images / seconds;
  the result must equal the source's rows, too.
* **Raw same writes**: a pass writes more than the app row per event. Per
  batch of 1,000 events it looks the batch's row versions up, upserts the app
  rows, upserts one row per (table, row key) into ``replicator_row_versions``
  and, when the target is the server, appends the forwarded events to its own
  ``replicator_outbox``. This run does exactly that database work with the
  raw limit's driver calls, into a database prepared by
  ``replicator.migrate()`` plus fresh app tables (for each commit cadence;
  the faster one counts). Its inputs come from the source's real outbox after
  generation (origin, table, row key, hlc and payload, in position order,
  1,000 events per batch) and are prepared before the clock starts: (1) the
  version look-up for the batch's distinct keys, MariaDB: ``SELECT row_key,
  version, hlc, origin, deleted FROM replicator_row_versions WHERE table_name
  = %s AND row_key IN (%s, ...)`` per table (at most the dialect's
  ``in_chunk`` keys each, as the pass chunks it), fetched; DuckDB: one
  ``... WHERE (table_name, row_key) IN (SELECT unnest(?), unnest(?))``;
  (2) the app rows, as the raw limit writes them (the workload's row images,
  per batch); (3) the version rows (``INSERT ... ON DUPLICATE KEY UPDATE`` /
  ``ON CONFLICT DO UPDATE`` of every non-key column), one per (table, row
  key) of the batch, its version counting the row's events so far
  (``{"local": 3}``), with its last event's hlc and origin; (4) on a MariaDB
  server target only (SQLite -> MariaDB and ``replicator sync``), the batch's
  events inserted into ``replicator_outbox``. The MariaDB -> DuckDB target is
  a local: app and version rows only. Why: the gap between a pass and this
  figure is the replicator's own (Python) cost, reading, deciding and
  preparing; the gap between this figure and the raw limit is the database
  work a pass must do beyond the app row. Its results must equal the
  source's rows, the version table must hold one row per distinct (table,
  row key) of the workload (with its event count), and a server's outbox
  every event. The main table shows it as "raw same writes events/s" and
  the pass's "ratio to same writes" (pass events/s / it); no target applies.
* **Peer**: the ``eventsourcing`` library. The same events (the row images,
  timestamps as ISO strings) are stored as domain events of one aggregate per
  row in an ``Application`` on SQLite (untimed); then a ``ProcessApplication``
  with its own SQLite database follows that application's notification log
  (``follow()`` + ``pull_and_process()``, what its ``SingleThreadedRunner``
  calls) and, per event, records a new small aggregate holding the row image
  together with its tracking record, one transaction per event, as the
  library does. events/s = processed events / seconds.
* **``replicator sync`` as a whole process** (SQLite -> MariaDB):
  ``--cli-events`` events (default 50,000; the same mix, generated the same
  way with capture on, on a fresh SQLite file) are moved by the public
  command: a ``replicator.toml`` in a temporary directory names the SQLite
  file as the local ``local`` and a fresh MariaDB database (replicator's
  tables migrated, empty app tables, both untimed) as the ``server``, with
  ``batch_size = 1000``; then ``.venv/bin/replicator sync --config ...
  --direction up --json`` runs in a subprocess, timed from its start to its
  exit (interpreter start-up, imports, configuration, connections, the pass,
  output). ``--cli-direction bidirectional`` runs it as a plain ``replicator
  sync`` instead: the pass down to the local as well, which has nothing to
  apply. events/s = applied events (from its JSON) / those seconds. The
  server must then hold exactly the source's rows, and the raw limit is
  measured again for the same ``--cli-events`` row images (or taken from the
  SQLite -> MariaDB direction when both sizes are equal: the same workload).

Targets, all measured in the same run: each pass reaches at least 0.5 of its
target's raw limit; the whole ``replicator sync`` process at least 0.4; and
each is at least 10x as fast as the ``eventsourcing`` peer.

Run from the repository root::

    .venv/bin/python benchmarks/replication_throughput.py
    .venv/bin/python benchmarks/replication_throughput.py --events 5000 --skip-peer
    .venv/bin/python benchmarks/replication_throughput.py --cli-events 0   # no command run

MariaDB: ``--mariadb-url`` (default: ``REPLICATOR_TEST_MARIADB_URL`` or
``mysql+pymysql://root@127.0.0.1:3306/test``); the run creates databases
``replicator_bench_<hex>_<role>`` and drops them afterwards. SQLite and
DuckDB files (and the command's configuration) live in a temporary
directory. ``--cli-events 0`` skips the command's measurement. The script
exits with status 1 when MariaDB is unreachable or a check fails (event
count, replicated rows, the command's exit status or counts); a ratio below
its target is reported as BELOW, not as a failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import bench_mariadb
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import sessionmaker

import replicator
from replicator.dialects import for_url
from replicator.resources import load_example

DEFAULT_EVENTS = 100_000
DEFAULT_CLI_EVENTS = 50_000  # events the whole `replicator sync` process moves
TRANSACTION = 500  # events per source transaction while generating
UPDATE_SHARE = 0.3
BATCH = 1000  # replication batch size and raw-limit batch size
COMMIT_EVERY = (1, 10)  # raw limit: commit after every batch / every 10 batches
TARGET_RATIO = 0.5  # a pass, to its target's raw limit
CLI_TARGET_RATIO = 0.4  # the whole `replicator sync` process, to the raw limit
PEER_TARGET = 10.0  # events/s, as a multiple of the eventsourcing peer's
CLI_DIRECTIONS = ("up", "bidirectional")  # --cli-direction: the command's --direction
SEED = 42
MARIADB_ENV = "REPLICATOR_TEST_MARIADB_URL"
MARIADB_DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/test"

SKILLS = ("listening", "speaking", "reading", "writing")
INSERT_WEIGHTS = {"messages": 60, "vocabulary_items": 35, "conversations": 3, "documents": 2}
UPDATE_WEIGHTS = {
    "vocabulary_items": 45,
    "messages": 25,
    "learning_progress": 20,
    "conversations": 4,
    "user_profiles": 3,
    "documents": 3,
}
WORDS = [
    "café",
    "cuenta",
    "mesa",
    "libro",
    "casa",
    "perro",
    "gato",
    "agua",
    "tren",
    "playa",
    "ciudad",
    "calle",
    "mañana",
    "noche",
    "comida",
    "bebida",
    "escuela",
    "trabajo",
    "amigo",
    "familia",
]


class BenchmarkError(Exception):
    """The benchmark could not prove what it measures (missing events, wrong rows)."""


def app_module() -> ModuleType:
    return load_example("learning_app")


def app_tables() -> list[sa.Table]:
    return list(app_module().Base.metadata.sorted_tables)


def key_columns(table: sa.Table) -> list[str]:
    return [c.name for c in table.primary_key.columns]


def column_names(table: sa.Table) -> list[str]:
    return [c.name for c in table.columns]


# --- the workload -----------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """One change event: ``values`` go into the ORM statement, ``image`` is the row after it."""

    table: str
    update: bool
    values: dict[str, Any]
    image: dict[str, Any]


@dataclass
class Workload:
    transactions: list[list[Write]]

    @property
    def writes(self) -> list[Write]:
        return [w for tx in self.transactions for w in tx]

    def __len__(self) -> int:
        return sum(len(tx) for tx in self.transactions)


class _Builder:
    """Builds a deterministic mix of inserts and updates, tracking every row's image."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.tables = {t.name: t for t in app_tables()}
        self.rows: dict[str, dict[tuple, dict[str, Any]]] = defaultdict(dict)
        self.keys: dict[str, list[tuple]] = defaultdict(list)
        self.users: list[str] = []
        self.conversations: list[tuple[str, str]] = []  # (conversation_id, user_id)
        self.counter = 0
        self.start = dt.datetime(2024, 1, 1, 8, 0, 0)

    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def key_of(self, table: str, row: dict[str, Any]) -> tuple:
        return tuple(row[c] for c in key_columns(self.tables[table]))

    def moment(self) -> dt.datetime:
        self.counter += 1
        return self.start + dt.timedelta(seconds=self.counter)  # whole seconds: DATETIME

    def text(self, words: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(words))

    def insert(self, table: str, row: dict[str, Any]) -> Write:
        key = self.key_of(table, row)
        self.rows[table][key] = row
        self.keys[table].append(key)
        return Write(table, False, row, row)

    def update(self, table: str, key: tuple, changes: dict[str, Any]) -> Write:
        image = {**self.rows[table][key], **changes}
        self.rows[table][key] = image
        ids = dict(zip(key_columns(self.tables[table]), key, strict=True))
        return Write(table, True, {**ids, **changes}, image)

    # inserts ---------------------------------------------------------------------

    def new_user(self) -> list[Write]:
        user_id = self.new_id()
        self.users.append(user_id)
        profile = {
            "user_id": user_id,
            "display_name": f"learner {len(self.users)}",
            "native_language": "en",
            "target_language": "es",
            "daily_goal_minutes": 10,
        }
        writes = [self.insert("user_profiles", profile)]
        for skill in SKILLS:
            progress = {"user_id": user_id, "skill": skill, "level": 1, "xp": 0}
            writes.append(self.insert("learning_progress", progress))
        return writes

    def new_row(self, table: str) -> Write:
        user_id = self.rng.choice(self.users)
        if table == "conversations":
            conversation_id = self.new_id()
            self.conversations.append((conversation_id, user_id))
            row = {
                "conversation_id": conversation_id,
                "user_id": user_id,
                "title": self.text(4),
                "started_at": self.moment(),
            }
        elif table == "messages":
            conversation_id, user_id = self.rng.choice(self.conversations)
            row = {
                "message_id": self.new_id(),
                "conversation_id": conversation_id,
                "user_id": user_id,
                "role": self.rng.choice(("user", "tutor")),
                "content": self.text(self.rng.randint(5, 25)),
                "sent_at": self.moment(),
            }
        elif table == "vocabulary_items":
            row = {
                "item_id": self.new_id(),
                "user_id": user_id,
                "word": self.rng.choice(WORDS),
                "translation": self.text(2),
                "strength": 0.0,
            }
        elif table == "documents":
            row = {
                "document_id": self.new_id(),
                "user_id": user_id,
                "language": "es",
                "filename": f"doc-{self.counter}.txt",
                "content": self.text(self.rng.randint(50, 200)),
            }
        else:
            raise ValueError(table)
        return self.insert(table, row)

    # updates ---------------------------------------------------------------------

    def changes(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        """New values for a few columns; each differs from the old one (else no event)."""
        if table == "vocabulary_items":
            return {"strength": row["strength"] + 0.25}  # multiples of 1/4: exact in FLOAT
        if table == "messages":
            return {"content": f"{self.text(self.rng.randint(5, 25))} (edit {self.moment()})"}
        if table == "learning_progress":
            xp = row["xp"] + 10
            return {"xp": xp, "level": 1 + xp // 100}
        if table == "conversations":
            return {"title": f"{self.text(3)} #{self.moment():%H%M%S}"}
        if table == "user_profiles":
            return {"daily_goal_minutes": row["daily_goal_minutes"] % 60 + 5}
        if table == "documents":
            return {"content": f"{self.text(self.rng.randint(50, 200))} (rev {self.counter})"}
        raise ValueError(table)

    def pick_update(self, touched: set[tuple[str, tuple]]) -> Write | None:
        """An update of an earlier row not yet updated in this transaction, if one is found."""
        tables = list(UPDATE_WEIGHTS)
        weights = list(UPDATE_WEIGHTS.values())
        for _ in range(10):
            table = self.rng.choices(tables, weights)[0]
            keys = self.keys[table]
            if not keys:
                continue
            key = self.rng.choice(keys)
            if (table, key) in touched:
                continue
            touched.add((table, key))
            return self.update(table, key, self.changes(table, self.rows[table][key]))
        return None


def make_workload(events: int, seed: int = SEED) -> Workload:
    """``events`` writes in transactions of :data:`TRANSACTION`, the same for every run.

    The first writes create the users (with one learning-progress row per
    skill) and the conversations; then each event is an update of an earlier
    row with probability :data:`UPDATE_SHARE` (never the same row twice in
    one transaction, so that each update is one event) and an insert otherwise.
    """
    b = _Builder(seed)
    seed_writes: list[Write] = []
    for _ in range(max(1, events // 2000)):
        seed_writes += b.new_user()
    seed_writes += [b.new_row("conversations") for _ in range(max(1, events // 250))]
    if len(seed_writes) > events:
        raise ValueError(f"{events} events are too few for the workload's first rows")
    transactions = [
        seed_writes[i : i + TRANSACTION] for i in range(0, len(seed_writes), TRANSACTION)
    ]
    done = len(seed_writes)
    tables = list(INSERT_WEIGHTS)
    weights = list(INSERT_WEIGHTS.values())
    while done < events:
        size = min(TRANSACTION, events - done)
        touched: set[tuple[str, tuple]] = set()
        tx: list[Write] = []
        while len(tx) < size:
            write = b.pick_update(touched) if b.rng.random() < UPDATE_SHARE else None
            tx.append(write or b.new_row(b.rng.choices(tables, weights)[0]))
        transactions.append(tx)
        done += size
    workload = Workload(transactions)
    assert len(workload) == events
    return workload


def final_rows(workload: Workload) -> dict[str, list[tuple]]:
    """Per table, the sorted rows the workload leaves behind."""
    latest: dict[str, dict[tuple, dict[str, Any]]] = defaultdict(dict)
    tables = {t.name: t for t in app_tables()}
    for w in workload.writes:
        table = tables[w.table]
        latest[w.table][tuple(w.image[c] for c in key_columns(table))] = w.image
    return {
        t.name: sorted(tuple(row[c] for c in column_names(t)) for row in latest[t.name].values())
        for t in tables.values()
    }


# --- databases ----------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def check_mariadb(server: sa.URL) -> None:
    problem = bench_mariadb.unreachable(server)
    if problem is not None:
        raise BenchmarkError(f"MariaDB at {problem}")


def create_app_tables(url: str, *, fresh: bool = False) -> None:
    engine = sa.create_engine(url)
    try:
        metadata = app_module().Base.metadata
        if fresh:
            metadata.drop_all(engine)
        metadata.create_all(engine)
    finally:
        engine.dispose()


def read_rows(url: str) -> dict[str, list[tuple]]:
    """Per app table, its sorted rows (read through the app's column types)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t.name: sorted(map(tuple, conn.execute(sa.select(t)))) for t in app_tables()}
    finally:
        engine.dispose()


def check_rows(where: str, expected: dict[str, list[tuple]], url: str) -> None:
    """Raise :class:`BenchmarkError` unless the database at ``url`` holds exactly ``expected``."""
    actual = read_rows(url)
    for table, rows in expected.items():
        got = actual[table]
        if len(got) != len(rows):
            raise BenchmarkError(f"{where}: {table} holds {len(got)} rows, the source {len(rows)}")
        if got != rows:
            differ = sum(1 for a, b in zip(got, rows, strict=True) if a != b)
            example = next((a, b) for a, b in zip(got, rows, strict=True) if a != b)
            raise BenchmarkError(
                f"{where}: {differ} of {len(rows)} rows of {table} differ from the source, "
                f"e.g. {example[0]!r} instead of {example[1]!r}"
            )


# --- 1. generation --------------------------------------------------------------------


def generate(source_url: str, workload: Workload, node: str) -> None:
    """Write the workload on the source with capture on; the outbox must hold one event each.

    Each transaction runs its inserts as ORM bulk inserts, then its updates as
    ORM by-primary-key bulk updates, one statement per table.
    """
    replicator.migrate(source_url)
    engine = sa.create_engine(source_url)
    try:
        app = app_module()
        app.Base.metadata.create_all(engine)
        factory = sessionmaker(bind=engine)
        handle = replicator.capture(factory, node=node)
        models = {m.class_.__tablename__: m.class_ for m in app.Base.registry.mappers}
        try:
            for tx in workload.transactions:
                inserts: dict[str, list[dict]] = defaultdict(list)
                updates: dict[str, list[dict]] = defaultdict(list)
                for w in tx:
                    (updates if w.update else inserts)[w.table].append(w.values)
                with factory.begin() as session:
                    for table, rows in inserts.items():
                        session.execute(sa.insert(models[table]), rows)
                    for table, rows in updates.items():
                        session.execute(sa.update(models[table]), rows)
        finally:
            handle.stop()
        with engine.connect() as conn:
            events = conn.execute(sa.text("SELECT count(*) FROM replicator_outbox")).scalar_one()
    finally:
        engine.dispose()
    if events != len(workload):
        raise BenchmarkError(
            f"{node} source: replicator_outbox holds {events} events after generation, "
            f"expected exactly {len(workload)}"
        )


# --- 2. replication -------------------------------------------------------------------


@dataclass
class Pass:
    """A timed pass: wall seconds around ``replicate()`` and its counts."""

    seconds: float
    read: int
    applied: int
    skipped: int
    conflicts: int
    parked: int
    failed: int
    passes: float | None = None  # the command's own pass seconds (whole-process runs)

    @property
    def rate(self) -> float:
        return self.applied / self.seconds


def replicate(source_url: str, target_url: str, source_name: str, target_name: str) -> Pass:
    """One timed replication pass from the source onto an empty target."""
    from replicator.node import Node
    from replicator.sync import replicate as replicate_pass

    replicator.migrate(target_url)
    create_app_tables(target_url)
    source = Node(name=source_name, url=source_url, role=source_name)
    target = Node(name=target_name, url=target_url, role=target_name)
    gc.collect()
    start = time.perf_counter()
    result = replicate_pass(source, target, batch_size=BATCH)
    seconds = time.perf_counter() - start
    source.dispose()
    target.dispose()
    if not result.ok:
        raise BenchmarkError(
            f"the {source_name} -> {target_name} pass failed after applying "
            f"{result.applied} events: {result.error}"
        )
    return Pass(
        seconds=seconds,
        read=result.read,
        applied=result.applied,
        skipped=result.skipped,
        conflicts=result.conflicts,
        parked=result.parked,
        failed=result.failed,
    )


# --- 3. the target's raw limit ----------------------------------------------------------


@dataclass
class RawLimit:
    rows: int
    seconds: dict[int, float] = field(default_factory=dict)  # commit every N batches -> s

    @property
    def best(self) -> int:
        return min(self.seconds, key=self.seconds.__getitem__)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds[self.best]

    def rate_for(self, every: int) -> float:
        return self.rows / self.seconds[every]


class Step(NamedTuple):
    """One prepared statement of a raw run: a write (``executemany`` / columnar
    ``unnest``) or, with ``query``, a look-up whose rows are fetched."""

    statement: str
    params: Any
    query: bool = False


def batches(items: Sequence, size: int = BATCH) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def by_table(batch: Sequence[Write]) -> dict[str, list[Write]]:
    grouped: dict[str, list[Write]] = defaultdict(list)
    for w in batch:
        grouped[w.table].append(w)
    return grouped


def mariadb_upserts(writes: Sequence[Write]) -> list[list[Step]]:
    """Per batch, per table: ``INSERT ... ON DUPLICATE KEY UPDATE`` and its rows, in order."""
    tables = {t.name: t for t in app_tables()}
    statements = {}
    for name, table in tables.items():
        columns = column_names(table)
        keys = set(key_columns(table))
        updates = ", ".join(f"{c} = VALUES({c})" for c in columns if c not in keys)
        statements[name] = (
            f"INSERT INTO {name} ({', '.join(columns)}) "
            f"VALUES ({', '.join('%s' for _ in columns)}) ON DUPLICATE KEY UPDATE {updates}"
        )
    prepared = []
    for batch in batches(writes):
        prepared.append(
            [
                Step(
                    statements[name],
                    [tuple(w.image[c] for c in column_names(tables[name])) for w in group],
                )
                for name, group in by_table(batch).items()
            ]
        )
    return prepared


def duckdb_upserts(writes: Sequence[Write]) -> list[list[Step]]:
    """Per batch, per table: a columnar ``unnest`` upsert and one list per column.

    A batch is compacted to the last image per key first: DuckDB's upsert keeps
    the first of two rows with the same key in one statement.
    """
    tables = {t.name: t for t in app_tables()}
    statements = {}
    for name, table in tables.items():
        columns = column_names(table)
        keys = key_columns(table)
        updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in keys)
        statements[name] = (
            f"INSERT INTO {name} ({', '.join(columns)}) "
            f"SELECT {', '.join('unnest(?)' for _ in columns)} "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
        )
    prepared = []
    for batch in batches(writes):
        steps = []
        for name, group in by_table(batch).items():
            table = tables[name]
            keys = key_columns(table)
            last = {tuple(w.image[c] for c in keys): w.image for w in group}
            columns = [[row[c] for row in last.values()] for c in column_names(table)]
            steps.append(Step(statements[name], columns))
        prepared.append(steps)
    return prepared


def raw_limit(target_url: str, workload: Workload, expected: dict[str, list[tuple]]) -> RawLimit:
    """Every event's row image upserted into fresh app tables on the target, timed.

    Each commit cadence in :data:`COMMIT_EVERY` runs on freshly created tables,
    and each must leave exactly the source's rows.
    """
    writes = workload.writes
    backend = make_url(target_url).get_backend_name().replace("mysql", "mariadb")
    if backend == "duckdb":
        prepared: list = duckdb_upserts(writes)
    elif backend == "mariadb":
        prepared = mariadb_upserts(writes)
    else:
        raise ValueError(f"no raw limit for {backend}")
    result = RawLimit(rows=len(writes))
    for every in COMMIT_EVERY:
        create_app_tables(target_url, fresh=True)
        if backend == "duckdb":
            seconds = _duckdb_run(target_url, prepared, every)
        else:
            seconds = _mariadb_run(target_url, prepared, every)
        result.seconds[every] = seconds
        check_rows(f"raw limit on {backend} (commit every {every})", expected, target_url)
        progress(
            f"raw limit {backend}, commit every {every} batch(es): {seconds:.2f}s, "
            f"{len(writes) / seconds:,.0f} rows/s"
        )
    return result


def _mariadb_run(url: str, prepared: list, every: int) -> float:
    engine = sa.create_engine(url)
    try:
        raw = engine.raw_connection()
        try:
            conn = raw.driver_connection  # the pymysql connection itself
            cursor = conn.cursor()
            gc.collect()
            start = time.perf_counter()
            for i, steps in enumerate(prepared, 1):
                for statement, params, query in steps:
                    if query:
                        cursor.execute(statement, params)
                        cursor.fetchall()
                    else:
                        cursor.executemany(statement, params)
                if i % every == 0:
                    conn.commit()
            conn.commit()
            return time.perf_counter() - start
        finally:
            raw.close()
    finally:
        engine.dispose()


def _duckdb_run(url: str, prepared: list, every: int) -> float:
    import duckdb

    conn = duckdb.connect(make_url(url).database)
    try:
        gc.collect()
        start = time.perf_counter()
        conn.begin()
        for i, steps in enumerate(prepared, 1):
            for statement, params, query in steps:
                if query:
                    conn.execute(statement, params).fetchall()
                else:
                    conn.execute(statement, params)
            if i % every == 0:
                conn.commit()
                conn.begin()
        conn.commit()
        return time.perf_counter() - start
    finally:
        conn.close()


# --- 3b. the same writes a pass makes, raw -----------------------------------------------


class OutboxEvent(NamedTuple):
    """One event of the source's outbox, as a pass reads it."""

    origin: str
    table: str
    row_key: str
    hlc: int
    payload: bytes


VERSION_COLUMNS = ("table_name", "row_key", "version", "hlc", "origin", "deleted")
OUTBOX_COLUMNS = ("origin", "table_name", "row_key", "hlc", "payload")


def read_outbox(source_url: str) -> list[OutboxEvent]:
    """The source's outbox after generation, in position order."""
    engine = sa.create_engine(source_url)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                f"SELECT {', '.join(OUTBOX_COLUMNS)} FROM replicator_outbox ORDER BY position"
            ).all()
    finally:
        engine.dispose()
    return [
        OutboxEvent(origin, table, row_key, hlc, bytes(payload))
        for origin, table, row_key, hlc, payload in rows
    ]


def batch_keys(batch: Sequence[OutboxEvent]) -> dict[str, list[str]]:
    """Per table, the batch's distinct row keys (first-seen order): what a pass looks up."""
    keys: dict[str, dict[str, None]] = defaultdict(dict)
    for e in batch:
        keys[e.table][e.row_key] = None
    return {table: list(table_keys) for table, table_keys in keys.items()}


def version_rows(events: Sequence[OutboxEvent]) -> list[list[tuple]]:
    """Per batch, one version row per (table, row key) of the batch, as a pass stores it.

    Its version counts the row's events so far (``{"<origin>": n}``, the JSON
    the replicator writes), with the hlc and origin of its last event.
    """
    counts: dict[tuple[str, str], int] = defaultdict(int)
    prepared = []
    for batch in batches(events):
        last: dict[tuple[str, str], tuple] = {}
        for e in batch:
            key = (e.table, e.row_key)
            counts[key] += 1
            version = json.dumps({e.origin: counts[key]}, separators=(",", ":"))
            last[key] = (e.table, e.row_key, version, e.hlc, e.origin, False)
        prepared.append(list(last.values()))
    return prepared


def mariadb_same_writes(
    writes: Sequence[Write], events: Sequence[OutboxEvent], server: bool, in_chunk: int
) -> list[list[Step]]:
    """Per batch: the version look-ups (per table, at most ``in_chunk`` keys per
    statement, as the pass's dialect chunks them), the app rows' upserts, the
    version rows' upsert and, on a server, the events' outbox insert."""
    lookup = (
        "SELECT row_key, version, hlc, origin, deleted FROM replicator_row_versions "
        "WHERE table_name = %s AND row_key IN ({})"
    )
    updates = ", ".join(f"{c} = VALUES({c})" for c in VERSION_COLUMNS[2:])
    upsert_versions = (
        f"INSERT INTO replicator_row_versions ({', '.join(VERSION_COLUMNS)}) "
        f"VALUES ({', '.join('%s' for _ in VERSION_COLUMNS)}) ON DUPLICATE KEY UPDATE {updates}"
    )
    insert_events = (
        f"INSERT INTO replicator_outbox ({', '.join(OUTBOX_COLUMNS)}) "
        f"VALUES ({', '.join('%s' for _ in OUTBOX_COLUMNS)})"
    )
    prepared = []
    for batch, app_steps, versions in zip(
        batches(events), mariadb_upserts(writes), version_rows(events), strict=True
    ):
        steps = [
            Step(lookup.format(", ".join("%s" for _ in chunk)), (table, *chunk), query=True)
            for table, keys in batch_keys(batch).items()
            for chunk in batches(keys, in_chunk)
        ]
        steps += app_steps
        steps.append(Step(upsert_versions, versions))
        if server:
            steps.append(Step(insert_events, [tuple(e) for e in batch]))
        prepared.append(steps)
    return prepared


def duckdb_same_writes(writes: Sequence[Write], events: Sequence[OutboxEvent]) -> list[list[Step]]:
    """Per batch: one columnar version look-up for all the batch's keys, the app
    rows' columnar upserts and one columnar upsert of the version rows."""
    lookup = (
        "SELECT table_name, row_key, version, hlc, origin, deleted FROM replicator_row_versions "
        "WHERE (table_name, row_key) IN (SELECT unnest(?), unnest(?))"
    )
    updates = ", ".join(f"{c} = excluded.{c}" for c in VERSION_COLUMNS[2:])
    upsert_versions = (
        f"INSERT INTO replicator_row_versions ({', '.join(VERSION_COLUMNS)}) "
        f"SELECT {', '.join('unnest(?)' for _ in VERSION_COLUMNS)} "
        f"ON CONFLICT (table_name, row_key) DO UPDATE SET {updates}"
    )
    prepared = []
    for batch, app_steps, versions in zip(
        batches(events), duckdb_upserts(writes), version_rows(events), strict=True
    ):
        pairs = [(table, key) for table, keys in batch_keys(batch).items() for key in keys]
        steps = [Step(lookup, [[t for t, _ in pairs], [k for _, k in pairs]], query=True)]
        steps += app_steps
        columns = [list(column) for column in zip(*versions, strict=True)]
        steps.append(Step(upsert_versions, columns))
        prepared.append(steps)
    return prepared


def fresh_same_writes_target(url: str, backend: str) -> None:
    """The replicator's tables (migrated, version state and outbox emptied) and
    freshly created, empty app tables."""
    if backend == "duckdb":  # a new file: nothing left behind by deletes
        path = Path(make_url(url).database)
        for stale in (path, path.with_name(path.name + ".wal")):
            stale.unlink(missing_ok=True)
    replicator.migrate(url)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for table in ("replicator_row_versions", "replicator_outbox"):
                conn.exec_driver_sql(f"TRUNCATE TABLE {table}")
    finally:
        engine.dispose()
    create_app_tables(url, fresh=True)


def check_same_writes(where: str, url: str, events: Sequence[OutboxEvent], server: bool) -> None:
    """One version row per distinct (table, row key) of the workload, counting its
    events; on a server, every event in the outbox."""
    expected: dict[tuple[str, str], int] = defaultdict(int)
    for e in events:
        expected[(e.table, e.row_key)] += 1
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            stored = conn.exec_driver_sql(
                "SELECT table_name, row_key, version FROM replicator_row_versions"
            ).all()
            outboxed = conn.exec_driver_sql("SELECT count(*) FROM replicator_outbox").scalar_one()
    finally:
        engine.dispose()
    versions = {(t, k): sum(json.loads(v).values()) for t, k, v in stored}
    if len(stored) != len(expected) or versions != expected:
        wrong = sum(1 for key, n in expected.items() if versions.get(key) != n)
        raise BenchmarkError(
            f"{where}: replicator_row_versions holds {len(stored)} rows for {len(expected)} "
            f"distinct rows of the workload; {wrong} missing or with the wrong version"
        )
    if outboxed != (len(events) if server else 0):
        raise BenchmarkError(
            f"{where}: replicator_outbox holds {outboxed} events, expected "
            f"{len(events) if server else 0}"
        )


def raw_same_writes(
    target_url: str,
    workload: Workload,
    expected: dict[str, list[tuple]],
    events: Sequence[OutboxEvent],
    server: bool,
) -> RawLimit:
    """A pass's database work, per batch, with the raw driver calls of the raw limit, timed.

    ``events``: the source's outbox (in position order); ``server``: the
    target is a server, so the events are appended to its outbox, too. Each
    commit cadence runs on fresh tables and must leave exactly the source's
    app rows, one version row per distinct row, and (server) every event.
    """
    writes = workload.writes
    if len(events) != len(writes):
        raise BenchmarkError(f"the source's outbox holds {len(events)} events, not {len(writes)}")
    distinct = len({(e.table, e.row_key) for e in events})
    if distinct != sum(len(rows) for rows in expected.values()):
        raise BenchmarkError(
            f"the source's outbox names {distinct} distinct rows, the source holds "
            f"{sum(len(rows) for rows in expected.values())}"
        )
    backend = make_url(target_url).get_backend_name().replace("mysql", "mariadb")
    if backend == "duckdb":
        if server:
            raise ValueError("the DuckDB target is a local: no outbox writes")
        prepared = duckdb_same_writes(writes, events)
    elif backend == "mariadb":
        in_chunk = for_url(target_url).in_chunk  # the pass's look-up chunks on MariaDB
        prepared = mariadb_same_writes(writes, events, server, in_chunk)
    else:
        raise ValueError(f"no raw same-writes run for {backend}")
    result = RawLimit(rows=len(writes))
    for every in COMMIT_EVERY:
        fresh_same_writes_target(target_url, backend)
        if backend == "duckdb":
            seconds = _duckdb_run(target_url, prepared, every)
        else:
            seconds = _mariadb_run(target_url, prepared, every)
        result.seconds[every] = seconds
        where = f"raw same writes on {backend} (commit every {every})"
        check_rows(where, expected, target_url)
        check_same_writes(where, target_url, events, server)
        progress(
            f"raw same writes {backend}, commit every {every} batch(es): {seconds:.2f}s, "
            f"{len(writes) / seconds:,.0f} events/s"
        )
    return result


# --- 4. the peer: eventsourcing ------------------------------------------------------------


@dataclass
class PeerResult:
    events: int
    seconds: float
    version: str

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def _json_ready(image: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in image.items()}


def peer(workload: Workload, events: int, directory: Path) -> PeerResult:
    """eventsourcing's process application catching up with ``events`` of the workload."""
    from functools import singledispatchmethod

    from eventsourcing.application import Application
    from eventsourcing.domain import Aggregate, event
    from eventsourcing.system import ProcessApplication

    class Row(Aggregate):
        """A row of the app, as an aggregate: created by its insert, changed by updates."""

        @event("Inserted")
        def __init__(self, table: str, values: dict) -> None:
            self.table = table
            self.values = values

        @event("Updated")
        def change(self, values: dict) -> None:
            self.values = values

    class Applied(Aggregate):
        """What the follower records per processed event: the row image it received."""

        @event("Recorded")
        def __init__(self, source: str, version: int, values: dict) -> None:
            self.source = source
            self.version = version
            self.values = values

    class Rows(Application):
        pass

    class Mirror(ProcessApplication):
        processed = 0

        @singledispatchmethod
        def policy(self, domain_event: Any, processing_event: Any) -> None:
            processing_event.collect_events(
                Applied(
                    source=str(domain_event.originator_id),
                    version=domain_event.originator_version,
                    values=domain_event.values,
                )
            )
            self.processed += 1

    def env(name: str) -> dict[str, str]:
        return {
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": str(directory / f"{name}.sqlite"),
        }

    rows = Rows(env=env("rows"))
    aggregates: dict[tuple[str, str], Row] = {}
    tables = {t.name: t for t in app_tables()}
    written = 0
    for tx in workload.transactions:
        if written >= events:
            break
        tx = tx[: events - written]
        touched: dict[uuid.UUID, Row] = {}
        for w in tx:
            key = (w.table, repr(tuple(w.image[c] for c in key_columns(tables[w.table]))))
            values = _json_ready(w.image)
            if w.update:
                aggregate = aggregates[key]
                aggregate.change(values)
            else:
                aggregate = aggregates[key] = Row(w.table, values)
            touched[aggregate.id] = aggregate
        rows.save(*touched.values())
        written += len(tx)
    head = rows.recorder.max_notification_id()
    if head != written:
        raise BenchmarkError(f"peer: the notification log holds {head} events, not {written}")

    mirror = Mirror(env=env("mirror"))
    mirror.follow(Rows.name, rows.notification_log)
    gc.collect()
    start = time.perf_counter()
    mirror.pull_and_process(Rows.name)
    seconds = time.perf_counter() - start
    tracked = mirror.recorder.max_tracking_id(Rows.name)
    processed = mirror.processed
    mirror.close()
    rows.close()
    if processed != written or tracked != head:
        raise BenchmarkError(
            f"peer: processed {processed} of {written} events, tracking at {tracked} of {head}"
        )
    return PeerResult(
        events=written, seconds=seconds, version=importlib_metadata.version("eventsourcing")
    )


# --- 5. the whole command: `replicator sync` ---------------------------------------------


def replicator_command() -> Path:
    """The ``replicator`` console script installed beside this interpreter."""
    command = Path(sys.executable).with_name("replicator")
    if not command.exists():
        raise BenchmarkError(f"no replicator command at {command} (install the project)")
    return command


def toml_string(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid TOML basic string


def write_config(path: Path, local_url: str, server_url: str) -> None:
    """A ``replicator.toml`` with the SQLite file as local ``local`` and the MariaDB server."""
    path.write_text(
        "[nodes.local]\n"
        f"url = {toml_string(local_url)}\n"
        'role = "local"\n\n'
        "[nodes.server]\n"
        f"url = {toml_string(server_url)}\n"
        'role = "server"\n\n'
        "[replication]\n"
        f"batch_size = {BATCH}\n"
    )


def cli_sync(config: Path, events: int, direction: str) -> Pass:
    """``replicator sync --json`` in a subprocess, timed from its start to its exit.

    Its passes up from the local must read and apply every event; a pass
    down (``bidirectional``) has nothing to apply: the server's events are
    all the local's own."""
    command = [
        str(replicator_command()),
        "sync",
        "--config",
        str(config),
        "--direction",
        direction,
        "--json",
    ]
    gc.collect()
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise BenchmarkError(
            f"`replicator sync` exited with status {done.returncode}: "
            f"{(done.stderr.strip() or done.stdout.strip())[-2000:]}"
        )
    try:
        passes = json.loads(done.stdout)["passes"]
    except (ValueError, KeyError) as e:
        raise BenchmarkError(f"`replicator sync --json` printed no passes: {done.stdout!r}") from e
    bad = [p for p in passes if p.get("status", "ok") != "ok" or p.get("error")]
    if bad:
        raise BenchmarkError(f"`replicator sync` reported failed passes: {bad}")

    def total(key: str) -> int:
        return sum(p.get(key, 0) for p in passes)

    result = Pass(
        seconds=seconds,
        read=total("read"),
        applied=total("applied"),
        skipped=total("skipped"),
        conflicts=total("conflicts"),
        parked=total("parked"),
        failed=total("failed"),
        passes=sum(p.get("seconds", 0.0) for p in passes),
    )
    read_up = sum(p.get("read", 0) for p in passes if p.get("source") == "local")
    if read_up != events or result.applied != events or result.failed:
        raise BenchmarkError(
            f"`replicator sync` read {read_up} from the local, applied {result.applied} and "
            f"failed {result.failed} of {events} events"
        )
    return result


def run_cli(
    workload: Workload,
    local_url: str,
    server_url: str,
    directory: Path,
    raw_url: str,
    reuse: Direction | None,
    direction: str = "up",
) -> Direction:
    """Capture ``workload`` on a fresh SQLite local; ``replicator sync`` it to the server."""
    name = "SQLite -> MariaDB, `replicator sync` (whole process)"
    if direction != "up":
        name += f", --direction {direction}"
    progress(f"replicator sync: generating {len(workload)} events on the SQLite local")
    generate(local_url, workload, node="local")
    expected = read_rows(local_url)
    if expected != final_rows(workload):
        raise BenchmarkError("replicator sync: the local's rows differ from the workload's")
    replicator.migrate(server_url)  # what `replicator init` does for the server (untimed)
    create_app_tables(server_url)
    config = directory / "replicator.toml"
    write_config(config, local_url, server_url)
    progress("replicator sync: running the command")
    result = cli_sync(config, len(workload), direction)
    progress(
        f"replicator sync: applied {result.applied} in {result.seconds:.2f}s (its passes "
        f"{result.passes:.2f}s), {result.rate:,.0f} events/s"
    )
    check_rows("`replicator sync` server", expected, server_url)
    if reuse is None:
        limit = raw_limit(raw_url, workload, expected)
        events = read_outbox(local_url)
        same = raw_same_writes(raw_url, workload, expected, events, server=True)
    else:
        limit, same = reuse.limit, reuse.same
    return Direction(name, "server", result, limit, same, target_ratio=CLI_TARGET_RATIO, whole=True)


# --- output ------------------------------------------------------------------------------


@dataclass
class Direction:
    name: str
    target: str
    result: Pass
    limit: RawLimit
    same: RawLimit  # the raw same-writes run
    target_ratio: float = TARGET_RATIO
    whole: bool = False  # the whole `replicator sync` process, not one in-process pass

    @property
    def ratio(self) -> float:
        return self.result.rate / self.limit.rate

    @property
    def same_ratio(self) -> float:
        return self.result.rate / self.same.rate

    def peer_ratio(self, peer_result: PeerResult | None) -> float | None:
        return None if peer_result is None else self.result.rate / peer_result.rate

    def verdict(self, peer_result: PeerResult | None) -> str:
        below = []
        if self.ratio < self.target_ratio:
            below.append("BELOW limit target")
        peer_ratio = self.peer_ratio(peer_result)
        if peer_ratio is not None and peer_ratio < PEER_TARGET:
            below.append("BELOW peer target")
        return ", ".join(below) or "ok"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def cadence(every: int) -> str:
    return "every batch" if every == 1 else f"every {every} batches"


def report(directions: Sequence[Direction], peer_result: PeerResult | None, args) -> str:
    cli = [d for d in directions if d.whole]
    lines = [
        "## Replication throughput",
        "",
        f"Workload: {args.events} captured events (~{UPDATE_SHARE:.0%} updates, the rest "
        f"inserts) on the reference app's tables, {TRANSACTION} events per source "
        f"transaction; one replication pass, batch_size={BATCH}. Raw limit: the same "
        f"row images upserted in batches of {BATCH} with the target "
        "driver's fastest batched upsert (the faster commit cadence). Raw same writes: "
        f"per batch of {BATCH}, the database work a pass does (the version look-up, the "
        "app rows, the version rows and, on a server target, the outbox append) with the "
        "same raw driver calls (the faster commit cadence): pass vs. it is the "
        "replicator's own cost; it vs. the raw limit is the work beyond the app row.",
    ]
    if cli:
        lines.append(
            f"`replicator sync` (whole process): {args.cli_events} events of the same mix "
            "captured on a SQLite local, moved by `replicator sync --direction "
            f"{args.cli_direction} --json` (batch_size = {BATCH}) in a subprocess, timed "
            "from its start to its "
            f"exit; its raw limit is the same {args.cli_events} row images upserted into MariaDB."
        )
    lines += [
        f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs.",
        "",
    ]
    rows = []
    for d in directions:
        peer_ratio = d.peer_ratio(peer_result)
        rows.append(
            [
                d.name,
                str(d.result.applied),
                f"{d.result.seconds:.2f}",
                f"{d.result.rate:,.0f}",
                f"{d.limit.rate:,.0f}",
                f"{d.ratio:.2f}",
                f">= {d.target_ratio}",
                f"{d.same.rate:,.0f}",
                f"{d.same_ratio:.2f}",
                "skipped" if peer_ratio is None else f"{peer_ratio:.1f}x",
                d.verdict(peer_result),
            ]
        )
    header = [
        "direction",
        "events",
        "seconds",
        "events/s",
        "raw limit rows/s",
        "ratio to limit",
        "target",
        "raw same writes events/s",
        "ratio to same writes",
        f"ratio to eventsourcing (target >= {PEER_TARGET:g}x)",
        "verdict",
    ]
    lines += [markdown_table(header, rows), ""]
    detail = [
        [
            d.name,
            str(d.result.read),
            str(d.result.applied),
            str(d.result.skipped),
            str(d.result.conflicts),
            str(d.result.parked),
            str(d.result.failed),
            f"{d.result.passes if d.result.passes is not None else d.result.seconds:.2f}",
            *(f"{d.limit.rate_for(every):,.0f}" for every in COMMIT_EVERY),
            cadence(d.limit.best),
            *(f"{d.same.rate_for(every):,.0f}" for every in COMMIT_EVERY),
            cadence(d.same.best),
        ]
        for d in directions
    ]
    header = ["direction", "read", "applied", "skipped", "conflicts", "parked", "failed"]
    header += ["seconds in passes"]
    header += [f"raw rows/s, commit {cadence(every)}" for every in COMMIT_EVERY]
    header += ["limit uses"]
    header += [f"raw same writes events/s, commit {cadence(every)}" for every in COMMIT_EVERY]
    header += ["same writes uses"]
    lines += ["### Pass results and raw limits", "", markdown_table(header, detail), ""]
    if cli:
        lines.append(
            "Seconds in passes: for `replicator sync`, the passes' own seconds from its JSON "
            "output; the rest of the process time is start-up, configuration, connections "
            "and output."
        )
    lines.append(
        "Checks passed: every source outbox held exactly one event per write; every target "
        "(and every raw-limit and raw same-writes run) held exactly the source's rows; every "
        "raw same-writes run held one version row per distinct row (counting its events) "
        "and, on a server target, every event in its outbox"
        + ("" if not cli else "; `replicator sync` exited 0 and applied every event")
        + ("." if peer_result is None else "; the peer processed and tracked every event.")
    )
    if peer_result is None:
        lines.append("Peer: skipped (--skip-peer).")
    else:
        ratios = ", ".join(f"{d.name} {d.peer_ratio(peer_result):.1f}x" for d in directions)
        lines.append(
            f"Peer: eventsourcing {peer_result.version} ProcessApplication following a "
            f"notification log on SQLite: {peer_result.events} events in "
            f"{peer_result.seconds:.2f} s = {peer_result.rate:,.0f} events/s; "
            f"our ratio to it (target >= {PEER_TARGET:g}x): {ratios}."
        )
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        default=DEFAULT_EVENTS,
        help=f"captured events per direction (default {DEFAULT_EVENTS})",
    )
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get(MARIADB_ENV, MARIADB_DEFAULT_URL),
        help=f"MariaDB server (default: ${MARIADB_ENV} or {MARIADB_DEFAULT_URL})",
    )
    parser.add_argument(
        "--peer-events",
        type=int,
        default=None,
        help="events the eventsourcing peer processes (default: --events); it is slow",
    )
    parser.add_argument("--skip-peer", action="store_true", help="do not run the peer")
    parser.add_argument(
        "--cli-events",
        type=int,
        default=DEFAULT_CLI_EVENTS,
        help=f"events the whole `replicator sync` process moves from a SQLite local to "
        f"MariaDB (default {DEFAULT_CLI_EVENTS}; 0 skips it)",
    )
    parser.add_argument(
        "--cli-direction",
        choices=CLI_DIRECTIONS,
        default="up",
        help="the command's --direction: up (default; the local's passes to the server "
        "only) or bidirectional (also the passes down, as a plain `replicator sync`)",
    )
    args = parser.parse_args(argv)
    if args.events < 1000:
        parser.error("--events must be at least 1000")
    if args.cli_events and args.cli_events < 1000:
        parser.error("--cli-events must be 0 or at least 1000")
    if args.peer_events is None:
        args.peer_events = args.events
    if not 1 <= args.peer_events <= args.events:
        parser.error("--peer-events must be between 1 and --events")
    return args


def run_direction(
    name: str,
    workload: Workload,
    source: tuple[str, str],
    target: tuple[str, str],
    raw_url: str,
) -> Direction:
    (source_name, source_url), (target_name, target_url) = source, target
    progress(f"{name}: generating {len(workload)} events on the {source_name} source")
    generate(source_url, workload, node=source_name)
    expected = read_rows(source_url)
    if expected != final_rows(workload):
        raise BenchmarkError(f"{name}: the source's rows differ from the workload's")
    progress(f"{name}: replicating")
    result = replicate(source_url, target_url, source_name, target_name)
    progress(
        f"{name}: read {result.read}, applied {result.applied} in {result.seconds:.2f}s, "
        f"{result.rate:,.0f} events/s"
    )
    if result.read != len(workload) or result.applied != len(workload) or result.failed:
        raise BenchmarkError(
            f"{name}: the pass read {result.read}, applied {result.applied} and failed "
            f"{result.failed} of {len(workload)} events"
        )
    check_rows(f"{name} target", expected, target_url)
    limit = raw_limit(raw_url, workload, expected)
    events = read_outbox(source_url)
    same = raw_same_writes(raw_url, workload, expected, events, server=target_name == "server")
    return Direction(name, target_name, result, limit, same)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server = make_url(args.mariadb_url)
    started = time.perf_counter()
    prefix = f"replicator_bench_{uuid.uuid4().hex[:12]}"
    try:
        check_mariadb(server)
        workload = make_workload(args.events)
        directions = []
        with ExitStack() as stack:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="repl-bench-")))
            roles = ("target", "raw", "source") + (("cli",) if args.cli_events else ())
            db = {
                role: stack.enter_context(bench_mariadb.database(server, f"{prefix}_{role}"))
                for role in roles
            }
            directions.append(
                run_direction(
                    "SQLite -> MariaDB",
                    workload,
                    ("local", f"sqlite:///{tmp / 'source.sqlite'}"),
                    ("server", db["target"]),
                    db["raw"],
                )
            )
            directions.append(
                run_direction(
                    "MariaDB -> DuckDB",
                    workload,
                    ("server", db["source"]),
                    ("local", f"duckdb:///{tmp / 'target.duckdb'}"),
                    f"duckdb:///{tmp / 'raw.duckdb'}",
                )
            )
            if args.cli_events:
                same = args.cli_events == args.events  # the same workload: same raw limit
                directions.append(
                    run_cli(
                        workload if same else make_workload(args.cli_events),
                        f"sqlite:///{tmp / 'cli-local.sqlite'}",
                        db["cli"],
                        tmp,
                        db["raw"],
                        directions[0] if same else None,
                        args.cli_direction,
                    )
                )
            peer_result = None
            if not args.skip_peer:
                progress(f"peer: eventsourcing, {args.peer_events} events")
                peer_dir = tmp / "peer"
                peer_dir.mkdir()
                peer_result = peer(workload, args.peer_events, peer_dir)
                progress(f"peer: {peer_result.seconds:.2f}s, {peer_result.rate:,.0f} events/s")
    except BenchmarkError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(report(directions, peer_result, args))
    print(f"Wall time of the benchmark: {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
