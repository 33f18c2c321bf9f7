"""DuckDB through duckdb-engine.

Row-wise ``executemany`` runs at about a thousand rows per second on DuckDB,
so every bulk path here is columnar: one list per column, unnested in a single
``INSERT ... SELECT`` (hundreds of thousands of rows per second). DuckDB
also has no auto-increment (a sequence default stands in), no
``SELECT ... FOR UPDATE`` (it has one writing process and detects
write-write conflicts itself), and alembic has no implementation for it
(:class:`DuckDBImpl` below registers one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic.ddl.impl import DefaultImpl
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateColumn, CreateSequence
from sqlalchemy.schema import Sequence as SequenceDDL

from replicator.dialects.base import Dialect, last_per_key


class DuckDBDialect(Dialect):
    name = "duckdb"

    def insert_rows(
        self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
    ) -> None:
        if rows:
            columns = list(rows[0])
            sql = f"INSERT INTO {_quote(conn, table.name)} {_columnar_select(conn, columns)}"
            conn.exec_driver_sql(sql, _columns_of(rows, columns))

    def upsert_rows(
        self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
    ) -> None:
        if not rows:
            return
        # In one statement DuckDB keeps the *first* row of a repeated key; the
        # replicator needs the last write, so the batch is compacted first.
        rows = last_per_key(table, rows)
        columns = list(rows[0])
        key = [c.name for c in table.primary_key.columns]
        updates = ", ".join(
            f"{_quote(conn, c)} = excluded.{_quote(conn, c)}" for c in columns if c not in key
        )
        sql = (
            f"INSERT INTO {_quote(conn, table.name)} {_columnar_select(conn, columns)} "
            f"ON CONFLICT ({', '.join(_quote(conn, c) for c in key)}) DO UPDATE SET {updates}"
        )
        conn.exec_driver_sql(sql, _columns_of(rows, columns))


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def _columnar_select(conn: Connection, columns: list[str]) -> str:
    names = ", ".join(_quote(conn, c) for c in columns)
    return f"({names}) SELECT {', '.join('unnest(?)' for _ in columns)}"


def _columns_of(rows: Sequence[dict[str, Any]], columns: list[str]) -> tuple[list[Any], ...]:
    return tuple([row[c] for row in rows] for c in columns)


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


class DuckDBImpl(DefaultImpl):
    """Alembic's implementation for DuckDB (alembic ships none).

    Defining the class registers it for the ``duckdb`` dialect. Creating a
    table first creates the sequences its serial columns draw from.
    """

    __dialect__ = "duckdb"

    def create_table(self, table: sa.Table, **kw: Any) -> None:
        for sequence in sequences_of(table):
            self._exec(CreateSequence(sequence, if_not_exists=True))
        super().create_table(table, **kw)
