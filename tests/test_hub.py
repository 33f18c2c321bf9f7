"""Spec invariant 4 with a server and two locals: a change made on one local
reaches the other exactly once, through the server, keeping its origin and
version, and never comes back to its origin as a new change."""

from __future__ import annotations

import pytest

from replicator.application import Replicator
from replicator.sync import replicate

from .cluster import add_vocabulary, config, edit_vocabulary, member


@pytest.fixture
def hub(database_url, tmp_path):
    server = member("server", database_url, role="server")
    a = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    b = member("laptop", f"duckdb:///{tmp_path / 'laptop.duckdb'}")
    yield server, a, b
    for m in (a, b, server):
        m.close()


def sync_all(server, a, b):
    """What `replicator sync` does: every local up, then every local down."""
    return [
        replicate(a.node, server.node),
        replicate(b.node, server.node),
        replicate(server.node, a.node),
        replicate(server.node, b.node),
    ]


def test_a_write_on_one_local_reaches_the_other_once_and_never_returns(hub):
    server, a, b = hub
    add_vocabulary(a, "v-1", "mesa")

    first = sync_all(server, a, b)
    second = sync_all(server, a, b)

    a_up, b_up, a_down, b_down = first
    assert (a_up.applied, b_up.applied, a_down.read, b_down.applied) == (1, 0, 0, 1)
    assert all(p.read == 0 for p in second), second
    event = a.events()[0]
    forwarded = server.events()
    assert forwarded == [event]  # same event: origin phone, its version, its id
    assert b.events() == []  # applied, not captured
    assert a.events() == [event]  # nothing came back to phone as a new change
    assert a.rows("vocabulary_items") == b.rows("vocabulary_items")
    assert server.rows("vocabulary_items") == a.rows("vocabulary_items")


def test_edits_in_turn_on_both_locals_are_sequential_everywhere(hub):
    server, a, b = hub
    add_vocabulary(a, "v-1", "mesa")
    sync_all(server, a, b)
    edit_vocabulary(b, "v-1", translation="table")
    sync_all(server, a, b)
    edit_vocabulary(a, "v-1", strength=0.75)

    passes = sync_all(server, a, b)

    assert sum(p.conflicts for p in passes) == 0
    assert a.state() == b.state() == server.state()
    assert a.rows("vocabulary_items")[0][3:] == ("table", 0.75)


def test_concurrent_edits_on_two_locals_converge_settled_once_by_the_server(hub):
    server, a, b = hub
    add_vocabulary(a, "v-1", "mesa")
    sync_all(server, a, b)
    edit_vocabulary(a, "v-1", translation="desk")
    edit_vocabulary(b, "v-1", translation="table")  # later: wins

    passes = sync_all(server, a, b)
    sync_all(server, a, b)

    # Detected and settled once, on the server (the laptop's edit arrives
    # after the phone's); both locals receive the settlement, no conflict.
    assert [p.conflicts for p in passes] == [0, 1, 0, 0]
    assert a.state() == b.state() == server.state()
    assert a.rows("vocabulary_items")[0][3] == "table"


def test_the_replicator_runs_every_link_from_a_config(hub, tmp_path):
    server, a, b = hub
    settings = config(server, a, b)
    add_vocabulary(a, "v-1", "mesa")
    engines = {"server": server.engine, "phone": a.engine, "laptop": b.engine}

    with Replicator(settings, engines=engines) as replicator:
        result = replicator.sync()

    assert [(p.source, p.target, p.applied) for p in result.passes] == [
        ("phone", "server", 1),
        ("laptop", "server", 0),
        ("server", "phone", 0),
        ("server", "laptop", 0),
    ]
    # The laptop was empty: bootstrapped from the server's rows at position 1.
    assert {n: b.position for n, b in result.bootstrapped.items()} == {"laptop": 1}
    assert b.rows("vocabulary_items") == a.rows("vocabulary_items")
