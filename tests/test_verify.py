"""Verify: the server and a scoped local compared by bucketed checksums;
equal replicas pass, and every key changed bypassing capture is named."""

from __future__ import annotations

from replicator.replay import replay
from replicator.sync import replicate
from replicator.verify import verify

from .cluster import NOW, add_vocabulary, app, member

SCOPE = {"user_id": "u-42"}


def test_verify_names_exactly_the_keys_that_differ_within_scope(database_url, tmp_path):
    server = member("server", database_url, role="server")
    phone = member("phone", f"duckdb:///{tmp_path / 'phone.duckdb'}", scope=SCOPE)
    try:
        app.run_session(server.sessions, user_id="u-42", now=NOW)
        for i in range(50):
            add_vocabulary(server, f"v-{i:02}", f"w{i}", user_id="u-42" if i % 2 else "u-7")
        replicate(server.node, phone.node)

        same = verify(server.node, phone.node)
        with phone.engine.begin() as conn:  # changes bypassing capture
            conn.exec_driver_sql("UPDATE vocabulary_items SET word = 'X' WHERE item_id = 'v-01'")
            conn.exec_driver_sql("DELETE FROM vocabulary_items WHERE item_id = 'v-03'")
            conn.exec_driver_sql("UPDATE user_profiles SET daily_goal_minutes = 99")
        with server.engine.begin() as conn:  # outside the phone's scope: not its business
            conn.exec_driver_sql("UPDATE vocabulary_items SET word = 'Y' WHERE item_id = 'v-02'")
        differ = verify(server.node, phone.node)
        replay(server.node, phone.node, start=1)
        repaired = verify(server.node, phone.node)
    finally:
        phone.close()
        server.close()

    assert same.equal and {t.table for t in same.tables} >= {"vocabulary_items", "messages"}
    vocabulary = next(t for t in same.tables if t.table == "vocabulary_items")
    assert vocabulary.server_rows == vocabulary.local_rows == 25 + 2
    assert not differ.equal
    assert {t.table: t.differing for t in differ.tables if t.differing} == {
        "user_profiles": ['["u-42"]'],
        "vocabulary_items": ['["v-01"]', '["v-03"]'],
    }
    assert repaired.equal


def test_verify_reports_a_table_one_side_lacks(tmp_path):
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    try:
        with phone.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE documents")
        phone.node.forget_shapes()
        result = verify(server.node, phone.node, tables=["documents", "messages"])
    finally:
        phone.close()
        server.close()
    assert not result.equal
    assert [(t.table, t.differing) for t in result.tables] == [
        ("documents", ["(table missing on phone)"]),
        ("messages", []),
    ]
