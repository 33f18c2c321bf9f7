"""Values converge: a column the server keeps less precisely than a local
(MariaDB's DATETIME whole seconds against a local's microseconds, a 4-byte
FLOAT against an 8-byte float, fewer decimal places) is refused by
``replicator init`` and by every pass between that local and the server,
naming the column and the fix; declared as precisely, values replicate
digit for digit and ``verify`` finds the replicas equal."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import replicator
from replicator.application import Replicator
from replicator.config import loads
from replicator.precision import compare
from replicator.tables import is_replicator_table
from replicator.verify import verify

from .test_cli import run

WRITTEN_AT = dt.datetime(2026, 11, 24, 9, 30, 15, 123456)
FIX = 'sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb", "mysql")'


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    """The app's model: microseconds everywhere, MariaDB told so."""

    __tablename__ = "conversations"
    conversation_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100))
    updated_at: Mapped[dt.datetime] = mapped_column(
        sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb", "mysql")
    )


def conversations(updated_at: sa.types.TypeEngine) -> sa.Table:
    """The conversations table with ``updated_at`` of the given type."""
    return sa.Table(
        "conversations",
        sa.MetaData(),
        sa.Column("conversation_id", sa.String(36), primary_key=True),
        sa.Column("title", sa.String(100)),
        sa.Column("updated_at", updated_at),
    )


def settings(tmp_path: Path, server_url: str) -> Path:
    """A configuration of the server, a DuckDB local "phone" and a SQLite
    local "laptop", all with the app's table made (the locals' by the
    model), none initialized."""
    urls = {
        "server": server_url,
        "phone": f"duckdb:///{tmp_path / 'phone.duckdb'}",
        "laptop": f"sqlite:///{tmp_path / 'laptop.sqlite'}",
    }
    for name in ("phone", "laptop"):
        engine = sa.create_engine(urls[name])
        Base.metadata.create_all(engine)
        engine.dispose()  # the commands run in processes of their own
    path = tmp_path / "replicator.toml"
    path.write_text(
        "".join(
            f'[nodes.{name}]\nurl = "{url}"\nrole = "{"server" if name == "server" else "local"}"\n'
            for name, url in urls.items()
        )
    )
    return path


def create(url: str, table: sa.Table) -> None:
    engine = sa.create_engine(url)
    table.metadata.create_all(engine)
    engine.dispose()


def replicator_tables(url: str) -> list[str]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = [t for t in sa.inspect(conn).get_table_names() if is_replicator_table(t)]
    engine.dispose()
    return found


def write_on(url: str, node: str, conversation_id: str) -> None:
    """One conversation written through the app on ``node``, captured."""
    engine = sa.create_engine(url)
    sessions = sessionmaker(bind=engine)
    handle = replicator.capture(sessions, node=node)
    with sessions.begin() as session:
        session.add(
            Conversation(conversation_id=conversation_id, title="hola", updated_at=WRITTEN_AT)
        )
    handle.stop()
    engine.dispose()


def updated_at(url: str) -> dict[str, dt.datetime]:
    """Each conversation's ``updated_at`` as the node at ``url`` holds it."""
    engine = sa.create_engine(url)
    table = Conversation.__table__
    with engine.connect() as conn:
        found = dict(conn.execute(sa.select(table.c.conversation_id, table.c.updated_at)).all())
    engine.dispose()
    return found


@pytest.mark.backends("mariadb")
def test_a_server_datetime_of_whole_seconds_is_refused_by_init_and_by_sync(database_url, tmp_path):
    create(database_url, conversations(sa.DateTime()))  # MariaDB: DATETIME, whole seconds
    config = settings(tmp_path, database_url)

    init = run("init", "-c", str(config))

    said = " ".join(init.stderr.split())
    assert init.returncode == 2, (init.returncode, init.stdout, init.stderr)
    for local, database in (("phone", "duckdb"), ("laptop", "sqlite")):
        assert (
            f"conversations.updated_at: the server (mariadb) stores DATETIME, whole seconds, "
            f"but local '{local}' ({database})"
        ) in said, said
    assert "declare it DATETIME(6) on the server" in said and FIX in said, said
    urls = [
        database_url,
        f"duckdb:///{tmp_path / 'phone.duckdb'}",
        f"sqlite:///{tmp_path / 'laptop.sqlite'}",
    ]
    assert [replicator_tables(url) for url in urls] == [[], [], []], "init changed a node"

    # Initialized anyway (from Python), the passes are refused both ways.
    for url in urls:
        engine = sa.create_engine(url)
        replicator.migrate(engine)
        engine.dispose()
    write_on(urls[1], "phone", "c-1")
    with Replicator(loads(config.read_text())) as r:
        result = r.sync()
    assert not result.ok
    assert {(p.source, p.target) for p in result.passes} == {
        ("phone", "server"),
        ("laptop", "server"),
        ("server", "phone"),
        ("server", "laptop"),
    }
    for p in result.passes:
        assert p.status == "failed" and p.read == 0, p
        assert "conversations.updated_at" in p.error and "DATETIME(6)" in p.error, p.error
        assert f"local '{p.source if p.target == 'server' else p.target}'" in p.error, p.error
    assert updated_at(database_url) == {}, "a refused pass wrote on the server"

    # A runner (replicator run, BackgroundSync) refuses them the same way.
    from replicator.service import Runner

    with Replicator(loads(config.read_text())) as r:
        runner = Runner(r)
        runner.step()
        refused = runner.last.passes
    assert len(refused) == 4, refused
    for p in refused:
        assert p.status == "failed" and "conversations.updated_at" in p.error, p
    assert updated_at(database_url) == {}, "a runner's pass wrote on the server"


@pytest.mark.backends("mariadb")
def test_microseconds_written_on_a_local_reach_a_datetime6_server_and_verify_equal(
    database_url, tmp_path
):
    create(database_url, Conversation.__table__)  # MariaDB: DATETIME(6)
    config = settings(tmp_path, database_url)
    init = run("init", "-c", str(config))
    assert init.returncode == 0, init.stderr
    phone = f"duckdb:///{tmp_path / 'phone.duckdb'}"
    write_on(phone, "phone", "c-1")

    with Replicator(loads(config.read_text())) as r:
        result = r.sync()
        checks = [verify(r.server, r.node(name)) for name in ("phone", "laptop")]

    assert result.ok, [p.error for p in result.passes]
    assert updated_at(database_url) == {"c-1": WRITTEN_AT}
    assert updated_at(phone) == {"c-1": WRITTEN_AT}
    assert updated_at(f"sqlite:///{tmp_path / 'laptop.sqlite'}") == {"c-1": WRITTEN_AT}
    for check in checks:
        assert check.equal and check.tables[0].server_rows == 1, check


@pytest.mark.backends("mariadb")
def test_a_local_keeping_less_than_the_server_passes(database_url, tmp_path):
    server = sa.Table(
        "readings",
        sa.MetaData(),
        sa.Column("reading_id", sa.String(36), primary_key=True),
        sa.Column("taken_at", mysql.DATETIME(fsp=6)),
        sa.Column("value", sa.Double()),
        sa.Column("amount", sa.Numeric(12, 4)),
    )
    create(database_url, server)
    config = settings(tmp_path, database_url)
    phone = sa.create_engine(f"duckdb:///{tmp_path / 'phone.duckdb'}")
    with phone.begin() as conn:  # whole seconds, 4-byte floats, 2 places
        conn.exec_driver_sql(
            "CREATE TABLE readings (reading_id VARCHAR PRIMARY KEY, taken_at TIMESTAMP_S, "
            "value FLOAT, amount DECIMAL(10,2))"
        )
    phone.dispose()

    init = run("init", "-c", str(config))
    assert init.returncode == 0, init.stderr
    with Replicator(loads(config.read_text())) as r:
        result = r.sync()
    assert result.ok and all(p.status == "ok" for p in result.passes), [
        p.error for p in result.passes
    ]


@pytest.mark.parametrize(
    ("server", "local", "lossy"),
    [
        # (server's database, its declared type), (local's), refused?
        (("mariadb", "datetime"), ("duckdb", "timestamp"), True),
        (("mariadb", "datetime(6)"), ("duckdb", "timestamp"), False),
        (("mariadb", "datetime(3)"), ("duckdb", "timestamp_ms"), False),
        (("mariadb", "datetime(3)"), ("sqlite", "datetime"), True),
        (("mariadb", "timestamp(6)"), ("duckdb", "timestamp with time zone"), False),
        (("mariadb", "datetime(6)"), ("duckdb", "timestamp_ns"), False),  # Python sees µs
        (("mariadb", "time"), ("sqlite", "time"), True),
        (("mariadb", "time(6)"), ("duckdb", "time"), False),
        (("mariadb", "float"), ("sqlite", "float"), True),
        (("mariadb", "float"), ("duckdb", "double"), True),
        (("mariadb", "float"), ("duckdb", "float"), False),
        (("mariadb", "double"), ("sqlite", "real"), False),
        (("duckdb", "float"), ("sqlite", "float"), True),
        (("mariadb", "decimal(10, 2)"), ("duckdb", "decimal(12,4)"), True),
        (("mariadb", "decimal(12, 4)"), ("sqlite", "numeric(10, 2)"), False),
        (("mariadb", "decimal(10, 0)"), ("duckdb", "decimal(18,3)"), True),
        (("mariadb", "decimal(10, 2)"), ("sqlite", "numeric"), False),  # unknown: let through
        (("mariadb", "date"), ("duckdb", "timestamp"), False),  # other families: not compared
        (("mariadb", "varchar(10)"), ("sqlite", "text"), False),
        (("mariadb", "datetime"), ("sqlite", ""), False),  # not reflected
    ],
)
def test_only_a_server_keeping_less_than_the_local_is_refused(server, local, lossy):
    found = compare(
        {"t": {"c": server[1]}},
        {"t": {"c": local[1]}},
        server_database=server[0],
        local_database=local[0],
    )
    assert bool(found) == lossy, [str(f) for f in found]
    if lossy:
        assert str(found[0]).startswith(f"t.c: the server ({server[0]}) stores {server[1].upper()}")


def test_a_duckdb_server_of_4_byte_floats_refuses_a_sqlite_local(tmp_path):
    server_url = f"duckdb:///{tmp_path / 'server.duckdb'}"
    local_url = f"sqlite:///{tmp_path / 'phone.sqlite'}"
    scores = sa.Table(
        "scores",
        sa.MetaData(),
        sa.Column("score_id", sa.String(36), primary_key=True),
        sa.Column("value", sa.Float()),  # DuckDB: FLOAT, 4 bytes; SQLite: 8
    )
    for url in (server_url, local_url):
        engine = sa.create_engine(url)
        replicator.migrate(engine)
        scores.metadata.create_all(engine)
        engine.dispose()
    config = loads(
        f'[nodes.server]\nurl = "{server_url}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{local_url}"\nrole = "local"\n'
    )
    with Replicator(config) as r:
        result = r.sync()
    assert [p.status for p in result.passes] == ["failed", "failed"]
    assert "scores.value: the server (duckdb) stores FLOAT, 4-byte floats" in result.passes[0].error
    assert "declare it DOUBLE on the server (in SQLAlchemy: sa.Double())" in result.passes[0].error
