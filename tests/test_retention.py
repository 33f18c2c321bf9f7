"""Retention: pruning deletes outbox events every reader has applied and
that are older than the retention period; a lagging reader keeps them; a
reader behind what was pruned is refused with a bootstrap instruction."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from replicator.application import Replicator

from .cluster import NOW, add_vocabulary, app, config, member


def outbox_size(m):
    with m.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM replicator_outbox").scalar()


def test_pruning_keeps_what_a_lagging_replica_needs_until_it_leaves_the_config(
    database_url, tmp_path
):
    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    laptop = member("laptop", f"sqlite:///{tmp_path / 'laptop.sqlite'}")
    engines = {m.name: m.engine for m in (server, phone, laptop)}
    everyone, without_laptop = config(server, phone, laptop), config(server, phone)
    try:
        app.run_session(server.sessions, user_id="u-42", now=NOW)
        add_vocabulary(phone, "v-p", "phone's")
        add_vocabulary(laptop, "v-l", "laptop's, never synced")
        with Replicator(without_laptop, engines=engines) as replicator:
            assert replicator.sync().ok

        with Replicator(everyone, engines=engines) as replicator:
            young = replicator.prune()  # the default retention, 7 days: all too young
            lagging = replicator.prune(dt.timedelta(0))
        kept = outbox_size(server)
        with Replicator(without_laptop, engines=engines) as replicator:
            gone = replicator.prune(dt.timedelta(0))
        left = outbox_size(server)
        with Replicator(everyone, engines=engines) as replicator:
            back = replicator.sync()
            told = replicator.prune(dt.timedelta(0))

        assert [p.deleted for p in young.outboxes] == [0, 0, 0]
        # The laptop has applied nothing: the server keeps all 16 events.
        # The phone's one event, applied by the server, is its newest: an
        # outbox always keeps its newest (SQLite would reuse its position).
        assert [(p.node, p.deleted) for p in lagging.outboxes] == [
            ("server", 0),
            ("phone", 0),
            ("laptop", 0),
        ]
        assert lagging.outboxes[0].acknowledged == 0 and kept == 16
        assert (gone.outboxes[0].deleted, gone.outboxes[0].through, left) == (15, 15, 1)
        down = next(p for p in back.passes if p.target == "laptop")
        assert down.status == "failed"
        assert "behind server's pruned log" in down.error
        assert "replicator bootstrap --node laptop" in down.error
        assert told.behind == {"laptop": "server"}
        with laptop.engine.connect() as conn:  # nothing was skipped silently
            assert conn.execute(sa.text("SELECT count(*) FROM user_profiles")).scalar() == 0
    finally:
        for m in (laptop, phone, server):
            m.close()


def test_after_pruning_everything_new_events_still_arrive_and_replay_refuses_the_gap(
    database_url, tmp_path
):
    from replicator.errors import ReplicatorError
    from replicator.replay import replay
    from replicator.sync import replicate

    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    engines = {m.name: m.engine for m in (server, phone)}
    try:
        for i in range(3):
            add_vocabulary(server, f"v-{i}", "w")
        with Replicator(config(server, phone), engines=engines) as replicator:
            replicator.sync()
            pruned = replicator.prune(dt.timedelta(0))
        add_vocabulary(server, "v-after", "w")  # must not take a used position
        down = replicate(server.node, phone.node)

        assert pruned.outboxes[0].deleted == 2  # the newest stays
        assert (down.read, down.applied) == (1, 1)
        assert "v-after" in [r[0] for r in phone.rows("vocabulary_items")]
        try:
            replay(server.node, phone.node, start=1)
        except ReplicatorError as e:
            assert "deleted by retention: replay from 3 or later" in str(e)
        else:
            raise AssertionError("a replay over pruned events must be refused")
    finally:
        phone.close()
        server.close()
