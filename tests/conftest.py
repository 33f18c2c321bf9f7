"""Real databases for the tests: SQLite and DuckDB in a temporary directory
always, MariaDB when ``REPLICATOR_TEST_MARIADB_URL`` names a server (CI sets
it; the tests then fail loudly if the server is unreachable)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

import replicator

MARIADB_ENV = "REPLICATOR_TEST_MARIADB_URL"
BACKENDS = ["sqlite", "duckdb", "mariadb"]


def mariadb_server_url() -> str:
    url = os.environ.get(MARIADB_ENV)
    if not url:
        pytest.skip(
            f"MariaDB tests need {MARIADB_ENV} (e.g. mysql+pymysql://root@127.0.0.1:3306/test)"
        )
    return url


def waits_for_a_lock(engine: Engine, thread: threading.Thread, seconds: float = 30.0) -> bool:
    """Whether ``thread`` comes to wait for an InnoDB lock in ``engine``'s
    MariaDB database before it ends: True as soon as a transaction of that
    database is in LOCK WAIT, False when the thread ends first. Nothing is
    assumed about how long the thread takes to get there; ``seconds`` only
    bounds a hang (the test fails)."""
    query = sa.text(
        "SELECT count(*) FROM information_schema.INNODB_TRX t "
        "JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id "
        "WHERE t.trx_state = 'LOCK WAIT' AND p.DB = DATABASE()"
    )
    deadline = time.monotonic() + seconds
    with engine.connect() as conn:
        while thread.is_alive():
            waiting = conn.execute(query).scalar()
            conn.rollback()
            if waiting:
                return True
            assert time.monotonic() < deadline, f"{thread.name}: no lock wait, no end in {seconds}s"
            # A lock wait shows only in the server's tables: polled, until the
            # deadline or the thread's end (which ends the pause at once).
            # InnoDB refreshes these tables only when they were last read
            # more than 0.1 s ago: asking more often would see no change.
            thread.join(0.15)
    return False


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of the backend named by ``request.param``."""
    yield from _fresh_database(request.param, tmp_path)


def _fresh_database(backend: str, tmp_path: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'node.sqlite'}"
    elif backend == "duckdb":
        yield f"duckdb:///{tmp_path / 'node.duckdb'}"
    elif backend == "mariadb":
        server = make_url(mariadb_server_url())
        name = f"replicator_test_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(server)
        with admin.begin() as conn:  # fails loudly when the server is unreachable
            conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.begin() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            admin.dispose()
    else:
        raise ValueError(backend)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Contract tests ask for `database_url` (or a fixture built on it) and run
    # once per backend; MariaDB runs are marked so `-m "not mariadb"` works.
    if "database_url" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("backends")
        params = [
            pytest.param(b, id=b, marks=[pytest.mark.mariadb] if b == "mariadb" else [])
            for b in (only.args if only else BACKENDS)
        ]
        metafunc.parametrize("database_url", params, indirect=True)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def node() -> str:
    """The node name the `app` fixture captures as (a test module may override it)."""
    return "local"


@pytest.fixture
def app(engine: Engine, node: str) -> Iterator[sessionmaker[Session]]:
    """A session factory on a migrated database with the test models, captured."""
    from tests.models import Base

    replicator.migrate(engine)
    Base.metadata.create_all(engine)
    factory = sessionmaker(bind=engine)
    handle = replicator.capture(factory, node=node)
    yield factory
    handle.stop()


@pytest.fixture
def pair(database_url: str, tmp_path: Path):
    """A server on the backend under test and a local SQLite node, "phone"."""
    from tests.cluster import member

    server = member("server", database_url, role="server")
    local = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    yield server, local
    local.close()
    server.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Say plainly whether the MariaDB tests ran (CI must show that they did)."""
    counts = {
        outcome: sum(1 for r in terminalreporter.stats.get(outcome, []) if "[mariadb" in r.nodeid)
        for outcome in ("passed", "failed", "error", "skipped")
    }
    if any(counts.values()):
        terminalreporter.write_line(
            "MariaDB tests: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
        )


def pytest_sessionfinish(session, exitstatus) -> None:
    # Free DuckDB connections still referenced from reference cycles before
    # the interpreter shuts down; otherwise duckdb's bindings print "leaked"
    # warnings at exit.
    import gc

    gc.collect()
