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
import getpass
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from replicator import outbox, parking, release, values, versions
from replicator.apply import Settlement, change_fields, read_row, record_settlements
from replicator.clock import HybridLogicalClock, to_datetime, utcnow
from replicator.conflicts import Side
from replicator.dialects.base import TableShape
from replicator.errors import (
    ArgumentError,
    ConfigurationError,
    DatabaseError,
    ReplicatorError,
    ReviewError,
    describe,
)
from replicator.events import ChangeEvent, decode_or_none, key_from_text, new_id, row_key
from replicator.node import Node
from replicator.parking import Item, Status
from replicator.sync import release_held
from replicator.tables import review_items
from replicator.versions import RowVersion

Take = Literal["server", "local"]
SIDES: tuple[Take, ...] = ("server", "local")
#: How a listing can be ordered: oldest first, newest first, or by a field
#: (oldest first within it); ``decided``: newest decision first.
SORTS = ("age", "newest", "table", "node", "reason", "decided")
#: How many of a held item's events :meth:`ReviewQueue.show` shows.
HELD_SHOWN = 20


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
    if not (number.isascii() and number.isdigit()):
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
    event_count: int = 0  # how many events it holds
    resolved_at: dt.datetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None


class Listing(msgspec.Struct, kw_only=True):
    """A page of items of every node asked: ``items`` from the ``offset``-th
    match on, with ``total`` and the counts by table and reason over every
    match. ``unreachable`` names the nodes that could not be read, with why."""

    items: list[Listed]
    total: int
    by_table: dict[str, int]
    by_reason: dict[str, int]
    offset: int = 0
    obsolete: int = 0  # items just found superseded and closed
    unreachable: dict[str, str] = {}


class Group(msgspec.Struct, kw_only=True):
    """Open items of one node, table and reason: how many, and since when."""

    node: str
    table: str
    reason: str
    count: int
    oldest_at: dt.datetime
    oldest_age_seconds: float


class Summary(msgspec.Struct, kw_only=True):
    """Open items grouped by node, table and reason (most first); ``open``
    counts them all. ``unreachable`` names the nodes that could not be
    read, with why."""

    groups: list[Group]
    open: int
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

    @classmethod
    def of(
        cls, node: str, item: Item, decision: str, by: str, at: dt.datetime, **written: Any
    ) -> Decided:
        """The decision ``decision`` of ``node``'s ``item``; ``written``: its
        ``row``, ``version`` and ``event_id`` (None: nothing was written)."""
        return cls(
            ref=str(Ref(node, item.id)),
            node=node,
            table=item.table,
            key=item.key,
            decision=decision,
            by=by,
            at=at,
            **{"row": None, "version": None, "event_id": None, **written},
        )


class BulkResult(msgspec.Struct, kw_only=True):
    """What a bulk decision did (or, with ``dry_run``, would do)."""

    matched: int
    decided: list[Decided]
    dry_run: bool


def default_user() -> str:
    """Who decides when ``by`` is not given: the operating-system user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in a bare container
        return "unknown"


class ReviewQueue:
    """The review queues of several nodes, as one.

    ``nodes`` are the configuration's nodes (see
    :meth:`replicator.application.Replicator.review`); ``now`` gives the time
    decisions are stamped with and ages are measured from; ``clock`` the
    timestamps of decisions (a fresh hybrid logical clock by default, which
    resumes above everything the item and the row have seen); ``settle``
    how a node settles conflicts (:func:`replicator.sync.settlement`, by the
    configuration's policies), needed to apply a held item's events at once
    (without it, only a pass applies them).
    """

    def __init__(
        self,
        nodes: Iterable[Node],
        *,
        now: Any = utcnow,
        clock: HybridLogicalClock | None = None,
        settle: Callable[[Node], Settlement | None] | None = None,
    ) -> None:
        self.nodes = {node.name: node for node in nodes}
        self.now = now
        self.clock = clock or HybridLogicalClock()
        self.settle = settle

    # --- reading -------------------------------------------------------------

    def list(
        self,
        where: Filter = Filter(),
        *,
        status: str | None = Status.OPEN,
        sort: str = "age",
        sweep: bool = True,
        limit: int | None = None,
        offset: int = 0,
    ) -> Listing:
        """The items matching ``where`` (of ``status``; None: any;
        ``"closed"``: resolved or obsolete), in the order ``sort`` names
        (see :data:`SORTS`; ``age``: oldest first), ``limit`` of them (None:
        all) after the first ``offset``; ``total``, ``by_table`` and
        ``by_reason`` count every match. Items are listed without their
        sides (:meth:`show` gives those), so a page of a long queue costs
        what the page holds. Nodes that cannot be read are named in
        ``unreachable``.

        First (unless ``sweep`` is false) the open items listed that a later
        change superseded are closed as obsolete and left out (``obsolete``
        counts them), so a page holds only items still to decide."""
        if sort not in SORTS:
            raise ConfigurationError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
        if limit is not None and limit < 0:
            raise ArgumentError(f"`limit` must be 0 or more, not {limit}", "limit")
        if offset < 0:
            raise ArgumentError(f"`offset` must be 0 or more, not {offset}", "offset")
        now = self.now()
        closed = 0
        while True:
            listing = self._page(where, status, sort, limit, offset, now)
            if not sweep:
                break
            swept = self._sweep_listed(listing, now)
            closed += swept
            if not swept:  # else list again: the page had items to close
                break
        listing.obsolete = closed
        return listing

    def _page(
        self,
        where: Filter,
        status: str | None,
        sort: str,
        limit: int | None,
        offset: int,
        now: dt.datetime,
    ) -> Listing:
        """One page of :meth:`list`: each node's first ``offset + limit``
        matches in order, merged."""
        parked_before = now - where.older_than if where.older_than is not None else None
        filters = {
            "status": status,
            "table": where.table,
            "reason": where.reason,
            "parked_before": parked_before,
        }
        order = "age" if sort == "node" else sort
        found: list[Listed] = []
        by_table: Counter[str] = Counter()
        by_reason: Counter[str] = Counter()
        unreachable: dict[str, str] = {}
        for node in self._nodes(where.node):
            try:
                with node.connect() as conn:
                    items = parking.page(
                        conn,
                        **filters,
                        order=order,
                        limit=None if limit is None else offset + limit,
                    )
                    counts = parking.counts(conn, **filters)
            except ReplicatorError as e:
                unreachable[node.name] = describe(e)
                continue
            found += [_listed(node, item, now) for item in items]
            for table, reason, count in counts:
                by_table[table] += count
                by_reason[reason] += count
        found.sort(key=_ORDERS[sort], reverse=sort in ("newest", "decided"))
        return Listing(
            items=found[offset:] if limit is None else found[offset : offset + limit],
            total=sum(by_table.values()),
            offset=offset,
            by_table=dict(by_table),
            by_reason=dict(by_reason),
            unreachable=unreachable,
        )

    def _sweep_listed(self, listing: Listing, now: dt.datetime) -> int:
        """Close, as obsolete, the listed open items a later change superseded."""
        ids: dict[str, list[int]] = {}
        for listed in listing.items:
            if listed.status == Status.OPEN:
                ids.setdefault(listed.node, []).append(listed.id)
        closed = 0
        for name, node_ids in ids.items():
            try:
                closed += self._sweep(self.nodes[name], now, node_ids)
            except ReplicatorError as e:
                listing.unreachable[name] = describe(e)
        return closed

    def summary(self, node: str | None = None) -> Summary:
        """The open items of every node (or of ``node``), grouped by node,
        table and reason, the largest groups first: one grouped query per
        node, however long its queue (items a later change superseded are
        counted until a listing or a decision closes them)."""
        now = self.now()
        groups: list[Group] = []
        unreachable: dict[str, str] = {}
        for found in self._nodes(node):
            try:
                with found.connect() as conn:
                    rows = parking.open_groups(conn)
            except ReplicatorError as e:
                unreachable[found.name] = describe(e)
                continue
            for table, reason, count, oldest in rows:
                oldest_at = oldest.replace(tzinfo=dt.UTC)
                groups.append(
                    Group(
                        node=found.name,
                        table=table,
                        reason=reason,
                        count=count,
                        oldest_at=oldest_at,
                        oldest_age_seconds=round(max((now - oldest_at).total_seconds(), 0.0), 3),
                    )
                )
        groups.sort(key=lambda g: (-g.count, g.node, g.table, g.reason))
        return Summary(groups=groups, open=sum(g.count for g in groups), unreachable=unreachable)

    def history(
        self, where: Filter = Filter(), *, limit: int | None = None, offset: int = 0
    ) -> Listing:
        """Closed items (resolved by a person, or obsolete), newest decision
        first, paged as :meth:`list` pages."""
        return self.list(
            where, status=parking.CLOSED, sort="decided", sweep=False, limit=limit, offset=offset
        )

    def show(self, ref: str | int | Ref) -> Shown:
        """One item in full, whatever its status."""
        node, item_id = self.find(ref)
        with _translated(f"reading item {node.name}:{item_id}"), node.connect() as conn:
            item = _get(conn, node, item_id)
            if item.held:  # its first events (event_count says how many in all)
                held = parking.held_events(conn, item.id, limit=HELD_SHOWN)
                item.events = [event.payload for event in held]
            sides = _Sides.read(conn, node, item)
        return sides.shown(node, item, self.now())

    def find(self, ref: str | int | Ref) -> tuple[Node, int]:
        """The node holding item ``ref`` and its number there.

        A bare number is looked up on every node. Raises
        :class:`ReviewError` for an unknown node, when no node has it, or
        when a node that cannot be asked might have it too, and
        :class:`ConfigurationError` for a number several nodes have.
        """
        name, item_id = (ref.node, ref.id) if isinstance(ref, Ref) else parse_ref(ref)
        if name is not None:
            if name not in self.nodes:
                raise ReviewError(f"no review item {name}:{item_id}: there is no node {name!r}")
            return self.nodes[name], item_id
        holders, unreachable = [], {}
        for node in self.nodes.values():
            try:
                with node.connect() as conn:
                    c = review_items.c
                    if conn.execute(sa.select(c.id).where(c.id == item_id)).first():
                        holders.append(node)
            except ReplicatorError as e:
                unreachable[node.name] = describe(e)
        if len(holders) > 1:
            names = " and ".join(f"{n.name}:{item_id}" for n in holders)
            raise ConfigurationError(f"item {item_id} exists on several nodes; say which: {names}")
        if holders and not unreachable:
            return holders[0], item_id
        problem = f"no review item {item_id} on {', '.join(self.nodes)}"
        if holders:
            problem = (
                f"item {item_id} is on {holders[0].name}, but a node that cannot be asked may "
                f"have an item {item_id} too; say {holders[0].name}:{item_id}"
            )
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
        dry_run: bool = False,
    ) -> Decided:
        """Settle one open item by taking a side or a merged row (exactly one
        of ``take`` and ``merge``); the decision replicates. With
        ``dry_run`` it is made and checked, then rolled back.

        Raises :class:`ReviewError` when the item does not exist or is not
        open, when it holds an undecodable event (only :meth:`discard`
        closes it), or when the node refuses the decided row; and
        :class:`ConfigurationError` for a bad ``take`` or ``merge`` (an
        unknown column, a value of the wrong type, a changed key, a row
        outside a local's scope). Nothing changes when it raises.
        """
        decision = _decision(take, merge)
        node, item_id = self.find(ref)
        return self._decide_one(node, item_id, decision, merge, by, dry_run)

    def discard(
        self, ref: str | int | Ref, *, by: str | None = None, dry_run: bool = False
    ) -> Decided:
        """Drop the item's incoming version and keep the holding node's row as
        it is now; that row replicates, so the other side takes it too. An
        item with an undecodable event is closed without writing anything
        (the replicas may then differ: ``replicator verify`` tells)."""
        node, item_id = self.find(ref)
        return self._decide_one(node, item_id, "discard", None, by, dry_run)

    def _decide_one(
        self,
        node: Node,
        item_id: int,
        decision: str,
        merge: Mapping[str, Any] | None,
        by: str | None,
        dry_run: bool,
    ) -> Decided:
        with _translated(f"deciding item {node.name}:{item_id}"):
            with node.connect() as conn:
                item = _get(conn, node, item_id)
            if item.held:
                return self._decide_held(node, item, decision, by, dry_run)
            with node.connect() as conn:
                transaction = conn.begin()
                node.dialect.exclude_writers(conn)
                decided = self._decide(conn, node, item_id, decision, merge, by)
                transaction.rollback() if dry_run else transaction.commit()
                return decided

    def _decide_held(
        self, node: Node, item: Item, decision: str, by: str | None, dry_run: bool
    ) -> Decided:
        """Decide a held item (every event of its table, see
        :mod:`replicator.parking`): taking the incoming side applies its
        events now, in order, as a pass would once the table can take them;
        discarding drops them. Taking the holding node's side is refused:
        it would drop them too, and only ``discard`` says so."""
        _check_open(item, node.name)
        incoming = "local" if node.role == "server" else "server"
        ref = f"{node.name}:{item.id}"
        what = f"item {ref} holds {item.event_count} events of table {item.table!r}, not one row"
        if decision == "merge":
            raise ArgumentError(
                f"`merge`: {what}; take {incoming} to apply them, or discard", "merge"
            )
        if decision not in (incoming, "discard"):
            raise ArgumentError(
                f"`take`: {what}, which {node.name} could not take; take {incoming} to apply "
                "them (once it can), or discard to drop them; nothing changed",
                "take",
            )
        by = by or default_user()
        held = parking.Held(item.id, item.table, item.reason)
        if decision == incoming:
            with node.connect() as conn:
                why = release.blocked(conn, node, held)
            if why is not None:
                raise ReviewError(
                    f"item {ref} cannot be applied yet: {why}; fix that (a migration), "
                    "then decide again (the next sync applies it by itself), or discard; "
                    "nothing changed"
                )
            if node.role == "server" and self.settle is None:
                raise ReviewError(
                    f"item {ref}: applying held events on the server needs the configuration's "
                    "conflict policies (use Replicator.review()), or a sync applies them; "
                    "nothing changed"
                )
            settle = self.settle(node) if self.settle is not None else None
            if not dry_run:
                done = release_held(node, held, settle=settle, now=self.now, by=by)
                with node.connect() as conn:
                    after = _get(conn, node, item.id)
                if after.status == Status.OPEN:
                    raise ReviewError(
                        f"item {ref}: {done.read} of its events were applied in order; the "
                        f"next cannot be taken yet ({after.detail}), so the item stays open "
                        f"with the other {after.event_count}"
                    )
                if after.resolved_by != by:
                    raise ReviewError(
                        f"item {ref} was decided meanwhile ({after.resolution}; by "
                        f"{after.resolved_by})"
                    )
        else:
            with node.begin() as conn:
                node.dialect.exclude_writers(conn)
                last = parking.held_events(conn, item.id)
                upto = last[-1].position if last else -1
                note = f"discarded its {len(last)} held events; nothing written"
                if not dry_run:
                    try:
                        parking.let_go(conn, item.id, upto, self.now(), by=by, note=note)
                    except parking.ItemClosed:
                        raise ReviewError(
                            f"item {ref} was decided meanwhile; nothing changed"
                        ) from None
        return Decided.of(node.name, item, decision, by, self.now())

    def resolve_matching(
        self,
        where: Filter,
        *,
        take: Take | None = None,
        discard: bool = False,
        by: str | None = None,
        dry_run: bool = False,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> BulkResult:
        """Settle every open item matching ``where`` the same way (``take``
        a side, or ``discard``): one transaction per node, committed only
        when every node's items were settled; with ``dry_run`` every
        decision is made and checked (its row written, so the database's
        refusals show), then rolled back. Items are read, decided and
        written in batches (see :mod:`replicator.bulk`), so memory stays
        bounded however many match.

        Returns a :class:`replicator.bulk.Outcome`: ``decided`` holds the
        first few decisions, ``decided_count`` counts them all.
        ``progress(done, total)`` is called before the first batch and after
        each. Raises like :meth:`resolve`, before anything is committed, and
        :class:`ReviewError` when a node cannot be read. The locals' work
        comes first and the server's last, so the server's writers wait
        (MariaDB) only while its own items are decided. A commit can still
        fail after other nodes' commits succeeded; the error then says
        which nodes committed.
        """
        if discard == (take is not None):
            raise ConfigurationError("give exactly one of take and discard")
        decision = "discard" if discard else _decision(take, None)
        # Deciding in sets sits above this module: replicator.bulk builds on
        # its rules for one item (the sides, the notes, the checks).
        from replicator import bulk

        return bulk.decide_matching(
            self, where, decision, by=by, dry_run=dry_run, progress=progress
        )

    def _decide(
        self,
        conn: Connection,
        node: Node,
        item_id: int,
        decision: str,
        merge: Mapping[str, Any] | None,
        by: str | None,
    ) -> Decided:
        """Write one decision in ``conn``'s transaction, which has first
        excluded the node's writers (``Dialect.exclude_writers``): decided
        rows and their versions must not interleave with app transactions
        changing the same rows."""
        item = _get(conn, node, item_id)
        _check_open(item, node.name)
        sides = _Sides.read(conn, node, item)
        row, kept = sides.decide(decision, merge)
        now = self.now()
        by = by or default_user()
        note = _note(decision, merge, sides)
        version = event_id = None
        if sides.writable:
            _check_row(node, sides, row)
            version, event_id = self._write(conn, node, sides, row, kept)
            note += f"; change {event_id}"
        else:
            note += "; nothing written: " + sides.why_not_writable()
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
        return Decided.of(
            node.name, item, decision, by, now, row=row, version=version, event_id=event_id
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

    def _sweep(self, node: Node, now: dt.datetime, ids: list[int]) -> int:
        """Close the node's open items of ``ids`` that a later change superseded.

        Found with plain reads first; only when there are some does it take
        the writers' lock (a pass could be adding an event to one of them)
        and close them, looking again under the lock."""
        with node.connect() as conn:
            if not parking.superseded(conn, node.dialect, ids):
                return 0
        with node.begin() as conn:
            node.dialect.exclude_writers(conn)
            return parking.sweep(conn, node.dialect, now, ids)


@dataclass
class _Sides:
    """An item's sides as they stand: the holding node's row now, and the
    other side's newest parked version."""

    item: Item
    node: str
    role: str
    shape: TableShape | None
    key: dict[str, Any] | None
    holding: Side  # the holding node's row and version, now ({}: it has none)
    other: Side | None  # None: the incoming event could not be decoded

    @property
    def writable(self) -> bool:
        """Whether a decision can be written as a change: the table and the
        row's key are known here, and every version in the item is."""
        return (
            self.shape is not None
            and self.key is not None
            and not self.item.undecodable
            and not self.item.from_sink
        )

    def why_not_writable(self) -> str:
        if self.item.from_sink:
            return (
                f"it records what {self.item.policy} could not write, not a disagreement about "
                "the row; once the cause is fixed, `replicator sink rebuild` writes it"
            )
        if self.item.undecodable:
            return (
                "an event of the item cannot be decoded, so no change can descend from it; "
                "the replicas may differ (replicator verify tells)"
            )
        if self.shape is None:
            return f"table {self.item.table!r} does not exist on {self.node}"
        return f"the row's key does not match {self.item.table!r}'s primary key on {self.node}"

    @classmethod
    def read(cls, conn: Connection, node: Node, item: Item) -> _Sides:
        """An open item's sides now; a closed one's as they were parked (the
        row now is what was decided)."""
        shape = node.shape(conn, item.table)
        key = _key_values(item, shape)
        if item.status != Status.OPEN:
            holding = item.local or Side(row=None, version={}, hlc=0, origin=node.name)
            return cls(item, node.name, node.role, shape, key, holding, item.remote)
        text_key = row_key(tuple(key.values())) if key is not None else item.key
        seen = versions.load(conn, item.table, [text_key], node.dialect).get(text_key)
        row = None
        if shape is not None and key is not None:
            row = read_row(conn, node.dialect, shape, key, _hints(item))
        holding = Side(
            row=row,
            version=seen.version if seen else {},
            hlc=seen.hlc if seen else 0,
            origin=seen.origin if seen else node.name,
        )
        return cls(item, node.name, node.role, shape, key, holding, item.remote)

    @property
    def other_row(self) -> dict[str, Any] | None:
        return self.other.row if self.other is not None else None

    def side(self, take: Take) -> Side | None:
        """The server's or the local's side."""
        holding_side = "server" if self.role == "server" else "local"
        return self.holding if take == holding_side else self.other

    def versions(self) -> list[dict[str, int]]:
        """Every version in the item, and the row's current one."""
        return [self.holding.version, *self.item.versions()]

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
        if self.item.from_sink:
            raise ReviewError(f"item {self.node}:{self.item.id}: {self.why_not_writable()}")
        if self.item.undecodable:
            raise ReviewError(
                f"item {self.node}:{self.item.id} holds an event that cannot be decoded, so no "
                "decision can descend from it; only discard closes it (writing nothing)"
            )
        if decision == "merge":
            assert merge is not None
            return self._merged(merge), None
        side = self.side(decision)  # type: ignore[arg-type]
        assert side is not None  # decodable events: the item has both sides
        if not self.writable:
            raise ReviewError(
                f"item {self.node}:{self.item.id}: {self.why_not_writable()}, so it cannot hold "
                "the decided row; only discard closes this item"
            )
        return side.row, side.version

    def _merged(self, merge: Mapping[str, Any]) -> dict[str, Any]:
        if self.shape is None or self.key is None:
            raise ReviewError(f"item {self.node}:{self.item.id}: {self.why_not_writable()}")
        start = next(
            (s.row for s in (self.side("server"), self.side("local")) if s and s.row),
            dict(self.key),
        )
        row = dict(start)
        for column, value in merge.items():
            if column not in self.shape.columns:
                raise ArgumentError(
                    f"`merge`: table {self.shape.name!r} has no column {column!r} "
                    f"(its columns: {', '.join(self.shape.columns)})",
                    "merge",
                )
            if column in self.key and value != self.key[column]:
                raise ArgumentError(
                    f"`merge`: column {column!r} is part of the row's key; it cannot change",
                    "merge",
                )
            try:
                row[column] = values.parsed(value, self._kind(column))
            except values.NotOfKind as e:
                raise ArgumentError(f"`merge`: column {column!r} {e}", "merge") from None
        return row

    def _kind(self, column: str) -> values.Kind:
        """The column's kind: as a value the item's rows hold says, else as
        its type says (None when neither tells)."""
        rows = [self.holding.row, self.other_row, self.item.base]
        rows += [s.row for s in (self.item.local,) if s is not None]
        held = next((r[column] for r in rows if r and r.get(column) is not None), None)
        if self.shape is None:
            return values.kind_like(held)
        return values.kind_held(self.shape.kind(column), held)

    def shown(self, node: Node, item: Item, now: dt.datetime) -> Shown:
        """What ``review show`` prints: both sides as they stand."""
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
        raise ArgumentError("give exactly one of `take` and `merge`", "take", "merge")
    if merge is not None:
        if not isinstance(merge, Mapping) or not merge:
            raise ArgumentError("`merge`: give a JSON object of column values", "merge")
        return "merge"
    if take not in SIDES:
        raise ArgumentError(f"`take` must be server or local, not {take!r}", "take")
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
            key_values = node.dialect.written_key(key.values())
            node.dialect.delete_rows(conn, shape.table(), shape.key, [key_values])
        else:
            node.dialect.write_row(conn, shape.table(), node.dialect.written_row(row, shape))
    except DBAPIError as e:
        raise ReviewError(
            f"item {node.name}:{sides.item.id}: {node.name} refused the decided row of "
            f"{shape.name} {sides.item.key}: {e.orig}; nothing changed"
        ) from e


def _check_open(item: Item, node: str) -> None:
    """Refuse to decide a closed item, saying how it was closed."""
    if item.status == Status.OPEN:
        return
    how = ""
    if item.resolved_at is not None:
        how = (
            f" ({item.resolution}; by {item.resolved_by}, {item.resolved_at:%Y-%m-%d %H:%M:%S} UTC)"
        )
    raise ReviewError(f"item {node}:{item.id} is already {item.status}{how}; nothing changed")


def _get(conn: Connection, node: Node, item_id: int) -> Item:
    found = parking.get(conn, item_id)
    if found is None:
        raise ReviewError(f"no review item {item_id} on {node.name}")
    return found


def _key_values(item: Item, shape: TableShape | None) -> dict[str, Any] | None:
    """The row's primary key as column -> value (typed as its events carry
    it), or None when the table is absent or keyed otherwise here, or the
    item holds events of many rows."""
    if shape is None or item.held:
        return None
    for event in map(decode_or_none, item.events):
        if event is not None:
            return dict(event.key) if tuple(event.key) == shape.key else None
    return key_from_text(item.key, shape.key)


def _check_row(node: Node, sides: _Sides, row: dict[str, Any] | None) -> None:
    """Refuse a decided row the node's table cannot hold, or that a scoped
    local may not (capture refuses the same write from the app)."""
    if row is None:
        return
    assert sides.shape is not None
    unknown = [c for c in row if c not in sides.shape.columns]
    if unknown:
        raise ReviewError(
            f"item {node.name}:{sides.item.id}: table {sides.shape.name!r} on {node.name} has no "
            f"column {', '.join(map(repr, unknown))}; add it (a migration), or discard"
        )
    if node.role == "local" and all(c in row for c in node.scope):
        for column, value in node.scope.items():
            if row[column] != value:
                raise ConfigurationError(
                    f"the decided row has {column} = {row[column]!r}, outside {node.name}'s "
                    f"scope ({column} = {value!r}); decide on the server instead"
                )


@contextmanager
def _translated(doing: str) -> Iterator[None]:
    """A database error while ``doing`` as a :class:`ReviewError` (its
    transaction rolled back: nothing changed): as a node's boundary gives it
    (:class:`DatabaseError`), or the driver's own where the block runs
    inside a node's connection still open (a bulk decision holds one per
    node until all commit)."""
    try:
        yield
    except (DatabaseError, SQLAlchemyError) as e:
        raise ReviewError(f"{doing} failed: {describe(e)}; nothing changed") from e


def _hints(item: Item) -> dict[str, Any]:
    """Values of the item's rows by column, to type what the database returns."""
    hints: dict[str, Any] = {}
    for row in (item.base, *(s.row for s in (item.local, item.remote) if s is not None)):
        for column, value in (row or {}).items():
            if hints.get(column) is None:
                hints[column] = value
    return hints


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
        event_count=item.event_count,
        resolved_at=resolved,
        resolved_by=item.resolved_by,
        resolution=item.resolution,
    )


def _at(listed: Listed) -> tuple:
    return (listed.detected_at, listed.node, listed.id)


def _decided_at(listed: Listed) -> tuple:
    return (listed.resolved_at or listed.detected_at, listed.node, listed.id)


#: Sort keys merging nodes' pages (``newest`` and ``decided`` reversed below).
_ORDERS: dict[str, Any] = {
    "age": _at,
    "newest": _at,
    "table": lambda i: (i.table, *_at(i)),
    "node": lambda i: (i.node, *_at(i)),
    "reason": lambda i: (i.reason, *_at(i)),
    "decided": _decided_at,
}


def _version(side: Side | None) -> Version | None:
    if side is None or not side.version:  # the node has no version of the row
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
