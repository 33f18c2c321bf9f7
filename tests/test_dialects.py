"""The per-database bulk paths, one contract for every backend."""

from __future__ import annotations

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
