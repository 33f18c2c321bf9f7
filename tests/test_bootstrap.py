"""Bootstrap: a new or emptied local gets the server's rows within its scope
and the position they stand at; the next sync applies exactly the log's tail,
even when the server takes writes while the snapshot is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator.bootstrap import bootstrap
from replicator.errors import ReplicatorError
from replicator.sync import replicate

from .cluster import add_vocabulary, app, edit_vocabulary, member

SCOPE = {"user_id": "u-42"}


def rows_of(m, user="u-42"):
    """Every app table's rows of one user (tables without user_id: all)."""
    state = {}
    for table, rows in m.state().items():
        columns = [c.name for c in app.Base.metadata.tables[table].columns]
        at = columns.index("user_id") if "user_id" in columns else None
        state[table] = [r for r in rows if at is None or r[at] == user]
    return state


def fill(server, count):
    for i in range(count):
        add_vocabulary(server, f"v-{i:04}", f"w{i}", user_id="u-42" if i % 3 else "u-7")
    app.run_session(server.sessions, user_id="u-42", now=app.dt.datetime(2026, 11, 24, 9, 30))


@pytest.mark.backends("mariadb", "sqlite")
def test_a_diverged_duckdb_replica_deleted_and_bootstrapped_equals_the_server(
    database_url, tmp_path
):
    server = member("server", database_url, role="server")
    path: Path = tmp_path / "phone.duckdb"
    phone = member("phone", f"duckdb:///{path}", scope=SCOPE)
    fill(server, 120)
    replicate(server.node, phone.node)
    with phone.engine.begin() as conn:  # the replica diverges, bypassing capture
        conn.exec_driver_sql("UPDATE vocabulary_items SET translation = 'lost'")
    phone.close()
    path.unlink()
    phone = member("phone", f"duckdb:///{path}", scope=SCOPE)  # a new, empty replica
    writes = []

    def server_keeps_writing(done, total):
        # Between tables, while the snapshot is read: a table already
        # copied and one still to come both change.
        if "mariadb" in database_url:
            writes.append(done)
            edit_vocabulary(server, "v-0001", translation=f"during {done}")
            add_vocabulary(server, f"n-{done}", "new")
            with server.sessions.begin() as session:
                session.get(app.UserProfile, "u-42").daily_goal_minutes = 20 + done

    try:
        result = bootstrap(server.node, phone.node, progress=server_keeps_writing)
        tail = replicate(server.node, phone.node)

        assert result.rows["vocabulary_items"] == 80 + 2  # u-42's: fill's, the session's
        assert tail.ok and tail.conflicts == 0
        assert rows_of(phone) == rows_of(server)
        assert all(rows == [] for rows in rows_of(phone, "u-7").values())  # out of scope
        if "mariadb" in database_url:
            assert len(writes) >= 3 and tail.applied >= 3 * len(writes)
        # A second bootstrap is refused: the replica is no longer empty.
        with pytest.raises(ReplicatorError, match="not empty"):
            bootstrap(server.node, phone.node)
    finally:
        phone.close()
        server.close()


@pytest.mark.backends("mariadb")
def test_an_event_committed_after_a_larger_position_is_not_lost(database_url, tmp_path):
    # One app transaction takes a position and commits after another that
    # took a larger one: the snapshot must wait for it, not skip it.
    import threading

    server = member("server", database_url, role="server")
    phone = member("phone", f"duckdb:///{tmp_path / 'phone.duckdb'}", scope=SCOPE)
    try:
        slow = server.sessions()
        slow.begin()
        slow.add(app.VocabularyItem(item_id="v-slow", user_id="u-42", word="a", translation="?"))
        slow.flush()  # position taken, not committed
        add_vocabulary(server, "v-fast", "b")  # a larger position, committed
        results = []
        worker = threading.Thread(target=lambda: results.append(bootstrap(server.node, phone.node)))
        worker.start()
        worker.join(0.3)
        waited = worker.is_alive()
        slow.commit()
        slow.close()
        worker.join(60)
        replicate(server.node, phone.node)

        assert waited, "the snapshot must wait for the transaction in flight"
        assert sorted(r[0] for r in phone.rows("vocabulary_items")) == ["v-fast", "v-slow"]
    finally:
        phone.close()
        server.close()


@pytest.mark.backends("mariadb", "duckdb", "sqlite")
def test_bootstrap_copies_every_row_of_a_large_table(database_url, tmp_path):
    # Rows stream from the server in chunks; reading their versions must
    # not cut the stream short (pymysql and DuckDB allow one result at a time).
    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}", scope=SCOPE)
    try:
        rows = [
            {
                "item_id": f"v-{i:05}",
                "user_id": "u-42",
                "word": "w",
                "translation": "t",
                "strength": 0.0,
            }
            for i in range(12_000)
        ]
        with server.engine.begin() as conn:
            conn.execute(app.VocabularyItem.__table__.insert(), rows)
        add_vocabulary(server, "v-last", "captured")  # one with a version

        result = bootstrap(server.node, phone.node)

        assert result.rows["vocabulary_items"] == 12_001
        assert len(phone.rows("vocabulary_items")) == 12_001
    finally:
        phone.close()
        server.close()


def test_a_local_made_anew_has_its_new_changes_read_from_the_start(database_url, tmp_path):
    # The server's checkpoint for the old copy counts another log: the new
    # copy's outbox starts at 1 again and nothing of it may be skipped.
    server = member("server", database_url, role="server")
    path = tmp_path / "phone.sqlite"
    phone = member("phone", f"sqlite:///{path}")
    try:
        for i in range(5):
            add_vocabulary(phone, f"v-{i}", "old copy")
        replicate(phone.node, server.node)
        phone.close()
        path.unlink()
        phone = member("phone", f"sqlite:///{path}")
        add_vocabulary(phone, "v-new", "new copy")  # before any sync: not empty

        up = replicate(phone.node, server.node)

        assert (up.read, up.applied) == (1, 1)
        assert "v-new" in [r[0] for r in server.rows("vocabulary_items")]
    finally:
        phone.close()
        server.close()
