"""The replicator's DuckDB DDL changes only the replicator's own tables:
importing it registers no SQLAlchemy compiler, and an app's own
``@compiles(CreateColumn, "duckdb")`` neither replaces it nor is replaced."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb_engine
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateColumn, CreateSequence, CreateTable

import replicator
from replicator.dialects.duckdb import with_sequence_defaults
from replicator.tables import outbox, review_items, sync_runs

SERIAL = {table.name: table for table in (outbox, review_items, sync_runs)}
_REGISTRY = ("_compiler_dispatch", "_compiler_dispatcher")


@contextmanager
def app_compiler(create_column: Callable[..., str]) -> Iterator[None]:
    """``create_column`` registered as the app's DuckDB compiler of
    :class:`CreateColumn` while the block runs; the registry as it was
    afterwards (sqlalchemy.ext.compiler keeps it on the class itself)."""
    saved = {
        name: CreateColumn.__dict__[name] for name in _REGISTRY if name in CreateColumn.__dict__
    }
    dispatcher = saved.get("_compiler_dispatcher")
    specs = dict(dispatcher.specs) if dispatcher is not None else None
    try:
        compiles(CreateColumn, "duckdb")(create_column)
        yield
    finally:
        for name in _REGISTRY:
            if name in saved:
                setattr(CreateColumn, name, saved[name])
            elif name in CreateColumn.__dict__:
                delattr(CreateColumn, name)
        if dispatcher is not None and specs is not None:
            dispatcher.specs.clear()
            dispatcher.specs.update(specs)


def duckdb_compilers() -> dict[str, Any]:
    """The DuckDB compiler of :class:`CreateColumn` registered through
    sqlalchemy.ext.compiler, if any, as ``{"duckdb": function}``."""
    dispatcher = CreateColumn.__dict__.get("_compiler_dispatcher")
    specs = {} if dispatcher is None else dispatcher.specs
    return {k: v for k, v in specs.items() if k == "duckdb"}


def defaults(conn: sa.Connection, table: str) -> dict[str, str | None]:
    return dict(
        conn.exec_driver_sql(
            "SELECT column_name, column_default FROM information_schema.columns "
            "WHERE table_name = ?",
            (table,),
        ).all()
    )


def test_importing_and_migrating_registers_no_duckdb_compiler(tmp_path: Path):
    engine = sa.create_engine(f"duckdb:///{tmp_path / 'app.duckdb'}")
    try:
        replicator.migrate(engine)
    finally:
        engine.dispose()
    assert duckdb_compilers() == {}, "the replicator registered a CreateColumn compiler for DuckDB"
    # An app column the replicator's DDL would recognise compiles as plain
    # SQLAlchemy and duckdb-engine compile it.
    app_table = sa.Table(
        "tickets",
        sa.MetaData(),
        sa.Column("id", sa.BigInteger, primary_key=True, info={"sequence": "tickets_id_seq"}),
    )
    ddl = str(CreateTable(app_table).compile(dialect=engine.dialect))
    assert "id BIGSERIAL NOT NULL" in ddl, ddl
    assert "nextval" not in ddl, ddl


def test_an_apps_own_duckdb_column_compiler_and_the_migrations_coexist(tmp_path: Path):
    """The app numbers its own keys from sequences, as the replicator does,
    with a compiler of its own; both kinds of tables get their defaults."""
    app_defaults: list[str] = []

    def app_create_column(element: CreateColumn, compiler: Any, **kw: Any) -> str:
        column = element.element
        sequence = column.info.get("app_sequence")
        if sequence is None:
            return compiler.visit_create_column(element, **kw)
        app_defaults.append(column.name)
        name = compiler.preparer.format_column(column)
        return f"{name} BIGINT NOT NULL DEFAULT nextval('{sequence}')"

    metadata = sa.MetaData()
    tickets = sa.Table(
        "tickets",
        metadata,
        sa.Column("id", sa.BigInteger, primary_key=True, info={"app_sequence": "tickets_seq"}),
        sa.Column("title", sa.String(64), nullable=False),
    )
    engine = sa.create_engine(f"duckdb:///{tmp_path / 'app.duckdb'}")
    try:
        with app_compiler(app_create_column):
            assert replicator.migrate(engine) == "created"
            with engine.begin() as conn:
                conn.execute(CreateSequence(sa.Sequence("tickets_seq")))
            metadata.create_all(engine)
        assert app_defaults == ["id"], "the app's compiler did not compile its own table"
        with engine.begin() as conn:
            for name, table in SERIAL.items():
                (column,) = table.primary_key.columns
                expected = f"nextval('{column.info['sequence']}')"
                assert defaults(conn, name)[column.name] == expected, name
            assert defaults(conn, "tickets")["id"] == "nextval('tickets_seq')"
            conn.execute(tickets.insert().values(title="first"))
            conn.execute(tickets.insert().values(title="second"))
            assert conn.execute(sa.select(tickets.c.id).order_by(tickets.c.id)).scalars().all() == [
                1,
                2,
            ]
    finally:
        engine.dispose()
    assert duckdb_compilers() == {}, "the app's compiler was left registered"


def test_the_ddl_copy_leaves_the_replicators_tables_as_they_are():
    copy = with_sequence_defaults(outbox)
    assert copy is not outbox and copy.c.position.server_default is not None
    assert outbox.c.position.server_default is None
    assert outbox.autoincrement_column is outbox.c.position
    table = sa.Table("plain", sa.MetaData(), sa.Column("k", sa.Integer, primary_key=True))
    assert with_sequence_defaults(table) is table


@pytest.mark.parametrize("table", sorted(SERIAL))
def test_a_serial_column_compiles_as_a_bigint_defaulting_to_its_sequence(table: str):
    copy = with_sequence_defaults(SERIAL[table])
    ddl = str(CreateTable(copy).compile(dialect=duckdb_engine.Dialect()))
    (column,) = SERIAL[table].primary_key.columns
    sequence = column.info["sequence"]
    assert f"{column.name} BIGINT DEFAULT nextval('{sequence}') NOT NULL" in ddl, ddl
