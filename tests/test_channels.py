"""Channels: tables grouped with their own checkpoint and batch size, run in
priority order; a failing channel does not stop the others."""

from __future__ import annotations

import sqlalchemy as sa

from replicator import checkpoints
from replicator.application import Replicator
from replicator.config import loads

from .cluster import NOW, app, member


def test_channels_run_by_priority_with_their_own_checkpoints_and_failures(tmp_path):
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    config = loads(
        f"""
        [nodes.server]
        url = "{server.node.url}"
        role = "server"
        [nodes.phone]
        url = "{phone.node.url}"
        role = "local"
        [replication]
        direction = "up"
        [tables.user_profiles]
        channel = "essential"
        [tables.documents]
        channel = "bulky"
        [channels.essential]
        priority = 1
        batch_size = 1
        [channels.bulky]
        priority = 200
        """
    )
    try:
        app.run_session(phone.sessions, user_id="u-42", now=NOW)
        # The server's documents table fails every write with an error
        # that is the database's, not the row's: that channel fails.
        sa.event.listen(
            server.engine,
            "connect",
            lambda dbapi, _: dbapi.create_function("out_of_service", 0, _out_of_service),
        )
        server.engine.dispose()
        with server.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER documents_down BEFORE INSERT ON documents "
                "BEGIN SELECT out_of_service(); END"
            )
        engines = {"server": server.engine, "phone": phone.engine}

        with Replicator(config, engines=engines) as replicator:
            result = replicator.sync()

        summary = [(p.channel, p.status, p.applied) for p in result.passes]
        assert summary == [("essential", "ok", 2), ("default", "ok", 12), ("bulky", "failed", 0)]
        assert "OperationalError" in result.passes[2].error
        with server.engine.connect() as conn:
            stored = checkpoints.all_of(conn)
            profiles = conn.execute(
                sa.select(sa.func.count()).select_from(app.UserProfile.__table__)
            ).scalar()
        assert set(stored) == {("phone", "essential"), ("phone", "default")}
        assert profiles == 1
    finally:
        phone.close()
        server.close()


def _out_of_service() -> None:
    raise RuntimeError("the documents store is out of service")
