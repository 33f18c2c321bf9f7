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
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateSequence
from sqlalchemy.schema import Sequence as SequenceDDL

from replicator import values
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
)
from replicator.errors import ReplicatorError
from replicator.values import Kind

# A reader waits for a moment with no appender of this process in flight:
# first SETTLE seconds letting them come and go, then at most HOLD_BACK
# seconds holding new ones back (the app's writes wait that long at most).
SETTLE = 0.05
HOLD_BACK = 0.2
# How long a snapshot (a bootstrap, a sink starting over) keeps trying.
SNAPSHOT_WAIT = 30
_APPENDING = "replicator_duckdb_appending"


class _Appenders:
    """The transactions of this process appending to one DuckDB database's
    outbox, and the readers establishing a horizon on it.

    DuckDB runs the transactions of one process concurrently: one may take
    outbox position 10 and commit after another took 11 and committed, and
    a reader that read up to 11 in between has skipped 10 for good (the
    outbox gap, spec invariant 2). So, as MariaDB's writers' row does
    between processes, an appending transaction counts itself in from its
    first append until its commit or rollback has returned, and a reader
    reads the largest position only at a moment when none is in flight
    (holding new ones back for that one query): every position at or below
    it is final.

    A reader first waits for such a moment without holding anyone back
    (appenders come and go; short ones leave gaps between them); only then
    does it hold new appenders back, for at most :data:`HOLD_BACK` seconds,
    so that a transaction left open for long delays the reader (whose pass
    is deferred) but hardly the app. A thread that is appending already is
    never held back: the reader is waiting for it.
    """

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.active = 0
        self.reading = 0
        self.threads: dict[int, int] = {}  # thread -> its appenders in flight

    def begin(self) -> int:
        me = threading.get_ident()
        with self.changed:
            if not self.threads.get(me):
                self.changed.wait_for(lambda: not self.reading)
            self.active += 1
            self.threads[me] = self.threads.get(me, 0) + 1
        return me

    def end(self, thread: int) -> None:
        with self.changed:
            self.active -= 1
            left = self.threads.pop(thread, 1) - 1
            if left:
                self.threads[thread] = left
            self.changed.notify_all()

    def horizon(self, read: Callable[[], int]) -> int | None:
        """``read()`` at a moment when no appender is in flight, or None
        when none came within :data:`SETTLE` plus :data:`HOLD_BACK`
        seconds (a transaction left open: the pass is deferred)."""

        def idle() -> bool:
            return not self.active

        with self.changed:
            if self.threads.get(threading.get_ident()):
                return None  # this thread's own transaction is appending
            if self.changed.wait_for(idle, SETTLE):
                return read()
            self.reading += 1
            try:
                return read() if self.changed.wait_for(idle, HOLD_BACK) else None
            finally:
                self.reading -= 1
                self.changed.notify_all()


_appenders: dict[Any, _Appenders] = {}
_registry = threading.Lock()


def _appenders_of(conn: Connection) -> _Appenders:
    """The one :class:`_Appenders` of ``conn``'s database in this process
    (by file; an in-memory database is one per engine), kept on the engine
    once found: this is on the capture path."""
    engine = conn.engine
    found = getattr(engine, "_replicator_appenders", None)
    if found is not None:
        return found
    database = engine.url.database
    key = (
        str(Path(database).resolve())
        if database and database != ":memory:"
        else ("memory", id(engine))
    )
    with _registry:
        found = getattr(engine, "_replicator_appenders", None)
        if found is None:
            found = _appenders.setdefault(key, _Appenders())
            _count_out_when_done(engine)
            engine._replicator_appenders = found
        return found


def _count_out_when_done(engine: sa.Engine) -> None:
    """Make an appender count itself out once its transaction's commit or
    rollback has returned from the database (SQLAlchemy's transaction
    events come before it), or when its connection is discarded."""
    dialect = engine.dialect
    for name in ("do_commit", "do_rollback"):
        done = getattr(dialect, name)

        def finished(dbapi_connection: Any, done: Callable[[Any], None] = done) -> None:
            try:
                done(dbapi_connection)
            finally:
                _count_out(getattr(dbapi_connection, "info", None))

        setattr(dialect, name, finished)
    for event in ("checkin", "invalidate", "close_detached"):
        sa.event.listen(engine, event, _discarded)


def _discarded(dbapi_connection: Any, record: Any = None, *more: Any) -> None:
    _count_out(getattr(record, "info", None))


def _count_out(info: dict | None) -> None:
    counted = info.pop(_APPENDING, None) if info is not None else None
    if counted is not None:
        appenders, thread = counted
        appenders.end(thread)


class DuckDBDialect(Dialect):
    name = "duckdb"
    # The json extension may not be loadable offline; versions are read, then
    # upserted in one columnar statement (DuckDB has one writing process and
    # aborts a transaction that would overwrite a concurrent write).
    advances_versions_in_sql = False
    deletes_children_first_in_own_transaction = True

    # Reading the outbox in commit order: see _Appenders.

    def guard_append(self, conn: Connection) -> None:
        if _APPENDING in conn.info:
            return  # counted in until this transaction ends
        appenders = _appenders_of(conn)
        conn.info[_APPENDING] = (appenders, appenders.begin())

    def horizon(self, conn: Connection) -> int | None:
        def read() -> int:
            with conn.begin():  # a snapshot taken now, with no appender in flight
                return last_position(conn)

        return _appenders_of(conn).horizon(read)

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

            appenders, deadline = _appenders_of(conn), time.monotonic() + SNAPSHOT_WAIT
            position = appenders.horizon(read)
            while position is None and time.monotonic() < deadline:
                time.sleep(HOLD_BACK)  # let the app's writes through in between
                position = appenders.horizon(read)
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
        update: Collection[str] | None = None,
        unique: bool = False,
    ) -> None:
        # Only the columns given in `update` are set on an existing row:
        # DuckDB carries out an update that sets an indexed column (even to
        # its value) as a delete and an insert, which it refuses for a row
        # that other rows refer to.
        if not rows:
            return
        # In one statement DuckDB keeps the *first* row of a repeated key; the
        # replicator needs the last write, so the batch is compacted first,
        # even when ``unique``: rows under different row keys can still hold
        # keys Python takes as equal (1, 1.0, True).
        rows = last_per_key(table, columns, rows)
        conn.exec_driver_sql(
            f"INSERT INTO {quote(conn, table.name)} {_columnar_select(conn, columns)} "
            f"{self._conflict_clause(conn, table, columns, update)}",
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

    def rounded(self, scale: int) -> Callable[[Any], Any]:
        # duckdb-engine hands a Numeric value to DuckDB as a float, which
        # DuckDB scales in floating point and rounds half away from zero:
        # Decimal("1.005") is stored as 1.00 (1.005 * 100 is 100.4999...),
        # where exact half-up rounding gives 1.01.
        def rounded(value: Any) -> Any:
            if value is None:
                return None
            scaled = Decimal(repr(float(value) * 10**scale))
            return scaled.quantize(Decimal(1), ROUND_HALF_UP).scaleb(-scale)

        return rounded

    def generated_key(self, conn: Connection, table: str) -> str | None:
        # DuckDB's own numbering (a sequence) is kept ahead per batch instead
        # (keep_ahead), never out of leased blocks; and duckdb-engine cannot
        # reflect a primary key (it casts to REGCLASS, which DuckDB lacks).
        return None

    def default_sequence(self, conn: Connection, table: str, column: str) -> str | None:
        default = conn.exec_driver_sql(
            "SELECT column_default FROM information_schema.columns "
            "WHERE table_name = ? AND column_name = ? AND table_schema = current_schema()",
            (table, column),
        ).scalar()
        found = re.match(r"nextval\('([^']+)'\)", default or "")
        return found.group(1) if found else None

    def keep_ahead(self, conn: Connection, sequence: str, key: int) -> None:
        # DuckDB has no ALTER SEQUENCE; setval sets the last value given,
        # backwards too, so it is called only when the sequence's next
        # number (its start while unused) is not above the key. ``sequence``
        # is spelled as in nextval('...'): maybe schema-qualified or quoted.
        # setval is not undone by a rollback: at worst the sequence skips
        # numbers, never hands out a taken one.
        schema, name = _sequence_name(sequence)
        state = conn.exec_driver_sql(
            "SELECT start_value, last_value, increment_by FROM duckdb_sequences() "
            "WHERE lower(sequence_name) = lower(?) "
            "AND lower(schema_name) = lower(COALESCE(?, current_schema()))",
            (name, schema),
        ).first()
        if state is None:
            return  # no such sequence: the default it came from fails by itself
        start, last, step = state
        if step > 0 and key >= (start if last is None else last + step):
            conn.exec_driver_sql("SELECT setval(?, ?)", (sequence, int(key)))

    def declared_types(self, conn: Connection, name: str) -> dict[str, str] | None:
        # duckdb-engine's reflection queries pg_catalog tables DuckDB lacks;
        # the description names each column's type as DuckDB does.
        shape = self.describe(conn, name)
        return None if shape is None else dict(zip(shape.columns, shape.types, strict=False))

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
        unique: list[tuple[str, ...]] = []
        parents = []
        for kind, names_, parent, parent_names in conn.exec_driver_sql(
            "SELECT constraint_type, constraint_column_names, referenced_table, "
            "referenced_column_names FROM duckdb_constraints() "
            "WHERE table_name = ? AND schema_name = current_schema() "
            "AND constraint_type IN ('UNIQUE', 'FOREIGN KEY')",
            (name,),
        ):
            if kind == "UNIQUE":
                unique.append(tuple(names_))
            else:
                parents.append((tuple(names_), parent, tuple(parent_names)))
        for expressions in conn.exec_driver_sql(
            "SELECT expressions FROM duckdb_indexes() "
            "WHERE table_name = ? AND schema_name = current_schema() AND is_unique",
            (name,),
        ).scalars():
            found = _index_columns(expressions, columns)
            if found:
                unique.append(found)
        return TableShape(
            name,
            tuple(columns),
            tuple(key or ()),
            types,
            tuple(dict.fromkeys(u for u in unique if u != tuple(key or ()))),
            tuple(parents),
            (None,) * len(parents),  # DuckDB has no ON DELETE actions
            tuple(_kind(conn, type_) for _, type_ in reflected),
        )


# DuckDB's names of types (as information_schema spells them, lower case,
# arguments dropped) that duckdb-engine's PostgreSQL-based table of type
# names lacks.
_TYPE_NAMES: Mapping[str, type[sa.types.TypeEngine]] = {
    "decimal": sa.Numeric,
    "double": sa.Double,
    "blob": sa.LargeBinary,
    "enum": sa.String,  # an ENUM's values read back as their text
}


def _kind(conn: Connection, spelled: str) -> Kind:
    """The kind of a column of the type DuckDB names ``spelled``
    (``"DECIMAL(10,2)"``), through SQLAlchemy's type for the name."""
    name = spelled.split("(", 1)[0].strip().lower()
    found = _TYPE_NAMES.get(name) or conn.dialect.ischema_names.get(name)
    kind = None if found is None else values.kind_of(found())
    # duckdb-engine returns JSON documents decoded ('"5"' as '5').
    return values.DecodedJson if kind is values.Json else kind


def _index_columns(expressions: Any, columns: Sequence[str]) -> tuple[str, ...] | None:
    """The columns of a unique index given as DuckDB lists its expressions
    (``"[email]"`` or a list of names; quoted or not); None when one is not
    a plain column."""
    parts = (
        expressions if isinstance(expressions, list) else str(expressions).strip("[]").split(",")
    )
    found = tuple(p.strip().strip("'\"") for p in parts)
    return found if found and all(c in columns for c in found) else None


def _sequence_name(spelled: str) -> tuple[str | None, str]:
    """``(schema, name)`` of a sequence spelled ``name``, ``schema.name`` or
    ``catalog.schema.name``, parts maybe double-quoted; schema None when
    not given."""
    parts = [
        quoted.replace('""', '"') if quoted else bare
        for quoted, bare in re.findall(r'"((?:[^"]|"")*)"|([^."]+)', spelled)
    ]
    if not parts:
        return None, spelled
    return (parts[-2] if len(parts) > 1 else None), parts[-1]


def _columnar_select(
    conn: Connection, columns: Sequence[str], constants: Mapping[str, Any] = NO_CONSTANTS
) -> str:
    selected = [literal(conn, value) for value in constants.values()]
    selected += ["unnest(?)"] * len(columns)
    return f"({names(conn, [*constants, *columns])}) SELECT {', '.join(selected)}"


def _by_column(rows: Sequence[Row]) -> tuple[list[Any], ...]:
    return tuple(list(column) for column in zip(*rows, strict=True))


# --- DDL -----------------------------------------------------------------


def sequences_of(table: sa.Table) -> list[SequenceDDL]:
    """The sequences ``table``'s serial columns draw from (see
    :func:`replicator.tables.serial_column`); none for other tables."""
    return [SequenceDDL(c.info["sequence"]) for c in table.columns if "sequence" in c.info]


def with_sequence_defaults(table: sa.Table) -> sa.Table:
    """A copy of ``table`` (in a metadata of its own) whose serial columns
    are ``BIGINT NOT NULL DEFAULT nextval('<sequence>')``, for its DDL.

    duckdb-engine compiles DDL as PostgreSQL does, which makes an
    auto-incrementing BIGINT key ``BIGSERIAL``, a type DuckDB lacks. With a
    server default and no auto-increment, the copy's serial columns compile
    as their type plus the default. The replicator changes only its own
    DDL this way: a ``@compiles(CreateColumn, "duckdb")`` would replace the
    app's own compiler for every table (or be replaced by it). ``table``
    itself is unchanged; a table without serial columns is returned as it is.
    """
    if not sequences_of(table):
        return table
    metadata = sa.MetaData()
    # Its foreign keys' DDL names the tables they refer to: copied along.
    for referred in {fk.column.table for fk in table.foreign_keys} - {table}:
        referred.to_metadata(metadata)
    copy = table.to_metadata(metadata)
    for column in copy.columns:
        sequence = column.info.get("sequence")
        if sequence is not None:
            column.autoincrement = False
            column.server_default = sa.DefaultClause(sa.text(f"nextval('{sequence}')"))
    return copy


@functools.cache
def register_alembic() -> type:
    """Register alembic's implementation for DuckDB (alembic ships none);
    called before migrating, so that alembic is imported only then."""
    from alembic.ddl.impl import DefaultImpl

    class DuckDBImpl(DefaultImpl):
        """Defining the class registers it for the ``duckdb`` dialect.
        Creating a table first creates the sequences its serial columns
        draw from, then the table with those columns defaulting to them
        (:func:`with_sequence_defaults`)."""

        __dialect__ = "duckdb"

        def create_table(self, table: sa.Table, **kw: Any) -> None:
            for sequence in sequences_of(table):
                self._exec(CreateSequence(sequence, if_not_exists=True))
            super().create_table(with_sequence_defaults(table), **kw)

    return DuckDBImpl
