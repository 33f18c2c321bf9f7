"""Spec invariant 3 under real crashes: a child process running replication
passes is killed with SIGKILL at random points, again and again, across a
run of several thousand events; after a final clean pass the target equals
the source, with no row, row version or forwarded event missing or twice.

Two links, both through a real MariaDB: a SQLite local up to a MariaDB
server (which forwards what it applies to its own outbox), and a MariaDB
server down to a DuckDB local (whose file a killed process leaves with a
write-ahead log that the next process must recover). The source gets a
few thousand changes first, and a few more now and then while the children
run.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from replicator import checkpoints, outbox
from replicator.checkpoints import DEFAULT_CHANNEL
from replicator.events import decode_event
from replicator.node import Node
from replicator.sync import replicate
from replicator.tables import outbox as outbox_table
from replicator.tables import review_items, row_versions

from .cluster import NOW, Member, app, member

ROOT = Path(__file__).resolve().parents[1]
INITIAL_EVENTS = 4000  # written before the first kill
# Kills per run: 12 in the default suite (about 30 s for both links on
# MariaDB); REPLICATOR_CRASH_KILLS raises it for a wider search.
MIN_KILLS = int(os.environ.get("REPLICATOR_CRASH_KILLS", "12"))
BATCH_SIZE = 25  # small: the run takes many target transactions
# The mean time a child works before its kill: at first, and at least and
# at most once the pace is known.
DEFAULT_WINDOW, MIN_WINDOW, MAX_WINDOW = 0.05, 0.02, 0.25
MAX_DELAY = 0.5
READY_TIMEOUT = 30.0
PHASE_TIMEOUT = 120.0  # the kill phase gives up (and fails) after this long
SEED = 20261124

# The child: builds both nodes, opens them (a DuckDB file left by a killed
# process is recovered here), says where the target's checkpoint is, then
# runs passes until one reads nothing.
CHILD = """
import sys
from replicator import checkpoints
from replicator.checkpoints import DEFAULT_CHANNEL
from replicator.node import Node
from replicator.sync import replicate

source_name, source_url, source_role, target_name, target_url, target_role, size = sys.argv[1:]
source = Node(source_name, url=source_url, role=source_role)
target = Node(target_name, url=target_url, role=target_role)
with source.connect():
    pass
with target.connect() as conn:
    position = checkpoints.get(conn, source_name, DEFAULT_CHANNEL)
print("ready", position, flush=True)
while True:
    result = replicate(source, target, batch_size=int(size))
    if not result.ok:
        print("failed", result.error, flush=True)
        sys.exit(3)
    if result.read == 0:
        break
source.dispose()
target.dispose()
print("done", flush=True)
"""


# --- the source's workload ---------------------------------------------------


@dataclass
class Workload:
    """Random app writes: inserts, updates and deletes of vocabulary items,
    messages and learning progress, in transactions of 1 to 50 rows."""

    rng: random.Random
    vocabulary: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    progress: list[tuple[str, str]] = field(default_factory=list)
    counter: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, m: Member, events: int, largest: int = 50) -> None:
        """About ``events`` changes, in transactions of 1 to ``largest`` rows."""
        written = 0
        while written < events:
            with self.lock:
                written += self.transaction(m, self.rng.randint(1, largest))

    def transaction(self, m: Member, size: int) -> int:
        rng = self.rng
        touched: set[Any] = set()  # at most one update or delete per row and transaction
        with m.sessions.begin() as session:
            for _ in range(size):
                self.counter += 1
                n = self.counter
                roll = rng.random()
                if roll < 0.5 or len(self.vocabulary) + len(self.messages) < 20:
                    self._insert(session, n, rng.random() < 0.5)
                elif roll < 0.85:
                    self._update(session, n, touched)
                else:
                    self._delete(session, touched)
        return size

    def _insert(self, session: Any, n: int, vocabulary: bool) -> None:
        user = f"u-{n % 3}"
        if vocabulary:
            item = f"v-{n:06d}"
            session.add(
                app.VocabularyItem(
                    item_id=item, user_id=user, word=f"w{n}", translation=f"t{n}", strength=0.0
                )
            )
            self.vocabulary.append(item)
        elif self.rng.random() < 0.1 and len(self.progress) < 60:
            key = (user, f"skill-{len(self.progress)}")
            session.add(app.LearningProgress(user_id=key[0], skill=key[1], level=1, xp=0))
            self.progress.append(key)
        else:
            message = f"m-{n:06d}"
            session.add(
                app.Message(
                    message_id=message,
                    conversation_id=f"c-{n % 7}",
                    user_id=user,
                    role="user" if n % 2 else "tutor",
                    content=f"message {n} ¿qué tal?",
                    sent_at=NOW + dt.timedelta(seconds=n),
                )
            )
            self.messages.append(message)

    def _update(self, session: Any, n: int, touched: set[Any]) -> None:
        kind = self.rng.random()
        if kind < 0.15 and self.progress:
            key = self.rng.choice(self.progress)
            if ("p", key) not in touched:
                touched.add(("p", key))
                row = session.get(app.LearningProgress, key)
                row.xp += 10
                row.level = row.xp // 100 + 1
        elif kind < 0.65 and self.vocabulary:
            item = self.rng.choice(self.vocabulary)
            if item not in touched:
                touched.add(item)
                row = session.get(app.VocabularyItem, item)
                row.translation = f"t{n}"
                row.strength = self.rng.randint(0, 8) / 4
        elif self.messages:
            message = self.rng.choice(self.messages)
            if message not in touched:
                touched.add(message)
                session.get(app.Message, message).content = f"edited {n}"

    def _delete(self, session: Any, touched: set[Any]) -> None:
        pool, model = (
            (self.vocabulary, app.VocabularyItem)
            if self.rng.random() < 0.5
            else (self.messages, app.Message)
        )
        candidates = [k for k in pool[-200:] if k not in touched]
        if not candidates:
            return
        key = self.rng.choice(candidates)
        touched.add(key)
        pool.remove(key)
        session.delete(session.get(model, key))


# --- killing passes ------------------------------------------------------------


@dataclass
class KillLog:
    goal: int  # the source position the kills are spread over
    kills: int = 0  # SIGKILLs that landed while a child was working
    late: int = 0  # kills after the child had already said "done"
    finished: int = 0  # children that caught up on their own
    starts: list[int] = field(default_factory=list)  # the checkpoint each child found
    wal_at_start: int = 0  # children that had a DuckDB write-ahead log to recover
    seconds: float = 0.0


class Writer(threading.Thread):
    """Small source transactions, now and then, while the children run."""

    def __init__(self, workload: Workload, m: Member) -> None:
        super().__init__(daemon=True)
        self.workload, self.member = workload, m
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.wait(0.1):
                self.workload.write(self.member, 1, largest=10)
        except BaseException as e:
            self.error = e

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        assert self.error is None, f"the background writer failed: {self.error!r}"


def read_line(child: subprocess.Popen) -> str:
    readable, _, _ = select.select([child.stdout], [], [], READY_TIMEOUT)
    return child.stdout.readline() if readable else ""


def kill_passes(
    source: Node,
    target: Node,
    head: Callable[[], int],
    write_more: Callable[[], None],
    writer: Writer,
    rng: random.Random,
    wal: Path | None = None,
) -> KillLog:
    """Start a child running passes from ``source`` to ``target``, kill it
    after a random moment of work, and again: until MIN_KILLS kills have
    landed while a child was working and the target has caught up with the
    source's outbox as it was at the start (its ``head()``). The child that
    finds the target caught up runs to the end (the ``writer`` stopped).

    How long a child works before its kill is drawn at random around the
    time the rest of the run should take over the kills still to come, at
    the pace measured so far, so that the kills spread over the whole run;
    longer after kills that let no batch commit. Should the target catch up
    before MIN_KILLS kills, ``write_more()`` adds events and the goal moves.
    """
    log = KillLog(goal=head())
    argv = [sys.executable, "-c", CHILD, source.name, source.url, source.role]
    argv += [target.name, target.url, target.role, str(BATCH_SIZE)]
    started = time.monotonic()
    worked = progressed = 0.0
    stalls = 0  # kills in a row after which the checkpoint had not moved
    previous: tuple[int, float] | None = None  # start and delay of the last killed child
    while True:
        assert time.monotonic() - started < PHASE_TIMEOUT, f"the kill phase is too slow: {log}"
        if wal is not None and wal.exists():
            log.wal_at_start += 1
        child = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        running = False
        try:
            line = read_line(child)
            if not line.startswith("ready "):
                child.kill()
                out, err = child.communicate()
                pytest.fail(f"the child did not start: {line}{out}\n{err}")
            position = int(line.split()[1])
            log.starts.append(position)
            if previous is not None:
                progressed += position - previous[0]
                worked += previous[1]
                stalls = 0 if position > previous[0] else stalls + 1
                previous = None
            if position >= log.goal:  # caught up: this child runs to the end
                if log.kills >= MIN_KILLS:
                    writer.stop()
                out, err = child.communicate(timeout=PHASE_TIMEOUT)
            else:
                if progressed > 0:
                    pace = progressed / worked  # positions a second
                    window = (log.goal - position) / pace / max(MIN_KILLS + 3 - log.kills, 1)
                else:
                    window = DEFAULT_WINDOW
                window = min(max(window, MIN_WINDOW), MAX_WINDOW) * 2**stalls
                delay = rng.uniform(0, min(2 * window, MAX_DELAY))
                # The crash point, drawn at random (the point of this test);
                # a child that ends before it ends the wait.
                try:
                    child.wait(timeout=delay)
                    running = False
                except subprocess.TimeoutExpired:
                    running = child.poll() is None
                if running:
                    child.send_signal(signal.SIGKILL)
                out, err = child.communicate(timeout=READY_TIMEOUT)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert "\nfailed" not in f"\n{out}", f"a pass failed after a crash: {out}\n{err}"
        if running and child.returncode == -signal.SIGKILL:
            if "done" in out:
                log.late += 1
            else:
                log.kills += 1
                previous = (position, delay)
            continue
        assert child.returncode == 0 and "done" in out, (child.returncode, out, err)
        log.finished += 1
        if position >= log.goal:
            if log.kills >= MIN_KILLS:
                break
            write_more()
            log.goal = head()
    log.seconds = round(time.monotonic() - started, 2)
    return log


def catch_up(source: Node, target: Node) -> None:
    """The final clean pass(es), in this process."""
    while True:
        result = replicate(source, target, batch_size=500)
        assert result.ok, result.error
        if result.read == 0:
            return


# --- comparing -----------------------------------------------------------------


def app_rows(engine: Engine) -> dict[str, dict[tuple, tuple]]:
    """Every app table's rows as typed values, by primary key."""
    found = {}
    with engine.connect() as conn:
        for name, table in app.Base.metadata.tables.items():
            key = [table.columns.keys().index(c.name) for c in table.primary_key]
            rows = conn.execute(sa.select(table).order_by(*table.primary_key))
            found[name] = {tuple(row[i] for i in key): tuple(row) for row in rows}
    return found


def version_rows(engine: Engine) -> dict[tuple[str, str], tuple]:
    c = row_versions.c
    tables = sorted(app.Base.metadata.tables)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(c.table_name, c.row_key, c.version, c.hlc, c.origin, c.deleted).where(
                c.table_name.in_(tables)
            )
        )
        return {(t, k): (json.loads(v), hlc, o, bool(d)) for t, k, v, hlc, o, d in rows}


def outbox_events(engine: Engine) -> list[tuple[str, bytes]]:
    """(event id, payload) of every outbox row, in position order."""
    c = outbox_table.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(c.payload).order_by(c.position)).scalars()
        return [(decode_event(payload).event_id, bytes(payload)) for payload in rows]


def differences(what: str, source: dict, target: dict) -> list[str]:
    missing = sorted(source.keys() - target.keys())
    extra = sorted(target.keys() - source.keys())
    changed = sorted(k for k in source.keys() & target.keys() if source[k] != target[k])
    found = []
    if missing:
        found.append(f"{what}: {len(missing)} missing on the target, e.g. {missing[:5]}")
    if extra:
        found.append(f"{what}: {len(extra)} extra on the target, e.g. {extra[:5]}")
    if changed:
        found += [f"{what} {k}: source {source[k]} != target {target[k]}" for k in changed[:5]]
        if len(changed) > 5:
            found.append(f"{what}: {len(changed)} rows differ in all")
    return found


def assert_converged(
    source: Node, source_engine: Engine, target: Node, target_engine: Engine
) -> None:
    problems = []
    source_rows, target_rows = app_rows(source_engine), app_rows(target_engine)
    for table in app.Base.metadata.tables:
        problems += differences(table, source_rows[table], target_rows[table])
    problems += differences("row version", version_rows(source_engine), version_rows(target_engine))

    with source_engine.connect() as conn:
        head = outbox.head(conn)
    with target_engine.connect() as conn:
        position = checkpoints.get(conn, source.name, DEFAULT_CHANNEL)
        parked = conn.execute(sa.select(sa.func.count()).select_from(review_items)).scalar_one()
    if position != head:
        problems.append(f"checkpoint {position} != the source's outbox head {head}")
    if parked:
        problems.append(f"{parked} review items on the target")

    sent = outbox_events(source_engine)
    assert len({i for i, _ in sent}) == len(sent), "the source's event ids are not unique"
    received = outbox_events(target_engine)
    # No echo: nothing logged as a change of the target's own. A server logs
    # every applied event exactly once, unchanged, and forwards it from there.
    echoed = [i for i, p in received if decode_event(p).origin == target.name]
    if echoed:
        problems.append(f"{len(echoed)} events in the target's outbox as its own (echo)")
    if target.role == "local":  # no sink follows it: it logs nothing it applied
        assert not problems, "\n".join(problems)
        assert received == [], f"{len(received)} events in a local's outbox it was not to log"
        return
    counts = collections.Counter(i for i, _ in received)
    twice = sorted(i for i, n in counts.items() if n > 1)
    missing = sorted({i for i, _ in sent} - counts.keys())
    extra = sorted(counts.keys() - {i for i, _ in sent})
    if twice:
        problems.append(f"{len(twice)} events logged more than once, e.g. {twice[:5]}")
    if missing:
        problems.append(f"{len(missing)} events never logged, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} logged events the source never sent: {extra[:5]}")
    payloads = dict(sent)
    changed = sorted(i for i, p in received if i in payloads and p != payloads[i])
    if changed:
        problems.append(f"{len(changed)} events logged altered, e.g. {changed[:5]}")
    assert not problems, "\n".join(problems)


# --- the test ------------------------------------------------------------------


@pytest.mark.backends("mariadb")
@pytest.mark.parametrize("link", ["sqlite-to-mariadb", "mariadb-to-duckdb"])
def test_passes_killed_at_random_points_neither_lose_nor_duplicate_an_effect(
    database_url, tmp_path, link
):
    killed_passes(database_url, tmp_path, link)


def test_passes_killed_at_random_points_without_a_server_database(tmp_path):
    """Invariant 3 holds without MariaDB too: a SQLite server to a DuckDB local."""
    killed_passes(f"sqlite:///{tmp_path / 'server.sqlite'}", tmp_path, "sqlite-to-duckdb")


def killed_passes(database_url: str, tmp_path: Path, link: str) -> None:
    """Kill passes over ``link`` at random points while the source takes
    writes, then catch up: every effect once, nothing lost. The server is
    ``database_url``; the other end a file."""
    rng = random.Random(f"{SEED}-{link}")
    workload = Workload(random.Random(f"{SEED}-{link}-writes"))
    wal = target = target_engine = None
    if link == "sqlite-to-mariadb":
        source = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
        target = member("server", database_url, role="server")
        target_node, target_engine = target.node, target.engine
    else:
        source = member("server", database_url, role="server")
        path = tmp_path / "laptop.duckdb"
        wal = Path(f"{path}.wal")
        # Made here, then closed: one process at a time may open the file.
        member("laptop", f"duckdb:///{path}").close()
        target_node = Node("laptop", url=f"duckdb:///{path}", role="local")
    source_node = Node(source.name, url=source.node.url, role=source.node.role)

    def head() -> int:
        with source.engine.connect() as conn:
            return outbox.head(conn)

    writer = Writer(workload, source)
    try:
        workload.write(source, INITIAL_EVENTS)
        writer.start()
        log = kill_passes(
            source_node,
            target_node,
            head=head,
            write_more=lambda: workload.write(source, 1000),
            writer=writer,
            rng=rng,
            wal=wal,
        )
        writer.stop()  # (stopped already, before the last child)
        if target_engine is None:
            target_engine = target_node.get_engine()
        catch_up(source.node, target_node)
        print(f"\n{link}: {head()} events, {log}")

        assert log.kills >= MIN_KILLS, log
        # Spread over the run: the children found the checkpoint at many places.
        assert len(set(log.starts)) >= MIN_KILLS // 2, log.starts
        if wal is not None:
            assert log.wal_at_start > 0, "no child had a DuckDB write-ahead log to recover"
        assert_converged(source.node, source.engine, target_node, target_engine)
    finally:
        if writer.is_alive():
            writer.stopping.set()
            writer.join()
        target_node.dispose()
        if target is not None:
            target.close()
        source.close()
