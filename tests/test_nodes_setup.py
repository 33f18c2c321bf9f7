"""Setting nodes up: a node without the replicator's tables is reported as
not initialized (run replicator init), by status and by sync, on every
database, not as an unreachable node with a driver's message."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from replicator.config import loads
from replicator.errors import NOT_INITIALIZED
from replicator.status import status
from replicator.sync import Replicator

from .cluster import add_vocabulary, member
from .test_cli import run


@pytest.mark.backends("mariadb", "sqlite", "duckdb")
def test_status_and_sync_say_a_node_is_not_initialized(database_url, tmp_path):
    server = member("server", database_url, role="server")
    add_vocabulary(server, "v-1", "mesa")
    bare = sa.create_engine(f"sqlite:///{tmp_path / 'phone.sqlite'}")  # never inited
    config = loads(
        f'[nodes.server]\nurl = "{server.node.url}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "sqlite:///{tmp_path / "phone.sqlite"}"\nrole = "local"\n'
    )
    engines = {"server": server.engine} if "duckdb" in database_url else {}
    with Replicator(config, engines={**engines, "phone": bare}) as r:
        found = status(r)
        result = r.sync()
    phone = next(n for n in found.nodes if n.name == "phone")
    assert (phone.reachable, phone.initialized, phone.error) == (True, False, NOT_INITIALIZED)
    assert not found.ok
    assert all("replicator init" in (link.error or "") for link in found.links)
    assert not result.ok
    for p in result.passes:
        assert p.status == "failed" and "replicator init" in p.error, p.error
        assert "OperationalError" not in p.error and "no such table" not in p.error
    server.close()
    bare.dispose()


def test_the_cli_reports_an_uninitialized_server(tmp_path):
    (tmp_path / "replicator.toml").write_text(
        '[nodes.server]\nurl = "sqlite:///server.sqlite"\nrole = "server"\n'
        '[nodes.phone]\nurl = "sqlite:///phone.sqlite"\nrole = "local"\n'
    )
    shown = run("status", cwd=tmp_path)
    assert shown.returncode == 1
    text = " ".join(shown.stdout.split())
    assert "server (server, sqlite:///server.sqlite): not initialized (run replicator init)" in text
    assert "unreachable" not in text and "no such table" not in text
    document = json.loads(run("status", "--json", cwd=tmp_path).stdout)
    assert {n["name"]: n["initialized"] for n in document["nodes"]} == {
        "server": False,
        "phone": False,
    }
    synced = run("sync", cwd=tmp_path)
    assert synced.returncode == 1 and "replicator init" in synced.stderr
    assert run("init", cwd=tmp_path).returncode == 0
    assert run("status", cwd=tmp_path).returncode == 0
