"""Retention: pruning deletes outbox events every reader has applied and
that are older than the retention period; a lagging reader keeps them; a
reader behind what was pruned is refused with a bootstrap instruction."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from replicator.sync import Replicator

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
        # The laptop has applied nothing: the server keeps all 16 events;
        # the phone's one event, applied by the server, goes.
        assert [(p.node, p.deleted) for p in lagging.outboxes] == [
            ("server", 0),
            ("phone", 1),
            ("laptop", 0),
        ]
        assert lagging.outboxes[0].acknowledged == 0 and kept == 16
        assert (gone.outboxes[0].deleted, gone.outboxes[0].through, left) == (16, 16, 0)
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
