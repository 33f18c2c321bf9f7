"""DuckDB through duckdb-engine.

Row-wise ``executemany`` runs at about a thousand rows per second on DuckDB,
so every bulk path here is columnar: one list per column, unnested in a single
``INSERT ... SELECT`` (hundreds of thousands of rows per second). DuckDB
also has no auto-increment (a sequence default stands in), no
``SELECT ... FOR UPDATE`` (it has one writing process and detects
write-write conflicts itself), and alembic has no implementation for it
(:func:`register_alembic` below registers one).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateColumn, CreateSequence
from sqlalchemy.schema import Sequence as SequenceDDL

from replicator.dialects.base import (
    NO_CONSTANTS,
    Dialect,
    Row,
    TableShape,
    last_per_key,
    literal,
    names,
    quote,
    update_list,
)


class DuckDBDialect(Dialect):
    name = "duckdb"
    # The json extension may not be loadable offline; versions are read, then
    # upserted in one columnar statement (DuckDB has one writing process and
    # aborts a transaction that would overwrite a concurrent write).
    advances_versions_in_sql = False

    def insert_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        constants: Mapping[str, Any] = NO_CONSTANTS,
        hoist: Sequence[str] = (),
    ) -> None:
        if rows:
            # Columnar: a list per column costs the same uniform or not.
            conn.exec_driver_sql(
                f"INSERT INTO {quote(conn, table.name)} "
                f"{_columnar_select(conn, columns, constants)}",
                _by_column(rows),
            )

    # One list parameter per column, joined against: a long IN (?, ?, ...)
    # list is slow, and every statement costs milliseconds.
    in_chunk = 1_000_000
    columnar = True

    def where_in(
        self, conn: Connection, columns: Sequence[str], values: Sequence[Row]
    ) -> tuple[str, tuple]:
        unnested = ", ".join(["unnest(?)"] * len(columns))
        return f"({names(conn, columns)}) IN (SELECT {unnested})", _by_column(values)

    def upsert_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        hoist: Sequence[str] = (),
    ) -> None:
        if not rows:
            return
        # In one statement DuckDB keeps the *first* row of a repeated key; the
        # replicator needs the last write, so the batch is compacted first.
        rows = last_per_key(table, columns, rows)
        conn.exec_driver_sql(
            f"INSERT INTO {quote(conn, table.name)} {_columnar_select(conn, columns)} "
            f"{self._on_conflict(conn, table)} {update_list(conn, table, columns, self.incoming)}",
            _by_column(rows),
        )

    def delete_rows(
        self, conn: Connection, table: sa.Table, key_columns: Sequence[str], keys: Sequence[Row]
    ) -> None:
        if keys:
            unnested = ", ".join(["unnest(?)"] * len(key_columns))
            conn.exec_driver_sql(
                f"DELETE FROM {quote(conn, table.name)} WHERE ({names(conn, key_columns)}) "
                f"IN (SELECT {unnested})",
                _by_column(keys),
            )

    def describe(self, conn: Connection, name: str) -> TableShape | None:
        # duckdb-engine's reflection queries pg_catalog tables DuckDB lacks.
        reflected = conn.exec_driver_sql(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? AND table_schema = current_schema() "
            "ORDER BY ordinal_position",
            (name,),
        ).all()
        if not reflected:
            return None
        columns = [column for column, _ in reflected]
        key = conn.exec_driver_sql(
            "SELECT constraint_column_names FROM duckdb_constraints() "
            "WHERE table_name = ? AND schema_name = current_schema() "
            "AND constraint_type = 'PRIMARY KEY'",
            (name,),
        ).scalar()
        types = tuple(type_.lower() for _, type_ in reflected)
        return TableShape(name, tuple(columns), tuple(key or ()), types)


def _columnar_select(
    conn: Connection, columns: Sequence[str], constants: Mapping[str, Any] = NO_CONSTANTS
) -> str:
    selected = [literal(conn, value) for value in constants.values()]
    selected += ["unnest(?)"] * len(columns)
    return f"({names(conn, [*constants, *columns])}) SELECT {', '.join(selected)}"


def _by_column(rows: Sequence[Row]) -> tuple[list[Any], ...]:
    return tuple(list(column) for column in zip(*rows, strict=True))


# --- DDL -----------------------------------------------------------------


@compiles(CreateColumn, "duckdb")
def _create_column_with_sequence(element: CreateColumn, compiler: Any, **kw: Any) -> str:
    """Render a replicator serial column as ``BIGINT DEFAULT nextval(...)``.

    duckdb-engine inherits PostgreSQL's ``BIGSERIAL``, which DuckDB lacks.
    """
    column = element.element
    sequence = column.info.get("sequence")
    if sequence is None:
        return compiler.visit_create_column(element, **kw)
    name = compiler.preparer.format_column(column)
    return f"{name} BIGINT NOT NULL DEFAULT nextval('{sequence}')"


def sequences_of(table: sa.Table) -> list[SequenceDDL]:
    return [SequenceDDL(c.info["sequence"]) for c in table.columns if "sequence" in c.info]


@functools.cache
def register_alembic() -> type:
    """Register alembic's implementation for DuckDB (alembic ships none);
    called before migrating, so that alembic is imported only then."""
    from alembic.ddl.impl import DefaultImpl

    class DuckDBImpl(DefaultImpl):
        """Defining the class registers it for the ``duckdb`` dialect.
        Creating a table first creates the sequences its serial columns
        draw from."""

        __dialect__ = "duckdb"

        def create_table(self, table: sa.Table, **kw: Any) -> None:
            for sequence in sequences_of(table):
                self._exec(CreateSequence(sequence, if_not_exists=True))
            super().create_table(table, **kw)

    return DuckDBImpl
