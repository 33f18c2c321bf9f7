"""Applying a batch of change events to a target node, in its transaction.

One look-up of the stored row versions decides each event against the
target's current version of its row (invariant 5):

* the event's version descends from the target's (or the target has none):
  the change is applied;
* the target has this version already, or a newer one: skipped (this is
  what makes re-delivery a no-op);
* neither descends from the other: the edits were concurrent, a conflict.

Conflicts are settled on the server only (see :mod:`replicator.conflicts`).
The local's events for the row that are concurrent with the server's
version are taken together, the table's policy decides, and the outcome is
written as a *settlement*: a new change made by the server, whose version
descends from both sides (so it never conflicts with either again) and
which goes to every local like any other change. A local that receives a
change concurrent with its own keeps its row and skips the change: its own
change has yet to reach the server, or has reached it and the settlement
is on its way; either way what arrives later settles the row everywhere.

Events that cannot be applied (a missing table or column, a different
primary key, an undecodable payload), conflicts the policy leaves to a
person, and a resolver that fails are parked in the target's review queue
(:mod:`replicator.parking`) with every version; the target keeps its row and
the rest of the batch goes on. Constraint violations are found by the
database when the batch is written; :mod:`replicator.sync` then applies the
batch event by event and parks the refused ones with :func:`reject`.

The batch is written with one bulk statement per table and kind (deletes,
upserts by column set, version state) through the dialect. Writes go
through Core on plain tables, which capture ignores: an applied event is
never captured again (no echo). The server appends every event it applied
to its outbox unchanged, with its original origin and version, so that
other nodes receive it, and appends its settlements. A local does the same
when asked (``log``: a vector sink follows it, see
:func:`replicator.checkpoints.followed`), so that its log holds every change
to its tables in the order they were made there. A local sends the server
only its own changes either way.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator import conflicts, constraints, keys, outbox, parking, values, versions
from replicator.conflicts import Conflict, Decision, Policy, Side
from replicator.dialects import Dialect
from replicator.dialects.base import TableShape
from replicator.events import (
    ChangeEvent,
    Operation,
    encode_event,
    key_from_text,
    new_id,
    row_key,
)
from replicator.outbox import Entry
from replicator.parking import Item, Parking, Reason
from replicator.tables import app_table_names, settlements
from replicator.values import Kind
from replicator.versions import Order, RowVersion

_encode_json = msgspec.json.Encoder().encode
# A JSON document as text with its members in one order, for comparing.
_document = msgspec.json.Encoder(order="sorted").encode

#: The label under which concurrent changes that reached the same row (both
#: deleted it, or wrote the same values) are counted: nothing to decide.
IDENTICAL = "identical"


class Counts(msgspec.Struct, kw_only=True):
    """What happened to the events of a batch, a pass or a replay.

    Every event read is counted once as applied, skipped, parked or failed.
    The events of a settled conflict count as applied; ``conflicts`` counts
    the settled or parked conflicts (one per row, however many events),
    ``conflicts_by_policy`` the same by the policy that handled them.
    ``inserted``, ``updated`` and ``deleted`` count the row writes by kind
    (a row the target had no version of counts as inserted). ``held``
    counts the skipped events a local held back because they are
    concurrent with its own unsent change (the server settles those).
    """

    read: int = 0
    applied: int = 0
    skipped: int = 0
    conflicts: int = 0
    parked: int = 0
    failed: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    held: int = 0
    conflicts_by_policy: dict[str, int] = {}

    def add(self, other: Counts) -> None:
        """Add ``other``'s counts to these (a subclass's own fields aside)."""
        for name in Counts.__struct_fields__:
            if name == "conflicts_by_policy":
                for policy, count in other.conflicts_by_policy.items():
                    self.conflicts_by_policy[policy] = (
                        self.conflicts_by_policy.get(policy, 0) + count
                    )
            else:
                setattr(self, name, getattr(self, name) + getattr(other, name))

    def conflict(self, policy: str) -> None:
        self.conflicts += 1
        self.conflicts_by_policy[policy] = self.conflicts_by_policy.get(policy, 0) + 1


@dataclass(frozen=True)
class Settlement:
    """How a server settles conflicts: its name (the origin of its
    settlements) and each table's policy, by name."""

    node: str
    policies: Mapping[str, tuple[str, Policy]] = field(default_factory=dict)
    default: tuple[str, Policy] = ("latest_timestamp", conflicts.latest_timestamp)

    def policy(self, table: str) -> tuple[str, Policy]:
        return self.policies.get(table, self.default)


def apply_batch(
    conn: Connection,
    dialect: Dialect,
    entries: list[Entry],
    *,
    shape_of: Callable[[str], TableShape | None],
    settle: Settlement | None,
    now: dt.datetime,
    careful: bool = False,
    restore: bool = False,
    log: bool = False,
    own: str | None = None,
    releasing: int | None = None,
) -> Counts:
    """Apply ``entries`` (in position order) on ``conn``'s node.

    ``shape_of`` gives a target table's columns and key (None if it does not
    exist). ``settle`` is given when the target is the server: it settles
    conflicts, and appends what it applied and settled to its outbox. A
    local (``settle`` None) skips changes concurrent with its own. ``now``
    stamps review items. Raises the database's error when it refuses a row
    (the caller's transaction then rolls back as a whole); ``careful``
    writes row by row with plain statements, so that error is the
    database's own message about the row. With ``restore`` (replay), an
    event whose version the target has already is written again when the
    target's row differs from it (a row changed bypassing capture). With
    ``log``, a local appends what it applied to its outbox (the server
    always does), except its own events (``own``: its name), which are
    there already. Nothing happens for no entries.

    An event of a table with an open held item, or one the target cannot
    take for a structural reason (see :data:`parking.HELD_REASONS`), is held
    (:func:`parking.hold`), not applied; ``releasing`` names the held item
    whose own events ``entries`` are (they are not held in it again).
    """
    batch = _Batch(conn, dialect, shape_of, settle, now, restore, log, own)
    batch.releasing = releasing
    batch.apply(entries)
    batch.write(careful)
    return batch.counts


def reject(
    conn: Connection,
    dialect: Dialect,
    entry: Entry,
    reason: Reason,
    detail: str,
    *,
    shape_of: Callable[[str], TableShape | None],
    now: dt.datetime,
) -> Counts:
    """Park one event the target refused to store, with its reason; a
    refused constraint is named where it can be (the unique value another
    row holds, the missing parent: see :mod:`replicator.constraints`)."""
    batch = _Batch(conn, dialect, shape_of, None, now)
    batch.counts.read = 1
    batch.load({entry.table: {entry.row_key}})
    shape, event = batch.shapes.get(entry.table), entry.event
    if reason is Reason.CONSTRAINT_VIOLATION and shape and event and event.row is not None:
        row = dialect.written_row(event.row, shape)
        explained = constraints.explain(conn, dialect, shape, row)
        if explained is not None:
            reason, detail = explained[0], f"{explained[1]} ({detail})"
    batch.park_entry(entry, reason, detail)
    batch.write()
    return batch.counts


def remove_orphans(
    conn: Connection,
    dialect: Dialect,
    entry: Entry,
    *,
    shape_of: Callable[[str], TableShape | None],
    settle: Settlement | None,
    now: dt.datetime,
) -> Counts:
    """Before ``entry`` (a delete) is applied on its own: remove and park the
    target's rows that refer to its row (see :meth:`_Batch.orphans`), in
    ``conn``'s transaction, leaving the row itself. For a database that
    checks foreign keys against the state at the start of a transaction
    (DuckDB refuses to delete a parent in the transaction that deleted its
    children), the caller commits this first. Nothing for another event."""
    batch = _Batch(conn, dialect, shape_of, settle, now)
    event = entry.event
    if event is None or event.op is not Operation.DELETE:
        return batch.counts
    batch.shapes[entry.table] = shape_of(entry.table)
    if batch.shapes[entry.table] is None:
        return batch.counts
    batch.hlc = event.hlc
    batch.deletes[entry.table] = {entry.row_key: event.key}
    batch.orphans()
    del batch.deletes[entry.table]
    batch.write()
    return batch.counts


class _Batch:
    """The decisions about one batch, then its writes."""

    def __init__(
        self,
        conn: Connection,
        dialect: Dialect,
        shape_of: Callable[[str], TableShape | None],
        settle: Settlement | None,
        now: dt.datetime,
        restore: bool = False,
        log: bool = False,
        own: str | None = None,
    ) -> None:
        self.conn, self.dialect, self.shape_of = conn, dialect, shape_of
        self.settle, self.now, self.restore = settle, now, restore
        self.log, self.own = log or settle is not None, own
        self.counts = Counts()
        self.txid = new_id()  # of this batch's settlements
        self.shapes: dict[str, TableShape | None] = {}
        self.current: dict[str, dict[str, RowVersion]] = {}
        self.open: dict[tuple[str, str], Item] = {}
        self.upserts: dict[str, dict[str, dict]] = {}
        # Per upserted row, the only columns to write when it exists (None: all).
        self.only: dict[str, dict[str, set[str] | None]] = {}
        self.deletes: dict[str, dict[str, dict]] = {}
        self.new_versions: dict[tuple[str, str], RowVersion] = {}
        # The rows looked up that have no stored version (see versions.store).
        self.absent: set[tuple[str, str]] = set()
        self.outgoing: list[tuple[str, str, str, int, bytes]] = []
        self.parkings: dict[tuple[str, str], Parking] = {}
        self.joined: dict[int, list[Parking]] = {}
        self.obsolete: dict[int, str] = {}
        self.problems: dict[tuple[str, tuple[str, ...], tuple[str, ...]], tuple | None] = {}
        # (table, key) -> (settlement version, version of the row it kept)
        self.settled: dict[tuple[str, str], tuple[dict, dict]] = {}
        self.new_settled: set[tuple[str, str]] = set()
        self.hlc = 0  # the latest event's, for the server's own changes
        self.leased: set[str] | None = None  # tables whose keys are leased (read once)
        self.graph: tuple[set[str], dict[str, list[tuple]]] | None = None
        # Per table, the kinds of its key columns as the batch's events
        # carry them (see _typed_key).
        self.key_kinds: dict[str, dict[str, Kind]] = {}
        # Tables whose key kinds no event told (see _event_keys).
        self.unsure_keys: set[str] = set()
        # Read ahead for conflicted rows (see _prefetch): the target's rows
        # (None: it has none), and the rows known to have no settlement.
        self.prefetched: dict[tuple[str, str], dict | None] = {}
        self.unsettled: set[tuple[str, str]] = set()
        # Open held items by table (see parking.hold), less the one being
        # released; and what this batch holds: table -> (reason, detail, payloads).
        self.held: dict[str, parking.Held] = {}
        self.releasing: int | None = None
        self.holding: dict[str, tuple[Reason, str, list[tuple[str, bytes]]]] = {}

    # --- deciding ------------------------------------------------------------

    def load(self, keys: Mapping[str, set[str]]) -> None:
        """The stored versions and open review items of these rows."""
        for table in keys:
            self.shapes.setdefault(table, self.shape_of(table))
        self.current = versions.load_many(self.conn, self.dialect, keys)
        self.absent = {
            (table, key)
            for table, table_keys in keys.items()
            for key in table_keys
            if key not in self.current.get(table, ())
        }
        if not parking.has_open(self.conn):  # the usual case: one cheap query
            return
        self.open = parking.open_items(self.conn, self.dialect, keys)
        self.held = {
            table: item
            for table, item in parking.held_items(self.conn, keys).items()
            if item.id != self.releasing
        }

    def apply(self, entries: list[Entry]) -> None:
        self.counts.read = len(entries)
        self.hlc = max((e.event.hlc for e in entries if e.event is not None), default=0)
        keys: dict[str, set[str]] = {}
        for entry in entries:
            keys.setdefault(entry.table, set()).add(entry.row_key)
        self.load(keys)
        by_table: dict[str, list[Entry]] = {}
        for entry in entries:
            if entry.table in self.held or entry.table in self.holding:
                self._hold(entry, None)
                continue
            problem = self._problem(entry)
            if problem is None:
                by_table.setdefault(entry.table, []).append(entry)
            elif problem[0] in parking.HELD_REASONS:
                self._hold(entry, problem)
            else:
                self.park_entry(entry, *problem)
        for table, table_entries in by_table.items():
            shape = self.shapes[table]
            assert shape is not None and table_entries[0].event is not None
            self.key_kinds[table] = shape.kinds_held(table_entries[0].event.key)
            self._decide(table, table_entries)

    def _problem(self, entry: Entry) -> tuple[Reason, str] | None:
        """Why the target cannot take ``entry`` at all (None if it can)."""
        event = entry.event
        if event is None:
            return (
                Reason.CORRUPT_PAYLOAD,
                f"the event at position {entry.position} cannot be decoded",
            )
        shape = self.shapes[entry.table]
        if shape is None:
            return Reason.MISSING_TABLE, f"table {entry.table!r} does not exist on the target"
        columns = tuple(event.row) if event.row is not None else ()
        cache_key = (entry.table, tuple(event.key), columns)
        if cache_key not in self.problems:
            self.problems[cache_key] = shape_problem(shape, tuple(event.key), columns)
        return self.problems[cache_key]

    def _decide(self, table: str, entries: list[Entry]) -> None:
        current = self.current.setdefault(table, {})
        conflicted: dict[str, list[Entry]] = {}
        logged: dict[str, Entry] = {}  # restore: the row's current version, as logged
        for entry in entries:
            key = entry.row_key
            if key in conflicted:  # the row's later events go with its conflict
                conflicted[key].append(entry)
                continue
            seen = current.get(key)
            order = (
                Order.AFTER if seen is None else versions.compare(entry.event.version, seen.version)
            )
            if order is Order.AFTER:
                self._take(table, entry, seen)
            elif order is Order.CONCURRENT and self.settle is not None:
                conflicted[key] = [entry]
            elif order is Order.EQUAL and self.restore:
                logged[key] = entry
            else:
                self.counts.held += order is Order.CONCURRENT
                # Already here (or older); or, on a local, concurrent with
                # the local's own change, which the server will settle.
                self.counts.skipped += 1
        if conflicted:
            self._prefetch(table, conflicted)
        for key, run in conflicted.items():
            self._decide_row(table, key, run)
        if logged:
            self._restore(table, logged)

    def _prefetch(self, table: str, conflicted: dict[str, list[Entry]]) -> None:
        """Read, for a table's conflicted rows, what settling them reads row
        by row otherwise: the settlements that kept a side of them, and the
        target's rows (typed by the last event's row, as :meth:`_settle`
        types them; only for runs ending with a row). One statement per
        chunk of keys: parking 20,000 conflicts took 40,000 single-row reads.
        Nothing is written before the batch's :meth:`write`, so the rows
        read here are the rows a read at settling would find."""
        keys = [k for k in conflicted if (table, k) not in self.settled]
        c = settlements.c
        for start in range(0, len(keys), self.dialect.in_chunk):
            chunk = keys[start : start + self.dialect.in_chunk]
            select = sa.select(c.row_key, c.version, c.kept).where(
                c.table_name == table, c.row_key.in_(chunk)
            )
            for key, version, kept in self.conn.execute(select):
                self.settled[(table, key)] = (json.loads(version), json.loads(kept))
        self.unsettled.update((table, k) for k in keys if (table, k) not in self.settled)
        last = {k: run[-1] for k, run in conflicted.items() if run[-1].event.row is not None}
        rows = self._current_rows(table, last)
        self.prefetched.update(((table, k), rows.get(k)) for k in last)

    def _restore(self, table: str, logged: dict[str, Entry]) -> None:
        """Write rows that differ from the logged version the target claims
        to hold; the others are skipped as usual."""
        rows = self._current_rows(table, logged)
        for key, entry in logged.items():
            if (table, key) in self.new_versions:
                self.counts.skipped += 1  # a later event of this batch changed it
                continue
            event = entry.event
            row = rows.get(key)
            wanted = event.row
            if wanted is None:
                same = row is None
            else:
                same = row is not None and all(row.get(c) == v for c, v in wanted.items())
            if same:
                self.counts.skipped += 1
                continue
            self._write(table, key, event.key, wanted, existed=row is not None)
            self._log(table, entry)
            self.counts.applied += 1

    def _decide_row(self, table: str, key: str, entries: list[Entry]) -> None:
        """A row's events in order, from the first that conflicts: each run
        of events concurrent with the row's version is settled at once."""
        current = self.current[table]
        i = 0
        while i < len(entries):
            seen = current.get(key)
            order = (
                Order.AFTER
                if seen is None
                else versions.compare(entries[i].event.version, seen.version)
            )
            if order is Order.AFTER:
                self._take(table, entries[i], seen)
                i += 1
            elif order is not Order.CONCURRENT:
                self.counts.skipped += 1
                i += 1
            else:
                j = i + 1
                while (
                    j < len(entries)
                    and versions.compare(entries[j].event.version, seen.version) is Order.CONCURRENT
                ):
                    j += 1
                run = entries[i:j]
                content = self._content_version(table, key, seen)
                if versions.compare(run[0].event.version, content) is Order.AFTER:
                    self._absorb(table, key, run, seen)
                else:
                    self._settle(table, key, run, seen, content)
                i = j

    def _take(self, table: str, entry: Entry, seen: RowVersion | None) -> None:
        """Apply a change that descends from the row's version (``seen``)."""
        event = entry.event
        deleted = event.op is Operation.DELETE
        existed = seen is not None and not seen.deleted
        # Only the columns the change changed, for a row other rows may refer
        # to (DuckDB refuses to rewrite an indexed column of such a row, even
        # to its value), where the target's row is the one the change was
        # made to: not when an earlier change of the row was parked (its
        # values are not here), nor in a replay (which repairs rows changed
        # behind capture's back). Other rows are written whole: one
        # statement for all of them.
        partial = (
            existed
            and not self.restore
            and (table, entry.row_key) not in self.open
            and table in self._referred_to()
        )
        changed = set(event.changed) if event.op is Operation.UPDATE and partial else None
        self._write(
            table, entry.row_key, event.key, None if deleted else event.row, existed, changed
        )
        self._set_version(
            table,
            entry.row_key,
            RowVersion(event.version, event.hlc, event.origin, deleted),
            lambda: f"event {event.event_id} from {event.origin}",
        )
        self._log(table, entry)
        self.counts.applied += 1

    def _log(self, table: str, entry: Entry) -> None:
        """Append an applied event to the target's outbox (see the module doc)."""
        event = entry.event
        if self.log and event.origin != self.own:
            self.outgoing.append((event.origin, table, entry.row_key, event.hlc, entry.payload))

    def _referred_to(self) -> set[str]:
        """The target's tables that a foreign key refers to."""
        return self._foreign_keys()[0]

    def _foreign_keys(self) -> tuple[set[str], dict[str, list[tuple]]]:
        """The target's foreign keys, read once per batch: the tables some
        foreign key refers to, and per parent table the ``(child, columns,
        parent's columns)`` whose parent's delete the database refuses while
        rows refer to it (those with an ON DELETE action it carries out
        itself are left out)."""
        if self.graph is None:
            referred: set[str] = set()
            children: dict[str, list[tuple]] = {}
            for table in app_table_names(self.conn):
                shape = self.shapes.setdefault(table, self.shape_of(table))
                for at, (columns, parent, parent_columns) in enumerate(
                    shape.parents if shape else ()
                ):
                    referred.add(parent)
                    if at < len(shape.on_delete) and shape.on_delete[at] is not None:
                        continue  # the database itself cascades or clears the reference
                    if self.shapes.setdefault(parent, self.shape_of(parent)) is not None:
                        children.setdefault(parent, []).append((table, columns, parent_columns))
            self.graph = (referred, children)
        return self.graph

    def _leased(self, table: str) -> bool:
        """Whether this server leases keys of ``table`` (see :mod:`replicator.keys`)."""
        if self.leased is None:
            self.leased = keys.leased_tables(self.conn)
        return table in self.leased

    def _content_version(self, table: str, key: str, seen: RowVersion) -> dict:
        """The version of the change that made the row as it stands: the row's
        version, unless that is a settlement that kept one side's row."""
        if (table, key) not in self.settled and (table, key) not in self.unsettled:
            c = settlements.c
            found = self.conn.execute(
                sa.select(c.version, c.kept).where(c.table_name == table, c.row_key == key)
            ).first()
            if found is not None:
                self.settled[(table, key)] = (json.loads(found[0]), json.loads(found[1]))
        settled = self.settled.get((table, key))
        if settled is not None and settled[0] == seen.version:
            return settled[1]
        return seen.version

    def _absorb(self, table: str, key: str, run: list[Entry], seen: RowVersion) -> None:
        """Apply a ``run`` concurrent with a settlement only through the side
        the settlement discarded: it descends from the row as it stands, so
        it is a sequential edit. It is written as a settlement of the server,
        whose version descends from both, so every node takes it."""
        assert self.settle is not None
        last = run[-1].event
        base, _ = _base([entry.event for entry in run])
        self._write(table, key, last.key, last.row, not seen.deleted)
        self._emit(table, key, run, seen, (base, None), last.row, last.hlc, last.version, "edit")
        self.counts.applied += len(run)

    def _emit(
        self,
        table: str,
        key: str,
        run: list[Entry],
        seen: RowVersion,
        before: tuple[dict | None, dict | None],
        row: dict | None,
        hlc: int,
        kept: dict | None,
        how: str,
    ) -> None:
        """Write the server's settlement of ``run`` against ``seen``: ``row``
        (the change from ``before``: the server's and the local's rows), with
        a version descending from both.
        ``kept`` is the version of the change whose row it keeps (None for a
        new, merged row)."""
        assert self.settle is not None
        last = run[-1].event
        version = versions.increment(versions.merge(seen.version, last.version), self.settle.node)
        settlement = ChangeEvent(
            event_id=new_id(),
            origin=self.settle.node,
            table=table,
            key=last.key,
            **change_fields(*before, after=row),
            version=version,
            hlc=hlc,
            txid=self.txid,
        )
        self.outgoing.append((self.settle.node, table, key, hlc, encode_event(settlement)))
        if kept is not None:
            self.settled[(table, key)] = (version, kept)
            self.new_settled.add((table, key))
        self._set_version(
            table,
            key,
            RowVersion(version, hlc, self.settle.node, row is None),
            f"the {how} settlement of {', '.join(e.event.event_id for e in run)}",
        )

    def _settle(
        self, table: str, key: str, run: list[Entry], seen: RowVersion, content: dict
    ) -> None:
        """Settle the local's ``run`` of events against the server's version;
        ``content`` is the version of the change that made the server's row."""
        assert self.settle is not None
        last = run[-1].event
        base, touched = _base([entry.event for entry in run])
        local_row = last.row
        if seen.deleted:
            row = None
        elif local_row is not None and (table, key) in self.prefetched:
            row = self.prefetched[(table, key)]
        else:
            row = self._current_row(table, last.key, local_row or base)
        server = Side(
            row=row,
            version=seen.version,
            hlc=seen.hlc,
            origin=seen.origin,
        )
        local = Side(row=local_row, version=last.version, hlc=last.hlc, origin=last.origin)
        changed = frozenset(
            c
            for c in touched
            if base is None or local_row is None or local_row.get(c) != base.get(c)
        )
        conflict = Conflict(table, last.key, base, server, local, changed)
        name, policy = self.settle.policy(table)
        same = _same_rows(self.shapes[table], server.row, local.row)
        collided = base is None and server.row is not None and not same
        item = self.open.get((table, key))
        if item is not None and item.reason == Reason.KEY_COLLISION:
            collided = True  # a later edit of the local's row: still not the server's row
        if collided and self._leased(table):
            # Both nodes inserted a row under one key of a table whose keys
            # are leased: two different rows, one of them numbered outside
            # the blocks (before the node's first pass, or not captured).
            # No policy may pick one: a person keeps both apart.
            self.counts.conflict(Reason.KEY_COLLISION.value)
            self._park_conflict(
                conflict,
                run,
                Reason.KEY_COLLISION.value,
                Reason.KEY_COLLISION,
                f"{server.origin} and {local.origin} each inserted a row of {table} with key "
                f"{key}: two different rows (a key numbered outside the blocks leased to "
                f"{local.origin}, before its first pass or bypassing capture); the server "
                "kept its row",
            )
            return
        if same:
            outcome: Decision | dict = Decision.SERVER
            name = IDENTICAL
        else:
            try:
                outcome = _checked(policy(conflict), self.shapes[table], last.key)
            except Exception as e:  # a resolver's bug must not stop replication
                self.counts.conflict(name)
                self._park_conflict(
                    conflict,
                    run,
                    name,
                    Reason.RESOLVER_ERROR,
                    f"policy {name} failed: {type(e).__name__}: {e}",
                )
                return
        self.counts.conflict(name)
        if outcome is Decision.REVIEW:
            self._park_conflict(
                conflict,
                run,
                name,
                Reason.MANUAL_REVIEW,
                f"concurrent changes by {server.origin} and {local.origin}; "
                f"policy {name} leaves the decision to a person",
            )
            return
        if outcome is Decision.SERVER:
            row, hlc, kept = server.row, server.hlc, content
        elif outcome is Decision.LOCAL:
            row, hlc, kept = local.row, local.hlc, last.version
            self._write(table, key, last.key, row, server.row is not None)
        else:
            row, hlc, kept = outcome, max(server.hlc, local.hlc), None
            self._write(table, key, last.key, row, server.row is not None)
        self._emit(table, key, run, seen, (server.row, local.row), row, hlc, kept, name)
        self.counts.applied += len(run)

    def _write(
        self,
        table: str,
        key: str,
        key_values: dict,
        row: dict | None,
        existed: bool = True,
        changed: set[str] | None = None,
    ) -> None:
        """Record a row's new state (None: deleted); ``existed``: whether the
        target held it before, for the insert/update/delete counts;
        ``changed``: the only columns that differ from the target's row
        (None: any may)."""
        upserts = self.upserts.setdefault(table, {})
        deletes = self.deletes.setdefault(table, {})
        only = self.only.setdefault(table, {})
        if row is None:
            deletes[key] = key_values
            upserts.pop(key, None)
            only.pop(key, None)
            self.counts.deleted += existed
        else:
            # Columns changed by several events of the batch add up; a row
            # written whole once is written whole.
            earlier = only.get(key, set()) if key in upserts else set()
            only[key] = None if changed is None or earlier is None else earlier | changed
            upserts[key] = row
            deletes.pop(key, None)
            if existed:
                self.counts.updated += 1
            else:
                self.counts.inserted += 1

    def _set_version(
        self, table: str, key: str, version: RowVersion, cause: str | Callable[[], str]
    ) -> None:
        """Record a row's new version; an open review item it supersedes is
        closed, saying ``cause`` (made only then when it is a function: a
        pass takes thousands of events per second, nearly all with no item)."""
        self.current[table][key] = self.new_versions[(table, key)] = version
        item = self.open.get((table, key))
        if item is not None and item.superseded_by(version.version):
            self.obsolete[item.id] = f"superseded by {cause if isinstance(cause, str) else cause()}"
            del self.open[(table, key)]

    # --- parking -------------------------------------------------------------

    def _park_conflict(
        self, conflict: Conflict, run: list[Entry], policy: str, reason: Reason, detail: str
    ) -> None:
        self._park(
            Parking(
                table=conflict.table,
                key=run[-1].row_key,
                reason=reason,
                detail=detail,
                policy=policy,
                base=conflict.base,
                local=conflict.server,  # the target's version: the server's
                remote=conflict.local,
                events=[entry.payload for entry in run],
            )
        )
        self.counts.parked += len(run)

    def park_entry(self, entry: Entry, reason: Reason, detail: str) -> None:
        """Park one event the target cannot take; the target keeps its row."""
        event = entry.event
        key_values = event.key if event is not None else self._key_values(entry)
        seen = self.current.get(entry.table, {}).get(entry.row_key)
        local = None
        if seen is not None:
            row = None
            if not seen.deleted and key_values is not None and self.shapes.get(entry.table):
                row = self._current_row(entry.table, key_values, (event and event.row) or {})
            local = Side(row=row, version=seen.version, hlc=seen.hlc, origin=seen.origin)
        remote = None
        base = None
        if event is not None:
            remote = Side(row=event.row, version=event.version, hlc=event.hlc, origin=event.origin)
            base = _base([event])[0]
        self._park(
            Parking(
                table=entry.table,
                key=entry.row_key,
                reason=reason,
                detail=detail,
                base=base,
                local=local,
                remote=remote,
                events=[entry.payload],
            )
        )
        self.counts.parked += 1

    def _hold(self, entry: Entry, problem: tuple[Reason, str] | None) -> None:
        """Hold ``entry`` in its table's held item: for ``problem``, or
        (None) because the table has one already, which it joins."""
        if entry.table not in self.holding:
            reason, detail = problem or (Reason(self.held[entry.table].reason), "")
            self.holding[entry.table] = (reason, detail, [])
        self.holding[entry.table][2].append((entry.row_key, entry.payload))
        self.counts.parked += 1

    def _park(self, parking: Parking) -> None:
        """One open item per row: a parking joins the row's open item."""
        where = (parking.table, parking.key)
        if where in self.open:
            self.joined.setdefault(self.open[where].id, []).append(parking)
        elif where in self.parkings:
            earlier = self.parkings[where]
            self.parkings[where] = msgspec.structs.replace(
                parking,
                base=earlier.base,
                local=earlier.local,
                remote=parking.remote or earlier.remote,
                events=earlier.events + parking.events,
            )
        else:
            self.parkings[where] = parking

    # --- reading the target's rows (conflicts and parking only) ---------------

    def _current_row(self, table: str, key: dict, held: Mapping[str, Any] | None) -> dict | None:
        return read_row(self.conn, self.dialect, self.shapes[table], key, held)

    def _current_rows(self, table: str, entries: dict[str, Entry]) -> dict[str, dict]:
        """The target's rows for these entries' keys, by row key, typed like
        each entry's values (one statement per chunk of keys)."""
        shape = self.shapes[table]
        found: dict[str, dict] = {}
        items = list(entries.items())
        for start in range(0, len(items), self.dialect.in_chunk):
            chunk = items[start : start + self.dialect.in_chunk]
            condition, params = self.dialect.where_in(
                self.conn,
                shape.key,
                [self.dialect.written_key(e.event.key.values()) for _, e in chunk],
            )
            # By the keys' values as events carry them (SQLite returns a
            # UUID key as its 32 hex digits).
            by_key = {tuple(entry.event.key.values()): (key, entry) for key, entry in chunk}
            quoted = self.conn.dialect.identifier_preparer.quote(table)
            kinds = self._key_kinds(table)
            result = self.conn.exec_driver_sql(f"SELECT * FROM {quoted} WHERE {condition}", params)
            for raw in result.mappings():
                ident = tuple(_typed_key(shape, raw, kinds).values())
                if ident not in by_key:
                    continue
                key, entry = by_key[ident]
                found[key] = shape.typed(raw, entry.event.row or entry.event.changed)
        return found

    def _key_kinds(self, table: str) -> dict[str, Kind]:
        """The kinds of ``table``'s columns, its key's as events carry keys
        of the table: this batch's, else the latest in the target's log
        (SQLite keeps a UUID key as CHAR(32): only an event says it holds
        UUIDs), else as its columns' types say. Asked before a result is
        read, not while: the log's query would cut a DuckDB result short."""
        kinds = self.key_kinds.get(table)
        if kinds is None:
            shape = self.shapes[table]
            assert shape is not None
            logged = outbox.last_key(self.conn, table)
            if logged is None:
                self.unsure_keys.add(table)
            kinds = self.key_kinds[table] = shape.kinds_held(logged)
        return kinds

    def _event_keys(self, table: str, keys: list[dict]) -> list[dict]:
        """``keys`` of rows of ``table`` (typed by :meth:`_key_kinds`) as
        events carry them. Where no event of the table was at hand, a text
        key column may still hold UUIDs as 32 hex digits (SQLAlchemy's Uuid
        on SQLite and MariaDB): the rows' versions, kept under the key as
        events carry it, say which form a row's key has."""
        if table not in self.unsure_keys:
            return keys
        as_uuids = [{c: _as_uuid(v) for c, v in key.items()} for key in keys]
        wanted = {row_key(list(k.values())) for k in keys + as_uuids}
        stored = versions.load_many(self.conn, self.dialect, {table: wanted}).get(table, {})
        return [
            uuids
            if row_key(list(key.values())) not in stored and row_key(list(uuids.values())) in stored
            else key
            for key, uuids in zip(keys, as_uuids, strict=True)
        ]

    def _key_values(self, entry: Entry) -> dict | None:
        shape = self.shapes.get(entry.table)
        return None if shape is None else key_from_text(entry.row_key, shape.key)

    # --- writing ---------------------------------------------------------------

    def orphans(self) -> None:
        """Delete wins: a row of the target that refers (by a foreign key to
        the primary key) to a row this batch deletes, and that the batch
        neither deletes nor writes, is deleted with it (and the rows that
        refer to it, in turn) and parked with reason ``missing_parent``,
        its row whole in the item. It was made on this node or elsewhere
        while the parent was being deleted: no node keeps it, none is left
        with an orphan, and a person can still see it. The server sends
        the delete on to every node, as a change of its own."""
        pending = [t for t in self.shapes if self.deletes.get(t)]
        if not pending:
            return
        children = self._foreign_keys()[1]
        while pending:
            parent = pending.pop(0)
            gone = [tuple(k.values()) for k in self.deletes.get(parent, {}).values()]
            for child, columns, parent_columns in children.get(parent, []):
                referred = self._referred(parent, parent_columns, gone)
                found = self._referring(child, columns, referred) if referred else {}
                if found:
                    self._remove_orphans(child, parent, found)
                    pending.append(child)

    def _referred(self, parent: str, columns: tuple[str, ...], keys: list[tuple]) -> list[tuple]:
        """The values of ``columns`` (a foreign key's target) of the rows of
        ``parent`` with primary keys ``keys``, as the target holds them."""
        shape = self.shapes[parent]
        assert shape is not None
        if tuple(columns) == shape.key:
            return keys
        quote = self.conn.dialect.identifier_preparer.quote
        found: list[tuple] = []
        for start in range(0, len(keys), self.dialect.in_chunk):
            chunk = list(map(self.dialect.written_key, keys[start : start + self.dialect.in_chunk]))
            condition, params = self.dialect.where_in(self.conn, shape.key, chunk)
            found += [
                tuple(r)
                for r in self.conn.exec_driver_sql(
                    f"SELECT {', '.join(map(quote, columns))} FROM {quote(parent)} "
                    f"WHERE {condition}",
                    params,
                )
                if None not in tuple(r)
            ]
        return found

    def _referring(
        self, child: str, columns: tuple[str, ...], parent_keys: list[tuple]
    ) -> dict[str, dict]:
        """The rows of ``child`` whose ``columns`` hold one of ``parent_keys``
        and that this batch does not delete or write: row key -> row."""
        shape = self.shapes[child]
        assert shape is not None
        quoted = self.conn.dialect.identifier_preparer.quote(child)
        found: dict[str, dict] = {}
        kinds = self._key_kinds(child)
        for start in range(0, len(parent_keys), self.dialect.in_chunk):
            chunk = parent_keys[start : start + self.dialect.in_chunk]
            chunk = list(map(self.dialect.written_key, chunk))
            condition, params = self.dialect.where_in(self.conn, columns, chunk)
            select = f"SELECT * FROM {quoted} WHERE {condition}"
            raws = self.conn.exec_driver_sql(select, params).mappings().all()
            keys = self._event_keys(child, [_typed_key(shape, raw, kinds) for raw in raws])
            for raw, key_values in zip(raws, keys, strict=True):
                # Compared with the batch's keys as events give them.
                key = row_key(list(key_values.values()))
                if key not in self.deletes.get(child, {}) and key not in self.upserts.get(
                    child, {}
                ):
                    # Typed by its columns' types (SQLite returns dates as
                    # text): the item shows, and may restore, it; its key
                    # as events carry it (the delete of it is one).
                    found[key] = {**shape.typed(raw), **key_values}
        return found

    def _remove_orphans(self, child: str, parent: str, rows: dict[str, dict]) -> None:
        shape = self.shapes[child]
        assert shape is not None
        stored = versions.load_many(self.conn, self.dialect, {child: set(rows)}).get(child, {})
        current = self.current.setdefault(child, {})
        for key, row in rows.items():
            key_values = {c: row[c] for c in shape.key}
            seen = current.get(key) or stored.get(key)
            self._write(child, key, key_values, None, existed=True)
            before = seen or RowVersion({}, self.hlc, self.own or "", False)
            self._park(
                Parking(
                    table=child,
                    key=key,
                    reason=Reason.MISSING_PARENT,
                    detail=(
                        f"the {parent} row it refers to was deleted on another node while this "
                        f"row was made or changed; the delete wins: this row was removed with "
                        "it and kept here"
                    ),
                    # The removed row, as the side that lost: the delete that
                    # removed it descends from its version, and must not close
                    # the item as superseded.
                    remote=Side(
                        row=row, version=before.version, hlc=before.hlc, origin=before.origin
                    ),
                )
            )
            if self.settle is not None:
                # The server's own change, as a settlement is: every node drops the row.
                version = versions.increment(before.version, self.settle.node)
                hlc = max(self.hlc, before.hlc + 1)
                event = ChangeEvent(
                    event_id=new_id(),
                    origin=self.settle.node,
                    table=child,
                    key=key_values,
                    op=Operation.DELETE,
                    row=None,
                    changed=row,
                    version=version,
                    hlc=hlc,
                    txid=self.txid,
                )
                self.outgoing.append((self.settle.node, child, key, hlc, encode_event(event)))
                after = RowVersion(version, hlc, self.settle.node, True)
            else:
                after = msgspec.structs.replace(before, deleted=True)
            self._set_version(child, key, after, f"the delete of its {parent} row")

    def _keep_sequences_ahead(self, tables: list[str]) -> None:
        """Move the sequences that number integer-keyed tables past the keys
        this batch wrote: the app's next insert that draws from one (outside
        capture, or before this node replicated) must not take a key a row
        here already has."""
        largest: dict[str, int] = {}
        for table in tables:
            shape = self.shapes[table]
            key = shape.integer_key if shape is not None else None
            if key is None:
                continue
            written = [r[key] for r in self.upserts.get(table, {}).values()]
            written = [k for k in written if isinstance(k, int)]
            if written:
                largest[table] = max(written)
        if largest:
            found = keys.sequences_of(self.conn, self.dialect, {t: self.shapes[t] for t in largest})
            for table, sequence in found.items():
                self.dialect.keep_ahead(self.conn, sequence, largest[table])

    def write(self, careful: bool = False) -> None:
        self.orphans()
        # Parents before their children (by the target's foreign keys; else
        # in the order the batch first touched them, the source's dependency
        # order): deletes children first, then upserts parents first, so
        # foreign keys hold throughout.
        tables = parents_first(
            [t for t in self.shapes if self.upserts.get(t) or self.deletes.get(t)], self.shapes
        )
        for table in reversed(tables):
            _delete_rows(self.conn, self.dialect, self.shapes[table], self.deletes.get(table, {}))
        for table in tables:
            _upsert_rows(
                self.conn,
                self.dialect,
                self.shapes[table],
                self.upserts.get(table, {}),
                self.only.get(table, {}),
                careful,
            )
        self._keep_sequences_ahead(tables)
        versions.store(self.conn, self.dialect, self.new_versions, self.absent)
        record_settlements(
            self.conn, self.dialect, {where: self.settled[where] for where in self.new_settled}
        )
        outbox.append_encoded(self.conn, self.dialect, self.outgoing)
        if self.parkings or self.joined or self.obsolete:
            parking.write(
                self.conn, list(self.parkings.values()), self.joined, self.obsolete, self.now
            )
        if self.holding:
            parking.hold(self.conn, self.holding, self.held, self.now)


def record_settlements(
    conn: Connection, dialect: Dialect, settled: Mapping[tuple[str, str], tuple[dict, dict]]
) -> None:
    """Remember which change's row each settlement kept: ``(table, row key)
    -> (the settlement's version, the kept change's version)``, replacing a
    row's earlier one; nothing for none. See :meth:`_Batch._absorb`."""
    if not settled:
        return
    dialect.upsert_rows(
        conn,
        settlements,
        ("table_name", "row_key", "version", "kept"),
        [
            (table, key, _encode_json(v).decode(), _encode_json(k).decode())
            for (table, key), (v, k) in settled.items()
        ],
        hoist=("table_name",),
    )


def read_row(
    conn: Connection,
    dialect: Dialect,
    shape: TableShape,
    key: Mapping[str, Any],
    held: Mapping[str, Any] | None,
) -> dict | None:
    """A node's row with primary key ``key`` (None if it has none), its
    values as events carry them (see :mod:`replicator.values`; ``held``:
    values an event holds for the row, whose types win): drivers return
    dates as text from SQLite, JSON as text everywhere, booleans as
    integers from MariaDB."""
    bare = shape.table()
    select = sa.select(bare).where(*(bare.c[c] == dialect.written(v) for c, v in key.items()))
    found = conn.execute(select).mappings().first()
    if found is None:
        return None
    return shape.typed(found, held)


def shape_problem(
    shape: TableShape, key: tuple[str, ...], columns: tuple[str, ...]
) -> tuple[Reason, str] | None:
    if key != shape.key:
        return (
            Reason.KEY_MISMATCH,
            f"table {shape.name!r}: the event is keyed by ({', '.join(key)}) but the target's "
            f"primary key is ({', '.join(shape.key)})",
        )
    unknown = [c for c in columns if c not in shape.columns]
    if unknown:
        return (
            Reason.MISSING_COLUMN,
            f"table {shape.name!r}: the target has no column {', '.join(map(repr, unknown))}",
        )
    return None


def _base(events: list[ChangeEvent]) -> tuple[dict | None, set[str]]:
    """The row before ``events`` (a chain of one node's changes to a row),
    as far as they tell, and the columns they touched. None for a row the
    first of them inserted."""
    first = events[0]
    if first.op is Operation.INSERT:
        base = None
    elif first.op is Operation.DELETE:
        base = dict(first.changed)
    else:
        base = {**first.row, **first.changed}
    touched: set[str] = set()
    for event in events:
        touched.update(
            event.changed if event.op is Operation.UPDATE else (event.row or event.changed)
        )
    return base, touched


def change_fields(before: dict | None, also: dict | None, *, after: dict | None) -> dict[str, Any]:
    """``op``, ``row`` and ``changed`` of a change from ``before`` to ``after``.

    A settlement changes two rows at once: the server's (``before``) and the
    local's (``also``). Where the local's row differs from the outcome, its
    previous value is the one recorded, so that a scoped local sees its row
    leave its scope (see ``scope._scoped``).
    """
    olds = [row for row in (also, before) if row is not None]
    if after is None:
        return {"op": Operation.DELETE, "row": None, "changed": dict(olds[0] if olds else {})}
    if not olds:
        return {"op": Operation.INSERT, "row": after, "changed": {}}
    changed = {}
    for column, value in after.items():
        for old in olds:
            if column in old and old[column] != value:
                changed[column] = old[column]
                break
    return {"op": Operation.UPDATE, "row": after, "changed": changed}


def _checked(outcome: Any, shape: TableShape | None, key: dict) -> Decision | dict:
    """A policy's outcome, checked: a decision, or a row of the table."""
    if isinstance(outcome, str) and outcome in Decision.__members__.values():
        return Decision(outcome)
    if isinstance(outcome, Mapping):
        assert shape is not None
        unknown = [c for c in outcome if c not in shape.columns]
        if unknown:
            raise ValueError(f"it returned a row with unknown column(s) {', '.join(unknown)}")
        row = dict(outcome)
        for column, value in key.items():
            if column in row and row[column] != value:
                raise ValueError(f"it returned a row with a different key ({column})")
            row[column] = value
        return row
    raise ValueError(f"it returned {outcome!r}; expected 'server', 'local', 'review' or a row")


def _typed_key(shape: TableShape, raw: Mapping[str, Any], kinds: Mapping[str, Kind]) -> dict:
    """The key of a row of ``shape`` read from a database, typed by ``kinds``."""
    return {c: values.typed(raw[c], kinds.get(c)) for c in shape.key}


def _as_uuid(value: Any) -> Any:
    """``value`` as a UUID when it is one written as 32 hex digits."""
    if isinstance(value, str) and len(value) == 32:
        try:
            return uuid.UUID(hex=value)
        except ValueError:
            return value
    return value


def _same_rows(shape: TableShape | None, one: dict | None, other: dict | None) -> bool:
    """Whether two rows of a table of ``shape`` are the same: equal, and
    their JSON documents of the same types too (Python takes true for 1)."""
    if one != other:
        return False
    if one is None or other is None or shape is None:
        return True
    documents = [c for c in one if values.is_json(shape.kind(c))]
    return all(_document(one[c]) == _document(other[c]) for c in documents)


def _delete_rows(
    conn: Connection, dialect: Dialect, shape: TableShape, deletes: dict[str, dict]
) -> None:
    if deletes:
        keys = [dialect.written_key(k.values()) for k in deletes.values()]
        dialect.delete_rows(conn, shape.table(), shape.key, keys)


def _upsert_rows(
    conn: Connection,
    dialect: Dialect,
    shape: TableShape,
    upserts: dict[str, dict],
    only: dict[str, set[str] | None],
    careful: bool,
) -> None:
    table = shape.table()
    if careful:
        for key, row in upserts.items():
            dialect.write_row(conn, table, dialect.written_row(row, shape), only.get(key))
        return
    groups: dict[tuple[tuple[str, ...], frozenset[str] | None], list[tuple]] = {}
    # Per column list: the columns' kinds, and whether none is a JSON column
    # (whose text, numbers and booleans are written as JSON documents).
    kinds: dict[tuple[str, ...], tuple[list[Kind], bool]] = {}
    written, as_given = dialect.written, dialect.as_given
    for key, row in upserts.items():
        changed = only.get(key)
        columns = tuple(row)
        if columns not in kinds:
            of = [shape.kind(c) for c in columns]
            kinds[columns] = (of, not any(map(values.is_json, of)))
        of, plain = kinds[columns]
        group = (columns, None if changed is None else frozenset(changed))
        given = tuple(row.values())
        # Most rows hold only values every driver takes as they are: those
        # are written without a call per value.
        if not (plain and as_given.issuperset(map(type, given))):
            given = tuple(map(written, given, of))
        groups.setdefault(group, []).append(given)
    for (columns, changed), rows in groups.items():
        dialect.upsert_rows(conn, table, columns, rows, update=changed, unique=True)


def parents_first(tables: list[str], shapes: Mapping[str, TableShape | None]) -> list[str]:
    """``tables`` ordered so that a table comes after those it refers to by
    a foreign key (among ``tables``), otherwise in the given order; a cycle
    keeps the given order."""
    refers = {
        t: {p for _, p, _ in (shapes[t].parents if shapes.get(t) else ()) if p in tables and p != t}
        for t in tables
    }
    ordered: list[str] = []
    while len(ordered) < len(tables):
        ready = [t for t in tables if t not in ordered and refers[t] <= set(ordered)]
        if not ready:  # a cycle: the rest as given
            ordered += [t for t in tables if t not in ordered]
            break
        ordered.append(ready[0])
    return ordered
