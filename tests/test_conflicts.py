"""Conflicts: detected exactly from versions (invariant 5), settled by the
table's policy on the server so that both replicas hold the same row
(invariant 6), parked with every version when no policy decides
(invariant 7). The server runs on every backend, the local on SQLite."""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest
import sqlalchemy as sa
from freezegun import freeze_time

from replicator import parking
from replicator.application import Replicator
from replicator.config import loads
from replicator.errors import ConfigurationError
from replicator.events import decode_event
from replicator.sync import replicate
from replicator.tables import sync_runs

from .cluster import (
    add_vocabulary,
    app,
    config,
    delete_vocabulary,
    edit_vocabulary,
    member,
    vocabulary,
)
from .conftest import waits_for_a_lock

START = dt.datetime(2026, 11, 24, 9, 0)


def both_ways(server, local, **options):
    """A sync: the local's changes up (settled there), then the server's down."""
    return replicate(local.node, server.node, **options), replicate(server.node, local.node)


def open_items(m):
    with m.engine.connect() as conn:
        return parking.items(conn, status="open")


def insert_vocabulary(m, value):
    with m.sessions.begin() as session:
        session.add(app.VocabularyItem(item_id="v-1", user_id="u-42", word="w", translation=value))


OPERATIONS = {
    "insert": insert_vocabulary,
    "update": lambda m, value: edit_vocabulary(m, "v-1", translation=value),
    "delete": lambda m, value: delete_vocabulary(m, "v-1"),
}


def start_with_the_row(server, local, first):
    """Both replicas hold v-1 (in sync), unless the first edit inserts it."""
    if first != "insert":
        add_vocabulary(local, "v-1", "mesa")
        both_ways(server, local)


@pytest.mark.parametrize(
    "first, second",
    [("update", "update"), ("update", "delete"), ("delete", "insert"), ("insert", "update")],
)
@pytest.mark.parametrize("first_on", ["local", "server"])
def test_edits_made_one_after_the_other_never_conflict(pair, first, second, first_on):
    server, local = pair
    start_with_the_row(server, local, first)
    one, other = (local, server) if first_on == "local" else (server, local)

    OPERATIONS[first](one, "first")
    passes = both_ways(server, local)
    OPERATIONS[second](other, "second")
    passes += both_ways(server, local)

    assert [p.conflicts for p in passes] == [0, 0, 0, 0]
    assert server.state() == local.state()
    expected = None if second == "delete" else "second"
    assert (vocabulary(server, "v-1") or (None,))[0] == expected


@pytest.mark.parametrize(
    "on_local, on_server",
    [
        ("insert", "insert"),
        ("update", "update"),
        ("update", "delete"),
        ("delete", "update"),
        ("delete", "delete"),
    ],
)
def test_the_same_edits_made_between_syncs_always_conflict(pair, on_local, on_server):
    server, local = pair
    start_with_the_row(server, local, on_local)

    OPERATIONS[on_local](local, "local")
    OPERATIONS[on_server](server, "server")
    up, down = both_ways(server, local)

    assert (up.conflicts, down.conflicts) == (1, 0)  # settled once, on the server
    label = "identical" if on_local == on_server == "delete" else "latest_timestamp"
    assert up.conflicts_by_policy == {label: 1}
    assert server.state() == local.state()
    # Settled: the next edit is sequential.
    if vocabulary(local, "v-1") is not None:
        edit_vocabulary(local, "v-1", strength=0.5)
        assert [p.conflicts for p in both_ways(server, local)] == [0, 0]


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("latest_timestamp", ("table", 0.0)),  # the server's edit is later: its whole row
        ("server_wins", ("table", 0.0)),
        ("local_wins", ("desk", 0.9)),
        ("merge_fields", ("table", 0.9)),  # strength only the local changed; translation: later
        ("tests.resolvers:both_translations", ("table / desk", 0.9)),
    ],
)
def test_every_policy_leaves_both_replicas_with_the_same_row(pair, policy, expected):
    server, local = pair
    with freeze_time(START) as clock:
        add_vocabulary(local, "v-1", "mesa")
        both_ways(server, local)
        clock.tick(1)
        edit_vocabulary(local, "v-1", translation="desk", strength=0.9)
        clock.tick(1)
        edit_vocabulary(server, "v-1", translation="table")

        up, down = both_ways(server, local, policies={"vocabulary_items": policy})

    assert up.conflicts_by_policy == {policy: 1}
    assert (up.parked, down.conflicts) == (0, 0)
    assert vocabulary(server, "v-1") == vocabulary(local, "v-1") == expected
    assert server.state() == local.state()
    # The settlement descends from both sides: editing it is no conflict.
    edit_vocabulary(server, "v-1", strength=0.1)
    assert [p.conflicts for p in both_ways(server, local)] == [0, 0]
    assert vocabulary(local, "v-1") == (expected[0], 0.1)


@pytest.mark.parametrize(
    "policy, deleted_on, delete_is_later, survives",
    [
        ("latest_timestamp", "local", False, True),  # the later update brings it back
        ("latest_timestamp", "local", True, False),  # the later delete removes it
        ("latest_timestamp", "server", True, False),
        ("server_wins", "local", True, True),
        ("server_wins", "server", False, False),
        ("local_wins", "local", False, False),
        ("local_wins", "server", True, True),
        ("merge_fields", "local", False, True),  # a delete has no fields: latest_timestamp
        ("merge_fields", "server", True, False),
    ],
)
def test_delete_against_update_follows_the_policy(
    pair, policy, deleted_on, delete_is_later, survives
):
    server, local = pair
    deleter, updater = (local, server) if deleted_on == "local" else (server, local)
    with freeze_time(START) as clock:
        add_vocabulary(local, "v-1", "mesa")
        both_ways(server, local)
        clock.tick(1)
        steps = [
            lambda: edit_vocabulary(updater, "v-1", translation="kept"),
            lambda: delete_vocabulary(deleter, "v-1"),
        ]
        for step in steps if delete_is_later else reversed(steps):
            step()
            clock.tick(1)

        up, _ = both_ways(server, local, policies={"vocabulary_items": policy})

    assert up.conflicts == 1
    assert server.state() == local.state()
    assert vocabulary(server, "v-1") == (("kept", 0.0) if survives else None)


def test_manual_review_parks_every_version_and_later_events_join_the_item(pair):
    server, local = pair
    review_policy = {"vocabulary_items": "manual_review"}
    add_vocabulary(local, "v-1", "mesa")
    add_vocabulary(local, "v-2", "silla")
    both_ways(server, local)
    edit_vocabulary(local, "v-1", translation="desk")
    edit_vocabulary(local, "v-2", translation="chair")  # no conflict: replicates
    edit_vocabulary(server, "v-1", translation="table")

    up, down = both_ways(server, local, policies=review_policy)

    assert (up.conflicts, up.parked, up.applied) == (1, 1, 1)
    assert up.conflicts_by_policy == {"manual_review": 1}
    assert down.skipped == 1  # the server's concurrent edit waits on the local
    # Each side keeps its row; everything else is equal.
    assert vocabulary(server, "v-1") == ("table", 0.0)
    assert vocabulary(local, "v-1") == ("desk", 0.0)
    assert vocabulary(server, "v-2") == vocabulary(local, "v-2") == ("chair", 0.0)
    [item] = open_items(server)
    assert (item.table, item.key, item.reason, item.policy) == (
        "vocabulary_items",
        '["v-1"]',
        "manual_review",
        "manual_review",
    )
    assert item.base["translation"] == "?"
    assert item.local.row["translation"] == "table" and item.local.origin == "server"
    assert item.remote.row["translation"] == "desk" and item.remote.origin == "phone"
    assert [decode_event(p).row["translation"] for p in item.events] == ["desk"]
    assert item.detected_at is not None

    # Later: the local edits the row again; it joins the open item.
    edit_vocabulary(local, "v-1", translation="bureau")
    again, _ = both_ways(server, local, policies=review_policy)
    [item] = open_items(server)
    assert (again.conflicts, again.parked) == (1, 1)
    assert [decode_event(p).row["translation"] for p in item.events] == ["desk", "bureau"]
    assert item.remote.row["translation"] == "bureau"
    assert vocabulary(server, "v-1") == ("table", 0.0)

    # The table's policy changes; the local's next edit is settled by it, and
    # that settlement descends from every version in the item: obsolete.
    edit_vocabulary(local, "v-1", strength=1.0)
    both_ways(server, local, policies={"vocabulary_items": "latest_timestamp"})
    assert open_items(server) == []
    with server.engine.connect() as conn:
        [closed] = parking.items(conn)
    assert closed.status == "obsolete" and "latest_timestamp settlement" in closed.resolution
    assert server.state() == local.state()
    assert vocabulary(local, "v-1") == ("bureau", 1.0)


@pytest.mark.parametrize(
    "resolver, reason, detail",
    [
        ("ask_a_person", "manual_review", "leaves the decision to a person"),
        ("broken", "resolver_error", "RuntimeError: the resolver has a bug"),
        ("unknown_column", "resolver_error", "unknown column(s) colour"),
    ],
)
def test_a_custom_resolver_can_ask_for_review_and_its_failures_are_parked(
    pair, resolver, reason, detail
):
    server, local = pair
    add_vocabulary(local, "v-1", "mesa")
    add_vocabulary(local, "v-2", "silla")
    both_ways(server, local)
    edit_vocabulary(local, "v-1", translation="desk")
    edit_vocabulary(local, "v-2", translation="chair")
    edit_vocabulary(server, "v-1", translation="table")

    up, _ = both_ways(server, local, policies={"vocabulary_items": f"tests.resolvers:{resolver}"})

    assert up.ok and (up.conflicts, up.parked, up.applied) == (1, 1, 1)
    [item] = open_items(server)
    assert (item.reason, item.policy) == (reason, f"tests.resolvers:{resolver}")
    assert detail in item.detail
    assert vocabulary(server, "v-1") == ("table", 0.0)
    assert vocabulary(server, "v-2") == ("chair", 0.0)


def test_a_resolver_that_cannot_be_imported_is_a_configuration_error(tmp_path):
    config = loads(
        f"""
        [nodes.server]
        url = "sqlite:///{tmp_path / "s.sqlite"}"
        role = "server"
        [tables.vocabulary_items]
        policy = "tests.no_such_module:resolve"
        """,
        source=tmp_path / "replicator.toml",
    )
    with pytest.raises(
        ConfigurationError, match=r"replicator.toml: tables.vocabulary_items.policy"
    ):
        Replicator(config)


def test_latest_timestamp_follows_causality_when_a_clock_is_hours_behind(pair):
    server, local = pair
    with freeze_time("2026-11-24 12:00:00") as clock:
        add_vocabulary(server, "v-1", "mesa")
        edit_vocabulary(server, "v-1", translation="table")
        both_ways(server, local)
        clock.move_to("2026-11-24 09:00:00")  # the phone's clock is three hours behind
        edit_vocabulary(local, "v-1", translation="desk")  # made after seeing "table"

        up, _ = both_ways(server, local)

    assert (up.conflicts, up.applied) == (0, 1)
    assert vocabulary(server, "v-1") == vocabulary(local, "v-1") == ("desk", 0.0)
    [last] = [e for e in local.own_events() if e.key == {"item_id": "v-1"}]
    server_edit = [e for e in server.events() if e.origin == "server"][-1]
    assert last.hlc > server_edit.hlc  # ordered after what it saw, not by its wall clock


def test_with_a_lagging_clock_a_truly_concurrent_edit_is_settled_by_timestamp(pair):
    server, local = pair
    with freeze_time("2026-11-24 12:00:00") as clock:
        add_vocabulary(local, "v-1", "mesa")
        both_ways(server, local)
        edit_vocabulary(server, "v-1", translation="table")
        clock.move_to("2026-11-24 09:00:00")  # later in real time, earlier by the phone's clock
        edit_vocabulary(local, "v-1", translation="desk")

        up, _ = both_ways(server, local)

    assert up.conflicts_by_policy == {"latest_timestamp": 1}
    assert vocabulary(server, "v-1") == vocabulary(local, "v-1") == ("table", 0.0)


def test_the_runs_table_counts_conflicts_by_policy_and_parked_events(pair, tmp_path):
    server, local = pair
    settings = config(
        server,
        local,
        extra='[replication]\npolicy = "server_wins"\n'
        '[tables.vocabulary_items]\npolicy = "manual_review"\n',
    )
    add_vocabulary(local, "v-1", "mesa")
    with local.sessions.begin() as session:
        session.add(
            app.UserProfile(
                user_id="u-42", display_name="Ada", native_language="en", target_language="es"
            )
        )
    engines = {"server": server.engine, "phone": local.engine}
    with Replicator(settings, engines=engines) as replicator:
        replicator.sync()
        edit_vocabulary(local, "v-1", translation="desk")
        edit_vocabulary(server, "v-1", translation="table")
        with local.sessions.begin() as session:
            session.get(app.UserProfile, "u-42").display_name = "Ada L."
        with server.sessions.begin() as session:
            session.get(app.UserProfile, "u-42").display_name = "Ada Lovelace"
        result = replicator.sync()

    up = result.passes[0]
    assert (up.conflicts, up.parked) == (2, 1)
    assert up.conflicts_by_policy == {"manual_review": 1, "server_wins": 1}
    assert json.loads(result.to_json())["passes"][0]["conflicts_by_policy"] == {
        "manual_review": 1,
        "server_wins": 1,
    }
    with server.engine.connect() as conn:
        runs = conn.execute(
            sa.select(sync_runs.c.conflicts, sync_runs.c.conflict_policies, sync_runs.c.parked)
            .where(sync_runs.c.source == "phone")
            .order_by(sync_runs.c.id)
        ).all()
    assert [(c, json.loads(p), n) for c, p, n in runs] == [
        (0, {}, 0),
        (2, {"manual_review": 1, "server_wins": 1}, 1),
    ]


@pytest.mark.backends("mariadb")
def test_a_pass_never_decides_on_a_row_an_app_transaction_is_changing(pair):
    server, local = pair
    add_vocabulary(local, "v-1", "mesa")
    both_ways(server, local)
    edit_vocabulary(local, "v-1", translation="desk")
    session = server.sessions()
    session.begin()
    session.get(app.VocabularyItem, "v-1").translation = "table"
    session.flush()  # the server app's edit, written but not committed
    passes: list = []
    syncing = threading.Thread(target=lambda: passes.append(replicate(local.node, server.node)))

    syncing.start()
    try:
        waited = waits_for_a_lock(server.engine, syncing)  # not a guess at how long it takes
    finally:
        session.commit()
        session.close()
    syncing.join(60)

    assert waited, "the pass must wait for the app's transaction to end"
    [up] = passes
    assert (up.conflicts, up.applied) == (1, 1)  # it saw the app's edit: concurrent
    replicate(server.node, local.node)
    assert server.state() == local.state()
    assert vocabulary(server, "v-1")[0] in ("desk", "table")


def test_an_item_two_locals_joined_stays_open_until_every_version_is_covered(pair, tmp_path):
    server, phone = pair
    tablet = member("tablet", f"sqlite:///{tmp_path / 'tablet.sqlite'}")
    review_policy = {"vocabulary_items": "manual_review"}
    try:
        add_vocabulary(phone, "v-1", "mesa")
        both_ways(server, phone)
        replicate(server.node, tablet.node)
        edit_vocabulary(server, "v-1", translation="table")
        edit_vocabulary(phone, "v-1", translation="desk")
        edit_vocabulary(tablet, "v-1", translation="board")
        replicate(phone.node, server.node, policies=review_policy)
        replicate(tablet.node, server.node, policies=review_policy)  # joins the item
        # The tablet then writes what the server holds: nothing left to decide
        # between those two, but the phone's version is still parked.
        edit_vocabulary(tablet, "v-1", translation="table")
        replicate(tablet.node, server.node, policies=review_policy)

        [item] = open_items(server)
        assert [decode_event(p).origin for p in item.events] == ["phone", "tablet"]
        assert vocabulary(phone, "v-1") == ("desk", 0.0)  # still differs: still parked
    finally:
        tablet.close()
