"""The node is where driver exceptions become the project's (see the table in
:mod:`replicator.node`): what SQLAlchemy raises escaping ``Node.connect`` or
``Node.begin`` leaves as one of :mod:`replicator.errors`, from the driver's
exception, saying what :func:`replicator.errors.describe` said of it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from replicator.errors import (
    NOT_INITIALIZED,
    ConnectivityError,
    DatabaseError,
    NotInitializedError,
    ReplicatorError,
    RowRefusedError,
    SchemaError,
    describe,
)
from replicator.node import Node


@pytest.fixture
def node(database_url: str) -> Iterator[Node]:
    found = Node("server", url=database_url, role="server")
    with found.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE labels (id INTEGER PRIMARY KEY, name VARCHAR(20))")
        conn.exec_driver_sql("INSERT INTO labels (id, name) VALUES (1, 'mesa')")
    yield found
    found.dispose()


def _raised(node: Node, statement: str) -> DatabaseError:
    with pytest.raises(DatabaseError) as raised, node.begin() as conn:
        conn.exec_driver_sql(statement)
    assert isinstance(raised.value.__cause__, SQLAlchemyError), repr(raised.value.__cause__)
    return raised.value


def test_a_missing_replicator_table_is_not_initialized(node):
    error = _raised(node, "SELECT * FROM replicator_outbox")
    assert isinstance(error, NotInitializedError) and isinstance(error, SchemaError)
    assert str(error) == describe(error.__cause__) == NOT_INITIALIZED


def test_a_refused_row_says_why_as_describe_did(node):
    error = _raised(node, "INSERT INTO labels (id, name) VALUES (1, 'again')")
    assert isinstance(error, RowRefusedError), type(error)
    assert error.reason == "constraint_violation"
    assert str(error) == describe(error.__cause__), str(error)


def test_any_other_driver_error_is_a_database_error_with_describes_text(node):
    error = _raised(node, "SELECT no_such_column FROM labels")
    assert type(error) is DatabaseError
    assert not isinstance(error, ConnectivityError | SchemaError)
    assert str(error) == describe(error.__cause__), str(error)


def test_the_projects_own_errors_pass_the_boundary_unchanged(node):
    raised = ReplicatorError("mine")
    with pytest.raises(ReplicatorError) as caught, node.connect():
        raise raised
    assert caught.value is raised


def test_a_driver_error_caught_inside_the_block_stays_the_drivers(node):
    """Code that reacts before its transaction ends sees SQLAlchemy's error."""
    with node.connect() as conn:
        with pytest.raises(IntegrityError), conn.begin():
            conn.exec_driver_sql("INSERT INTO labels (id, name) VALUES (1, 'again')")
        assert conn.execute(sa.text("SELECT count(*) FROM labels")).scalar() == 1


@pytest.mark.backends("sqlite")
def test_a_refusal_at_commit_is_translated_too(database_url):
    node = Node("server", url=database_url, role="server")
    with node.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE parents (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql(
            "CREATE TABLE children (id INTEGER, parent INTEGER REFERENCES parents)"
        )
    with pytest.raises(RowRefusedError) as raised, node.begin() as conn:
        conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")  # checked at the commit
        conn.exec_driver_sql("INSERT INTO children (id, parent) VALUES (1, 7)")
    assert raised.value.reason == "constraint_violation"
    node.dispose()


def test_an_unreachable_node_is_a_connectivity_error_not_a_database_error(tmp_path):
    node = Node("phone", url=f"sqlite:///{tmp_path / 'missing' / 'phone.sqlite'}")
    unreachable = pytest.raises(ConnectivityError, match=r"node phone \(.*\) cannot be reached")
    with unreachable as raised, node.connect():
        pass
    assert not isinstance(raised.value, DatabaseError)


def test_the_drivers_own_error_from_a_raw_connection_is_translated_too(node):
    """A call on the raw DB-API connection raises the driver's exception,
    unwrapped by SQLAlchemy: it leaves the block as the project's too."""
    with pytest.raises(DatabaseError) as raised, node.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute("SELECT no_such_column FROM labels")
    assert not isinstance(raised.value.__cause__, SQLAlchemyError), repr(raised.value.__cause__)
    assert not isinstance(raised.value, ConnectivityError)
    assert str(raised.value) == describe(raised.value.__cause__)


@pytest.mark.backends("mariadb")
def test_a_connection_cut_under_a_raw_call_is_a_lost_connection(node):
    """MariaDB's horizon sets the isolation level on the raw connection: a
    network cut there comes out as pymysql's own OperationalError."""
    with pytest.raises(ConnectivityError) as raised, node.connect() as conn:
        raw = conn.connection.dbapi_connection
        with node.get_engine().connect() as killer:
            killer.exec_driver_sql(f"KILL {raw.thread_id()}")
        raw.cursor().execute("SELECT 1")
    assert isinstance(raised.value, DatabaseError), type(raised.value)
