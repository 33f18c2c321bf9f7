"""Bulk decisions: every matching open item settled the same way, set by set.

``replicator review resolve --table T --take local`` can match a whole
outage's worth of items. Deciding them one at a time costs a handful of
statements each (read the item, its row and version; write the row, the
version, the event, the settlement, the status). Here a node's matching
items are read table by table in batches of ``batch_size`` by id (keyset
pagination along the index on status and table, so memory stays bounded
and no batch sorts what is left, whatever the queue's length), and per
batch:

* one read of the items, one of their rows' versions
  (:func:`versions.load_many`), and one of the rows themselves
  (``Dialect.where_in``, per chunk of keys);
* each decision made in Python by the same rules as a single one
  (:class:`replicator.review._Sides`: the side taken, the version that
  descends from every version in the item and from the row's current one,
  the timestamp observed above all of them, the same event, note and
  checks);
* batched writes: the rows, one :func:`versions.store`, one
  :func:`outbox.append`, one :func:`apply.record_settlements` on a server,
  and the items' statuses, guarded by ``status = 'open'`` (fewer closed
  than decided: someone decided meanwhile, and nothing is committed).

Transactions are those of :meth:`ReviewQueue.resolve_matching`: one per
node, in which the node's writers are first excluded, committed only after
every node's items were decided (the locals' first, the server's last). A
dry run reads, decides, checks and writes the rows as a decision does (so
the database's refusals show), skips the rest, and rolls back.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RootTransaction
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from replicator import outbox, parking, values, versions
from replicator.apply import (
    _delete_rows,
    _upsert_rows,
    change_fields,
    parents_first,
    read_row,
    record_settlements,
)
from replicator.checkpoints import SINK_PREFIX
from replicator.conflicts import Side
from replicator.dialects.base import TableShape, placeholders, quote
from replicator.errors import ArgumentError, ReplicatorError, ReviewError, describe
from replicator.events import ChangeEvent, decode_or_none, key_from_text, new_id, row_key
from replicator.node import Node
from replicator.parking import Item, Status
from replicator.review import (
    SIDES,
    BulkResult,
    Decided,
    Filter,
    ReviewQueue,
    _check_row,
    _hints,
    _note,
    _Sides,
    _translated,
    _write_row,
    default_user,
)
from replicator.tables import review_items
from replicator.versions import RowVersion

#: How many decisions a result keeps (the first ones); it counts them all.
SAMPLE = 5
#: Items read and decided at a time.
BATCH_SIZE = 1000

#: ``progress(done, total)``: items decided so far (on every node), of
#: ``total`` (None when not known).
Progress = Callable[[int, int | None], None]


class Outcome(BulkResult, kw_only=True):
    """What a bulk decision did (or, with ``dry_run``, would do).

    ``decided`` holds only the first :data:`SAMPLE` decisions (pass
    ``each`` to :func:`decide_matching` to see every one); ``decided_count``
    counts them all, ``written`` those that wrote a change (the others
    closed their item writing nothing: see ``_Sides.writable``), ``skipped``
    the matching items passed over (a vector sink's failures, which are
    only discarded), ``by_node`` the decisions per node. ``matched`` counts
    every matching open item, the skipped ones included."""

    decided_count: int
    written: int = 0
    skipped: int = 0
    by_node: dict[str, int] = {}


def decide_matching(
    queue: ReviewQueue,
    where: Filter,
    decision: str,
    *,
    by: str | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    each: Callable[[Decided], None] | None = None,
) -> Outcome:
    """Settle every open item of ``queue``'s nodes matching ``where`` the
    same way: ``decision`` is ``"server"``, ``"local"`` (take that side;
    a vector sink's items are skipped) or ``"discard"``.

    ``progress(done, total)`` is called once before the first batch and
    after each (``total``: the items to decide on every node, counted
    first); ``each(decided)`` with every decision, in order. Decisions are
    stamped with ``queue.now()`` (once) and ``queue.clock``; ``by`` names who
    decides (the operating-system user by default).

    With ``dry_run`` every item is read, decided and checked and its row
    written (so the database's refusals show), then everything is rolled
    back; the versions, events and statuses, which the database does not
    refuse, are not written.

    A held item (every event of a table, see :mod:`replicator.parking`) is
    discarded in its node's transaction; taking its incoming side is checked
    before anything is decided and applies its events after every node's
    other decisions were committed (a flood commits batch by batch, as a
    pass does); taking the holding side passes it over (it would drop them).

    Raises like :meth:`ReviewQueue.resolve_matching`: :class:`ReviewError`
    (a node cannot be read, an item cannot be decided this way, a row is
    refused, an item was decided meanwhile) or :class:`ConfigurationError`
    (a row outside a local's scope), with nothing committed. An outcome with
    ``matched == 0`` when nothing matches.
    """
    if decision not in (*SIDES, "discard"):
        raise ArgumentError(
            f"`decision` must be server, local or discard, not {decision!r}", "decision"
        )
    if batch_size < 1:
        raise ArgumentError(f"`batch_size` must be 1 or more, not {batch_size}", "batch_size")
    now = queue.now()
    run = _Run(queue, decision, by or default_user(), now, dry_run, progress, each)
    conditions = _conditions(where, now)
    counts: dict[str, tuple[int, int]] = {}
    unreachable = []
    for node in queue._nodes(where.node):
        try:
            with node.connect() as conn:
                counts[node.name] = _count(conn, conditions, _passed_over(decision, node))
        except ReplicatorError as e:
            unreachable.append(describe(e))
    if unreachable:
        raise ReviewError("nothing was decided: " + "; ".join(unreachable))
    run.total = sum(count for count, _ in counts.values())
    matched = sum(count + skipped for count, skipped in counts.values())
    # The locals' first, the server's last: the server's writers (MariaDB)
    # wait only while its own items are decided.
    nodes = sorted(
        (queue.nodes[name] for name, (count, _) in counts.items() if count),
        key=lambda n: n.role == "server",
    )
    run.report()
    releases = {node.name: _releases(run, node, conditions) for node in nodes}
    with ExitStack() as stack:
        transactions: list[tuple[str, RootTransaction]] = []
        for node in nodes:
            with _translated(f"deciding {node.name}'s items"):
                conn = stack.enter_context(node.connect())
                transactions.append((node.name, conn.begin()))
                node.dialect.exclude_writers(conn)
                if decision == "discard":
                    _drop_held(run, conn, node, conditions)
                passed_over = _passed_over(decision, node)
                for items in _batches(conn, conditions, passed_over, batch_size):
                    run.batch(conn, node, items)
        _commit(transactions, dry_run)
    for node in nodes:
        _release(run, node, releases[node.name])
    skipped = sum(skipped for _, skipped in counts.values())
    return Outcome(
        matched=max(matched, run.done + skipped),
        decided=run.sample,
        decided_count=run.done,
        written=run.written,
        skipped=skipped,
        by_node=run.by_node,
        dry_run=dry_run,
    )


def _conditions(where: Filter, now: dt.datetime) -> list[sa.ColumnElement[bool]]:
    """The open items matching ``where`` (but its node)."""
    c = review_items.c
    conditions = [c.status == Status.OPEN]
    if where.table is not None:
        conditions.append(c.table_name == where.table)
    if where.reason is not None:
        conditions.append(c.reason == where.reason)
    if where.older_than is not None:
        parked_before = (now - where.older_than).astimezone(dt.UTC).replace(tzinfo=None)
        conditions.append(c.detected_at <= parked_before)
    return conditions


def _from_sink() -> sa.ColumnElement[bool]:
    return review_items.c.policy.startswith(SINK_PREFIX)


def _passed_over(decision: str, node: Node) -> sa.ColumnElement[bool] | None:
    """The matching items a decision passes over on ``node`` (None: none):
    a vector sink's failures unless discarded (they are only discarded),
    and held items when the holding node's side is taken (that would drop
    their events; only discard does)."""
    passed = [] if decision == "discard" else [_from_sink()]
    if decision == ("server" if node.role == "server" else "local"):
        passed.append(review_items.c.row_key == parking.HELD_KEY)
    return sa.or_(*passed) if passed else None


def _count(
    conn: Connection, conditions: list, passed_over: sa.ColumnElement[bool] | None
) -> tuple[int, int]:
    """How many matching items are to decide, and how many are passed over."""
    passed = sa.literal(0) if passed_over is None else sa.func.count(sa.case((passed_over, 1)))
    total, skipped = conn.execute(sa.select(sa.func.count(), passed).where(*conditions)).one()
    return total - skipped, skipped


def _batches(
    conn: Connection,
    conditions: list,
    passed_over: sa.ColumnElement[bool] | None,
    size: int,
) -> Iterator[list[_Open]]:
    """The matching items in batches of at most ``size`` items of one table,
    table by table, by id: each batch is read after the previous one was
    decided (keyset pagination: whatever the queue's length, one batch is
    in memory)."""
    c = review_items.c
    conditions = [*conditions, c.row_key != parking.HELD_KEY]  # see _drop_held, _release
    if passed_over is not None:
        conditions = [*conditions, ~passed_over]
    tables = conn.execute(sa.select(c.table_name).where(*conditions).distinct()).scalars().all()
    for table in sorted(tables):
        # Equal status and table, then id: the order of the index on
        # (status, table_name), so that no batch sorts what is left.
        last = 0
        while True:
            select = (
                sa.select(*_READ)
                .where(*conditions, c.table_name == table, c.id > last)
                .order_by(c.id)
                .limit(size)
            )
            items = [_open(table, *row) for row in conn.execute(select)]
            if not items:
                break
            yield items
            last = items[-1].id


#: What a batch reads of its items: what deciding them needs (not the
#: detail, the time parked, the status, which is open).
_READ = tuple(
    review_items.c[name]
    for name in ("id", "row_key", "policy", "base", "local", "remote", "events")
)


class _Open(Item, kw_only=True):
    """An open item as a batch reads it (see :data:`_READ`: ``reason`` and
    ``detail`` are empty, ``detected_at`` unknown), its events decoded
    once (None: one that cannot be)."""

    decoded: list[ChangeEvent | None] = []
    broken: bool = False  # one of its events cannot be decoded

    @property
    def undecodable(self) -> bool:
        return self.broken

    def versions(self) -> list[dict[str, int]]:
        held = [self.local.version] if self.local is not None else []
        return held + [event.version for event in self.decoded if event is not None]


_UNKNOWN_TIME = dt.datetime.min


def _open(
    table: str,
    item_id: int,
    key: str,
    policy: str,
    base: bytes | None,
    local: bytes | None,
    remote: bytes | None,
    events: bytes | None,
) -> _Open:
    payloads = [] if events is None else parking._decode_events(events)
    decoded = [decode_or_none(payload) for payload in payloads]
    return _Open(
        id=item_id,
        table=table,
        key=key,
        reason="",
        detail="",
        policy=policy,
        status=Status.OPEN,
        base=None if base is None else parking._decode_row(base),
        local=None if local is None else parking._decode_side(local),
        remote=None if remote is None else parking._decode_side(remote),
        events=payloads,
        detected_at=_UNKNOWN_TIME,
        event_count=len(payloads),
        decoded=decoded,
        broken=None in decoded,
    )


def _key_of(item: _Open, shape: TableShape | None) -> dict[str, Any] | None:
    """``review._key_values``, from the item's events decoded once."""
    if shape is None:
        return None
    for event in item.decoded:
        if event is not None:
            return dict(event.key) if tuple(event.key) == shape.key else None
    return key_from_text(item.key, shape.key)


def _held(conn: Connection, conditions: list) -> list[Item]:
    c = review_items.c
    select = sa.select(review_items).where(*conditions, c.row_key == parking.HELD_KEY)
    return [parking._item(row) for row in conn.execute(select.order_by(c.id))]


def _drop_held(run: _Run, conn: Connection, node: Node, conditions: list) -> None:
    """Discard the node's matching held items (every event of a table, see
    :mod:`replicator.parking`) in ``conn``'s transaction: their events are
    dropped with the rest of the node's decisions, or not at all."""
    for item in _held(conn, conditions):
        events = parking.held_events(conn, item.id)
        note = f"discarded its {len(events)} held events; nothing written"
        upto = events[-1].position if events else -1
        parking.let_go(conn, item.id, upto, run.now, by=run.by, note=note)
        run._count(node, Decided.of(node.name, item, run.decision, run.by, run.now), written=False)
    run.report()


def _releases(run: _Run, node: Node, conditions: list) -> list[Item]:
    """The node's matching held items that taking the incoming side applies,
    each checked first (its table must take its first event), so that a
    refusal changes nothing; [] for another decision."""
    if run.decision != ("local" if node.role == "server" else "server"):
        return []
    with _translated(f"reading {node.name}'s held items"), node.connect() as conn:
        held = _held(conn, conditions)
    for item in held:  # raises ReviewError for one its table cannot take yet
        run.queue._decide_held(node, item, run.decision, run.by, dry_run=True)
    return held


def _release(run: _Run, node: Node, held: list[Item]) -> None:
    """Apply the held items' events (each release commits batch by batch, as
    a pass would), after every node's other decisions were committed."""
    for item in held:
        if run.dry_run:
            decided = Decided.of(node.name, item, run.decision, run.by, run.now)
        else:
            try:
                decided = run.queue._decide_held(node, item, run.decision, run.by, False)
            except ReplicatorError as e:
                raise ReviewError(
                    f"{describe(e)}; the other decisions were committed before it"
                ) from e
        run._count(node, decided, written=False)
        run.report()


def _commit(transactions: Sequence[tuple[str, RootTransaction]], dry_run: bool) -> None:
    """Commit every node's transaction in order (roll them back for a dry
    run); a failure says which nodes committed before it."""
    committed: list[str] = []
    for name, transaction in transactions:
        if dry_run:
            transaction.rollback()
            continue
        try:
            transaction.commit()
        # Its node's block is still open (every node's connection stays
        # held until all commit): the driver's error, before the node's
        # boundary.
        except SQLAlchemyError as e:
            raise ReviewError(
                f"committing {name}'s decisions failed: {describe(e)}; "
                + (
                    f"{', '.join(committed)} committed theirs"
                    if committed
                    else "nothing was committed"
                )
            ) from e
        committed.append(name)


@dataclass(slots=True)
class _Decision:
    """One item decided, before it is written: its sides, the decided row,
    the version of the change whose row it keeps, and (when it writes a
    change) its version and event."""

    sides: _Sides
    text_key: str
    row: dict[str, Any] | None = None
    kept: dict[str, int] | None = None
    version: dict[str, int] | None = None
    event: ChangeEvent | None = None
    note: str = ""


#: An item to decide with its table's shape here, its key (None: the table
#: is absent or keyed otherwise) and its row's key as text.
_Target = tuple[_Open, TableShape | None, dict[str, Any] | None, str]


class _Run:
    """A bulk decision under way: what to decide, and what it has done so far."""

    def __init__(
        self,
        queue: ReviewQueue,
        decision: str,
        by: str,
        now: dt.datetime,
        dry_run: bool,
        progress: Progress | None,
        each: Callable[[Decided], None] | None,
    ) -> None:
        self.queue, self.decision, self.by, self.now = queue, decision, by, now
        self.dry_run, self.progress, self.each = dry_run, progress, each
        self.resolved_at = now.astimezone(dt.UTC).replace(tzinfo=None)
        self.total: int | None = None
        self.done = self.written = 0
        self.sample: list[Decided] = []
        self.by_node: dict[str, int] = {}

    def report(self) -> None:
        if self.progress is not None:
            # Counted before the nodes' writers were excluded: items parked
            # since are decided too.
            total = None if self.total is None else max(self.total, self.done)
            self.progress(self.done, total)

    def batch(self, conn: Connection, node: Node, items: list[_Open]) -> None:
        """Decide a batch of a node's items in ``conn``'s transaction."""
        targets: list[_Target] = []
        for item in items:
            assert not item.held  # decided on their own (see _drop_held, _release)
            shape = node.shape(conn, item.table)
            key = _key_of(item, shape)
            text_key = row_key(tuple(key.values())) if key is not None else item.key
            targets.append((item, shape, key, text_key))
        while targets:
            # One decision per row and round: a second item of a row (a row
            # has one open item, but a sink's failure is another) is decided
            # in the next round, after the first one's write, as it would be
            # one at a time.
            seen: set[tuple[str, str]] = set()
            this_round: list[_Target] = []
            later: list[_Target] = []
            for target in targets:
                row = (target[0].table, target[3])
                (later if row in seen else this_round).append(target)
                seen.add(row)
            self._round(conn, node, this_round)
            targets = later
        self.report()

    def _round(self, conn: Connection, node: Node, targets: list[_Target]) -> None:
        """Decide items of distinct rows: read, decide, write, close."""
        dialect = node.dialect
        wanted: dict[str, set[str]] = {}
        for item, _, _, text_key in targets:
            wanted.setdefault(item.table, set()).add(text_key)
        seen = versions.load_many(conn, dialect, wanted)
        rows: dict[str, dict[str, dict[str, Any]]] = {}
        for table in wanted:
            readable = [
                (i, s, k, t) for i, s, k, t in targets if i.table == table and k is not None
            ]
            if readable and readable[0][1] is not None:
                rows[table] = _current_rows(conn, node, readable[0][1], readable)
        decisions = []
        for item, shape, key, text_key in targets:
            version = seen.get(item.table, {}).get(text_key)
            holding = Side(
                row=rows.get(item.table, {}).get(text_key),
                version=version.version if version else {},
                hlc=version.hlc if version else 0,
                origin=version.origin if version else node.name,
            )
            sides = _Sides(item, node.name, node.role, shape, key, holding, item.remote)
            decisions.append(self._decide(node, sides, text_key))
        self._write(conn, node, decisions)
        for d in decisions:
            self._count(node, d, written=d.event is not None)

    def _decide(self, node: Node, sides: _Sides, text_key: str) -> _Decision:
        """One item's decision, as ``ReviewQueue._decide`` and ``_write`` make it."""
        d = _Decision(sides, text_key)
        d.row, d.kept = sides.decide(self.decision, None)
        d.note = _note(self.decision, None, sides)
        if not sides.writable:
            d.note += "; nothing written: " + sides.why_not_writable()
            return d
        _check_row(node, sides, d.row)
        assert sides.shape is not None and sides.key is not None
        d.version = versions.increment(versions.merge(*sides.versions()), node.name)
        clock = self.queue.clock
        clock.observe(sides.latest_hlc())
        d.event = ChangeEvent(
            event_id=new_id(),
            origin=node.name,
            table=sides.shape.name,
            key=sides.key,
            **change_fields(sides.holding.row, sides.other_row, after=d.row),
            version=d.version,
            hlc=clock.now(),
            txid=new_id(),
        )
        d.note += f"; change {d.event.event_id}"
        return d

    def _write(self, conn: Connection, node: Node, decisions: list[_Decision]) -> None:
        """Write a round's decisions: the rows (in a dry run too, so that the
        database's refusals show), then, unless a dry run, the versions, the
        events, the settlements and the items' new statuses."""
        changes = [d for d in decisions if d.event is not None]
        _write_rows(conn, node, [d for d in changes if d.row != d.sides.holding.row])
        if self.dry_run:
            return
        dialect = node.dialect
        new_versions = {}
        events = []
        settled = {}
        for d in changes:
            assert d.event is not None and d.version is not None
            where = (d.event.table, d.text_key)
            new_versions[where] = RowVersion(d.version, d.event.hlc, node.name, d.row is None)
            events.append((d.text_key, d.event))
            if node.role == "server" and d.kept is not None:
                # A local's later edit that descends from the row kept is then
                # a sequential edit, not a new conflict (see apply._absorb).
                settled[where] = (d.version, d.kept)
        versions.store(conn, dialect, new_versions)
        outbox.append(conn, dialect, events)
        record_settlements(conn, dialect, settled)
        self._close(conn, node, decisions)

    def _close(self, conn: Connection, node: Node, decisions: list[_Decision]) -> None:
        """Mark the items resolved, each with its note, if still open: one
        statement per chunk of items (an UPDATE whose CASE gives each its
        note), which says how many it closed."""
        c = review_items.c
        resolved_at = self.resolved_at
        as_bound = c.resolved_at.type.bind_processor(conn.dialect)
        fixed = (
            Status.RESOLVED.value,
            as_bound(resolved_at) if as_bound is not None else resolved_at,
            self.by,
        )
        # Three parameters per item (CASE's two, IN's one): well below
        # every database's limit on bound parameters (pymysql has none).
        by_position = node.dialect.name == "mariadb"
        one_by_one = node.dialect.name == "sqlite"
        chunk = node.dialect.in_chunk if by_position else max(1, node.dialect.in_chunk // 2)
        for start in range(0, len(decisions), chunk):
            part = decisions[start : start + chunk]
            ids = [d.sides.item.id for d in part]
            notes = {d.sides.item.id: d.note for d in part}
            first, last = min(ids), max(ids)
            parameters: Any
            if one_by_one:
                # SQLite runs a statement per item in C (executemany) faster
                # than it searches a CASE; the changes are summed.
                statement = _close_one(conn)
                parameters = [(*fixed, notes[i], Status.OPEN.value, i) for i in ids]
            elif by_position and last - first < 2 * len(ids):
                # Items of a batch have close ids: each note picked by its
                # id's position (ELT), not searched for among the chunk's
                # (CASE), which MariaDB does one WHEN after the other.
                statement = _close_by_position(conn, last - first + 1, len(part))
                parameters = (
                    *fixed,
                    first - 1,
                    *(notes.get(i) for i in range(first, last + 1)),
                    Status.OPEN.value,
                    *ids,
                )
            else:
                statement = _close_statement(conn, len(part))
                parameters = (
                    *fixed,
                    *(v for pair in notes.items() for v in pair),
                    Status.OPEN.value,
                    *ids,
                )
            closed = conn.exec_driver_sql(statement, parameters).rowcount
            if closed != len(part):  # decided concurrently by someone else
                now = conn.execute(sa.select(c.id, c.resolution).where(c.id.in_(ids)))
                gone = [f"{node.name}:{i}" for i, note in now if note != notes[i]]
                raise ReviewError(
                    f"item {', '.join(gone[:SAMPLE])}"
                    + (f" and {len(gone) - SAMPLE} more" if len(gone) > SAMPLE else "")
                    + " was decided meanwhile; nothing changed"
                )

    def _count(self, node: Node, decided: Decided | _Decision, *, written: bool) -> None:
        self.done += 1
        self.written += written
        self.by_node[node.name] = self.by_node.get(node.name, 0) + 1
        if len(self.sample) >= SAMPLE and self.each is None:
            return
        if isinstance(decided, _Decision):
            decided = self._decided(node, decided)
        if len(self.sample) < SAMPLE:
            self.sample.append(decided)
        if self.each is not None:
            self.each(decided)

    def _decided(self, node: Node, d: _Decision) -> Decided:
        return Decided.of(
            node.name,
            d.sides.item,
            self.decision,
            self.by,
            self.now,
            row=d.row,
            version=d.version,
            event_id=d.event.event_id if d.event is not None else None,
        )


def _close_statement(conn: Connection, count: int) -> str:
    """``UPDATE`` of ``count`` open items' status, decision time, decider
    and note (each its own): parameters status, time, decider, then ``(id,
    note)`` per item, ``'open'``, the ids."""
    one = placeholders(conn, 1)
    column = functools.partial(quote, conn)
    return (
        _closing(conn)
        + f"{column('resolution')} = CASE {column('id')} "
        + " ".join([f"WHEN {one} THEN {one}"] * count)
        + f" END WHERE {column('status')} = {one} AND {column('id')} IN "
        f"({placeholders(conn, count)})"
    )


def _closing(conn: Connection) -> str:
    """The start of every statement closing items: ``UPDATE ... SET`` the
    status, decision time and decider (three parameters), then the note."""
    one = placeholders(conn, 1)
    column = functools.partial(quote, conn)
    return (
        f"UPDATE {column(review_items.name)} SET {column('status')} = {one}, "
        f"{column('resolved_at')} = {one}, {column('resolved_by')} = {one}, "
    )


def _close_one(conn: Connection) -> str:
    """``UPDATE`` of one open item's status, decision time, decider and
    note: parameters status, time, decider, note, ``'open'``, the id."""
    one = placeholders(conn, 1)
    column = functools.partial(quote, conn)
    return (
        _closing(conn) + f"{column('resolution')} = {one} WHERE {column('status')} = {one} "
        f"AND {column('id')} = {one}"
    )


def _close_by_position(conn: Connection, span: int, count: int) -> str:
    """MariaDB's ``UPDATE`` of ``count`` open items whose ids span ``span``
    numbers, as :func:`_close_statement`'s, each note picked by its item's
    id (``ELT(id - offset, ...)``): parameters status, time, decider, the
    offset (the first id less one), a note per id of the span (NULL where
    no item has it), ``'open'``, the ids."""
    one = placeholders(conn, 1)
    column = functools.partial(quote, conn)
    return (
        _closing(conn)
        + f"{column('resolution')} = ELT({column('id')} - {one}, {placeholders(conn, span)}) "
        f"WHERE {column('status')} = {one} AND {column('id')} IN ({placeholders(conn, count)})"
    )


def _current_rows(
    conn: Connection, node: Node, shape: TableShape, targets: list[_Target]
) -> dict[str, dict[str, Any]]:
    """The node's rows of these items (of one table, keys known), by row key
    as text, typed as ``read_row`` types them; absent rows are left out. One
    statement per chunk of keys (``Dialect.where_in``)."""
    dialect = node.dialect
    # By the keys' values as the items' events carry them: the stored key
    # typed like the first item's (SQLite returns a UUID key as 32 hex
    # digits).
    first_key = targets[0][2]
    assert first_key is not None
    kinds = {c: values.kind_held(shape.kind(c), first_key[c]) for c in shape.key}
    by_key = {tuple(k.values()): (item, t) for item, _, k, t in targets if k is not None}
    quoted = conn.dialect.identifier_preparer.quote(shape.name)
    found: dict[str, dict[str, Any]] = {}
    strays = False  # a row read that no item's key matched as typed
    # Each row typed as ``shape.typed(row, _hints(item))`` types it: by
    # kinds that depend only on the types of the item's hints, so worked
    # out once per combination of them (see _hint_types).
    kinds_by_hints: dict[tuple[type, ...], list[values.Kind]] = {}
    typed = values.typed
    for start in range(0, len(targets), dialect.in_chunk):
        chunk = targets[start : start + dialect.in_chunk]
        condition, params = dialect.where_in(
            conn,
            shape.key,
            [dialect.written_key(k.values()) for _, _, k, _ in chunk if k is not None],
        )
        result = conn.exec_driver_sql(f"SELECT * FROM {quoted} WHERE {condition}", params)
        names = tuple(result.keys())
        at = [(names.index(c), kinds[c]) for c in shape.key]
        for raw in result:
            ident = tuple([typed(raw[i], kind) for i, kind in at])
            if ident not in by_key:
                strays = True
                continue
            item, text_key = by_key[ident]
            signature = _hint_types(item, shape.columns)
            row_kinds = kinds_by_hints.get(signature)
            if row_kinds is None:
                held = shape.kinds_held(_hints(item))
                row_kinds = kinds_by_hints[signature] = [held.get(n) for n in names]
            found[text_key] = {
                n: typed(v, k) for n, v, k in zip(names, raw, row_kinds, strict=True)
            }
    if strays:
        # A key the database matched otherwise (a case-insensitive
        # collation, a value typed unlike the first item's): those items'
        # rows read one by one, as a single decision reads them.
        for item, _, key, text_key in targets:
            if text_key not in found and key is not None:
                row = read_row(conn, dialect, shape, key, _hints(item))
                if row is not None:
                    found[text_key] = row
    return found


def _hint_types(item: Item, columns: tuple[str, ...]) -> tuple[type, ...]:
    """The type of each column's hint in ``_hints(item)`` (its first value
    other than None in the base, the local's row, the remote's row; None
    when none), which alone decides the column's kind there
    (``values.kind_held``)."""
    rows = [
        row
        for row in (
            item.base,
            item.local.row if item.local is not None else None,
            item.remote.row if item.remote is not None else None,
        )
        if row
    ]
    found = []
    for column in columns:
        value = None
        for row in rows:
            value = row.get(column)
            if value is not None:
                break
        found.append(type(value))
    return tuple(found)


def _write_rows(conn: Connection, node: Node, decisions: list[_Decision]) -> None:
    """Write the decided rows in bulk: deletes children first, then upserts
    parents first, so foreign keys hold throughout. When the database
    refuses one, they are written again one by one, so the refusal names
    its item (the transaction is rolled back anyway)."""
    if not decisions:
        return
    dialect = node.dialect
    shapes: dict[str, TableShape] = {}
    upserts: dict[str, dict[str, dict[str, Any]]] = {}
    deletes: dict[str, dict[str, dict[str, Any]]] = {}
    for d in decisions:
        shape, key = d.sides.shape, d.sides.key
        assert shape is not None and key is not None
        shapes[shape.name] = shape
        if d.row is None:
            deletes.setdefault(shape.name, {})[d.text_key] = key
        else:
            upserts.setdefault(shape.name, {})[d.text_key] = d.row
    tables = parents_first(list(shapes), shapes)
    table = tables[0]
    try:
        for table in reversed(tables):
            _delete_rows(conn, dialect, shapes[table], deletes.get(table, {}))
        for table in tables:
            _upsert_rows(conn, dialect, shapes[table], upserts.get(table, {}), {}, False)
    except DBAPIError as e:
        _name_refused(conn, node, decisions)
        # Not named one by one (the database aborted the transaction).
        first, last = decisions[0].sides.item.id, decisions[-1].sides.item.id
        raise ReviewError(
            f"{node.name} refused the decided row of {table} of one of the items "
            f"{node.name}:{first} to {node.name}:{last}: {e.orig}; nothing changed"
        ) from e


def _name_refused(conn: Connection, node: Node, decisions: list[_Decision]) -> None:
    """Write the decided rows one by one, as single decisions write them,
    to raise the refusal of the first row the database refuses (with its
    item); nothing when none is refused, or when the database fails them
    for another reason (a transaction it aborted)."""
    for d in sorted(decisions, key=lambda d: d.row is not None):  # deletes first
        shape, key = d.sides.shape, d.sides.key
        assert shape is not None and key is not None
        try:
            _write_row(conn, node, shape, key, d.row, d.sides)
        except ReviewError as e:
            cause = e.__cause__
            if isinstance(cause, DBAPIError) and node.dialect.refusal(cause) is not None:
                raise
            return
