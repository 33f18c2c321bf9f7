"""MariaDB (10.5 or later, for ``INSERT ... RETURNING``) through pymysql.

pymysql escapes every bound value in Python, so batches go as multi-row
statements with batch-wide values written in once (see the base dialect).
InnoDB reads a snapshot unless asked to lock, hence ``FOR UPDATE`` where a
read decides a write; version state instead advances inside the upsert,
where a duplicate primary key locks only its own index record (a locking
read of absent keys would take gap locks and deadlock concurrent inserts).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError

from replicator import values
from replicator.dialects.base import Dialect, column_type, last_position, renderers
from replicator.errors import SchemaError
from replicator.locks import Lock
from replicator.tables import runners
from replicator.values import Json, Kind

# How long a reader waits for the outbox's writers before it settles for
# the horizon it already has (seconds).
HORIZON_WAIT = 2
# How long a replication pass waits for the app's transactions on a target
# to end before it gives up (seconds).
WRITERS_WAIT = 30
_LOCK_WAIT_TIMEOUT, _DEADLOCK, _NO_SUCH_TABLE = 1205, 1213, 1146
# Errors about one row: a CHECK constraint, a NOT NULL column, a duplicate
# key, a foreign key, the upsert's key guard (1242, see key_guard); a
# value out of range, too long, or not of the type.
_REFUSED_CONSTRAINT = {4025, 3819, 1048, 1062, 1242, 1451, 1452}
_REFUSED_VALUE = {1264, 1265, 1292, 1366, 1406, 1411, 1918}
_GUARDED = "replicator_outbox_guarded"
_STRICT = "replicator_strict_mode_checked"


class MariaDBDialect(Dialect):
    name = "mariadb"
    on_conflict = "ON DUPLICATE KEY UPDATE"
    incoming = "VALUES({})"
    json_set, json_get, greatest = "JSON_SET", "JSON_VALUE", "GREATEST"
    concurrent_writers = True
    embedded = False

    as_given = Dialect.as_given - {uuid.UUID}

    def written(self, value: Any, kind: Kind = None) -> Any:
        # pymysql would write a UUID as its 36-character text, which does not
        # fit the CHAR(32) SQLAlchemy's Uuid declares; a UUID column takes
        # the 32 hex digits too.
        if isinstance(value, uuid.UUID):
            return value.hex
        return super().written(value, kind)

    def kinds(
        self, conn: Connection, name: str, reflected: Sequence[Mapping[str, Any]]
    ) -> tuple[Kind, ...]:
        # MariaDB spells BOOLEAN as TINYINT(1) and JSON as LONGTEXT with a
        # column check json_valid(`column`): SQLAlchemy reflects both as
        # what they are spelled as.
        checks = conn.exec_driver_sql(
            "SELECT CONSTRAINT_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
            "WHERE CONSTRAINT_SCHEMA = DATABASE() AND TABLE_NAME = %s AND LEVEL = 'Column'",
            (name,),
        ).all()
        documents = {
            column
            for column, clause in checks
            if clause == f"json_valid(`{column.replace('`', '``')}`)"
        }
        found = []
        for column in reflected:
            type_ = column["type"]
            if column["name"] in documents:
                found.append(Json)
            elif isinstance(type_, mysql.TINYINT) and type_.display_width == 1:
                found.append(bool)
            else:
                found.append(values.kind_of(type_))
        return tuple(found)

    def with_connect_timeout(self, url: sa.URL, seconds: float) -> sa.URL:
        """pymysql's ``connect_timeout`` bounds only the TCP connect; the
        server's greeting is read under ``read_timeout``. Both are set to
        ``seconds`` (whole seconds, at least 1) so a server that never
        answers is given up; :meth:`after_connect_timeout` then lifts the
        read timeout once connected. A URL that names either keeps its own.
        In the URL, not ``connect_args``, so engines made from it (the
        locks') are bounded too."""
        wait = str(max(1, math.ceil(seconds)))
        bounded = {k: wait for k in ("connect_timeout", "read_timeout") if k not in url.query}
        return url.update_query_dict(bounded)

    def after_connect_timeout(self, engine: sa.Engine, given: sa.URL) -> None:
        """Once connected, reads wait as long as the URL as given says (its
        ``read_timeout``, or for ever): a long query must not fail for a
        bound meant for the handshake."""
        reads = given.query.get("read_timeout")
        _read_timeouts[engine] = None if reads is None else int(reads)
        _lift_read_timeout(engine)

    def refusal(self, error: DBAPIError) -> str | None:
        # pymysql reports some refusals as OperationalError.
        code = error.orig.args[0] if error.orig is not None and error.orig.args else None
        if code in _REFUSED_CONSTRAINT:
            return "constraint_violation"
        if code in _REFUSED_VALUE:
            return "invalid_value"
        return super().refusal(error)

    def key_guard(self, conn: Connection, table: sa.Table) -> str:
        # ON DUPLICATE KEY UPDATE fires on *any* unique key: a row whose
        # secondary unique value another row holds would silently overwrite
        # that row. The update part therefore fails the statement when the
        # row it hit has another primary key. Setting the key to NULL is not
        # enough: an AUTO_INCREMENT column takes NULL as 0 and renumbers the
        # other row. A scalar subquery returning two rows fails on any
        # column (error 1242), and IF evaluates it only on that branch. It
        # returns the column itself: IF refuses branches of types it cannot
        # join (error 4078: a UUID and an integer).
        return "".join(
            f"{q} = IF({q} <=> VALUES({q}), {q}, (SELECT {q} UNION ALL SELECT {q})), "
            for q in (conn.dialect.identifier_preparer.quote(c.name) for c in table.primary_key)
        )

    def stored(
        self, column: sa.Column, bind: sa.engine.Dialect | None = None
    ) -> Callable[[Any], Any] | None:
        # DATETIME and TIME keep `fsp` fractional digits (none by default)
        # and truncate the rest; `fsp` is the variant's for this database
        # (DateTime().with_variant(DATETIME(fsp=6), "mariadb", "mysql")).
        type_ = column_type(column, bind)
        if isinstance(type_, sa.DateTime | sa.Time):
            unit = 10 ** (6 - (getattr(type_, "fsp", None) or 0))
            if unit == 1:
                return None

            def truncated(value: Any) -> Any:
                if isinstance(value, dt.datetime | dt.time):
                    return value.replace(microsecond=value.microsecond // unit * unit)
                return value

            return truncated
        return super().stored(column, bind)

    def json_member(self, name_sql: str) -> str:
        return f"""CONCAT('$."', {name_sql}, '"')"""

    # Reading in commit order. InnoDB hands out auto-increment positions when
    # rows are inserted, not when they commit: a transaction can take
    # position 7, another take 8 and commit, and a reader that then reads
    # "after 6" sees 8 and moves its checkpoint past 7, which commits later
    # and is never read. Serialising writers (one outbox lock held from
    # insert to commit, as eventsourcing does on PostgreSQL) would make
    # positions follow commit order, but every app transaction on the server
    # would wait for every other. Instead writers share one lock and a reader
    # briefly excludes them: each appending transaction holds a *shared* row
    # lock on replicator_outbox_writers until it ends (writers never wait for
    # each other); the reader takes the same row *exclusively*, which InnoDB
    # grants once every transaction that took a position before has
    # committed or rolled back, and which holds new writers back until the
    # reader has read the largest position. Every position at or below that
    # horizon is final, so reading up to it skips nothing. The exclusive
    # lock lives for two statements; queued writers wait only that long.

    def guard_append(self, conn: Connection) -> None:
        transaction = conn.get_transaction()
        if transaction is not None and conn.info.get(_GUARDED) is transaction:
            return  # this transaction already holds the shared lock
        held = conn.exec_driver_sql(
            "SELECT id FROM replicator_outbox_writers WHERE id = 1 LOCK IN SHARE MODE"
        ).first()
        if held is None:
            raise SchemaError(
                "replicator_outbox_writers has lost its row: run `replicator init` "
                "(or replicator.migrate) on this database"
            )
        conn.info[_GUARDED] = transaction

    # Applying a batch. A pass decides each event against the row's stored
    # version, then writes the row and its new version. An app transaction
    # that changed the row in between would be overwritten without anyone
    # noticing (and under REPEATABLE READ the pass would not even see it).
    # App transactions that capture hold the writers' row in share mode
    # from *before* their first row write (capture takes it at the start of
    # each flush) until they end; the pass takes it exclusively as the first
    # statement of its transaction. So it starts once every capturing
    # transaction has ended, reads a snapshot taken after them, and app
    # flushes wait for the batch to commit. The lock order (writers' row,
    # then rows) is the same on both sides: no deadlock.

    def exclude_writers(self, conn: Connection) -> None:
        if _STRICT not in conn.info:
            # Without strict mode MariaDB stores a value it cannot hold as a
            # different one (truncated, zeroed) and only warns, and the key
            # guard of an upsert would not fail: replicas would silently
            # differ.
            mode = conn.exec_driver_sql("SELECT @@SESSION.sql_mode").scalar_one()
            if "STRICT_TRANS_TABLES" not in mode and "STRICT_ALL_TABLES" not in mode:
                raise SchemaError(
                    f"MariaDB runs without strict mode (sql_mode={mode!r}); replication "
                    "needs STRICT_TRANS_TABLES (MariaDB's default) to refuse what it "
                    "cannot store instead of altering it"
                )
            conn.info[_STRICT] = True
        conn.exec_driver_sql(
            f"SELECT id FROM replicator_outbox_writers WHERE id = 1 FOR UPDATE WAIT {WRITERS_WAIT}"
        )
        conn.info[_GUARDED] = conn.get_transaction()

    @contextmanager
    def snapshot(self, engine: sa.Engine) -> Iterator[tuple[Connection, int]]:
        # The read view is created while a second connection excludes the
        # capturing transactions (see exclude_writers): none is in flight,
        # so the snapshot holds exactly the events up to the largest
        # position. The writers go on as soon as the view exists.
        with engine.connect() as guard, engine.connect() as conn, conn.begin():
            with guard.begin():
                guard.exec_driver_sql(
                    "SELECT id FROM replicator_outbox_writers WHERE id = 1 "
                    f"FOR UPDATE WAIT {WRITERS_WAIT}"
                )
                conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                position = last_position(conn)
            yield conn, position

    def horizon(self, conn: Connection) -> int | None:
        committed = conn.execution_options(isolation_level="READ COMMITTED")
        with committed.begin():
            try:
                committed.exec_driver_sql(
                    "SELECT id FROM replicator_outbox_writers WHERE id = 1 "
                    f"FOR UPDATE WAIT {HORIZON_WAIT}"
                )
            except OperationalError as e:
                if e.orig.args[0] in (_LOCK_WAIT_TIMEOUT, _DEADLOCK):
                    return None  # a long writer: read up to the last horizon for now
                raise
            return last_position(committed)

    def lock(self, engine: sa.Engine, name: str) -> Lock:
        return AdvisoryLock(engine, name)

    # The server's own AUTO_INCREMENT is moved above every block of keys it
    # leases (see replicator.keys): a row applied with a leased key below
    # the counter leaves it where it is, so the app's inserts on the server
    # never take a key a device may still use.
    keeps_generated_keys_out = True

    def next_generated_key(self, conn: Connection, table: str) -> int:
        found = conn.exec_driver_sql(
            "SELECT AUTO_INCREMENT FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s",
            (table,),
        ).scalar()
        return int(found or 1)

    def next_sequence_value(self, conn: Connection, sequence: str) -> int:
        # Values a connection has cached are handed out below this.
        quoted = conn.dialect.identifier_preparer.quote(sequence)
        return int(conn.exec_driver_sql(f"SELECT next_not_cached_value FROM {quoted}").scalar())

    def keep_ahead(self, conn: Connection, sequence: str, key: int) -> None:
        # SETVAL never moves a sequence back (it returns NULL then).
        quoted = conn.dialect.identifier_preparer.quote(sequence)
        conn.exec_driver_sql(f"SELECT SETVAL({quoted}, {int(key)})")

    def skip_generated_keys(self, conn: Connection, table: str, last: int) -> None:
        # DDL: commits whatever conn's transaction holds.
        quoted = conn.dialect.identifier_preparer.quote(table)
        conn.exec_driver_sql(f"ALTER TABLE {quoted} AUTO_INCREMENT = {int(last) + 1}")

    def lock_rows(self, select: sa.Select) -> sa.Select:
        # A locking read sees the latest committed row, not the transaction's
        # snapshot.
        return select.with_for_update()


class AdvisoryLock(Lock):
    """A MariaDB advisory lock (``GET_LOCK``), held by a connection of its
    own: the server drops it when that connection ends, however the holder
    ended. Its holder is recorded in ``replicator_runners``.

    Lock names are server-wide, so the name includes the database's. The
    connection comes from an engine without a pool, so a runner's locks
    never take the app's pooled connections, and it commits after every
    statement: an open transaction would hold back InnoDB's purge for as
    long as the runner runs.
    """

    def __init__(self, engine: sa.Engine, name: str) -> None:
        self.name = name
        key = f"replicator:{engine.url.database or ''}:{name}"
        if len(key) > 64:  # MariaDB's limit for a lock name
            key = "replicator:" + hashlib.sha1(key.encode()).hexdigest()
        self.key = key
        self._engine = _lock_engine(engine)
        self._conn: Connection | None = None

    def acquire(self, holder: str) -> bool:
        if self.held():
            return True
        conn = self._engine.connect()
        try:
            got = conn.exec_driver_sql("SELECT GET_LOCK(%s, 0)", (self.key,)).scalar()
            if got != 1 and self._ours_before(conn, holder):
                got = conn.exec_driver_sql("SELECT GET_LOCK(%s, 5)", (self.key,)).scalar()
            if got != 1:
                conn.rollback()
                conn.close()
                return False
            me = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar_one()
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            conn.exec_driver_sql(
                "INSERT INTO replicator_runners (name, holder, connection_id, since) "
                "VALUES (%s, %s, %s, %s) ON DUPLICATE KEY UPDATE holder = VALUES(holder), "
                "connection_id = VALUES(connection_id), since = VALUES(since)",
                (self.name, holder[:255], me, now),
            )
            conn.commit()
        except ProgrammingError as e:
            conn.close()  # and the lock with it
            if e.orig.args[0] == _NO_SUCH_TABLE:
                raise SchemaError(
                    f"database {self._engine.url.database} has no replicator_runners table "
                    "(where a runner names itself): its replicator tables do not exist or "
                    "are at an older revision; run `replicator init`"
                ) from e
            raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return True

    def _ours_before(self, conn: Connection, holder: str) -> bool:
        """Whether the lock is held by a connection this same holder lost
        (a network cut the server has not noticed yet: it would keep the
        lock until its wait_timeout); if so, end that connection."""
        owner, named = self._owner(conn)
        if owner is None or named != holder[:255]:
            return False
        try:  # a user may end its own connections
            conn.exec_driver_sql(f"KILL CONNECTION {int(owner)}")
        except DBAPIError:
            return False
        return True

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            mine = self._conn.exec_driver_sql(
                "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (self.key,)
            ).scalar()
            self._conn.commit()
        except DBAPIError:
            self._drop()  # the connection is gone, and the lock with it
            return False
        if not mine:
            self._drop()
        return bool(mine)

    def release(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (self.key,))
            self._conn.commit()
        except DBAPIError:
            pass  # the connection is gone: so is the lock
        finally:
            self._drop()

    def holder(self) -> str | None:
        with self._engine.connect() as conn:
            owner, named = self._owner(conn)
            if owner is None:
                return None
            if named:
                return named
            seen = conn.exec_driver_sql(
                "SELECT host, user FROM information_schema.processlist WHERE id = %s", (owner,)
            ).first()
            where = f" from {seen[0]} (user {seen[1]})" if seen else ""
            return f"MariaDB connection {owner}{where}"

    def _owner(self, conn: Connection) -> tuple[int | None, str | None]:
        """The connection holding the lock (None: free), and the holder it
        recorded (None if it recorded none)."""
        owner = conn.exec_driver_sql("SELECT IS_USED_LOCK(%s)", (self.key,)).scalar()
        if owner is None:
            return None, None
        c = runners.c
        named = conn.execute(
            sa.select(c.holder).where(c.name == self.name, c.connection_id == owner)
        ).scalar()
        return owner, named

    def _drop(self) -> None:
        if self._conn is not None:
            with suppress(DBAPIError):
                self._conn.close()
            self._conn = None


_lock_engines: weakref.WeakKeyDictionary[sa.Engine, sa.Engine] = weakref.WeakKeyDictionary()
# An engine whose URL bounds the handshake -> the read timeout after it.
_read_timeouts: weakref.WeakKeyDictionary[sa.Engine, int | None] = weakref.WeakKeyDictionary()


def _lift_read_timeout(engine: sa.Engine) -> None:
    """After each new connection of ``engine``, set pymysql's read timeout
    to what the user asked for. pymysql has no public setter: it keeps the
    timeout in ``_read_timeout`` and applies it at the next read (checked on
    pymysql 1.1 and 1.2)."""
    reads = _read_timeouts[engine]

    @sa.event.listens_for(engine, "connect")
    def _connected(dbapi_connection: Any, _: Any) -> None:
        if hasattr(dbapi_connection, "_read_timeout"):
            dbapi_connection._read_timeout = reads


def _lock_engine(engine: sa.Engine) -> sa.Engine:
    """An engine without a pool for ``engine``'s database, made once: each
    lock's connection is its own, and outside the app's pool."""
    if engine not in _lock_engines:
        lock_engine = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
        if engine in _read_timeouts:
            _read_timeouts[lock_engine] = _read_timeouts[engine]
            _lift_read_timeout(lock_engine)
        _lock_engines[engine] = lock_engine
    return _lock_engines[engine]


def _render_pymysql(conn: Connection, statement: str, params: tuple) -> str | None:
    """``statement`` with ``params`` bound as pymysql's ``Cursor.execute``
    binds them (``statement % tuple(map(connection.escape, params))``),
    with its own escaping, but texts, integers and NULLs without its call
    chain per value (a fifth of a pass into MariaDB was that chain). None
    when the session has NO_BACKSLASH_ESCAPES, which changes how texts are
    escaped: pymysql binds them then."""
    from pymysql.constants.SERVER_STATUS import SERVER_STATUS_NO_BACKSLASH_ESCAPES
    from pymysql.converters import escape_string as text

    driver = conn.connection.driver_connection
    if driver.server_status & SERVER_STATUS_NO_BACKSLASH_ESCAPES:
        return None
    escape = driver.escape
    try:
        return _bound(statement, params, escape, text)
    except Exception:  # a value pymysql refuses (NaN, a dict): let it refuse it,
        return None  # through SQLAlchemy, which names the statement


def _bound(statement: str, params: tuple, escape: Any, text: Any) -> str:
    return statement % tuple(
        [
            f"'{text(v)}'"
            if type(v) is str
            else str(v)
            if type(v) is int
            else "NULL"
            if v is None
            else escape(v)
            for v in params
        ]
    )


renderers["pymysql"] = _render_pymysql
