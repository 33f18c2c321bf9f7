"""Automatic capture: every ORM write becomes a change event, atomically.

``capture(engine_or_session_factory, node="local")`` hooks SQLAlchemy's
session events once. From then on, each flush and each ORM-enabled bulk
statement on that engine appends one :class:`~replicator.events.ChangeEvent`
per affected row to ``replicator_outbox`` *on the session's own connection*,
inside the transaction that makes the change: the change and its event commit
or roll back together (spec invariant 1).

What is captured, and how each row's after-image is obtained:

* unit-of-work flushes (``after_flush``): new, modified and deleted objects,
  from the session's own state; columns the database filled in (server
  defaults, ``onupdate``) are read back with one SELECT per table;
* ORM bulk inserts (``session.execute(insert(Model), rows)``): the statement
  runs with ``RETURNING`` of the table's columns, so generated keys and
  defaults are known exactly;
* ORM ``update()`` / ``delete()`` statements (with a WHERE clause or as bulk
  by-primary-key lists): the matching rows are read, locked where the
  database has row locks, before the statement and read again after it;
* the legacy ``Session.bulk_insert_mappings()`` / ``bulk_update_mappings()``,
  on sessions the factory given to :func:`capture` makes (any session, given
  an engine), as their modern equivalents above.

An update that changes no value produces no event. Writes to the
replicator's own tables (``replicator_*``) and Core statements on plain
``Table`` objects are not captured: the replication engine applies remote
changes through Core, which is how an applied event avoids being captured
again (no echo).
"""

from __future__ import annotations

import functools
import itertools
import operator
import threading
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.mysql.dml import OnDuplicateClause
from sqlalchemy.dialects.postgresql.dml import OnConflictClause as PostgresOnConflict
from sqlalchemy.dialects.sqlite.dml import OnConflictClause as SQLiteOnConflict
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, SessionTransaction
from sqlalchemy.orm import sessionmaker as SessionMaker
from sqlalchemy.orm.attributes import NO_VALUE, instance_state
from sqlalchemy.orm.exc import UnmappedColumnError
from sqlalchemy.sql.ddl import sort_tables

from replicator import keys, outbox, versions
from replicator.clock import HybridLogicalClock
from replicator.dialects import Dialect, for_connection
from replicator.errors import CaptureError, ConfigurationError, SchemaError
from replicator.events import NODE_NAME, ChangeEvent, Operation, new_id, row_key
from replicator.tables import REQUIRED_FOR_CAPTURE, is_replicator_table
from replicator.tables import outbox as outbox_table
from replicator.tables import row_versions as row_versions_table

_MISSING: Any = object()
# Keys a process claims at a time where transactions write concurrently.
_CHUNK = 100


@dataclass(frozen=True, eq=False)
class TablePlan:
    """How to read one mapped table's rows out of ORM instance state."""

    table: sa.Table
    columns: tuple[tuple[str, str], ...]  # (column name, mapped attribute key)
    key_columns: tuple[str, ...]
    selected: tuple[sa.Column, ...]  # the mapped columns, in the order of `columns`
    on_update: frozenset[str]  # columns the flush itself sets on UPDATE (onupdate)
    stored: tuple[tuple[str, Callable[[Any], Any]], ...] = ()  # see Dialect.stored
    #: (column, attribute) of a single integer key the database would
    #: generate: capture gives new rows keys from the node's leased blocks.
    serial: tuple[str, str] | None = None

    def normalize(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` with session values turned into stored ones (in place)."""
        for name, as_stored in self.stored:
            value = row.get(name, _MISSING)
            if value is not _MISSING:
                row[name] = as_stored(value)
        return row

    @functools.cached_property
    def name(self) -> str:
        return str(self.table.name)

    @functools.cached_property
    def key_set(self) -> frozenset[str]:
        """:attr:`key_columns` as a set."""
        return frozenset(self.key_columns)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """The column names of :attr:`columns`."""
        return tuple(name for name, _ in self.columns)

    def key_of(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return self._key_getter(row)

    @functools.cached_property
    def _key_getter(self) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
        if len(self.key_columns) == 1:
            (column,) = self.key_columns
            return lambda row: (row[column],)
        return operator.itemgetter(*self.key_columns)

    def rows(self, result: Iterable[Any]) -> list[dict[str, Any]]:
        """Rows of a SELECT of :attr:`selected` as dicts by column name, their
        values as stored (see :meth:`normalize`)."""
        names = self.names
        return [self.normalize(dict(zip(names, row, strict=True))) for row in result]


@dataclass(slots=True)
class _Change:
    """A row change seen by capture, before it gets its version."""

    op: Operation
    key: tuple[Any, ...]
    row: dict[str, Any] | None
    changed: dict[str, Any]
    key_change: bool = False  # the delete half of a primary-key change


@dataclass(eq=False)
class Capture:
    """Capture of one engine's ORM writes as the node ``node``.

    Created by :func:`capture`; :meth:`stop` ends it. ``clock`` issues the
    events' timestamps and resumes, after a restart, above the largest one
    stored on the node.
    """

    engine: Engine
    node: str
    clock: HybridLogicalClock
    dialect: Dialect
    exclude: frozenset[str] = frozenset()
    scope: dict[str, Any] = field(default_factory=dict)
    _plans: dict[Mapper, tuple[TablePlan, ...]] = field(default_factory=dict, repr=False)
    _txids: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False)
    _role: keys.Role | None = field(default=None, repr=False)
    _reserved: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _claiming: threading.Lock = field(default_factory=threading.Lock, repr=False)
    #: The session classes whose legacy bulk methods this capture wrapped.
    _session_classes: set[type[Session]] = field(default_factory=set, repr=False)

    def stop(self) -> None:
        """Stop capturing this engine's writes, and take the wrappers of the
        legacy bulk methods off the session classes no other capture needs
        them on (idempotent)."""
        global _concurrent_writers
        with _lock:
            if _captures.get(self.engine) is self:
                del _captures[self.engine]
            _concurrent_writers = any(c.dialect.concurrent_writers for c in _captures.values())
            _release_legacy_methods(self)

    # --- mapping -------------------------------------------------------------

    def plans(self, mapper: Mapper) -> tuple[TablePlan, ...]:
        """The captured tables a mapper writes to ((), if none are captured)."""
        try:
            return self._plans[mapper]
        except KeyError:
            plans = tuple(
                _plan(mapper, table, self.dialect, self.engine.dialect)
                for table in mapper.tables
                if not is_replicator_table(table.name) and table.name not in self.exclude
            )
            self._plans[mapper] = plans
            return plans

    def txid(self, session: Session) -> str:
        """The id shared by all events of the session's current transaction."""
        root: SessionTransaction | None = session.get_transaction()
        txid = self._txids.get(root)
        if txid is None:
            txid = self._txids[root] = new_id()
        return txid

    # --- keys ----------------------------------------------------------------

    def new_keys(self, conn: Connection, table: str, count: int) -> list[int] | None:
        """``count`` keys for new rows of ``table`` (see :mod:`replicator.keys`),
        or None where the database is to generate them (a node that has
        never replicated). Raises :class:`CaptureError` when a local has
        used up its keys."""
        if self._role is None:
            self._role = keys.role_of(conn)
            if self._role is None:
                return None
        if self._role == "server" and self.dialect.keeps_generated_keys_out:
            # MariaDB numbers the server's rows itself, kept above every
            # leased block (see keys.lease): explicit keys from a block would
            # drag its counter into the block.
            return None
        if not self.dialect.concurrent_writers:
            # One writer at a time: take them in the app's transaction.
            if self._role == "server":
                return keys.take_or_lease(conn, self.dialect, self.node, table, count)
            return keys.take(conn, self.dialect, table, count)
        # Concurrent writers (MariaDB): a transaction holding the blocks' row
        # until it ends would make every insert wait for every other. Keys
        # are claimed in chunks, each in a short transaction of its own;
        # those a process does not use are skipped, never given twice.
        with self._claiming:  # the app's threads share the process's chunk
            return self._claimed(table, count)

    def _claimed(self, table: str, count: int) -> list[int]:
        reserved = self._reserved.setdefault(table, [])
        if len(reserved) < count:
            claim = max(count - len(reserved), _CHUNK)
            for attempt in range(3):
                try:
                    with self.engine.connect() as own, own.begin():
                        if self._role == "server":
                            claimed = keys.take_or_lease(own, self.dialect, self.node, table, claim)
                        else:
                            claimed = keys.take(own, self.dialect, table, claim)
                    break
                except sa.exc.IntegrityError:
                    if attempt == 2:
                        raise
                    # Another process leased the same block first: lease above it.
            reserved += claimed
        given, self._reserved[table] = reserved[:count], reserved[count:]
        return given

    # --- recording -----------------------------------------------------------

    def record(
        self, conn: Connection, txid: str, changes: list[tuple[TablePlan, list[_Change]]]
    ) -> None:
        """Version the changes and append their events: per table, one version
        upsert and one read; one outbox insert for the lot."""
        batch: list[tuple[str, ChangeEvent]] = []
        node, dialect, clock = self.node, self.dialect, self.clock
        delete = Operation.DELETE
        for plan, table_changes in changes:
            if self.scope:
                self._check_scope(plan, table_changes)
            table, key_columns = plan.name, plan.key_columns
            for round_ in _distinct_keys(table_changes):
                keys = [row_key(change.key) for change in round_]
                first = clock.reserve(len(round_))
                bumps = [
                    versions.Bump(key, hlc, change.op is delete)
                    for hlc, key, change in zip(itertools.count(first), keys, round_)
                ]
                advanced = versions.advance(conn, dialect, table, node, bumps)
                batch += [
                    (
                        key,
                        ChangeEvent(
                            event_id=new_id(),
                            origin=node,
                            table=table,
                            key=dict(zip(key_columns, change.key, strict=True)),
                            op=change.op,
                            row=change.row,
                            changed=change.changed,
                            version=version,
                            hlc=hlc,
                            txid=txid,
                        ),
                    )
                    for key, change, (version, hlc) in zip(keys, round_, advanced, strict=True)
                ]
                # A change made after seeing a row's last version is ordered after it.
                clock.observe(max(hlc for _, hlc in advanced))
        if batch:
            outbox.append(conn, dialect, batch)

    def _check_scope(self, plan: TablePlan, changes: list[_Change]) -> None:
        """Refuse a row this node's scope excludes: the server would never
        send it back, and other nodes' scopes would not expect it here."""
        columns = [c for c in self.scope if any(name == c for name, _ in plan.columns)]
        if len(columns) < len(self.scope):
            return  # an unscoped table: the config decides whether it replicates
        for change in changes:
            if change.row is None:
                continue
            for column in columns:
                value = change.row.get(column, _MISSING)
                if value is not _MISSING and value != self.scope[column]:
                    raise CaptureError(
                        f"{plan.name} {change.key!r}: {column} = {value!r} is outside node "
                        f"{self.node!r}'s scope ({column} = {self.scope[column]!r}); a scoped "
                        "local may only write its own rows"
                    )


def _distinct_keys(changes: list[_Change]) -> list[list[_Change]]:
    """``changes`` split, in order, into runs in which no key repeats.

    A key repeats within one flush only when primary keys are swapped; the
    second change must then descend from the first, so it is versioned after.
    """
    if len({change.key for change in changes}) == len(changes):
        return [changes] if changes else []  # the usual case: no key repeats
    rounds: list[list[_Change]] = [[]]
    seen: set[tuple[Any, ...]] = set()
    for change in changes:
        if change.key in seen:
            rounds.append([])
            seen.clear()
        seen.add(change.key)
        rounds[-1].append(change)
    return [round_ for round_ in rounds if round_]


def _plan(mapper: Mapper, table: sa.Table, dialect: Dialect, bind: sa.Dialect) -> TablePlan:
    if not table.primary_key.columns:
        raise CaptureError(
            f"table {table.name!r} (mapped by {mapper.class_.__name__}) has no primary key; "
            "the replicator identifies rows by it. Add a primary key to the table, or leave "
            f"the table out with capture(..., exclude={{{table.name!r}}})."
        )
    columns, selected = [], []
    for column in table.columns:
        try:
            # str(): SQLAlchemy's quoted_name would not encode.
            columns.append((str(column.name), mapper.get_property_by_column(column).key))
        except UnmappedColumnError:
            continue  # a column the class does not map keeps its database value
        selected.append(column)
    serial = table.autoincrement_column
    attrs = dict(columns)
    return TablePlan(
        table,
        tuple(columns),
        tuple(str(c.name) for c in table.primary_key.columns),
        tuple(selected),
        frozenset(
            str(c.name) for c in selected if c.onupdate is not None or c.server_onupdate is not None
        ),
        tuple(
            (str(c.name), as_stored)
            for c in selected
            if (as_stored := dialect.stored(c, bind)) is not None
        ),
        None if serial is None or serial.name not in attrs else (serial.name, attrs[serial.name]),
    )


# --- the registry and SQLAlchemy hooks -----------------------------------------

_lock = threading.Lock()
_captures: weakref.WeakKeyDictionary[Engine, Capture] = weakref.WeakKeyDictionary()
_hooks_installed = False
#: Whether a capture may have a database whose transactions write
#: concurrently (see _join_writers); set by capture(), recomputed by stop().
_concurrent_writers = False


def capture(
    target: Engine | SessionMaker | Any,
    node: str,
    *,
    exclude: Iterable[str] = (),
    clock: HybridLogicalClock | None = None,
    scope: dict[str, Any] | None = None,
) -> Capture:
    """Capture every ORM write made through ``target`` as node ``node``.

    ``target`` is an engine, or a session factory (``sessionmaker`` or
    ``scoped_session``) bound to one; every flush and ORM statement of a
    session bound to that engine is captured, whichever factory made it. The
    legacy ``Session.bulk_*`` methods fire no event, so capture wraps them on
    the class of the sessions ``target`` makes: a factory's own session class
    (sessions it did not make call them unwrapped), or ``Session`` itself
    when ``target`` is an engine; :meth:`Capture.stop` removes the wrappers.
    Tables named in ``exclude`` are not
    captured. With ``scope`` (a local node's ``{column: value}``), a write of
    a row outside it is refused with :class:`CaptureError` and the flush
    fails (nothing is written). Calling it again for the same engine and node returns the
    existing capture.

    Raises :class:`SchemaError` when the replicator's tables do not exist on
    the engine's database (run ``replicator init`` or
    :func:`replicator.migrate` first), :class:`CaptureError` when a mapped
    table has no primary key, :class:`ConfigurationError` for an empty node
    name, an unbound session factory, or an engine already captured under
    another node name.
    """
    global _hooks_installed, _concurrent_writers
    if not isinstance(node, str) or not NODE_NAME.match(node):
        raise ConfigurationError(
            f"capture() needs a node name of letters, digits and _.:- (at most 64), "
            f"e.g. capture(engine, node='local'); got {node!r}"
        )
    engine = _engine_of(target)
    dialect = for_connection(engine)
    excluded = frozenset(exclude)
    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())
        missing = [name for name in REQUIRED_FOR_CAPTURE if name not in present]
        if missing:
            raise SchemaError(
                f"the replicator's tables ({', '.join(missing)}) do not exist on "
                f"{engine.url.render_as_string(hide_password=True)}: run `replicator init` "
                "or replicator.migrate(url) before capture()"
            )
        last = max(
            conn.execute(sa.select(sa.func.max(outbox_table.c.hlc))).scalar() or 0,
            conn.execute(sa.select(sa.func.max(row_versions_table.c.hlc))).scalar() or 0,
        )
    if clock is None:
        clock = HybridLogicalClock(last=last)
    else:
        clock.observe(last)
    new = Capture(
        engine=engine,
        node=node,
        clock=clock,
        dialect=dialect,
        exclude=excluded,
        scope=dict(scope or {}),
    )
    numbered: dict[str, str] = {}
    for mapper in _all_mappers():  # fail now, not at the first write
        for plan in new.plans(mapper):
            default = plan.table.c[plan.serial[0]].default if plan.serial else None
            if isinstance(default, sa.Sequence):
                numbered[plan.name] = default.name
    if numbered:
        with engine.begin() as conn:
            present = set(sa.inspect(conn).get_table_names())
            keys.record_sequences(
                conn, dialect, {t: s for t, s in numbered.items() if t in present}
            )
    with _lock:
        existing = _captures.get(engine)
        if existing is not None:
            if existing.node != node:
                raise ConfigurationError(
                    f"this engine is already captured as node {existing.node!r}, "
                    f"not {node!r}; one database is one node"
                )
            _hold_legacy_methods(_session_class(target), existing)
            return existing
        # Before the capture is seen: a flush in another thread then takes
        # the writers' guard it needs.
        _concurrent_writers = _concurrent_writers or dialect.concurrent_writers
        _captures[engine] = new
        if not _hooks_installed:
            # Session events, public and fired for every session: the
            # handlers return at once for a session whose engine nobody
            # captures (see _capture_for).
            sa_event.listen(Session, "before_flush", _before_flush)
            sa_event.listen(Session, "after_flush", _after_flush)
            sa_event.listen(Session, "do_orm_execute", _on_orm_execute)
            _hooks_installed = True
        _hold_legacy_methods(_session_class(target), new)
    return new


def _engine_of(target: Any) -> Engine:
    if isinstance(target, Engine):
        return target
    if isinstance(target, Connection):
        return target.engine
    factory = getattr(target, "session_factory", target)  # scoped_session
    bind = getattr(factory, "kw", {}).get("bind")
    if bind is None:
        raise ConfigurationError(
            "capture() needs an engine or a session factory bound to one "
            "(sessionmaker(bind=engine)); got "
            f"{type(target).__name__}"
        )
    return bind.engine


def _all_mappers() -> list[Mapper]:
    from sqlalchemy.orm import mapperlib

    # SQLAlchemy has no public way to list every mapped class: mappers are
    # public per registry (registry.mappers), but capture() is not given the
    # app's registries. The private _all_registries() is what
    # configure_mappers() itself walks (checked on SQLAlchemy 2.1.9; called
    # directly, so that every capture() fails loudly if it goes away).
    return [m for registry in mapperlib._all_registries() for m in registry.mappers]


def _capture_for(session: Session, mapper: Mapper | None = None) -> Capture | None:
    if not _captures:
        return None
    try:
        bind = session.get_bind(mapper)
    except sa.exc.UnboundExecutionError:
        return None
    return _captures.get(bind.engine)


def _connection(session: Session, mapper: Mapper) -> Connection:
    return session.connection(bind_arguments={"mapper": mapper})


# --- unit of work ----------------------------------------------------------------


class _Flush:
    """The changes of one flush, grouped by capture and table."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.targets: dict[Mapper, tuple[Capture | None, tuple[TablePlan, ...]]] = {}
        self.changes: dict[Capture, dict[TablePlan, list[_Change]]] = {}
        self.refetch: dict[Capture, dict[TablePlan, list[_Change]]] = {}
        self.mapper_of: dict[Capture, Mapper] = {}
        self.deletes: dict[tuple[TablePlan, tuple[Any, ...]], _Change] = {}

    def target(self, mapper: Mapper) -> tuple[Capture | None, tuple[TablePlan, ...]]:
        """The capture of a mapper's engine and its captured tables (cached)."""
        found = self.targets.get(mapper)
        if found is None:
            capture = _capture_for(self.session, mapper)
            found = self.targets[mapper] = (capture, capture.plans(mapper) if capture else ())
            if capture is not None:
                self.changes.setdefault(capture, defaultdict(list))
                self.refetch.setdefault(capture, defaultdict(list))
                self.mapper_of.setdefault(capture, mapper)
        return found

    def pop_delete(self, capture: Capture, plan: TablePlan, key: tuple[Any, ...]) -> _Change | None:
        """Take back this flush's delete of ``key``, if it has one."""
        if not self.deletes:
            return None
        change = self.deletes.pop((plan, key), None)
        if change is not None:
            self.changes[capture][plan].remove(change)
        return change

    def add(self, capture: Capture, plan: TablePlan, change: _Change) -> None:
        if change.op is Operation.DELETE:
            self.deletes[plan, change.key] = change
        self.changes[capture][plan].append(change)
        if change.row is not None and _MISSING in change.row.values():
            self.refetch[capture][plan].append(change)

    def record(self) -> None:
        for capture, changes in self.changes.items():
            if not any(changes.values()):
                continue
            conn = _connection(self.session, self.mapper_of[capture])
            _fill_missing(conn, self.refetch[capture])
            capture.record(conn, capture.txid(self.session), _in_dependency_order(changes))


def _in_dependency_order(
    changes: dict[TablePlan, list[_Change]],
) -> list[tuple[TablePlan, list[_Change]]]:
    """Inserts and updates parents first, then deletes children first.

    The order the unit of work itself uses, so that applying the events in
    outbox order never breaks a foreign key.
    """
    if len(changes) == 1:
        ordered = list(changes)  # nothing to sort (the usual flush)
    else:
        # Mappers of one table (inheritance) have a plan each: keep them all.
        by_table: dict[sa.Table, list[TablePlan]] = defaultdict(list)
        for plan in changes:
            by_table[plan.table].append(plan)
        tables = tuple(by_table)
        # With their foreign keys' count: a key added at run time sorts anew.
        shape = (tables, tuple(len(t.foreign_keys) for t in tables))
        order = _table_orders.get(shape)
        if order is None:
            if len(_table_orders) >= 1024:
                _table_orders.clear()
            order = _table_orders[shape] = tuple(sort_tables(tables))
        ordered = [plan for table in order for plan in by_table[table]]
    saves, deletes = [], []
    for plan in ordered:
        kept, removed = [], []
        for change in changes[plan]:
            # A key change stays a delete followed by its insert, in place.
            if change.op is Operation.DELETE and not change.key_change:
                removed.append(change)
            else:
                kept.append(change)
        if kept:
            saves.append((plan, kept))
        if removed:
            deletes.append((plan, removed))
    deletes.reverse()
    return saves + deletes


#: The order sort_tables() gives to each set of tables one flush changed
#: (in the order they came): the same few sets, flush after flush.
_table_orders: dict[tuple[tuple[sa.Table, ...], tuple[int, ...]], tuple[sa.Table, ...]] = {}


def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    # An attribute set while expired has no previous value in the session;
    # read it now, while the row still holds it, so that an update to the
    # same value is recognised as no change.
    if not _captures:
        return
    dirty = session.dirty
    _join_writers(session, itertools.chain(session.new, session.deleted, dirty))
    _give_keys(session)
    unknown: dict[TablePlan, list[Any]] = defaultdict(list)
    for obj in dirty:
        state = instance_state(obj)
        if state.key is None or NO_VALUE not in state.committed_state.values():
            continue
        capture = _capture_for(session, state.mapper)
        if capture is None:
            continue
        for plan in capture.plans(state.mapper):
            unknown[plan].append(state)
    previous: dict[Any, dict[str, Any]] = {}
    for plan, states in unknown.items():
        conn = _connection(session, states[0].mapper)
        keys = [_identity_key(plan, state) for state in states]
        rows = {plan.key_of(r): r for r in _select_by_keys(conn, plan, keys)}
        for state, key in zip(states, keys, strict=True):
            if key in rows:
                previous.setdefault(state, {}).update(rows[key])
    session.info[_PREVIOUS] = previous


_PREVIOUS = "replicator.previous_values"


def _join_writers(session: Session, objects: Iterable[Any]) -> None:
    """Before a flush writes any captured row, join the database's outbox
    writers (once per transaction; nothing on SQLite and DuckDB), so that a
    replication pass never decides on a row this transaction is changing;
    see ``dialects/mariadb.py``."""
    if not _concurrent_writers:
        return
    checked: set[Mapper] = set()
    for obj in objects:
        mapper = instance_state(obj).mapper
        if mapper in checked:
            continue
        checked.add(mapper)
        capture = _capture_for(session, mapper)
        if capture is not None and capture.plans(mapper):
            capture.dialect.guard_append(_connection(session, mapper))


def _give_keys(session: Session) -> None:
    """Give the new objects of integer-keyed tables that have no key yet one
    from the node's blocks (see :mod:`replicator.keys`), before the flush
    inserts them."""
    waiting: dict[tuple[Capture, TablePlan], list[Any]] = defaultdict(list)
    serials: dict[Mapper, tuple[Capture | None, list[TablePlan]]] = {}
    for obj in session.new:
        state = instance_state(obj)
        found = serials.get(state.mapper)
        if found is None:
            capture = _capture_for(session, state.mapper)
            plans = capture.plans(state.mapper) if capture is not None else ()
            found = serials[state.mapper] = (capture, [p for p in plans if p.serial is not None])
        capture, plans = found
        for plan in plans:
            if state.dict.get(plan.serial[1]) is None:
                waiting[(capture, plan)].append(obj)
    for (capture, plan), objects in waiting.items():
        conn = _connection(session, instance_state(objects[0]).mapper)
        given = capture.new_keys(conn, plan.name, len(objects))
        if given is not None:
            for obj, key in zip(objects, given, strict=True):
                setattr(obj, plan.serial[1], key)


def _identity_key(plan: TablePlan, state: Any) -> tuple[Any, ...]:
    identity = dict(zip((c.name for c in state.mapper.primary_key), state.key[1], strict=True))
    return tuple(identity[c] for c in plan.key_columns)


def _after_flush(session: Session, flush_context: Any) -> None:
    # Runs after the flush's statements, before the session forgets what it
    # flushed: the flush's states and each object's committed_state (the
    # previous values of modified attributes) are still intact here.
    if not _captures:
        return
    flush = _Flush(session)
    previous = session.info.pop(_PREVIOUS, None) or {}

    # Deleted rows come from the flush itself, not session.deleted: a
    # delete-orphan cascade deletes objects that were never in the latter.
    explicitly_deleted = {instance_state(obj) for obj in session.deleted}
    for state, (is_delete, list_only) in flush_context.states.items():
        # "list only" deletes are not written, except in a row switch (a
        # delete and re-add of one key, which pop_delete turns into an update).
        if not is_delete or state.key is None:
            continue
        if list_only and state not in explicitly_deleted:
            continue
        capture, plans = flush.target(state.mapper)
        values = state.dict
        for plan in plans:
            old_row = plan.normalize(
                {name: values[attr] for name, attr in plan.columns if attr in values}
            )
            if old_row.keys() >= plan.key_set:  # the usual case: the key was loaded
                key = plan.key_of(old_row)
            else:
                identity = plan.normalize(
                    dict(zip(plan.key_columns, _identity_key(plan, state), strict=True))
                )
                key = tuple(old_row.get(c, identity[c]) for c in plan.key_columns)
            flush.add(capture, plan, _Change(Operation.DELETE, key, None, old_row))

    for obj in session.new:
        state = instance_state(obj)
        capture, plans = flush.target(state.mapper)
        values = state.dict
        for plan in plans:
            row = plan.normalize({name: values.get(attr, _MISSING) for name, attr in plan.columns})
            key = plan.key_of(row)
            replaced = flush.pop_delete(capture, plan, key)
            if replaced is None:
                flush.add(capture, plan, _Change(Operation.INSERT, key, row, {}))
            else:
                # Deleted and re-added in one flush: SQLAlchemy turns this into
                # an UPDATE of the row ("row switch"), and so does capture.
                changed = {c: v for c, v in replaced.changed.items() if row.get(c) != v}
                flush.add(capture, plan, _Change(Operation.UPDATE, key, row, changed))

    for obj in session.dirty:
        state = instance_state(obj)
        capture, plans = flush.target(state.mapper)
        # InstanceState.committed_state (not underscored, though undocumented):
        # the previous values of modified attributes, which the public
        # get_history() reads too, one call per attribute.
        committed = state.committed_state
        values = state.dict
        known = previous.get(state, {})
        for plan in plans:
            changed = {}
            for name, attr in plan.columns:
                if attr in committed:
                    before = committed[attr]
                    if before is NO_VALUE:
                        before = known.get(name, _MISSING)
                    after = values.get(attr, _MISSING)
                    if before is _MISSING:
                        changed[name] = None  # previous value unknown: assume changed
                    elif after is _MISSING or before != after:
                        changed[name] = before
            if not changed:
                continue  # nothing (or only relationships) changed: no UPDATE, no event
            for name in plan.on_update - changed.keys():
                changed[name] = known.get(name)  # set by the flush; previous if read
            row = plan.normalize({name: values.get(attr, _MISSING) for name, attr in plan.columns})
            new_key = plan.key_of(row)
            if changed.keys().isdisjoint(plan.key_columns):
                old_key = new_key  # the usual case: the key did not change
            else:
                old_key = tuple(
                    changed[c] if changed.get(c) is not None else row[c] for c in plan.key_columns
                )
            if old_key != new_key:
                # The primary key itself changed: to every other node that is
                # the old row going away and a new one arriving.
                old_row = {**row, **changed}
                flush.add(capture, plan, _Change(Operation.DELETE, old_key, None, old_row, True))
                flush.add(capture, plan, _Change(Operation.INSERT, new_key, row, {}))
            else:
                flush.add(capture, plan, _Change(Operation.UPDATE, new_key, row, changed))

    flush.record()


def _fill_missing(conn: Connection, refetch: dict[TablePlan, list[_Change]]) -> None:
    """Read back the columns the database filled in, one SELECT per table."""
    for plan, changes in refetch.items():
        rows = {plan.key_of(r): r for r in _select_by_keys(conn, plan, [c.key for c in changes])}
        for change in changes:
            fresh = rows[change.key]
            assert change.row is not None
            for name, value in change.row.items():
                if value is _MISSING:
                    change.row[name] = fresh[name]


# Keys per IN (...) list: well below SQLite's and MariaDB's parameter limits.
_KEYS_PER_SELECT = 500


def _select_by_keys(
    conn: Connection, plan: TablePlan, keys: list[tuple[Any, ...]], lock_with: Dialect | None = None
) -> list[dict[str, Any]]:
    """The rows of ``plan``'s table with ``keys`` (locked with ``lock_with``'s row locks)."""
    rows: list[dict[str, Any]] = []
    key_columns = list(plan.table.primary_key.columns)
    for start in range(0, len(keys), _KEYS_PER_SELECT):
        chunk = keys[start : start + _KEYS_PER_SELECT]
        if len(key_columns) == 1:
            where = key_columns[0].in_([k[0] for k in chunk])
        else:
            where = sa.tuple_(*key_columns).in_(chunk)
        select = sa.select(*plan.selected).where(where)
        if lock_with is not None:
            select = lock_with.lock_rows(select)
        rows.extend(plan.rows(conn.execute(select)))
    return rows


# --- ORM-enabled bulk statements ------------------------------------------------------


def _on_orm_execute(state: ORMExecuteState) -> Any:
    if not (state.is_insert or state.is_update or state.is_delete):
        return None
    mapper = state.bind_mapper
    if mapper is None:
        return None  # a Core statement on a plain Table: not an ORM write
    capture = _capture_for(state.session, mapper)
    if capture is None:
        return None
    plans = capture.plans(mapper)
    if not plans:
        return None
    if len(plans) > 1:
        # Refused before anything runs: nothing half-written.
        raise CaptureError(
            f"bulk statements on {mapper.class_.__name__} write to several tables "
            f"({', '.join(p.name for p in plans)}), which capture cannot follow; use the unit "
            "of work (session.add / attribute changes / session.delete) for this class"
        )
    if state.session.autoflush:
        # SQLAlchemy autoflushes pending objects only after this hook; the
        # rows read below must include them, as the statement will.
        state.session.flush()
    plan = plans[0]
    conn = _connection(state.session, mapper)
    capture.dialect.guard_append(conn)  # before the statement writes rows
    txid = capture.txid(state.session)
    if state.is_insert:
        return _bulk_insert(state, capture, plan, conn, txid)
    return _bulk_update_or_delete(state, capture, plan, conn, txid)


class _InsertResult(sa.engine.result.IteratorResult):
    """What an ORM bulk insert without RETURNING gives back: no rows, a count."""

    def __init__(self, rowcount: int) -> None:
        super().__init__(sa.engine.result.SimpleResultMetaData([]), iter([]))
        self.rowcount = rowcount


def _bulk_insert(
    state: ORMExecuteState, capture: Capture, plan: TablePlan, conn: Connection, txid: str
) -> Any:
    statement = state.statement
    existing: dict[tuple[Any, ...], dict[str, Any]] = {}
    if _is_upsert(statement):
        # An upsert (ON CONFLICT / ON DUPLICATE KEY): rows that already exist
        # are updates. Which ones is only known from the keys given.
        keys = _keys_in_parameters(plan, state.parameters)
        if keys is None:
            raise CaptureError(
                f"an upsert into {plan.name!r} without primary keys in its rows cannot be "
                "captured: give every row its key"
            )
        existing = {plan.key_of(r): r for r in _select_by_keys(conn, plan, keys, capture.dialect)}
    params = _with_keys(state, capture, plan, conn)
    user_columns = len(statement.returning_column_descriptions or ())
    # RETURNING the table's columns gives each inserted row exactly as stored:
    # keys the database generated, Python- and server-side defaults included.
    result = state.invoke_statement(
        statement=statement.returning(*plan.selected), params=params
    ).freeze()
    rows = plan.rows(r[user_columns:] for r in result().all())
    changes = []
    for row in rows:
        key = plan.key_of(row)
        old = existing.get(key)
        if old is None:
            changes.append(_Change(Operation.INSERT, key, row, {}))
        elif changed := {c: old[c] for c in row if row[c] != old[c]}:
            changes.append(_Change(Operation.UPDATE, key, row, changed))
    capture.record(conn, txid, [(plan, changes)])
    if user_columns:
        return result().columns(*range(user_columns))
    return _InsertResult(len(rows))


# The clauses that make an INSERT an upsert, as the dialects' insert() adds
# them (DuckDB's is PostgreSQL's): ON CONFLICT DO UPDATE / DO NOTHING and
# ON DUPLICATE KEY UPDATE.
_UPSERT_CLAUSES = (SQLiteOnConflict, PostgresOnConflict, OnDuplicateClause)


def _is_upsert(statement: Any) -> bool:
    """Whether an INSERT statement has an ON CONFLICT / ON DUPLICATE KEY clause.

    Found among the statement's children (``ClauseElement.get_children()``,
    public) rather than in the private ``_post_values_clause`` that holds it.
    """
    return any(isinstance(child, _UPSERT_CLAUSES) for child in statement.get_children())


def _with_keys(state: ORMExecuteState, capture: Capture, plan: TablePlan, conn: Connection) -> Any:
    """Keys from the node's blocks for the rows of a bulk insert that have
    none (parameters to merge into the statement's), or None."""
    if plan.serial is None:
        return None
    attr = plan.serial[1]
    sets = state.parameters if isinstance(state.parameters, list) else [state.parameters or {}]
    missing = [i for i, values in enumerate(sets) if values.get(attr) is None]
    if not missing:
        return None
    if not state.parameters:
        # insert(Model).values(...): the values are in the statement, where
        # keys cannot be added; a key given there is taken as it is.
        named = state.statement.compile().params
        if plan.serial[0] in named or attr in named:
            return None
        if capture.new_keys(conn, plan.name, 0) is not None:
            raise CaptureError(
                f"insert({plan.name}).values(...) without keys: this node gives new rows of "
                f"{plan.name!r} keys from its leased blocks, which cannot be added to values() "
                "written into the statement; pass the rows as parameters instead: "
                "session.execute(insert(Model), [{...}, ...])"
            )
        return None
    given = capture.new_keys(conn, plan.name, len(missing))
    if given is None:
        return None
    merged: list[dict[str, Any]] = [{} for _ in sets]
    for i, key in zip(missing, given, strict=True):
        merged[i] = {attr: key}
    return merged if isinstance(state.parameters, list) else merged[0]


def _keys_in_parameters(plan: TablePlan, parameters: Any) -> list[tuple[Any, ...]] | None:
    """The primary keys named in a statement's parameter sets (None if any lacks one)."""
    sets = parameters if isinstance(parameters, list) else [parameters or {}]
    attr_of = dict(plan.columns)
    keys = []
    for values in sets:
        try:
            keys.append(tuple(values[attr_of[c]] for c in plan.key_columns))
        except KeyError:
            return None
    return keys


def _assigned(statement: Any, parameters: Any) -> set[str]:
    """The names of the columns or attributes an UPDATE statement sets."""
    # SQLAlchemy has no public way to list what values() / ordered_values()
    # set: get_children() yields the new values but not plain Column keys, and
    # a compiled statement mixes SET and WHERE parameters. The private
    # `_values` is read (checked on SQLAlchemy 2.1.9), without a fallback, so
    # that every update() statement fails loudly if it goes away rather than
    # the refusal silently moving after the statement has run.
    names = {getattr(k, "key", k) for k in statement._values or ()}
    if isinstance(parameters, dict):
        names |= set(parameters)
    return {str(n) for n in names}


def _bulk_update_or_delete(
    state: ORMExecuteState, capture: Capture, plan: TablePlan, conn: Connection, txid: str
) -> Any:
    statement = state.statement
    params = state.parameters
    by_primary_key = isinstance(params, list) and bool(params)
    if state.is_update and not by_primary_key:
        key_attrs = {attr for name, attr in plan.columns if name in plan.key_columns}
        if _assigned(statement, params) & (key_attrs | set(plan.key_columns)):
            raise CaptureError(
                f"an update() statement that changes the primary key of {plan.name!r} cannot "
                "be captured; change keys through the unit of work (set the attribute and "
                "flush) instead"
            )
    if by_primary_key:
        # Bulk UPDATE by primary key: one parameter set per row, keys inside.
        keys = _keys_in_parameters(plan, params) or []
        before = _select_by_keys(conn, plan, keys, lock_with=capture.dialect)
    else:
        select = sa.select(*plan.selected)
        if statement.whereclause is not None:
            select = select.where(statement.whereclause)
        # The statement's own bound parameters (bindparam() in its WHERE).
        bound = params if isinstance(params, dict) else {}
        before = plan.rows(conn.execute(capture.dialect.lock_rows(select), bound))
    result = state.invoke_statement()
    if not before:
        return result
    # Read again what the statement may have changed: rows it left alone (a
    # LIMIT, a filter added by the ORM such as an inheritance discriminator)
    # give no event.
    after = {
        plan.key_of(r): r for r in _select_by_keys(conn, plan, [plan.key_of(r) for r in before])
    }
    changes = []
    for old in before:
        key = plan.key_of(old)
        new = after.get(key)
        if state.is_delete:
            if new is None:
                changes.append(_Change(Operation.DELETE, key, None, old))
        elif new is None:
            # Unreachable after the check above, unless the database changed
            # the key itself (a trigger, ON UPDATE CASCADE). Undo the whole
            # transaction rather than keep a change without its event.
            state.session.rollback()
            raise CaptureError(
                f"a row of {plan.name!r} changed its primary key during an update() "
                "statement; the transaction was rolled back"
            )
        elif changed := {c: old[c] for c in new if new[c] != old[c]}:
            changes.append(_Change(Operation.UPDATE, key, new, changed))
    capture.record(conn, txid, [(plan, changes)])
    return result


# --- the legacy bulk methods ------------------------------------------------------------
#
# Session.bulk_insert_mappings(), bulk_update_mappings() and bulk_save_objects()
# write without any event capture could follow. They go straight to
# Session._bulk_save_mappings(), which fires neither before_flush/after_flush
# nor do_orm_execute; bulk_persistence writes the rows without the mapper's
# before_insert/after_insert/before_update/after_update; the one session event
# on the way, after_transaction_create of a subtransaction, says neither which
# mapper nor which rows, and comes too late to refuse cleanly (checked on
# SQLAlchemy 2.1.9). So the methods themselves are wrapped, on Session: a
# session bound to a captured engine may come from any factory or class (a
# plain Session(engine) too), and a write it made uncaptured would never
# reach another node. Wrapping only the captured factory's own class would
# miss those silently. capture() installs the wrappers, Capture.stop() removes
# them with the last capture; while they are on, a session of an engine
# nobody captures calls the original unchanged.
#
# The mapping forms have exact modern equivalents, which capture sees;
# bulk_save_objects() has none and is refused for captured tables.

#: The session classes wrapped: class -> method name -> the class's own
#: method the wrapper replaced (None where it inherited it).
_replaced: dict[type[Session], dict[str, Any]] = {}
#: The captures that need each class's wrappers.
_holders: dict[type[Session], set[Capture]] = {}


def _bulk_insert_mappings(
    self: Session,
    original: Callable[..., None],
    mapper: Any,
    mappings: Iterable[dict[str, Any]],
    return_defaults: bool = False,
    render_nulls: bool = False,
) -> None:
    target = sa.inspect(mapper)
    if _capture_for(self, target) is None:
        return original(mapper, mappings, return_defaults, render_nulls)
    if return_defaults or render_nulls:
        raise CaptureError(
            "bulk_insert_mappings(return_defaults/render_nulls) is not captured; use "
            "session.execute(insert(Model).returning(...), rows) instead"
        )
    rows = list(mappings)
    if rows:
        self.execute(sa.insert(target), rows)
    return None


def _bulk_update_mappings(
    self: Session, original: Callable[..., None], mapper: Any, mappings: Iterable[dict[str, Any]]
) -> None:
    target = sa.inspect(mapper)
    if _capture_for(self, target) is None:
        return original(mapper, mappings)
    rows = list(mappings)
    if rows:
        self.execute(sa.update(target), rows)
    return None


def _bulk_save_objects(
    self: Session, original: Callable[..., None], objects: Iterable[object], *args: Any, **kw: Any
) -> None:
    objects = list(objects)
    if any(_capture_for(self, sa.inspect(o).mapper) is not None for o in objects):
        raise CaptureError(
            "session.bulk_save_objects() writes without any event capture could see; use "
            "session.add_all(objects) or session.execute(insert(Model), rows) instead"
        )
    return original(objects, *args, **kw)


_LEGACY: dict[str, Callable[..., None]] = {
    "bulk_insert_mappings": _bulk_insert_mappings,
    "bulk_update_mappings": _bulk_update_mappings,
    "bulk_save_objects": _bulk_save_objects,
}


def _session_class(target: Any) -> type[Session]:
    """The class whose legacy bulk methods capture wraps for ``target``:
    ``Session``, of which every session of the captured engine is one,
    whatever factory made it (see above)."""
    return Session


def _legacy_method(
    cls: type[Session], name: str, wrapper: Callable[..., None], own: Any
) -> Callable[..., None]:
    """``wrapper`` as method ``name`` of ``cls``, given the implementation it
    replaces: ``own`` (the class's own), else the one ``cls`` inherits."""

    def method(self: Session, *args: Any, **kw: Any) -> None:
        original = own.__get__(self, cls) if own is not None else getattr(super(cls, self), name)
        return wrapper(self, original, *args, **kw)

    method.__name__ = name
    method.__qualname__ = f"{cls.__qualname__}.{name}"
    method.__doc__ = getattr(cls, name).__doc__
    return method


def _hold_legacy_methods(cls: type[Session], capture: Capture) -> None:
    """Wrap ``cls``'s legacy bulk methods for ``capture`` (under ``_lock``)."""
    holders = _holders.setdefault(cls, set())
    if not holders:
        replaced = _replaced[cls] = {}
        for name, wrapper in _LEGACY.items():
            own = replaced[name] = cls.__dict__.get(name)
            setattr(cls, name, _legacy_method(cls, name, wrapper, own))
    holders.add(capture)
    capture._session_classes.add(cls)


def _release_legacy_methods(capture: Capture) -> None:
    """Restore the classes no capture but ``capture`` needed wrapped (under ``_lock``)."""
    for cls in capture._session_classes:
        holders = _holders[cls]
        holders.discard(capture)
        if holders:
            continue
        del _holders[cls]
        for name, own in _replaced.pop(cls).items():
            if own is None:
                delattr(cls, name)
            else:
                setattr(cls, name, own)
    capture._session_classes.clear()
