"""Replay: the server's log applied again onto a local, from a position.
Idempotent, never overwriting a newer change, restoring rows changed
bypassing capture; a dry run reports and writes nothing; normal sync goes
on from the checkpoint afterwards. The server runs on every backend."""

from __future__ import annotations

import pytest

from replicator.replay import replay
from replicator.sync import replicate

from .cluster import NOW, add_vocabulary, app, edit_vocabulary, vocabulary


def both_ways(server, local):
    return replicate(local.node, server.node), replicate(server.node, local.node)


def server_positions(server):
    from replicator import outbox

    with server.engine.connect() as conn:
        return [(p, e) for p, e in outbox.read(conn)]


@pytest.fixture
def tampered(pair):
    """The phone's session, synced; then the server's own changes, synced;
    then rows changed on the phone by hand (no capture, no versions)."""
    server, phone = pair
    app.run_session(phone.sessions, user_id="u-42", now=NOW)
    both_ways(server, phone)
    middle = len(server_positions(server)) + 1  # the server's own changes start here
    add_vocabulary(server, "v-s", "pan")
    add_vocabulary(server, "v-t", "sal")
    cafe = next(r[0] for r in phone.rows("vocabulary_items") if r[2] == "café")
    edit_vocabulary(server, cafe, translation="a coffee")
    both_ways(server, phone)
    with phone.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE vocabulary_items SET translation = 'XXX' WHERE word = 'pan'")
        conn.exec_driver_sql("UPDATE vocabulary_items SET strength = 9 WHERE word = 'café'")
        conn.exec_driver_sql("DELETE FROM vocabulary_items WHERE word = 'sal'")
        conn.exec_driver_sql("UPDATE messages SET content = 'XXX' WHERE role = 'tutor'")
    return server, phone, middle, cafe


def test_a_dry_run_reports_what_a_replay_restores_and_writes_nothing(tampered):
    server, phone, middle, _ = tampered
    before = phone.state()

    dry = replay(server.node, phone.node, start=middle, dry_run=True)

    assert dry.dry_run and (dry.start, dry.end) == (middle, middle + 2)
    assert (dry.read, dry.inserted, dry.updated, dry.deleted) == (3, 1, 2, 0)
    assert dry.conflicts == 0
    assert phone.state() == before


def test_a_replay_from_a_middle_position_restores_the_logged_rows(tampered):
    server, phone, middle, cafe = tampered

    done = replay(server.node, phone.node, start=middle)
    again = replay(server.node, phone.node, start=middle)

    assert (done.read, done.inserted, done.updated, done.applied) == (3, 1, 2, 3)
    assert (again.applied, again.skipped) == (0, 3)  # idempotent
    assert phone.rows("vocabulary_items") == server.rows("vocabulary_items")
    assert vocabulary(phone, cafe) == ("a coffee", 0.25)
    # Before the replayed range: left as it was.
    tutor = [r for r in phone.rows("messages") if r[3] == "tutor"]
    assert [r[4] for r in tutor] == ["XXX"]
    # Normal sync goes on from the checkpoint.
    edit_vocabulary(server, "v-s", translation="bread")
    down = replicate(server.node, phone.node)
    assert (down.read, down.applied) == (1, 1)
    assert vocabulary(phone, "v-s") == ("bread", 0.0)


def test_a_replay_never_overwrites_a_newer_change(tampered):
    server, phone, middle, _ = tampered
    edit_vocabulary(phone, "v-s", translation="loaf")  # the phone's own, not yet sent

    done = replay(server.node, phone.node, start=middle)

    assert vocabulary(phone, "v-s") == ("loaf", 0.0)  # its newer change stands
    assert done.updated == 1 and done.inserted == 1  # café restored, sal back


def test_a_replay_reports_progress_within_one_large_source_transaction(pair):
    server, phone = pair
    with server.sessions.begin() as session:  # one transaction, 50 events
        for i in range(50):
            session.add(
                app.VocabularyItem(item_id=f"v-{i}", user_id="u-42", word=f"w{i}", translation="?")
            )
    seen = []

    done = replay(
        server.node, phone.node, start=1, batch_size=10, progress=lambda *a: seen.append(a)
    )

    assert (done.read, done.inserted) == (50, 50)
    assert seen == [(n, 50) for n in (10, 20, 30, 40, 50)], (
        "a report per slice of 10, not 0 -> 100%"
    )
    assert phone.rows("vocabulary_items") == server.rows("vocabulary_items")


def test_a_replay_from_position_0_replays_the_whole_log(pair):
    server, phone = pair
    add_vocabulary(server, "v-1", "mesa")
    add_vocabulary(server, "v-2", "silla")

    dry = replay(server.node, phone.node, start=0, dry_run=True)
    done = replay(server.node, phone.node, start=0)

    assert (dry.start, dry.end, dry.read, dry.inserted) == (1, 2, 2, 2)
    assert (done.start, done.end, done.inserted, done.checkpoint) == (1, 2, 2, 2)
    assert phone.rows("vocabulary_items") == server.rows("vocabulary_items")


@pytest.mark.backends("sqlite")
def test_a_replay_from_a_negative_position_is_a_usage_error(pair):
    from replicator.errors import ConfigurationError

    server, phone = pair
    add_vocabulary(server, "v-1", "mesa")

    with pytest.raises(ConfigurationError, match="0 or more, not -1"):
        replay(server.node, phone.node, start=-1)
    assert phone.rows("vocabulary_items") == []
