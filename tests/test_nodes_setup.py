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


@pytest.fixture
def silent_server():
    """A loopback port that accepts connections and never says a word (the
    MySQL greeting never comes), as a server that hangs would."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    yield listener.getsockname()[1]
    listener.close()


def silent_config(tmp_path, port):
    return loads(
        f'[nodes.server]\nurl = "mysql+pymysql://app:secret@127.0.0.1:{port}/app"\n'
        'role = "server"\nconnect_timeout = 1\n'
        f'[nodes.phone]\nurl = "sqlite:///{tmp_path / "phone.sqlite"}"\nrole = "local"\n'
    )


def test_a_server_that_never_answers_is_given_up_after_its_connect_timeout(tmp_path, silent_server):
    from replicator.node import on_connect

    waited: list[tuple[str, str]] = []
    with (
        Replicator(silent_config(tmp_path, silent_server)) as r,
        on_connect(lambda node, url: waited.append((node, url))),
    ):
        found = status(r)
        result = r.sync()
    server = next(n for n in found.nodes if n.name == "server")
    assert not server.reachable and "no answer within 1 s (connect_timeout)" in server.error
    assert not result.ok
    assert all("no answer within 1 s" in p.error for p in result.passes)
    # One attempt per command (status, then sync), not one per pass and lock:
    # the default timeout of pymysql alone is 10 s per attempt.
    assert [w for w in waited if w[0] == "server"] == [
        ("server", f"mysql+pymysql://app:***@127.0.0.1:{silent_server}/app")
    ] * 2
    assert all("secret" not in url for _, url in waited)


def test_the_cli_names_the_timeout_and_no_password(tmp_path, silent_server):
    settings = tmp_path / "replicator.toml"
    config = silent_config(tmp_path, silent_server)
    settings.write_text(
        "".join(
            f'[nodes.{name}]\nurl = "{node.url}"\nrole = "{node.role}"\n'
            f"connect_timeout = {node.connect_timeout}\n"
            for name, node in config.nodes.items()
        )
    )
    shown = run("status", "-c", str(settings))
    assert shown.returncode == 1
    assert "no answer within 1 s" in " ".join(shown.stdout.split())
    assert "secret" not in shown.stdout + shown.stderr


@pytest.mark.parametrize("value", ["0", "-1", '"soon"'])
def test_a_bad_connect_timeout_is_a_configuration_error_naming_it(value):
    from replicator.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"nodes\.server\.connect_timeout"):
        loads(f'[nodes.server]\nurl = "sqlite://"\nrole = "server"\nconnect_timeout = {value}\n')


@pytest.mark.backends("mariadb")
def test_a_query_longer_than_the_connect_timeout_still_runs(database_url):
    from replicator.node import Node

    node = Node("server", url=database_url, role="server", connect_timeout=1)
    with node.connect() as conn:
        assert conn.exec_driver_sql("SELECT SLEEP(2)").scalar() == 0
    with node.get_engine().connect() as conn:  # the lock engines are made from the same URL
        from replicator.dialects.mariadb import _lock_engine

        with _lock_engine(node.get_engine()).connect() as lock_conn:
            assert lock_conn.exec_driver_sql("SELECT SLEEP(2)").scalar() == 0
    node.dispose()


@pytest.mark.backends("mariadb")
def test_a_connection_that_breaks_going_back_to_the_pool_is_a_connectivity_error(database_url):
    """The pool's reset on check-in (a COMMIT restoring the isolation level)
    meets a connection the network has dropped: the driver's own error must
    come out as the project's, or a runner's pass lets it escape and dies."""
    from replicator.errors import ConnectivityError
    from replicator.node import Node

    node = Node("server", url=database_url, role="server")
    killer = sa.create_engine(database_url)
    with (
        pytest.raises(ConnectivityError, match=r"node server .* cannot be reached"),
        node.connect() as conn,
    ):
        conn = conn.execution_options(isolation_level="READ COMMITTED")
        conn.exec_driver_sql("SELECT 1")
        own = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
        with killer.connect() as other:
            other.exec_driver_sql(f"KILL {own}")
    with node.connect() as conn:  # the pool hands out a working connection next
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    killer.dispose()
    node.dispose()
