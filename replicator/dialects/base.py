"""The interface every dialect module implements.

A dialect describes how its database spells an upsert (the conflict clause,
the incoming row, a few SQL functions); the statements themselves are built
here once. DuckDB replaces the row-wise statements with columnar ones.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import functools
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from replicator import locks, values
from replicator.locks import Lock
from replicator.values import Kind

Row = tuple[Any, ...]


class TableShape(NamedTuple):
    """An app table as a target database has it."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    #: Each column's declared type as the database names it, lower case
    #: (``"varchar(64)"``, ``"double"``); ``""`` where unknown.
    types: tuple[str, ...] = ()
    #: The column sets of its unique constraints and unique indexes, the
    #: primary key aside.
    unique: tuple[tuple[str, ...], ...] = ()
    #: Its foreign keys: ``(columns, parent table, parent's columns)``.
    parents: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = ()
    #: Each foreign key's ``ON DELETE`` action, upper case (``"CASCADE"``,
    #: ``"SET NULL"``), or None where a parent's delete is refused while rows
    #: refer to it; in the order of :attr:`parents`.
    on_delete: tuple[str | None, ...] = ()
    #: Each column's kind: the Python type of its values (see
    #: :mod:`replicator.values`); None where its type does not say.
    kinds: tuple[Kind, ...] = ()

    @property
    def integer_key(self) -> str | None:
        """The key column when the key is a single integer column, else None."""
        if len(self.key) == 1 and self.kind(self.key[0]) is int:
            return self.key[0]
        return None

    def declared(self, column: str) -> str:
        """``column``'s declared type (``""`` when unknown)."""
        at = self.columns.index(column)
        return self.types[at] if at < len(self.types) else ""

    def kind(self, column: str) -> Kind:
        """``column``'s kind (None when unknown or not a column)."""
        return _kinds_by_column(self).get(column)

    def kinds_held(self, row: Mapping[str, Any] | None) -> dict[str, Kind]:
        """Each column's kind, given ``row``: values an event holds for the
        row (see :func:`replicator.values.kind_held`)."""
        row = row or {}
        return {c: values.kind_held(self.kind(c), row.get(c)) for c in self.columns}

    def typed(self, row: Mapping[str, Any], held: Mapping[str, Any] | None = None) -> dict:
        """``row`` as read from the database, its values as events carry
        them (``held``: values an event holds for the row, whose types win;
        see :meth:`kinds_held`)."""
        return values.typed_row(row, self.kinds_held(held))

    def table(self) -> sa.Table:
        """A bare :class:`sa.Table` of this shape, for the bulk statements
        (built once per shape, not once per batch)."""
        return _bare_table(self)


NO_CONSTANTS: Mapping[str, Any] = {}

#: Statements kept by kind and shape (see _kept).
_statements: dict[tuple, Any] = {}

#: The constants' types whose equal values a statement spells alike (unlike
#: 0.0 and -0.0, or two Decimals), so that a kept statement may serve them.
_KEYED_CONSTANTS = frozenset({str, int, bool, type(None)})


def _kept(
    kind: tuple,
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    constants: Mapping[str, Any],
    build: Callable[[], Any],
) -> Any:
    """The statement ``build()`` makes, kept per ``kind`` and shape (see
    :func:`_statement_key`): capture writes after every flush, and spelling
    constants' literals (through SQLAlchemy's compiler) costs more than a
    one-row insert. Built anew where the shape cannot be keyed."""
    shape = _statement_key(conn, table, columns, constants)
    if shape is None:
        return build()
    key = (*kind, *shape)
    found = _statements.get(key)
    if found is None:
        if len(_statements) >= 1024:  # shapes that keep changing: start again
            _statements.clear()
        found = _statements[key] = build()
    return found


def _statement_key(
    conn: Connection, table: sa.Table, columns: Sequence[str], constants: Mapping[str, Any]
) -> tuple | None:
    """What a kept statement is kept by: the engine's SQLAlchemy dialect
    (quoting, literals), the table, the columns and the constants with
    their types (True and 1 are spelled differently); None (build it anew)
    when a constant is of another type."""
    if not _KEYED_CONSTANTS.issuperset(map(type, constants.values())):
        return None
    typed = tuple((k, type(v), v) for k, v in constants.items())
    return (conn.dialect, table.name, tuple(columns), typed)


# Rows per multi-row statement: at ~5 values a row, far below SQLite's and
# MariaDB's limits on bound parameters and statement size.
CHUNK = 1000


class Dialect:
    """Bulk paths and locking for one database.

    Subclasses set the SQL fragments below; values go to the driver as they
    are (no SQLAlchemy type processing, which costs more than the insert
    itself on the capture path), so they must be plain DB-API values: str,
    int, float, bool, bytes, None.
    """

    name = "default"
    #: Opens the update part of an upsert; ``{key}`` is the key column list.
    on_conflict = "ON CONFLICT ({key}) DO UPDATE SET"
    #: What an upsert without a key guard says when an existing row keeps
    #: every column (a table of key columns only: a many-to-many link).
    on_conflict_keep = "ON CONFLICT ({key}) DO NOTHING"
    #: The incoming row's value of column ``{}`` inside the update part.
    incoming = "excluded.{}"
    #: SQL functions: set a JSON member, read one, the larger of two values.
    json_set, json_get, greatest = "json_set", "json_extract", "max"
    #: Whether transactions write concurrently, so that outbox appends and
    #: replication passes need the guards below (:meth:`guard_append`,
    #: :meth:`exclude_writers`).
    concurrent_writers = False
    #: Whether a transaction cannot delete a row that rows it deleted itself
    #: referred to (DuckDB checks foreign keys against the state the
    #: transaction started from): a parent and its children are then deleted
    #: in two transactions.
    deletes_children_first_in_own_transaction = False
    #: Whether the database runs in the replicator's own process (SQLite,
    #: DuckDB): reading it is Python and C work under the interpreter's
    #: lock, not a wait on a server, so reading it ahead in a second thread
    #: gains nothing (see :class:`replicator.sync.SyncPass`).
    embedded = True
    #: Whether :meth:`upsert_advancing_version` works (it needs RETURNING
    #: from an upsert, which gives the rows as stored after the update).
    advances_versions_in_sql = True

    def stored(
        self, column: sa.Column, bind: sa.engine.Dialect | None = None
    ) -> Callable[[Any], Any] | None:
        """How a value written to ``column`` reads back, where that can differ
        from the value written; None where it reads back as written.
        ``bind``: the SQLAlchemy dialect of the engine that writes it, which
        picks the column's type among its variants (``with_variant``), as
        it did when it created the table.

        Capture records rows as the database stores them, so every replica
        receives the same values (and a row's key stays one string).
        """
        type_ = column_type(column, bind)
        as_text = enum_stored(type_)
        if as_text is not None:
            return as_text
        scale = _decimal_scale(type_)
        return None if scale is None else self.rounded(scale)

    def rounded(self, scale: int) -> Callable[[Any], Any]:
        """How a ``NUMERIC(p, scale)`` column stores a value: by default the
        exact decimal rounded half up to ``scale`` digits."""
        quantum = decimal.Decimal(1).scaleb(-scale)

        def rounded(value: Any) -> Any:
            if value is None or isinstance(value, bool):
                return value
            return _decimal(value).quantize(quantum, decimal.ROUND_HALF_UP)

        return rounded

    #: The types whose values :meth:`written` returns as they are in a
    #: column that is not a JSON column (exact types, not subclasses): a
    #: batch's rows holding only these skip a call per value.
    as_given: frozenset[type] = frozenset(
        {str, int, float, bool, type(None), bytes, decimal.Decimal}
        | {dt.datetime, dt.date, dt.time, dt.timedelta, uuid.UUID}
    )

    def written(self, value: Any, kind: Kind = None) -> Any:
        """An event's value of an app table's column of ``kind`` (None: not
        known) as this database's driver takes it, the inverse of
        :meth:`TableShape.typed`: JSON documents as text (see
        :func:`replicator.values.written`)."""
        return values.written(value, kind)

    def written_key(self, key: Iterable[Any]) -> tuple[Any, ...]:
        """A key's values (an event's, in key order) as this database's
        driver takes them, for a WHERE or a DELETE."""
        return tuple(map(self.written, key))

    def written_row(self, row: Mapping[str, Any], shape: TableShape) -> dict[str, Any]:
        """``row`` of a table of ``shape`` with each value :meth:`written`."""
        return {c: self.written(v, shape.kind(c)) for c, v in row.items()}

    def json_member(self, name_sql: str) -> str:
        """The JSON path of the object member named by SQL ``name_sql``."""
        return f"""'$."' || {name_sql} || '"'"""

    def insert_rows(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        constants: Mapping[str, Any] = NO_CONSTANTS,
        hoist: Sequence[str] = (),
    ) -> None:
        """Insert ``rows`` (tuples of ``columns``' values) with one multi-row
        statement per :data:`CHUNK` rows; nothing when empty.

        ``constants`` are columns with the same value in every row: they are
        written into the statement once instead of bound once per row
        (pymysql escapes every bound value in Python). Columns named in
        ``hoist`` become constants when their value is the same in every row.
        """
        columns, rows, constants = hoisted(columns, rows, constants, hoist)
        execute_values(conn, *self._insert(conn, table, columns, constants), rows)

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
        """Insert or replace ``rows`` by ``table``'s primary key.

        ``columns`` must include the primary key. When a key repeats, the last
        row for it wins; nothing when empty. ``hoist`` as for :meth:`insert_rows`.
        A row that exists gets only the columns in ``update`` written (None:
        all of ``columns``; an empty ``update`` is taken as None). ``unique``:
        the caller holds one row per key already (rows taken from a dict by
        key), so they are not compacted again.
        """
        if not unique:
            rows = last_per_key(table, columns, rows)
        columns, rows, constants = hoisted(columns, rows, NO_CONSTANTS, hoist)
        tail = " " + self._conflict_clause(conn, table, [*constants, *columns], update)
        execute_values(conn, *self._insert(conn, table, columns, constants), rows, tail)

    def refusal(self, error: DBAPIError) -> str | None:
        """Why the database refused a row (``"constraint_violation"`` or
        ``"invalid_value"``), or None when ``error`` is not about a row (the
        connection dropped, a lock timed out, ...)."""
        if isinstance(error, IntegrityError):
            return "constraint_violation"
        if isinstance(error, DataError):
            return "invalid_value"
        return None

    def key_guard(self, conn: Connection, table: sa.Table) -> str:
        """Assignments opening an upsert's update part that make it fail when
        the row it hit has a different primary key ("" where the conflict
        clause names the primary key, so it cannot hit another row)."""
        return ""

    def write_row(
        self,
        conn: Connection,
        table: sa.Table,
        row: Mapping[str, Any],
        update: Collection[str] | None = None,
    ) -> None:
        """Insert or update one row by its primary key with plain statements:
        slow, but a row the database refuses fails with its own message.
        ``update`` as for :meth:`upsert_rows`."""
        names = {c.name for c in table.primary_key.columns}
        key = [table.c[name] == row[name] for name in names]
        if conn.execute(sa.select(sa.literal(1)).select_from(table).where(*key)).first():
            values = {
                c: v for c, v in row.items() if c not in names and (not update or c in update)
            }
            if values:
                conn.execute(table.update().where(*key).values(values))
        else:
            conn.execute(table.insert().values(dict(row)))

    #: Keys per ``IN (...)`` list: well below SQLite's and MariaDB's limits
    #: on bound parameters.
    in_chunk = 500
    #: Whether bulk statements take one list per column (and each statement
    #: costs enough that fewer, larger ones pay).
    columnar = False

    def where_in(
        self, conn: Connection, columns: Sequence[str], values: Sequence[Row]
    ) -> tuple[str, tuple]:
        """``(columns) IN (...)`` for at most :attr:`in_chunk` ``values`` (tuples
        of the columns' values), and its parameters."""
        if len(columns) == 1:  # a plain IN list: what index range scans expect
            return (
                f"{quote(conn, columns[0])} IN ({placeholders(conn, len(values))})",
                tuple(value[0] for value in values),
            )
        group = f"({placeholders(conn, len(columns))})"
        return (
            f"({names(conn, columns)}) IN ({', '.join([group] * len(values))})",
            tuple(v for value in values for v in value),
        )

    def upsert_advancing_version(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        rows: Sequence[Row],
        constants: Mapping[str, Any] = NO_CONSTANTS,
        hoist: Sequence[str] = (),
    ) -> list[Row]:
        """Upsert version-state rows, advancing existing ones in the database.

        For a new key the row is inserted as given. For an existing key, the
        stored ``version`` vector gets its ``origin`` entry incremented, ``hlc``
        becomes the larger of the given one and the stored one plus one, and
        the other columns take the given values. Returns ``(row_key, version,
        hlc)`` as stored, for every row (in no particular order). Keys must be
        distinct; ``constants`` and ``hoist`` as for :meth:`insert_rows`.
        """
        if not self.advances_versions_in_sql:
            raise TypeError(f"{type(self).__name__} does not advance versions in SQL")
        if not rows:
            return []
        columns, rows, constants = hoisted(columns, rows, constants, hoist)

        def build() -> tuple[str, str, str, str]:
            new = self.incoming.format
            member = self.json_member(new("origin"))
            # In the update part a bare column is the stored row. The
            # assignments read `origin` before it is overwritten (MariaDB
            # evaluates them left to right; SQLite reads the old row throughout).
            tail = (
                f" {self._on_conflict(conn, table)} "
                f"version = {self.json_set}(version, {member}, "
                f"COALESCE({self.json_get}(version, {member}), 0) + 1), "
                f"hlc = {self.greatest}({new('hlc')}, hlc + 1), "
                f"origin = {new('origin')}, deleted = {new('deleted')} "
                "RETURNING row_key, version, hlc"
            )
            head, group = self._insert(conn, table, columns, constants)
            return head, group, tail, head + group + tail

        kind = (type(self), "advancing")
        statement = _kept(kind, conn, table, columns, constants, build)
        head, group, tail, one = statement
        if len(rows) == 1:  # one row a flush, the usual case
            return [tuple(r) for r in conn.exec_driver_sql(one, tuple(rows[0]))]
        return execute_values(conn, head, group, rows, tail, returning=True)

    def delete_rows(
        self, conn: Connection, table: sa.Table, key_columns: Sequence[str], keys: Sequence[Row]
    ) -> None:
        """Delete the rows of ``table`` whose ``key_columns`` equal one of
        ``keys`` (tuples of key values); keys that match nothing are ignored,
        nothing happens for none."""
        columns = names(conn, key_columns)
        group = f"({placeholders(conn, len(key_columns))})"
        head = f"DELETE FROM {quote(conn, table.name)} WHERE ({columns}) IN ("
        for start in range(0, len(keys), CHUNK):
            part = keys[start : start + CHUNK]
            statement = f"{head}{', '.join([group] * len(part))})"
            conn.exec_driver_sql(statement, tuple(v for key in part for v in key))

    def describe(self, conn: Connection, name: str) -> TableShape | None:
        """The columns and primary key of the app table ``name`` (None if absent)."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(name):
            return None
        reflected = inspector.get_columns(name)
        columns = tuple(c["name"] for c in reflected)
        key = tuple(inspector.get_pk_constraint(name)["constrained_columns"])
        unique = [tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)]
        unique += [
            tuple(i["column_names"])
            for i in inspector.get_indexes(name)
            if i.get("unique") and None not in i["column_names"]
        ]
        foreign = inspector.get_foreign_keys(name)
        parents = tuple(
            (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
            for f in foreign
        )
        on_delete = tuple(_action((f.get("options") or {}).get("ondelete")) for f in foreign)
        return TableShape(
            name,
            columns,
            key,
            tuple(_type_name(c["type"]) for c in reflected),
            tuple(dict.fromkeys(u for u in unique if u != key)),
            parents,
            on_delete,
            self.kinds(conn, name, reflected),
        )

    def kinds(
        self, conn: Connection, name: str, reflected: Sequence[Mapping[str, Any]]
    ) -> tuple[Kind, ...]:
        """The kind of each column of the table ``name``, given its columns as
        SQLAlchemy's inspector reflects them: by default their types say."""
        return tuple(values.kind_of(c["type"]) for c in reflected)

    def declared_types(self, conn: Connection, name: str) -> dict[str, str] | None:
        """Each column of the app table ``name`` -> its declared type as this
        database spells it, lower case (``"datetime(6)"``: the fractional
        digits kept, which a generic spelling loses); None if absent."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(name):
            return None
        return {c["name"]: _spelled(c["type"], conn) for c in inspector.get_columns(name)}

    # --- reading the outbox in commit order ------------------------------

    def guard_append(self, conn: Connection) -> None:
        """Called before a transaction appends to the outbox.

        Where transactions append concurrently (MariaDB), a position can be
        taken by one transaction and committed after a larger one; see
        :meth:`horizon`. Databases with one writer at a time need nothing:
        positions are taken in commit order.
        """

    def exclude_writers(self, conn: Connection) -> None:
        """Called first in a replication pass's target transaction.

        Where app transactions write concurrently (MariaDB), the pass must
        not decide on a row's version while an app transaction is changing
        it, nor overwrite a change committed after it looked. Databases with
        one writer at a time (SQLite), or that fail a transaction on a
        write-write conflict (DuckDB), need nothing.
        """

    @contextmanager
    def snapshot(self, engine: sa.Engine) -> Iterator[tuple[Connection, int]]:
        """A connection reading one consistent snapshot of the database, and
        the outbox's largest position in it: every event at or below it is
        reflected in what the connection reads, none above it is."""
        with engine.connect() as conn, conn.begin():
            yield conn, last_position(conn)

    def horizon(self, conn: Connection) -> int | None:
        """A position at or below which every outbox event has committed:
        no transaction will ever commit an event with a smaller position.

        ``conn`` is not in a transaction; the horizon is read in one of its
        own. With one writer at a time (SQLite), the largest position is
        such a horizon. Returns None when none can be established now
        (writers held the outbox too long); 0 for an empty outbox.
        """
        return last_position(conn)

    def with_connect_timeout(self, url: sa.URL, seconds: float) -> sa.URL:
        """``url`` set to give up a connection attempt after ``seconds``
        (unless it already says how long); a file database has no such
        wait, so by default the URL is returned as it is."""
        return url

    def enforce_foreign_keys(self, engine: sa.Engine) -> None:
        """Make every connection ``engine`` opens from now on check foreign
        keys, where the database lets a connection choose (SQLite); nothing
        where it always does (MariaDB, DuckDB)."""

    def after_connect_timeout(self, engine: sa.Engine, given: sa.URL) -> None:
        """Set up ``engine``, made from :meth:`with_connect_timeout`'s URL
        (``given`` is the URL before it), for what follows a connection;
        nothing by default."""

    def lock(self, engine: sa.Engine, name: str) -> Lock:
        """The lock called ``name`` on this database, that one holder at a
        time holds across processes (see :mod:`replicator.locks`). An
        embedded store's is a lock file beside its database file."""
        return locks.for_database(engine.url.database, name, owner=engine)

    def lock_rows(self, select: sa.Select) -> sa.Select:
        """``select`` made to lock what it reads until the transaction ends.

        Used when a read decides what is written next, so that under
        concurrent writers it sees the latest committed rows, not a snapshot.
        Databases with a single writer need no lock.
        """
        return select

    # --- keys the database generates (see replicator.keys) --------------------

    #: Whether the database's own key generator can be moved above a block
    #: of keys leased to other nodes (:meth:`skip_generated_keys`), so that
    #: a server's inserts need no keys from capture.
    keeps_generated_keys_out = False

    def generated_key(self, conn: Connection, table: str) -> str | None:
        """The column of ``table``'s primary key when it is a single integer
        column the database numbers itself on insert (AUTO_INCREMENT) and
        can be kept out of leased blocks; None otherwise or when the table
        does not exist."""
        inspector = sa.inspect(conn)
        if not inspector.has_table(table):
            return None
        key = inspector.get_pk_constraint(table)["constrained_columns"]
        if len(key) != 1:
            return None
        for column in inspector.get_columns(table):
            if column["name"] == key[0]:
                generated = column.get("autoincrement") is True
                if isinstance(column["type"], sa.Integer) and generated:
                    return key[0]
        return None

    def next_generated_key(self, conn: Connection, table: str) -> int:
        """The key the database would give ``table``'s next row (1 when unknown)."""
        return 1

    def next_sequence_value(self, conn: Connection, sequence: str) -> int:
        """The number ``sequence`` gives next (1 when unknown); only where
        :attr:`keeps_generated_keys_out`."""
        return 1

    def skip_generated_keys(self, conn: Connection, table: str, last: int) -> None:
        """Make the database generate only keys above ``last`` for ``table``.
        Only where :attr:`keeps_generated_keys_out`; elsewhere the database
        cannot, and saying so beats pretending."""
        raise NotImplementedError(f"{type(self).__name__} cannot keep its own keys out")

    def default_sequence(self, conn: Connection, table: str, column: str) -> str | None:
        """The sequence ``column``'s default draws from, where the database
        declares one (DuckDB's ``DEFAULT nextval('...')``); None otherwise."""
        return None

    def keep_ahead(self, conn: Connection, sequence: str, key: int) -> None:
        """Make ``sequence`` give only numbers above ``key`` (never moving it
        back): rows were written with explicit keys it would otherwise hand
        out again. Nothing where the database has no sequences (SQLite's
        rowid and AUTOINCREMENT, MariaDB's AUTO_INCREMENT move past a
        written key themselves)."""

    def _insert(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        constants: Mapping[str, Any] = NO_CONSTANTS,
    ) -> tuple[str, str]:
        """The head of an INSERT up to ``VALUES``, and one row's value group
        (kept: see :func:`_kept`)."""

        def build() -> tuple[str, str]:
            head = f"INSERT INTO {quote(conn, table.name)} "
            head += f"({names(conn, [*constants, *columns])}) VALUES "
            return head, value_group(conn, len(columns), constants)

        return _kept((type(self), "insert"), conn, table, columns, constants, build)

    def _on_conflict(self, conn: Connection, table: sa.Table) -> str:
        return self.on_conflict.format(key=names(conn, [c.name for c in table.primary_key.columns]))

    def _conflict_clause(
        self,
        conn: Connection,
        table: sa.Table,
        columns: Sequence[str],
        update: Collection[str] | None,
    ) -> str:
        """An upsert's conflict clause writing the incoming row's ``columns``
        (those in ``update`` only, unless it is None or empty) over the row
        it hits, behind the key guard; where no column is left to write,
        one that keeps the row (no database takes an empty update part)."""
        guard = self.key_guard(conn, table)
        assignments = update_list(conn, table, columns, self.incoming, update)
        if not guard and not assignments:
            key = names(conn, [c.name for c in table.primary_key.columns])
            return self.on_conflict_keep.format(key=key)
        return f"{self._on_conflict(conn, table)} {(guard + assignments).removesuffix(', ')}"


def _action(action: str | None) -> str | None:
    """An ``ON DELETE`` action as it acts: None for none, RESTRICT or NO ACTION."""
    action = (action or "").upper()
    return None if action in ("", "RESTRICT", "NO ACTION") else action


def _type_name(type_: Any) -> str:
    try:
        return str(type_).lower()
    except Exception:  # a type SQLAlchemy cannot spell (reflected as NullType)
        return ""


def _spelled(type_: Any, conn: Connection) -> str:
    try:
        return type_.compile(dialect=conn.dialect).lower()
    except Exception:  # a type the database cannot spell (reflected as NullType)
        return ""


@functools.cache
def _kinds_by_column(shape: TableShape) -> dict[str, Kind]:
    """Each column's kind, looked up once per shape (rows are typed one
    column at a time)."""
    return dict(zip(shape.columns, shape.kinds, strict=False))


@functools.cache
def _bare_table(shape: TableShape) -> sa.Table:
    return sa.Table(
        shape.name,
        sa.MetaData(),
        *(sa.Column(c, primary_key=c in shape.key) for c in shape.columns),
    )


def last_position(conn: Connection) -> int:
    """The largest position in the outbox as ``conn`` sees it; 0 when empty."""
    return conn.exec_driver_sql(
        "SELECT COALESCE(MAX(position), 0) FROM replicator_outbox"
    ).scalar_one()


def column_type(column: sa.Column, bind: sa.engine.Dialect | None) -> sa.types.TypeEngine:
    """``column``'s type as the SQLAlchemy dialect ``bind`` uses it (its
    variant for ``bind``); as declared when ``bind`` is None."""
    return column.type if bind is None else column.type.dialect_impl(bind)


def enum_stored(kind: sa.types.TypeEngine) -> Callable[[Any], Any] | None:
    """For an ``Enum`` type of a Python enum: a member as its column stores
    it, which is its name unless the type says otherwise
    (``values_callable``); None for other types."""
    members = getattr(kind, "enum_class", None) if isinstance(kind, sa.Enum) else None
    if members is None:
        return None
    text = dict(zip(members, kind.enums, strict=False))
    return lambda value: text.get(value, value) if isinstance(value, enum.Enum) else value


def _decimal_scale(kind: sa.types.TypeEngine) -> int | None:
    if isinstance(kind, sa.Numeric) and not isinstance(kind, sa.Float) and kind.asdecimal:
        return kind.scale
    return None


def _decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, decimal.Decimal):
        return value
    return decimal.Decimal(repr(value) if isinstance(value, float) else value)


def quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


def names(conn: Connection, columns: Sequence[str]) -> str:
    return ", ".join(quote(conn, c) for c in columns)


def placeholders(conn: Connection, count: int) -> str:
    marker = {"qmark": "?", "format": "%s", "pyformat": "%s", "numeric_dollar": "?"}[
        conn.dialect.paramstyle
    ]
    return ", ".join([marker] * count)


def literal(conn: Connection, value: Any) -> str:
    """``value`` as an SQL literal of this database, safely quoted."""
    return str(
        sa.literal(value).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    )


def value_group(conn: Connection, count: int, constants: Mapping[str, Any] = NO_CONSTANTS) -> str:
    """``('const', ?, ?)``: the constants' literals, then ``count`` placeholders."""
    parts = [literal(conn, value) for value in constants.values()]
    return f"({', '.join([*parts, placeholders(conn, count)])})"


def hoisted(
    columns: Sequence[str],
    rows: Sequence[Row],
    constants: Mapping[str, Any],
    candidates: Sequence[str],
) -> tuple[Sequence[str], Sequence[Row], Mapping[str, Any]]:
    """Move the ``candidates`` whose value is the same in every row into the constants."""
    uniform = [
        i
        for i, c in enumerate(columns)
        if c in candidates and len(set(map(itemgetter(i), rows))) == 1
    ]
    if not uniform or not rows:
        return columns, rows, constants
    keep = [i for i in range(len(columns)) if i not in uniform]
    if len(keep) > 1:  # the rows rebuilt in C: itemgetter gives a tuple
        narrowed = list(map(itemgetter(*keep), rows))
    else:
        narrowed = [tuple(row[i] for i in keep) for row in rows]
    return (
        [columns[i] for i in keep],
        narrowed,
        {**constants, **{columns[i]: rows[0][i] for i in uniform}},
    )


def execute_values(
    conn: Connection,
    head: str,
    group: str,
    rows: Sequence[Row],
    tail: str = "",
    *,
    returning: bool = False,
) -> list[Row]:
    """Run ``head`` + ``group`` once per row (comma-separated) + ``tail``.

    One statement per :data:`CHUNK` rows; nothing when ``rows`` is empty.
    With ``returning``, the rows the statements return (drivers return none
    from ``executemany``, hence multi-row VALUES).
    """
    returned: list[Row] = []
    render = renderers.get(conn.dialect.driver)
    for start in range(0, len(rows), CHUNK):
        part = rows[start : start + CHUNK]
        statement = f"{head}{', '.join([group] * len(part))}{tail}"
        params = tuple(chain.from_iterable(part))
        rendered = None if render is None else render(conn, statement, params)
        if rendered is None:
            result = conn.exec_driver_sql(statement, params)
        else:  # the text as it is, no parameters (else the driver formats it again)
            result = conn.exec_driver_sql(rendered, execution_options=_AS_IT_IS)
        if returning:
            returned.extend(tuple(r) for r in result)
    return returned


_AS_IT_IS = {"no_parameters": True}

#: By DB-API driver name: a function that binds a statement's ``%s``
#: parameters into its text exactly as the driver would, only faster, or
#: returns None where it cannot (then the driver binds them). A multi-row
#: statement binds thousands of values, and a driver binding them in Python
#: one call chain per value (pymysql) spends more on that than the database
#: spends on the rows. Registered by the dialect modules.
renderers: dict[str, Callable[[Connection, str, tuple], str | None]] = {}


def last_per_key(table: sa.Table, columns: Sequence[str], rows: Sequence[Row]) -> list[Row]:
    """``rows`` with one row per primary key, the last one given for it."""
    at = [list(columns).index(c.name) for c in table.primary_key.columns]
    by_key = {tuple(row[i] for i in at): row for row in rows}
    return list(by_key.values()) if len(by_key) < len(rows) else list(rows)


def update_list(
    conn: Connection,
    table: sa.Table,
    columns: Sequence[str],
    template: str,
    update: Collection[str] | None = None,
) -> str:
    """``a = <template>, ...`` over the non-key columns (those in ``update``
    only, unless it is None or empty); ``{}`` is the column."""
    key = {c.name for c in table.primary_key.columns}
    return ", ".join(
        f"{quote(conn, c)} = {template.format(quote(conn, c))}"
        for c in columns
        if c not in key and (not update or c in update)
    )
