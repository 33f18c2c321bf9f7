"""The per-database bulk paths, one contract for every backend."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

import replicator
from replicator.dialects import for_connection
from replicator.tables import outbox, row_versions


def test_constants_are_quoted_safely(engine):
    replicator.migrate(engine)
    awkward = "it's a \\ back'slash"
    with engine.begin() as conn:
        for_connection(conn).insert_rows(
            conn,
            outbox,
            ("row_key", "hlc", "payload"),
            [("[1]", 1, b"\x00'\\"), ("[2]", 2, b"")],
            {"origin": awkward, "table_name": "t"},
        )
        rows = conn.execute(
            sa.select(
                outbox.c.origin, outbox.c.table_name, outbox.c.row_key, outbox.c.payload
            ).order_by(outbox.c.position)
        ).all()
    assert [tuple(r) for r in rows] == [
        (awkward, "t", "[1]", b"\x00'\\"),
        (awkward, "t", "[2]", b""),
    ]


def test_upsert_keeps_the_last_row_of_a_repeated_key(engine):
    replicator.migrate(engine)
    columns = ("table_name", "row_key", "version", "hlc", "origin", "deleted")
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.upsert_rows(conn, row_versions, columns, [("t", "[1]", "{}", 1, "a", False)])
        dialect.upsert_rows(
            conn,
            row_versions,
            columns,
            [("t", "[1]", "{}", 2, "b", False), ("t", "[1]", "{}", 3, "c", True)],
        )
        rows = conn.execute(sa.select(row_versions.c.hlc, row_versions.c.origin)).all()
    assert [tuple(r) for r in rows] == [(3, "c")]


def test_insert_of_more_rows_than_one_statement_holds(engine):
    replicator.migrate(engine)
    rows = [(f"[{i}]", i, b"x") for i in range(2500)]
    with engine.begin() as conn:
        for_connection(conn).insert_rows(
            conn, outbox, ("row_key", "hlc", "payload"), rows, {"origin": "a", "table_name": "t"}
        )
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar() == 2500


# A table whose key the database numbers itself, as each database spells it.
NUMBERED = {
    "sqlite": ["CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)"],
    "mariadb": ["CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64))"],
    "duckdb": [
        "CREATE SEQUENCE items_id_seq",
        "CREATE TABLE items (id BIGINT PRIMARY KEY DEFAULT nextval('items_id_seq'), name VARCHAR)",
    ],
}


def plain_insert(engine: sa.Engine, name: str) -> int:
    """Insert a row without a key; the key the database gave it."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO items (name) VALUES ('{name}')")
        return conn.exec_driver_sql(f"SELECT id FROM items WHERE name = '{name}'").scalar_one()


def test_the_databases_own_keys_stay_ahead_of_written_keys(engine):
    """After rows with explicit keys are written (and the key's sequence, if
    it has one, kept ahead of them), a row the database numbers itself gets
    a larger key: AUTO_INCREMENT and AUTOINCREMENT move by themselves."""
    dialect = for_connection(engine)
    with engine.begin() as conn:
        for statement in NUMBERED[dialect.name]:
            conn.exec_driver_sql(statement)
    with engine.begin() as conn:
        table = dialect.describe(conn, "items").table()
        dialect.insert_rows(conn, table, ("id", "name"), [(1, "a"), (2, "b")])
        dialect.upsert_rows(conn, table, ("id", "name"), [(2, "B"), (7, "c")])
        sequence = dialect.default_sequence(conn, "items", "id")
        assert (sequence is not None) == (dialect.name == "duckdb"), sequence
        if sequence is not None:
            dialect.keep_ahead(conn, sequence, 7)
    assert plain_insert(engine, "plain") == 8


@pytest.mark.backends("duckdb")
def test_keep_ahead_never_moves_a_sequence_back(engine):
    with engine.begin() as conn:
        for statement in NUMBERED["duckdb"]:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("CREATE SEQUENCE unused_seq START 1000")
    assert [plain_insert(engine, n) for n in "abc"] == [1, 2, 3]
    dialect = for_connection(engine)
    with engine.begin() as conn:
        dialect.keep_ahead(conn, "items_id_seq", 2)  # below the next number (4)
        dialect.keep_ahead(conn, "unused_seq", 5)  # below its start
        assert conn.exec_driver_sql("SELECT nextval('unused_seq')").scalar_one() == 1000
    assert plain_insert(engine, "d") == 4


@pytest.mark.backends("duckdb")
def test_keep_ahead_finds_a_sequence_spelled_with_schema_and_quotes(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA app")
        conn.exec_driver_sql('CREATE SEQUENCE app."Item Ids" START 100')
        conn.exec_driver_sql(
            "CREATE TABLE items (id BIGINT PRIMARY KEY "
            "DEFAULT nextval('app.\"Item Ids\"'), name VARCHAR)"
        )
    assert plain_insert(engine, "a") == 100
    dialect = for_connection(engine)
    with engine.begin() as conn:
        sequence = dialect.default_sequence(conn, "items", "id")
        assert sequence == 'app."Item Ids"'
        dialect.keep_ahead(conn, sequence, 50)  # taken long ago: stays at 101
    assert plain_insert(engine, "b") == 101
    with engine.begin() as conn:
        table = dialect.describe(conn, "items").table()
        dialect.insert_rows(conn, table, ("id", "name"), [(300, "c")])
        dialect.keep_ahead(conn, sequence, 300)
    assert plain_insert(engine, "d") == 301
