"""Spec invariant 2 on MariaDB and on DuckDB (whose transactions within one
process run concurrently: an app's threads, a background sync): a reader
tailing the outbox never skips an event whose transaction took a smaller
position and committed later.

Eight writer threads each take outbox positions at flush time, then wait a
random moment before committing, so commits land out of position order.
Two readers tail the outbox meanwhile: one up to the dialect's horizon (the
mechanism), one up to the largest position it can see (what a naive reader
does). The naive reader must lose events (the scenario really is the gap
problem) and the real one must see every event exactly once.
"""

from __future__ import annotations

import itertools
import random
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from replicator import outbox
from replicator.dialects import duckdb as duckdb_dialect
from replicator.dialects.base import last_position

from .cluster import app, member

WRITERS = 8
TRANSACTIONS = 25  # per writer


class Tail:
    """A reader that follows the outbox in batches, as a sync pass does."""

    def __init__(self, engine: sa.Engine, horizon) -> None:
        self.engine, self.horizon = engine, horizon
        self.checkpoint = 0
        self.seen: list[str] = []

    def step(self) -> bool:
        """Read the next batch; whether it read anything."""
        with self.engine.connect() as conn:
            upto = self.horizon(conn)
            if upto is None:
                return False
            entries, reached = outbox.read_batch(conn, after=self.checkpoint, upto=upto, limit=20)
        self.seen += [e.event.event_id for e in entries]
        self.checkpoint = reached
        return bool(entries)


def naive_horizon(conn: sa.Connection) -> int:
    with conn.begin():
        return last_position(conn)


@pytest.mark.backends("duckdb", "mariadb")
def test_tailing_readers_see_every_event_despite_out_of_order_commits(database_url):
    server = member("server", database_url, role="server")
    dialect = server.node.dialect
    commits: list[int] = []  # positions, in the order their transactions committed
    commits_lock = threading.Lock()
    done = threading.Event()
    failures: list[BaseException] = []

    def write(writer: int) -> None:
        rng = random.Random(writer)
        try:
            for i in range(TRANSACTIONS):
                with server.sessions() as session:
                    item_id = f"w{writer}-{i}"
                    session.add(
                        app.VocabularyItem(
                            item_id=item_id, user_id="u-1", word="w", translation="t"
                        )
                    )
                    session.flush()  # takes the outbox position now
                    position = session.execute(
                        sa.text("SELECT position FROM replicator_outbox WHERE row_key = :k"),
                        {"k": f'["{item_id}"]'},
                    ).scalar_one()
                    # Deliberate jitter, the point of this stress test: the
                    # commits land out of position order (asserted below).
                    time.sleep(rng.uniform(0, 0.02))
                    session.commit()
                with commits_lock:
                    commits.append(position)
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    real = Tail(server.engine, dialect.horizon)
    naive = Tail(server.engine, naive_horizon)

    def tail(reader: Tail) -> None:
        try:
            while not done.is_set():
                reader.step()
        except BaseException as e:
            failures.append(e)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    readers = [threading.Thread(target=tail, args=(r,)) for r in (real, naive)]
    try:
        for t in readers + threads:
            t.start()
        for t in threads:
            t.join()
        done.set()
        for t in readers:
            t.join()
        assert not failures, failures
        for reader in (real, naive):  # the tail end, after the last commit
            while reader.step():
                pass

        with server.engine.connect() as conn:
            everything = [e.event_id for _, e in outbox.read(conn)]
        assert len(everything) == WRITERS * TRANSACTIONS
        out_of_order = sum(1 for a, b in itertools.pairwise(commits) if a > b)
        assert out_of_order > 0, "the writers never committed out of position order"
        missed_by_naive = set(everything) - set(naive.seen)
        assert missed_by_naive, "a plain reader lost nothing: the scenario tests nothing"
        assert len(real.seen) == len(set(real.seen)), "an event was read twice"
        missing = set(everything) - set(real.seen)
        assert not missing, (
            f"the horizon reader skipped {len(missing)} events "
            f"(a plain reader skipped {len(missed_by_naive)})"
        )
    finally:
        done.set()
        server.close()


def test_duckdb_an_appender_counts_out_at_its_commit_not_when_its_connection_returns(tmp_path):
    """An app may keep one connection and bind its sessions to it."""
    server = member("server", f"duckdb:///{tmp_path / 'app.duckdb'}", role="server")
    dialect = server.node.dialect
    try:
        with server.engine.connect() as kept:
            for i in range(2):
                with Session(bind=kept) as session:
                    session.add(
                        app.VocabularyItem(item_id=f"v-{i}", user_id="u", word="w", translation="t")
                    )
                    session.commit()
                with server.engine.connect() as reader:
                    assert dialect.horizon(reader) == i + 1, "committed: nothing in flight"
            with Session(bind=kept) as session:  # flushed, not committed: in flight
                session.add(
                    app.VocabularyItem(item_id="v-9", user_id="u", word="w", translation="t")
                )
                session.flush()
                with server.engine.connect() as reader:
                    assert dialect.horizon(reader) is None, "deferred while it is in flight"
                session.rollback()
            with server.engine.connect() as reader:
                assert dialect.horizon(reader) == 2
    finally:
        server.close()


def test_duckdb_a_thread_appending_again_is_not_held_back_by_a_waiting_reader(
    tmp_path, monkeypatch
):
    """Its first transaction is what the reader waits for: holding its second
    back would make each wait for the other."""
    # The reader holds new appenders back for the whole test, not for a
    # window the test would have to hit by sleeping.
    monkeypatch.setattr(duckdb_dialect, "HOLD_BACK", 60.0)
    server = member("server", f"duckdb:///{tmp_path / 'app.duckdb'}", role="server")
    dialect = server.node.dialect
    results = []

    def read() -> None:
        with server.engine.connect() as reader:
            results.append(dialect.horizon(reader))

    try:
        with server.sessions() as first:
            first.add(app.VocabularyItem(item_id="a", user_id="u", word="w", translation="t"))
            first.flush()
            with server.engine.connect() as conn:
                appenders = duckdb_dialect._appenders_of(conn)
            reader = threading.Thread(target=read)
            reader.start()
            deadline = time.monotonic() + 30
            while not appenders.reading:  # until the reader holds new appenders back
                assert reader.is_alive() and time.monotonic() < deadline, results
                # Polled: the reader notifies nobody when it starts holding
                # appenders back (it only waits on their condition).
                time.sleep(0.001)
            with server.sessions() as second:
                second.add(app.VocabularyItem(item_id="b", user_id="u", word="w", translation="t"))
                second.commit()
            assert reader.is_alive() and appenders.reading, (
                "the second append waited for the reader to give up"
            )
            first.commit()  # nothing in flight now: the reader reads
            reader.join(timeout=10)
            assert not reader.is_alive() and results == [2]
        with server.engine.connect() as conn:
            assert dialect.horizon(conn) == 2
    finally:
        server.close()
