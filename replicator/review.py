"""The manual-review queue as people use it: list, show, resolve, discard.

Each node keeps its own queue (:mod:`replicator.parking`); a
:class:`ReviewQueue` works across the nodes of a configuration. An item is
named by its node and number, ``server:3`` (``3`` alone when only one node
has an item 3).

A decision is a change like any other: it is written on the node holding
the item, in one transaction with the item's new status, as the row's new
state with a version that descends from every version in the item and from
the row's current one, and appended to that node's outbox. So it reaches
every replica through the usual passes, and no replica finds it concurrent
with what it settled. The decisions:

* ``take="server"`` / ``take="local"``: that side's row. The side of the
  node holding the item is its row *now* (it may have moved on since the
  item was parked); the other side is the newest version parked;
* ``merge={...}``: the server's row (the local's where the server's is
  deleted) with these columns set, each checked against the table;
* :meth:`ReviewQueue.discard`: the incoming version is dropped and the
  holding node's row as it is now is kept (and sent on, so the other side
  takes it too).

The item stays in the queue, ``resolved``, with who decided, when and how.
Reading the queue first closes, as ``obsolete``, open items whose row has
since received a change that descends from every version in them.
"""

from __future__ import annotations

import datetime as dt
import decimal
import getpass
import json
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from replicator import outbox, parking, versions
from replicator.apply import change_fields, plain, read_row, record_settlements
from replicator.clock import HybridLogicalClock, to_datetime
from replicator.conflicts import Side
from replicator.dialects.base import TableShape
from replicator.errors import ConfigurationError, ReplicatorError, ReviewError
from replicator.events import ChangeEvent, decode_or_none, new_id, row_key
from replicator.node import Node
from replicator.parking import Item, Status
from replicator.tables import review_items
from replicator.versions import RowVersion

Take = Literal["server", "local"]
SIDES: tuple[Take, ...] = ("server", "local")
#: How a listing can be ordered: oldest first, newest first, or by a field.
SORTS = ("age", "newest", "table", "node", "reason")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Ref(NamedTuple):
    """An item's name: the node holding it and its number there."""

    node: str
    id: int

    def __str__(self) -> str:
        return f"{self.node}:{self.id}"


def parse_ref(text: str | int) -> tuple[str | None, int]:
    """``"server:3"`` -> ``("server", 3)``; ``"3"`` -> ``(None, 3)``.

    Raises :class:`ConfigurationError` for anything else.
    """
    node, _, number = str(text).strip().rpartition(":")
    if not number.isdigit():
        raise ConfigurationError(f"{text!r} is not a review item; use a number or NODE:NUMBER")
    return node or None, int(number)


@dataclass(frozen=True)
class Filter:
    """Which items: every condition given must hold (None: any)."""

    table: str | None = None
    node: str | None = None
    reason: str | None = None
    older_than: dt.timedelta | None = None

    @property
    def any(self) -> bool:
        """Whether any condition is given."""
        return any(v is not None for v in (self.table, self.node, self.reason, self.older_than))


class Listed(msgspec.Struct, kw_only=True):
    """One item in a listing."""

    id: int
    node: str
    ref: str
    table: str
    key: str
    reason: str
    status: str
    policy: str
    detail: str
    detected_at: dt.datetime
    age_seconds: float
    resolved_at: dt.datetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None


class Listing(msgspec.Struct, kw_only=True):
    """Items of every node asked, with counts by table and reason.
    ``unreachable`` names the nodes that could not be read, with why."""

    items: list[Listed]
    by_table: dict[str, int]
    by_reason: dict[str, int]
    obsolete: int = 0  # items just found superseded and closed
    unreachable: dict[str, str] = {}


class Version(msgspec.Struct, kw_only=True):
    """A side's version of the row: vector, timestamp, and the node that made it."""

    version: dict[str, int]
    hlc: int
    at: dt.datetime
    origin: str


class EventShown(msgspec.Struct, kw_only=True):
    """An event of the item (``decodable`` False: only its size is known)."""

    decodable: bool
    event_id: str | None = None
    origin: str | None = None
    op: str | None = None
    at: dt.datetime | None = None
    version: dict[str, int] | None = None
    changed: list[str] = []
    size: int = 0


class Shown(Listed, kw_only=True):
    """One item in full: the base, the server's and the local's rows (None:
    deleted or absent), their versions, the columns each side changed from
    the base (from each other when there is no base), and its events."""

    local_node: str
    columns: list[str]
    base: dict[str, Any] | None
    server: dict[str, Any] | None
    local: dict[str, Any] | None
    server_version: Version | None
    local_version: Version | None
    changed: dict[str, list[str]]
    events: list[EventShown]


class Decided(msgspec.Struct, kw_only=True):
    """A decision taken: the row every replica will hold (None: deleted),
    its version, and the change event written (None when nothing had to be
    written: the table does not exist on the node)."""

    ref: str
    node: str
    table: str
    key: str
    decision: str
    row: dict[str, Any] | None
    version: dict[str, int] | None
    event_id: str | None
    by: str
    at: dt.datetime


class BulkResult(msgspec.Struct, kw_only=True):
    """What a bulk decision did (or, with ``dry_run``, would do)."""

    matched: int
    decided: list[Decided]
    dry_run: bool
    unreachable: dict[str, str] = {}


def default_user() -> str:
    """Who decides when ``by`` is not given: the operating-system user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


class ReviewQueue:
    """The review queues of several nodes, as one.

    ``nodes`` are the configuration's nodes (see
    :meth:`replicator.sync.Replicator.review`); ``now`` gives the time
    decisions are stamped with and ages are measured from; ``clock`` the
    timestamps of decisions (a fresh hybrid logical clock by default, which
    resumes above everything the item and the row have seen).
    """

    def __init__(
        self,
        nodes: Iterable[Node],
        *,
        now: Any = utcnow,
        clock: HybridLogicalClock | None = None,
    ) -> None:
        self.nodes = {node.name: node for node in nodes}
        self.now = now
        self.clock = clock or HybridLogicalClock()

    # --- reading -------------------------------------------------------------

    def list(
        self,
        where: Filter = Filter(),
        *,
        status: str | None = Status.OPEN,
        sort: str = "age",
        sweep: bool = True,
    ) -> Listing:
        """The items matching ``where`` (of ``status``; None: any), in the
        order ``sort`` names (see :data:`SORTS`; ``age``: oldest first).
        Nodes that cannot be read are named in ``unreachable``. First
        (unless ``sweep`` is false) open items a later change superseded
        are closed as obsolete; ``obsolete`` counts them."""
        if sort not in SORTS:
            raise ConfigurationError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
        now = self.now()
        found: list[Listed] = []
        unreachable: dict[str, str] = {}
        closed = 0
        for node in self._nodes(where.node):
            try:
                closed += self._sweep(node, now) if sweep else 0
                with node.connect() as conn:
                    items = parking.items(conn, status=status, table=where.table)
            except (ReplicatorError, SQLAlchemyError) as e:
                unreachable[node.name] = _describe(e)
                continue
            found += [_listed(node, item, now) for item in items if _matches(item, where, now)]
        found.sort(key=lambda i: (i.detected_at, i.node, i.id), reverse=sort == "newest")
        if sort not in ("age", "newest"):
            found.sort(key=lambda i: getattr(i, sort))  # stable: oldest first within
        return Listing(
            items=found,
            by_table=dict(Counter(i.table for i in found)),
            by_reason=dict(Counter(i.reason for i in found)),
            obsolete=closed,
            unreachable=unreachable,
        )

    def history(self, where: Filter = Filter()) -> Listing:
        """Closed items (resolved by a person, or obsolete), newest decision first."""
        listing = self.list(where, status=None)
        listing.items = sorted(
            (i for i in listing.items if i.status != Status.OPEN),
            key=lambda i: (i.resolved_at or i.detected_at, i.node, i.id),
            reverse=True,
        )
        listing.by_table = dict(Counter(i.table for i in listing.items))
        listing.by_reason = dict(Counter(i.reason for i in listing.items))
        return listing

    def show(self, ref: str | int | Ref) -> Shown:
        """One item in full, whatever its status."""
        node, item_id = self.find(ref)
        with node.connect() as conn:
            item = _get(conn, node, item_id)
            sides = _Sides.read(conn, node, item)
        return sides.shown(node, item, self.now())

    def find(self, ref: str | int | Ref) -> tuple[Node, int]:
        """The node holding item ``ref`` and its number there.

        A bare number is looked up on every node. Raises
        :class:`ReviewError` when no node has it (naming nodes that could
        not be asked) and :class:`ConfigurationError` for an unknown node
        or a number several nodes have.
        """
        name, item_id = (ref.node, ref.id) if isinstance(ref, Ref) else parse_ref(ref)
        if name is not None:
            return self._node(name), item_id
        holders, unreachable = [], {}
        for node in self.nodes.values():
            try:
                with node.connect() as conn:
                    c = review_items.c
                    if conn.execute(sa.select(c.id).where(c.id == item_id)).first():
                        holders.append(node)
            except (ReplicatorError, SQLAlchemyError) as e:
                unreachable[node.name] = _describe(e)
        if len(holders) > 1:
            names = " and ".join(f"{n.name}:{item_id}" for n in holders)
            raise ConfigurationError(f"item {item_id} exists on several nodes; say which: {names}")
        if holders:
            return holders[0], item_id
        problem = f"no review item {item_id} on {', '.join(self.nodes)}"
        if unreachable:
            problem += "; " + "; ".join(unreachable.values())
        raise ReviewError(problem)

    # --- deciding ------------------------------------------------------------

    def resolve(
        self,
        ref: str | int | Ref,
        *,
        take: Take | None = None,
        merge: Mapping[str, Any] | None = None,
        by: str | None = None,
    ) -> Decided:
        """Settle one open item by taking a side or a merged row (exactly one
        of ``take`` and ``merge``); the decision replicates.

        Raises :class:`ReviewError` when the item does not exist or is not
        open, or the node refuses the decided row, and
        :class:`ConfigurationError` for a bad ``take`` or ``merge`` (an
        unknown column, a value of the wrong type, a changed key). Nothing
        changes when it raises.
        """
        decision = _decision(take, merge)
        node, item_id = self.find(ref)
        with node.begin() as conn:
            return self._decide(conn, node, item_id, decision, merge, by)

    def discard(self, ref: str | int | Ref, *, by: str | None = None) -> Decided:
        """Drop the item's incoming version and keep the holding node's row as
        it is now; that row replicates, so the other side takes it too."""
        node, item_id = self.find(ref)
        with node.begin() as conn:
            return self._decide(conn, node, item_id, "discard", None, by)

    def resolve_matching(
        self,
        where: Filter,
        *,
        take: Take | None = None,
        discard: bool = False,
        by: str | None = None,
        dry_run: bool = False,
    ) -> BulkResult:
        """Settle every open item matching ``where`` the same way (``take``
        a side, or ``discard``): one transaction per node, committed only
        when every node's items were settled; with ``dry_run`` every
        decision is made and checked, then rolled back.

        Raises like :meth:`resolve` (then nothing changes anywhere), and
        :class:`ConnectivityError` when a node with matching items cannot be
        reached, before anything is written.
        """
        if discard == (take is not None):
            raise ConfigurationError("give exactly one of take and discard")
        decision = "discard" if discard else _decision(take, None)
        listing = self.list(where, sweep=not dry_run)
        if listing.unreachable:
            node, error = next(iter(listing.unreachable.items()))
            raise ReviewError(f"nothing was decided: {error}")
        by_node: dict[str, list[int]] = {}
        for listed in listing.items:
            by_node.setdefault(listed.node, []).append(listed.id)
        decided: list[Decided] = []
        with ExitStack() as stack:
            transactions = []
            for name, ids in by_node.items():
                node = self.nodes[name]
                conn = stack.enter_context(node.connect())
                transactions.append(conn.begin())
                decided += [self._decide(conn, node, i, decision, None, by) for i in ids]
            for transaction in transactions:
                if dry_run:
                    transaction.rollback()
                else:
                    transaction.commit()
        return BulkResult(matched=len(listing.items), decided=decided, dry_run=dry_run)

    def _decide(
        self,
        conn: Connection,
        node: Node,
        item_id: int,
        decision: str,
        merge: Mapping[str, Any] | None,
        by: str | None,
    ) -> Decided:
        """Write one decision in ``conn``'s transaction."""
        # Decided rows and their versions must not interleave with app
        # transactions changing the same row (see Dialect.exclude_writers).
        node.dialect.exclude_writers(conn)
        item = _get(conn, node, item_id)
        if item.status != Status.OPEN:
            how = ""
            if item.resolved_at is not None:
                how = (
                    f" ({item.resolution}; by {item.resolved_by}, "
                    f"{item.resolved_at:%Y-%m-%d %H:%M:%S} UTC)"
                )
            raise ReviewError(
                f"item {node.name}:{item_id} is already {item.status}{how}; nothing changed"
            )
        sides = _Sides.read(conn, node, item)
        row, kept = sides.decide(decision, merge)
        now = self.now()
        by = by or default_user()
        note = _note(decision, merge, sides)
        version = event_id = None
        if sides.shape is not None and sides.key is not None:
            version, event_id = self._write(conn, node, sides, row, kept)
            note += f"; change {event_id}"
        elif row is not None:
            raise ReviewError(
                f"item {node.name}:{item_id}: table {item.table!r} does not exist on {node.name}, "
                "so it cannot hold the decided row; only discard settles this item"
            )
        c = review_items.c
        closed = conn.execute(
            review_items.update()
            .where(c.id == item_id, c.status == Status.OPEN)
            .values(
                status=Status.RESOLVED,
                resolved_at=now.astimezone(dt.UTC).replace(tzinfo=None),
                resolved_by=by,
                resolution=note,
            )
        )
        if closed.rowcount != 1:  # decided concurrently by someone else
            raise ReviewError(f"item {node.name}:{item_id} was decided meanwhile; nothing changed")
        return Decided(
            ref=str(Ref(node.name, item_id)),
            node=node.name,
            table=item.table,
            key=item.key,
            decision=decision,
            row=row,
            version=version,
            event_id=event_id,
            by=by,
            at=now,
        )

    def _write(
        self,
        conn: Connection,
        node: Node,
        sides: _Sides,
        row: dict[str, Any] | None,
        kept: dict[str, int] | None,
    ) -> tuple[dict[str, int], str]:
        """Write the decided row as a change of ``node``; its version and event id."""
        shape, key = sides.shape, sides.key
        assert shape is not None and key is not None
        if row != sides.holding.row:
            _write_row(conn, node, shape, key, row, sides)
        version = versions.increment(versions.merge(*sides.versions()), node.name)
        self.clock.observe(sides.latest_hlc())
        hlc = self.clock.now()
        event = ChangeEvent(
            event_id=new_id(),
            origin=node.name,
            table=shape.name,
            key=key,
            **change_fields(sides.holding.row, sides.other_row, after=row),
            version=version,
            hlc=hlc,
            txid=new_id(),
        )
        text_key = row_key(tuple(key.values()))
        versions.store(
            conn,
            node.dialect,
            {(shape.name, text_key): RowVersion(version, hlc, node.name, row is None)},
        )
        outbox.append(conn, node.dialect, [(text_key, event)])
        if node.role == "server" and kept is not None:
            # A local's later edit that descends from the row kept is then a
            # sequential edit, not a new conflict (see apply._absorb).
            record_settlements(conn, node.dialect, {(shape.name, text_key): (version, kept)})
        return version, event.event_id

    # --- nodes ---------------------------------------------------------------

    def _node(self, name: str) -> Node:
        if name not in self.nodes:
            raise ConfigurationError(f"unknown node {name!r} (nodes: {', '.join(self.nodes)})")
        return self.nodes[name]

    def _nodes(self, name: str | None) -> list[Node]:
        return [self._node(name)] if name is not None else list(self.nodes.values())

    def _sweep(self, node: Node, now: dt.datetime) -> int:
        """Close the node's open items that a later change superseded."""
        with node.connect() as conn:
            if not parking.has_open(conn):
                return 0
        with node.begin() as conn:
            node.dialect.exclude_writers(conn)
            return parking.sweep(conn, node.dialect, now)


@dataclass
class _Sides:
    """An item's sides as they stand: the holding node's row now, and the
    other side's newest parked version."""

    item: Item
    role: str
    shape: TableShape | None
    key: dict[str, Any] | None
    holding: Side  # the holding node's row and version, now
    other: Side | None  # None: the incoming event could not be decoded

    @classmethod
    def read(cls, conn: Connection, node: Node, item: Item) -> _Sides:
        """An open item's sides now; a closed one's as they were parked (the
        row now is what was decided)."""
        shape = node.shape(conn, item.table)
        key = _key_values(item, shape)
        if item.status != Status.OPEN:
            holding = item.local or Side(row=None, version={}, hlc=0, origin=node.name)
            return cls(item, node.role, shape, key, holding, item.remote)
        text_key = row_key(tuple(key.values())) if key is not None else item.key
        seen = versions.load(conn, item.table, [text_key], node.dialect).get(text_key)
        row = None
        if shape is not None and key is not None:
            row = read_row(conn, shape, key, _hints(item))
        holding = Side(
            row=row,
            version=seen.version if seen else {},
            hlc=seen.hlc if seen else 0,
            origin=seen.origin if seen else node.name,
        )
        return cls(item, node.role, shape, key, holding, item.remote)

    @property
    def other_row(self) -> dict[str, Any] | None:
        return self.other.row if self.other is not None else None

    def side(self, take: Take) -> Side | None:
        """The server's or the local's side."""
        holding_side = "server" if self.role == "server" else "local"
        return self.holding if take == holding_side else self.other

    def versions(self) -> list[dict[str, int]]:
        """Every version in the item, and the row's current one."""
        found = [self.holding.version]
        found += [s.version for s in (self.item.local, self.item.remote) if s is not None]
        events = map(decode_or_none, self.item.events)
        # An undecodable event has no version to descend from.
        return found + [event.version for event in events if event is not None]

    def latest_hlc(self) -> int:
        sides = (self.holding, self.item.local, self.item.remote)
        return max((s.hlc for s in sides if s is not None), default=0)

    def decide(
        self, decision: str, merge: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any] | None, dict[str, int] | None]:
        """The decided row, and the version of the change whose row it keeps
        (None for a merged row)."""
        if decision == "discard":
            return self.holding.row, self.holding.version
        if decision == "merge":
            assert merge is not None
            return self._merged(merge), None
        side = self.side(decision)  # type: ignore[arg-type]
        if side is None:
            raise ReviewError(
                f"item {self.item.id}: the incoming version could not be decoded, so there is "
                f"no {decision} row to take; take the other side, merge, or discard"
            )
        return side.row, side.version

    def _merged(self, merge: Mapping[str, Any]) -> dict[str, Any]:
        if self.shape is None or self.key is None:
            raise ConfigurationError(
                f"--merge: table {self.item.table!r} does not exist on this node"
            )
        start = next(
            (s.row for s in (self.side("server"), self.side("local")) if s and s.row),
            dict(self.key),
        )
        row = dict(start)
        for column, value in merge.items():
            if column not in self.shape.columns:
                raise ConfigurationError(
                    f"--merge: table {self.shape.name!r} has no column {column!r} "
                    f"(its columns: {', '.join(self.shape.columns)})"
                )
            if column in self.key and value != self.key[column]:
                raise ConfigurationError(
                    f"--merge: column {column!r} is part of the row's key; it cannot change"
                )
            row[column] = _typed(column, value, self._evidence(column))
        return row

    def _evidence(self, column: str) -> Any:
        """A value the column holds in this item (None if every side has none)."""
        rows = [self.holding.row, self.other_row, self.item.base]
        rows += [s.row for s in (self.item.local,) if s is not None]
        return next((r[column] for r in rows if r and r.get(column) is not None), None)

    def shown(self, node: Node, item: Item, now: dt.datetime) -> Shown:
        server, local = self.side("server"), self.side("local")
        rows = {"server": server.row if server else None, "local": local.row if local else None}
        columns = list(self.shape.columns) if self.shape is not None else []
        for row in (item.base, *rows.values()):
            columns += [c for c in row or () if c not in columns]
        changed = {}
        for name, row in rows.items():
            other = rows["local" if name == "server" else "server"]
            reference = item.base if item.base is not None else other
            changed[name] = [c for c in columns if (row or {}).get(c) != (reference or {}).get(c)]
        local_node = node.name if self.role == "local" else (local.origin if local else "?")
        return Shown(
            **msgspec.structs.asdict(_listed(node, item, now)),
            local_node=local_node,
            columns=columns,
            base=item.base,
            server=rows["server"],
            local=rows["local"],
            server_version=_version(server),
            local_version=_version(local),
            changed=changed,
            events=[_event_shown(payload) for payload in item.events],
        )


def _decision(take: str | None, merge: Mapping[str, Any] | None) -> str:
    if (take is None) == (merge is None):
        raise ConfigurationError("give exactly one of --take and --merge")
    if merge is not None:
        if not isinstance(merge, Mapping) or not merge:
            raise ConfigurationError("--merge: give a JSON object of column values")
        return "merge"
    if take not in SIDES:
        raise ConfigurationError(f"--take must be server or local, not {take!r}")
    return take


def _note(decision: str, merge: Mapping[str, Any] | None, sides: _Sides) -> str:
    if decision == "merge":
        return "merged " + json.dumps(dict(merge or {}), default=str, ensure_ascii=False)
    if decision == "discard":
        return "discarded the incoming version"
    side = sides.side(decision)  # type: ignore[arg-type]
    origin = side.origin if side is not None else "?"
    return f"took {decision} (the version by {origin})"


def _write_row(
    conn: Connection,
    node: Node,
    shape: TableShape,
    key: dict[str, Any],
    row: dict[str, Any] | None,
    sides: _Sides,
) -> None:
    """Write the decided row with plain statements, so a refusal names it."""
    try:
        if row is None:
            node.dialect.delete_rows(conn, shape.table(), shape.key, [tuple(key.values())])
        else:
            node.dialect.write_row(conn, shape.table(), {c: plain(v) for c, v in row.items()})
    except DBAPIError as e:
        raise ReviewError(
            f"item {node.name}:{sides.item.id}: {node.name} refused the decided row of "
            f"{shape.name} {sides.item.key}: {e.orig}; nothing changed"
        ) from e


def _get(conn: Connection, node: Node, item_id: int) -> Item:
    found = parking.get(conn, item_id)
    if found is None:
        raise ReviewError(f"no review item {item_id} on {node.name}")
    return found


def _key_values(item: Item, shape: TableShape | None) -> dict[str, Any] | None:
    """The row's primary key as column -> value: from its events, else from
    the item's key text matched to the table's key columns."""
    for event in map(decode_or_none, item.events):
        if event is not None:
            return dict(event.key)
    try:
        values = json.loads(item.key)
    except ValueError:
        return None
    if shape is None or not isinstance(values, list) or len(values) != len(shape.key):
        return None
    return dict(zip(shape.key, values, strict=True))


def _hints(item: Item) -> dict[str, Any]:
    """Values of the item's rows by column, to type what the database returns."""
    hints: dict[str, Any] = {}
    for row in (item.base, *(s.row for s in (item.local, item.remote) if s is not None)):
        for column, value in (row or {}).items():
            if hints.get(column) is None:
                hints[column] = value
    return hints


def _typed(column: str, value: Any, like: Any) -> Any:
    """A ``--merge`` value (as JSON gives it) as the column's type, judged by
    ``like`` (a value the column holds; None: unknown, taken as given)."""
    if value is None or like is None:
        return value

    def wrong(kind: str) -> ConfigurationError:
        return ConfigurationError(f"--merge: column {column!r} takes {kind}, not {value!r}")

    if isinstance(like, bool):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if isinstance(like, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
        return value
    if isinstance(like, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        return float(value)
    if isinstance(like, decimal.Decimal):
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise wrong("a number")
        try:
            return decimal.Decimal(str(value))
        except decimal.InvalidOperation:
            raise wrong("a number") from None
    if isinstance(like, str):
        if not isinstance(value, str):
            raise wrong("text")
        return value
    if isinstance(like, dt.datetime | dt.date | dt.time):
        kind = {dt.datetime: "a date-time", dt.date: "a date", dt.time: "a time"}[type(like)]
        if not isinstance(value, str):
            raise wrong(f"{kind} in ISO form")
        try:
            return type(like).fromisoformat(value)
        except ValueError:
            raise wrong(f"{kind} in ISO form") from None
    if isinstance(like, uuid.UUID):
        try:
            return uuid.UUID(str(value))
        except ValueError:
            raise wrong("a UUID") from None
    if isinstance(like, bytes):
        raise ConfigurationError(f"--merge: column {column!r} holds bytes; it cannot be set here")
    return value  # JSON documents and anything else: as given


def _listed(node: Node, item: Item, now: dt.datetime) -> Listed:
    detected = item.detected_at.replace(tzinfo=dt.UTC)
    resolved = item.resolved_at.replace(tzinfo=dt.UTC) if item.resolved_at else None
    return Listed(
        id=item.id,
        node=node.name,
        ref=str(Ref(node.name, item.id)),
        table=item.table,
        key=item.key,
        reason=item.reason,
        status=item.status,
        policy=item.policy,
        detail=item.detail,
        detected_at=detected,
        age_seconds=round(max((now - detected).total_seconds(), 0.0), 3),
        resolved_at=resolved,
        resolved_by=item.resolved_by,
        resolution=item.resolution,
    )


def _matches(item: Item, where: Filter, now: dt.datetime) -> bool:
    if where.reason is not None and item.reason != where.reason:
        return False
    if where.older_than is not None:
        return now - item.detected_at.replace(tzinfo=dt.UTC) >= where.older_than
    return True


def _version(side: Side | None) -> Version | None:
    if side is None:
        return None
    return Version(version=side.version, hlc=side.hlc, at=to_datetime(side.hlc), origin=side.origin)


def _event_shown(payload: bytes) -> EventShown:
    event = decode_or_none(payload)
    if event is None:
        return EventShown(decodable=False, size=len(payload))
    return EventShown(
        decodable=True,
        event_id=event.event_id,
        origin=event.origin,
        op=event.op.value,
        at=to_datetime(event.hlc),
        version=event.version,
        changed=sorted(event.changed) if event.op.value == "update" else [],
        size=len(payload),
    )


def _describe(error: Exception) -> str:
    if isinstance(error, DBAPIError):
        return f"{type(error.orig).__name__}: {error.orig}"
    return str(error)
