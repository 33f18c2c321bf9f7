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
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
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
    last_position,
    literal,
    names,
    quote,
    update_list,
)
from replicator.errors import ReplicatorError

# How long a reader waits for the outbox's appenders in this process before
# it settles for the horizon it already has (seconds), as on MariaDB.
HORIZON_WAIT = 2
# How long a snapshot (a bootstrap, a sink starting over) waits for them.
SNAPSHOT_WAIT = 30
_APPENDING = "replicator_duckdb_appending"


class _Appenders:
    """The transactions of this process appending to one DuckDB database's
    outbox, and the readers establishing a horizon on it.

    DuckDB runs the transactions of one process concurrently: one may take
    outbox position 10 and commit after another took 11 and committed, and
    a reader that read up to 11 in between has skipped 10 for good (the
    outbox gap, spec invariant 2). So, as MariaDB's writers' row does
    between processes, appenders count themselves in from their first
    append until their connection goes back to the pool (after its commit
    or rollback); a reader holds new appenders back, waits until none is
    in flight, and reads the largest position: every position at or below
    it is final. Appenders never wait for each other, only for a reader's
    one query.
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.active = 0
        self.reading = 0

    def begin(self) -> None:
        with self.changed:
            self.changed.wait_for(lambda: not self.reading)
            self.active += 1

    def end(self) -> None:
        with self.changed:
            self.active -= 1
            self.changed.notify_all()

    def horizon(self, read: Callable[[], int], timeout: float) -> int | None:
        with self.changed:
            self.reading += 1
            try:
                # Appenders on this very thread would never end: give up then.
                if not self.changed.wait_for(lambda: not self.active, timeout):
                    return None
                return read()
            finally:
                self.reading -= 1
                self.changed.notify_all()


_appenders: dict[Any, _Appenders] = {}
_registry = threading.Lock()


def _appenders_of(conn: Connection) -> _Appenders:
    """The one :class:`_Appenders` of ``conn``'s database in this process
    (by file; an in-memory database is one per engine)."""
    engine = conn.engine
    database = engine.url.database
    key = (
        str(Path(database).resolve())
        if database and database != ":memory:"
        else ("memory", id(engine))
    )
    with _registry:
        if key not in _appenders:
            _appenders[key] = _Appenders()
        if not getattr(engine, "_replicator_appenders", False):
            # An appender counts itself out when its connection is returned
            # to the pool (or discarded), after its transaction ended.
            sa.event.listen(engine, "checkin", _appended)
            sa.event.listen(engine, "invalidate", _appended)
            engine._replicator_appenders = True
        return _appenders[key]


def _appended(dbapi_connection: Any, record: Any, *error: Any) -> None:
    appenders = record.info.pop(_APPENDING, None) if record is not None else None
    if appenders is not None:
        appenders.end()


class DuckDBDialect(Dialect):
    name = "duckdb"
    # The json extension may not be loadable offline; versions are read, then
    # upserted in one columnar statement (DuckDB has one writing process and
    # aborts a transaction that would overwrite a concurrent write).
    advances_versions_in_sql = False

    # Reading the outbox in commit order: see _Appenders.

    def guard_append(self, conn: Connection) -> None:
        if _APPENDING in conn.info:
            return  # counted in until the connection goes back to the pool
        appenders = _appenders_of(conn)
        appenders.begin()
        conn.info[_APPENDING] = appenders

    def horizon(self, conn: Connection) -> int | None:
        def read() -> int:
            with conn.begin():  # a snapshot taken now, with no appender in flight
                return last_position(conn)

        return _appenders_of(conn).horizon(read, HORIZON_WAIT)

    @contextmanager
    def snapshot(self, engine: sa.Engine) -> Iterator[tuple[Connection, int]]:
        with engine.connect() as conn:
            transaction = None

            def read() -> int:
                nonlocal transaction
                # The transaction's first statement, with no appender in
                # flight: its snapshot holds every event up to the position.
                transaction = conn.begin()
                return last_position(conn)

            position = _appenders_of(conn).horizon(read, SNAPSHOT_WAIT)
            if position is None or transaction is None:
                raise ReplicatorError(
                    f"a snapshot of {engine.url.database}: this process's writers kept "
                    f"appending to its outbox for {SNAPSHOT_WAIT} s; try again"
                )
            with transaction:
                yield conn, position

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
