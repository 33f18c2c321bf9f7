"""Setting nodes up: a node without the replicator's tables is reported as
not initialized (run replicator init), by status and by sync, on every
database, not as an unreachable node with a driver's message."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from replicator.application import Replicator
from replicator.config import loads
from replicator.errors import NOT_INITIALIZED, SchemaError
from replicator.status import status

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


@pytest.fixture(params=["greeting never comes", "backlog full"])
def unanswering_server(request):
    """A loopback port where a connection attempt gets no answer: either
    the TCP connection is made and the MySQL greeting never comes, or the
    listener's backlog is full and accepts nothing, so the TCP handshake
    itself never completes (as with an unroutable address)."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    fillers = []
    if request.param == "greeting never comes":
        listener.listen(8)
    else:
        listener.listen(0)
        while True:  # connect until the kernel stops completing handshakes
            filler = socket.socket()
            filler.settimeout(0.3)
            try:
                filler.connect(listener.getsockname())
            except OSError:
                filler.close()
                break
            fillers.append(filler)
    yield listener.getsockname()[1]
    for filler in fillers:
        filler.close()
    listener.close()


def silent_config(tmp_path, port):
    return loads(
        f'[nodes.server]\nurl = "mysql+pymysql://app:secret@127.0.0.1:{port}/app"\n'
        'role = "server"\nconnect_timeout = 1\n'
        f'[nodes.phone]\nurl = "sqlite:///{tmp_path / "phone.sqlite"}"\nrole = "local"\n'
    )


def test_a_server_that_never_answers_is_given_up_after_its_connect_timeout(
    tmp_path, unanswering_server
):
    from replicator.node import on_connect

    silent_server = unanswering_server
    waited: list[tuple[str, str]] = []
    with (
        Replicator(silent_config(tmp_path, silent_server)) as r,
        on_connect(lambda node, url: waited.append((node, url))),
    ):
        found = status(r)
        result = r.sync()
    # connect_timeout = 1: pymysql alone would wait 10 s (TCP) or for ever (greeting);
    # the message says the timeout was what ended the wait.
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
    init = run("init", "-c", str(settings))  # init honours connect_timeout too
    assert init.returncode == 1
    assert "no answer within 1 s" in " ".join(init.stderr.split())
    assert "secret" not in init.stdout + init.stderr


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


@pytest.mark.backends("mariadb", "sqlite", "duckdb")
def test_a_missing_replicator_table_is_not_initialized_and_nothing_else_is(engine):
    """Each database's own words for a missing replicator table are
    translated; its words for an existing one, or a missing app table, are not."""
    from replicator.errors import describe, not_initialized

    def refused(sql: str) -> sa.exc.DBAPIError:
        with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as raised:
            conn.exec_driver_sql(sql)
        return raised.value

    missing = refused("SELECT * FROM replicator_log")
    assert not_initialized(missing) and describe(missing) == NOT_INITIALIZED, str(missing)
    app_table = refused("SELECT * FROM notes")
    assert not not_initialized(app_table) and "notes" in describe(app_table)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE replicator_log (id INTEGER)")
    exists = refused("CREATE TABLE replicator_log (id INTEGER)")
    assert not not_initialized(exists), str(exists)
    assert "already exists" in describe(exists)


@pytest.mark.backends("mariadb", "sqlite", "duckdb")
def test_a_database_of_any_kind_without_the_tables_is_not_initialized(database_url, tmp_path):
    """The never-inited node is the database under test: the server on
    MariaDB, a local on SQLite and DuckDB. Status and every pass of sync
    say to run init; after it, status is fine."""
    import replicator

    bare = "server" if database_url.startswith("mysql") else "phone"
    inited = f"sqlite:///{tmp_path / 'inited.sqlite'}"
    replicator.migrate(inited)
    urls = {"server": inited, "phone": inited, bare: database_url}
    config = loads(
        f'[nodes.server]\nurl = "{urls["server"]}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{urls["phone"]}"\nrole = "local"\n'
    )
    with Replicator(config) as r:
        found = status(r)
        if bare == "server":
            # Taking the link's lock on a MariaDB server records its holder
            # in replicator_runners: the whole sync is refused, by name.
            with pytest.raises(SchemaError, match=r"replicator_runners.*run `replicator init`"):
                r.sync()
            result = None
        else:
            result = r.sync()
    nodes = {n.name: (n.reachable, n.initialized, n.error) for n in found.nodes}
    assert nodes[bare] == (True, False, NOT_INITIALIZED), nodes
    assert all(link.error == f"{bare}: {NOT_INITIALIZED}" for link in found.links), found.links
    if result is not None:
        assert not result.ok and result.passes
        for p in result.passes:
            assert p.status == "failed" and "replicator init" in (p.error or ""), p.error
    assert replicator.migrate(urls[bare]) == "created"
    with Replicator(config) as r:
        assert status(r).ok


@pytest.mark.backends("mariadb", "sqlite")
def test_on_connect_names_the_node_and_never_the_password(database_url, tmp_path):
    from sqlalchemy.engine import make_url

    from replicator.errors import ConnectivityError
    from replicator.node import Node, on_connect

    seen: list[tuple[str, str, str]] = []

    def connecting(node: str, url: str) -> None:
        seen.append(("connecting", node, url))

    def finished(node: str, url: str, error: BaseException | None) -> None:
        seen.append(("connected" if error is None else "failed", node, url))

    node = Node("server", url=database_url, role="server")
    with on_connect(connecting, finished):
        with node.connect() as conn:
            assert conn.exec_driver_sql("SELECT 1").scalar() == 1
        with node.connect():
            pass  # the pool's connection: no new one
    assert seen == [
        ("connecting", "server", node.masked_url),
        ("connected", "server", node.masked_url),
    ]
    node.dispose()

    # An attempt that fails: a wrong password (MariaDB), a directory that
    # does not exist (SQLite).
    if database_url.startswith("mysql"):
        refused = (
            make_url(database_url).set(password="secret").render_as_string(hide_password=False)
        )
    else:
        refused = f"sqlite:///{tmp_path / 'no such directory' / 'phone.sqlite'}"
    wrong = Node("phone", url=refused, role="local")
    seen.clear()
    with (
        on_connect(connecting, finished),
        pytest.raises(ConnectivityError, match="node phone"),
        wrong.connect(),
    ):
        pass
    assert seen == [
        ("connecting", "phone", wrong.masked_url),
        ("failed", "phone", wrong.masked_url),
    ]
    assert all("secret" not in url for _, _, url in seen)
    with pytest.raises(ConnectivityError), wrong.connect():  # no longer watched
        pass
    assert len(seen) == 2
    wrong.dispose()


def test_status_asks_a_server_that_never_answers_once_even_for_its_sink(tmp_path, silent_server):
    """A sink on the server does not make status wait for the server again."""
    from replicator.node import on_connect

    config = silent_config(tmp_path, silent_server)
    sink = (
        f'[sinks.documents]\nkind = "chroma"\nnode = "server"\npath = "{tmp_path / "chroma"}"\n'
        'collection = "documents"\ntable = "documents"\nid_column = "document_id"\n'
        'text_column = "content"\nembedding_function = "tests.embedders:counting"\n'
    )
    text = "".join(
        f'[nodes.{name}]\nurl = "{node.url}"\nrole = "{node.role}"\n'
        f"connect_timeout = {node.connect_timeout}\n"
        for name, node in config.nodes.items()
    )
    waited: list[str] = []
    with (
        Replicator(loads(text + sink)) as r,
        on_connect(lambda node, url: waited.append(node)),
    ):
        found = status(r)
    assert waited.count("server") == 1, waited
    [documents] = found.sinks
    assert documents.lag is None and "no answer within 1 s" in (documents.error or "")
