"""A new local that lacks the app's tables is never "bootstrapped" with
nothing: the bootstrap is refused, naming the tables, and nothing moves;
once the tables exist, the next sync (or runner round) fills it."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import replicator
from replicator import checkpoints
from replicator.application import Replicator
from replicator.bootstrap import bootstrap
from replicator.config import loads
from replicator.errors import SchemaError
from replicator.service import Runner, Timing
from replicator.tables import sync_runs
from replicator.verify import verify

from .cluster import add_vocabulary, app, member
from .test_cli import run

LOCALS = {"sqlite": "phone.sqlite", "duckdb": "phone.duckdb"}


def server_with_rows(database_url):
    server = member("server", database_url, role="server")
    add_vocabulary(server, "v-1", "lápiz")
    add_vocabulary(server, "v-2", "silla")
    app.run_session(server.sessions, user_id="u-42", now=app.dt.datetime(2026, 11, 24, 9, 30))
    return server


def bare_local(tmp_path, kind):
    """A local that ran `replicator init` and nothing else: no app tables."""
    engine = sa.create_engine(f"{kind}:///{tmp_path / LOCALS[kind]}")
    replicator.migrate(engine)
    return engine


def settings(server, engine, extra=""):
    return loads(
        f'[nodes.server]\nurl = "{server.node.url}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{engine.url.render_as_string(hide_password=False)}"\n'
        'role = "local"\n' + extra
    )


def nothing_moved(engine):
    with engine.connect() as conn:
        assert checkpoints.all_of(conn) == {}, "no checkpoint was set"
        assert sa.inspect(conn).get_table_names() == [
            t for t in sa.inspect(conn).get_table_names() if t.startswith("replicator_")
        ], "no app table was made by the replicator"


def nothing_moved_but_app_tables(engine):
    """No checkpoint, and the app's tables (made by the app) still empty."""
    with engine.connect() as conn:
        assert checkpoints.all_of(conn) == {}, "no checkpoint was set"
        assert conn.exec_driver_sql("SELECT count(*) FROM vocabulary_items").scalar() == 0


@pytest.mark.backends("mariadb", "sqlite")
@pytest.mark.parametrize("kind", sorted(LOCALS))
def test_sync_refuses_to_bootstrap_a_local_without_tables_then_fills_it(
    database_url, tmp_path, kind
):
    server = server_with_rows(database_url)
    local = bare_local(tmp_path, kind)
    config = settings(server, local)

    with Replicator(config, engines={"phone": local}) as r:
        refused = r.sync()
    assert not refused.ok and refused.bootstrapped == {}
    down = [p for p in refused.passes if p.target == "phone"]
    assert down and all(p.status == "failed" and p.read == 0 for p in down)
    for table in ("vocabulary_items", "user_profiles"):
        assert table in down[0].error, down[0].error
    assert "create the app's tables" in down[0].error
    nothing_moved(local)
    with local.connect() as conn:  # `status` shows why the phone gets nothing
        c = sync_runs.c
        recorded = conn.execute(sa.select(c.error).where(c.target == "phone")).scalars().all()
    assert recorded and all("vocabulary_items" in e for e in recorded), recorded

    app.Base.metadata.create_all(local)  # the app starts, and makes its tables
    with Replicator(config, engines={"phone": local}) as r:
        filled = r.sync()
        checked = verify(r.server, r.node("phone"))
    assert filled.ok, [p.error for p in filled.passes]
    got = filled.bootstrapped["phone"]
    assert got.rows["vocabulary_items"] >= 2 and sum(got.rows.values()) > 2
    assert checked.equal, [(t.table, t.differing) for t in checked.tables]
    local.dispose()


@pytest.mark.backends("sqlite")
def test_bootstrap_names_every_missing_table_and_writes_nothing(database_url, tmp_path):
    server = server_with_rows(database_url)
    local = bare_local(tmp_path, "sqlite")
    with local.begin() as conn:  # one table made by hand, the others missing
        app.Base.metadata.tables["user_profiles"].create(conn)
    with (
        Replicator(settings(server, local), engines={"phone": local}) as r,
        pytest.raises(SchemaError) as refused,
    ):
        bootstrap(r.server, r.node("phone"))
    message = str(refused.value)
    assert "vocabulary_items" in message and "user_profiles" not in message.split("exist")[0]
    with local.connect() as conn:
        assert checkpoints.all_of(conn) == {}
        assert conn.exec_driver_sql("SELECT count(*) FROM user_profiles").scalar() == 0


@pytest.mark.backends("mariadb", "sqlite")
def test_a_table_kept_off_a_scoped_local_is_not_required_there(database_url, tmp_path):
    server = server_with_rows(database_url)
    with server.engine.begin() as conn:  # a server table without the scope's column
        conn.exec_driver_sql("CREATE TABLE glossary (term VARCHAR(40) PRIMARY KEY, meaning TEXT)")
        conn.exec_driver_sql("INSERT INTO glossary VALUES ('hola', 'hello')")
    local = bare_local(tmp_path, "sqlite")
    app.Base.metadata.create_all(local)  # the app's tables; no glossary
    scoped = 'scope = { user_id = "u-42" }\n'

    with Replicator(settings(server, local, scoped), engines={"phone": local}) as r:
        whole = r.sync()  # unscoped = "all": the glossary goes to the phone too
    errors = {p.error for p in whole.passes if p.target == "phone"}
    assert not whole.ok and len(errors) == 1, errors
    (error,) = errors
    assert "table glossary does not exist on phone" in error
    assert "vocabulary_items" not in error
    nothing_moved_but_app_tables(local)

    kept_off = scoped + '[tables.glossary]\nunscoped = "none"\n'
    with Replicator(settings(server, local, kept_off), engines={"phone": local}) as r:
        filled = r.sync()
        # A table kept off the local on purpose is not "missing" there.
        checked = verify(r.server, r.node("phone"), unscoped={"glossary": "none"})
    assert filled.ok, [p.error for p in filled.passes]
    assert "glossary" not in filled.bootstrapped["phone"].rows
    assert filled.bootstrapped["phone"].rows["vocabulary_items"] >= 2
    assert checked.equal
    local.dispose()


@pytest.mark.backends("sqlite")
def test_bootstrap_reports_rows_as_it_copies_them(database_url, tmp_path):
    server = server_with_rows(database_url)
    for i in range(3, 40):
        add_vocabulary(server, f"v-{i}", f"w{i}")
    local = bare_local(tmp_path, "sqlite")
    app.Base.metadata.create_all(local)
    seen: list[tuple[int, int | None]] = []
    with Replicator(settings(server, local), engines={"phone": local}) as r:
        result = r.bootstrap("phone", progress=lambda done, total: seen.append((done, total)))
    copied = sum(result.rows.values())
    assert seen[-1] == (copied, copied)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert all(total == copied for _, total in seen)
    assert len(seen) > 2, "more than one report: rows, not tables"


@pytest.mark.backends("sqlite")
def test_a_runner_holds_back_a_local_without_tables_until_they_exist(database_url, tmp_path):
    server = server_with_rows(database_url)
    local = bare_local(tmp_path, "sqlite")
    clock = [0.0]
    with Replicator(settings(server, local), engines={"phone": local}) as r:
        runner = Runner(r, timing=Timing(interval=10), now=lambda: clock[0])
        runner.step()
        refused = [p for p in runner.last.passes if p.target == "phone"]
        assert refused and all(p.status == "failed" for p in refused)
        add_vocabulary(server, "v-3", "lámpara")  # the server's head moves
        clock[0] = 1.0
        runner.step()  # not a full round: nothing runs to the refused local
        assert not [p for p in runner.last.passes if p.target == "phone" and p.read]
        nothing_moved(local)
        app.Base.metadata.create_all(local)
        clock[0] = 60.0  # the next full round bootstraps it
        runner.step()
        runner.close()
        assert verify(r.server, r.node("phone")).equal
    local.dispose()


def test_the_cli_says_when_a_node_was_bootstrapped_and_with_how_many_rows(tmp_path):
    from .cluster import add_vocabulary as add

    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    add(server, "v-1", "mesa")
    server.close()
    (tmp_path / "replicator.toml").write_text(
        '[nodes.server]\nurl = "sqlite:///server.sqlite"\nrole = "server"\n'
        '[nodes.phone]\nurl = "sqlite:///phone.sqlite"\nrole = "local"\n'
    )
    assert run("init", cwd=tmp_path).returncode == 0
    refused = run("sync", cwd=tmp_path)
    assert refused.returncode == 1
    assert "cannot bootstrap phone" in " ".join(refused.stderr.split())
    phone = sa.create_engine(f"sqlite:///{tmp_path / 'phone.sqlite'}")
    app.Base.metadata.create_all(phone)
    phone.dispose()
    filled = run("sync", cwd=tmp_path)
    assert filled.returncode == 0, filled.stderr
    text = " ".join(filled.stdout.split())
    assert "phone was empty and was bootstrapped first: 1 row copied (vocabulary_items 1" in text
