"""A replication pass, local to server and back, with the server on every
backend: exactly-once effect, no echo, re-delivery skipped, concurrent edits
detected, batches that keep source transactions whole."""

from __future__ import annotations

import datetime as dt

import pytest

from replicator import checkpoints
from replicator.sync import SyncPass, replicate

from .cluster import NOW, add_vocabulary, app, config, edit_vocabulary, member


def test_a_pass_copies_every_captured_change_and_a_second_pass_applies_nothing(pair):
    server, local = pair
    app.run_session(local.sessions, user_id="u-42", now=NOW)

    first = replicate(local.node, server.node)
    second = replicate(local.node, server.node)

    assert first.ok, first.error
    assert first.read == first.applied == len(local.events()) == 15
    assert (second.read, second.applied) == (0, 0)
    assert server.state() == local.state()
    # Nothing applied at the server was captured as a server change.
    assert {e.origin for e in server.events()} == {"phone"}


def test_redelivered_events_are_skipped(pair):
    server, local = pair
    app.run_session(local.sessions, user_id="u-42", now=NOW)
    replicate(local.node, server.node)
    before = server.state()
    with server.engine.begin() as conn:  # as if the checkpoint had been lost
        checkpoints.advance(conn, server.node.dialect, "phone", "default", 0, NOW)

    again = replicate(local.node, server.node)

    assert (again.read, again.applied, again.skipped) == (15, 0, 15)
    assert server.state() == before
    assert len(server.events()) == 15  # nothing forwarded twice


def test_updates_and_deletes_flow_both_ways_without_echo(pair):
    server, local = pair
    add_vocabulary(local, "v-1", "mesa")
    add_vocabulary(local, "v-2", "silla")
    replicate(local.node, server.node)
    edit_vocabulary(server, "v-1", translation="table")
    with server.sessions.begin() as session:
        session.delete(session.get(app.VocabularyItem, "v-2"))

    down = replicate(server.node, local.node)
    up = replicate(local.node, server.node)

    assert (down.applied, down.conflicts) == (2, 0)
    assert (up.read, up.applied) == (0, 0)  # the local captured nothing while applying
    assert local.rows("vocabulary_items") == server.rows("vocabulary_items")
    assert [r[3] for r in local.rows("vocabulary_items")] == ["table"]
    assert [e.origin for e in local.events()] == ["phone", "phone"]


def test_a_local_asked_to_logs_what_it_applied_and_still_sends_only_its_own(pair):
    """What a vector sink needs: the local's log tells its tables' whole
    story, in the order it happened there; the server gets nothing twice."""
    server, local = pair
    with local.engine.begin() as conn:  # a sink registers on the local's log
        checkpoints.advance(conn, local.node.dialect, "phone", "sink:docs", -1, dt.datetime.now())
    add_vocabulary(local, "v-1", "mesa")
    replicate(local.node, server.node)
    edit_vocabulary(server, "v-1", translation="table")
    add_vocabulary(server, "v-2", "silla")

    down = replicate(server.node, local.node)
    up = replicate(local.node, server.node)

    assert (down.applied, up.read) == (2, 0)
    assert [e.origin for e in local.events()] == ["phone", "server", "server"]
    assert local.events()[1:] == [e for e in server.events() if e.origin == "server"]
    assert local.own_events() == local.events()[:1]


def test_a_concurrent_edit_is_detected_and_both_sides_pick_the_same_row(pair):
    server, local = pair
    add_vocabulary(local, "v-1", "mesa")
    replicate(local.node, server.node)
    edit_vocabulary(local, "v-1", translation="desk")
    edit_vocabulary(server, "v-1", translation="table")  # later: wins by timestamp

    up = replicate(local.node, server.node)
    down = replicate(server.node, local.node)

    # Settled on the server; the local receives the settlement, not a conflict.
    assert (up.conflicts, down.conflicts) == (1, 0)
    assert local.rows("vocabulary_items") == server.rows("vocabulary_items")
    assert local.rows("vocabulary_items")[0][3] == "table"
    # Settled: the next edit on either side is sequential, not a conflict.
    edit_vocabulary(local, "v-1", strength=0.5)
    assert replicate(local.node, server.node).conflicts == 0
    assert server.rows("vocabulary_items") == local.rows("vocabulary_items")


def test_a_batch_never_splits_a_source_transaction(pair):
    server, local = pair
    with local.sessions.begin() as session:  # one transaction, three events
        for i in range(3):
            session.add(
                app.VocabularyItem(item_id=f"v-{i}", user_id="u-42", word="w", translation="t")
            )
    add_vocabulary(local, "v-9", "later")
    seen = []

    class Watching(SyncPass):
        def _in_scope(self, tconn, entries):
            seen.append(len(entries))
            return super()._in_scope(tconn, entries)

    result = Watching(local.node, server.node, batch_size=1).run()

    assert result.applied == 4
    assert seen == [3, 1]


def test_a_pass_reports_its_progress_after_every_batch_it_commits(pair):
    server, local = pair
    app.run_session(local.sessions, user_id="u-42", now=NOW)
    seen = []

    result = SyncPass(local.node, server.node, batch_size=2).run(progress=seen.append)

    assert result.ok and result.read == 15
    assert len(seen) > 2, f"one report per batch, got {seen}"
    reads, positions = [p.read for p in seen], [p.position for p in seen]
    assert reads == sorted(reads) and positions == sorted(positions)
    assert [p.applied for p in seen] == sorted(p.applied for p in seen)
    last = seen[-1]
    assert (last.read, last.applied) == (result.read, result.applied)
    assert last.position == last.horizon
    assert {(p.source, p.target, p.channel) for p in seen} == {("phone", "server", "default")}
    # Nothing to read: no report.
    again = []
    SyncPass(local.node, server.node).run(progress=again.append)
    assert again == []


def test_a_sync_reports_each_link_and_channels_progress(pair):
    from replicator.application import Replicator

    server, local = pair
    app.run_session(local.sessions, user_id="u-42", now=NOW)
    add_vocabulary(server, "v-s", "pan")
    settings = config(server, local, extra="[replication]\nbatch_size = 3\n")
    seen = []

    with Replicator(settings, engines={"server": server.engine, "phone": local.engine}) as r:
        result = r.sync(progress=seen.append)

    assert result.ok, [p.error for p in result.passes]
    for p in result.passes:
        mine = [
            s for s in seen if (s.source, s.target, s.channel) == (p.source, p.target, p.channel)
        ]
        assert mine, f"no progress reported for {p.source} -> {p.target}"
        assert [s.read for s in mine] == sorted(s.read for s in mine)
        assert (mine[-1].read, mine[-1].applied) == (p.read, p.applied)
    up = [s for s in seen if s.source == "phone"]
    assert len(up) > 1, "the 15 events of the phone in batches of 3 report more than once"


@pytest.mark.backends("sqlite", "mariadb")
def test_a_duckdb_local_receives_the_servers_changes(database_url, tmp_path):
    server = member("server", database_url, role="server")
    local = member("laptop", f"duckdb:///{tmp_path / 'laptop.duckdb'}")
    try:
        app.run_session(server.sessions, user_id="u-42", now=NOW)
        edit_vocabulary(server, server.rows("vocabulary_items")[0][0], translation="x")

        result = replicate(server.node, local.node)

        assert result.ok and result.applied == len(server.events())
        assert local.state() == server.state()
    finally:
        local.close()
        server.close()


@pytest.mark.backends("sqlite")
def test_a_pass_without_a_horizon_is_deferred_not_caught_up(pair, monkeypatch):
    server, local = pair
    add_vocabulary(local, "v-1", "mesa")
    monkeypatch.setattr(type(local.node.dialect), "horizon", lambda self, conn: None)

    result = replicate(local.node, server.node)

    assert (result.status, result.ok, result.read) == ("deferred", True, 0)
    monkeypatch.undo()
    assert replicate(local.node, server.node).applied == 1
