"""The manual-review queue: what no policy settled and what could not be applied.

Each node keeps its own queue in ``replicator_review_items``. An item keeps
everything needed to decide later and loses nothing: the row's base, the
target's version (``local``: the row as the node that parked it holds it),
the incoming version (``remote``), the reason, the policy, and the events
involved, whole (their encoded payloads, undecodable ones included).

A row has at most one open item. What happens to later events for a row
with an open item:

* an event that conflicts with the row again, or cannot be applied again,
  joins the open item: its ``remote`` side becomes the newest version and
  its event is added to ``events``;
* an event that descends from the row's current version is applied as
  usual (the row moves on; the item stays open, and a decision later must
  descend from the row's version then, see ``replicator review``);
* an event (or a settlement) whose version descends from every version in
  the item makes it ``obsolete``: someone changed the row after seeing
  every side, so there is nothing left to decide. An item whose incoming
  event could not be decoded has no known version and is never obsolete.

A flood is one problem, not one item per row: events the target cannot take
for a structural reason (:data:`HELD_REASONS`: its table is missing, lacks a
column, or is keyed otherwise) are *held*, every one, in one item per table
(row key :data:`HELD_KEY`), its events kept in order in
``replicator_review_events``. While a table has a held item, every later
event of that table joins it, so nothing of the table is applied out of
order. A pass applies the held events, in order and with the ordinary batch
path, once the problem is gone (see :mod:`replicator.sync`); a person may
also discard them, or apply them at once (:mod:`replicator.review`).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from replicator import versions
from replicator.checkpoints import SINK_PREFIX
from replicator.conflicts import Side
from replicator.dialects import Dialect
from replicator.events import decode_or_none, from_ext, wire
from replicator.tables import review_events, review_items
from replicator.versions import Order


class Reason(enum.StrEnum):
    """Why an item was parked."""

    MANUAL_REVIEW = "manual_review"  # the policy asks a person
    RESOLVER_ERROR = "resolver_error"  # a custom resolver raised or returned no decision
    CONSTRAINT_VIOLATION = "constraint_violation"  # the target refused the row
    UNIQUE_VIOLATION = "unique_violation"  # another row holds its unique value
    MISSING_PARENT = "missing_parent"  # the row it refers to is gone (or never came)
    KEY_COLLISION = "key_collision"  # two nodes made different rows with one key
    INVALID_VALUE = "invalid_value"  # the target cannot store a value
    MISSING_TABLE = "missing_table"
    MISSING_COLUMN = "missing_column"
    KEY_MISMATCH = "key_mismatch"  # the target's primary key differs
    CORRUPT_PAYLOAD = "corrupt_payload"  # the event could not be decoded
    SINK_ERROR = "sink_error"  # a vector sink could not write the row (see sink.py)
    FORBIDDEN = "forbidden"  # a device pushed what its token does not allow (devices.py)


#: Why events are held rather than parked row by row (see the module's docstring).
HELD_REASONS = frozenset({Reason.MISSING_TABLE, Reason.MISSING_COLUMN, Reason.KEY_MISMATCH})
#: The row key of a held item: it holds events of every row of its table.
HELD_KEY = "*"


class Status(enum.StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"
    OBSOLETE = "obsolete"


class Item(msgspec.Struct, kw_only=True):
    """One review item as stored."""

    id: int
    table: str
    key: str
    reason: str
    detail: str
    policy: str
    status: str
    base: dict[str, Any] | None
    local: Side | None
    remote: Side | None
    events: list[bytes]
    detected_at: dt.datetime
    resolved_at: dt.datetime | None = None
    resolved_by: str | None = None
    resolution: str | None = None
    event_count: int = 0

    @property
    def held(self) -> bool:
        """Whether it holds every event of its table (see :data:`HELD_KEY`);
        its events are in ``replicator_review_events``, not in ``events``."""
        return self.key == HELD_KEY

    @property
    def from_sink(self) -> bool:
        """Whether a vector sink parked it: a failure to index the row, not a
        disagreement about it (the row's open item, if any, is another)."""
        return self.policy.startswith(SINK_PREFIX)

    @property
    def undecodable(self) -> bool:
        """Whether one of its events cannot be decoded (its version is unknown)."""
        return any(decode_or_none(payload) is None for payload in self.events)

    def versions(self) -> list[dict[str, int]]:
        """Every known version in the item: the target's and every decodable
        parked event's (several nodes' events can join one item)."""
        held = [self.local.version] if self.local is not None else []
        events = map(decode_or_none, self.events)
        return held + [event.version for event in events if event is not None]

    def superseded_by(self, version: Mapping[str, int]) -> bool:
        """Whether ``version`` descends from (or equals) every version in the
        item. Never for an item with an undecodable event."""
        held = self.versions()
        return (
            bool(held)
            and not self.undecodable
            and all(versions.compare(version, v) in (Order.AFTER, Order.EQUAL) for v in held)
        )


class Parking(msgspec.Struct, kw_only=True):
    """An item to write (or to add to the row's open item)."""

    table: str
    key: str
    reason: Reason
    detail: str
    policy: str = ""
    base: dict[str, Any] | None = None
    local: Side | None = None
    remote: Side | None = None
    events: list[bytes] = []


_encode = msgspec.msgpack.Encoder().encode
_decode_side = msgspec.msgpack.Decoder(Side, ext_hook=from_ext).decode
_decode_row = msgspec.msgpack.Decoder(dict[str, Any] | None, ext_hook=from_ext).decode
_decode_events = msgspec.msgpack.Decoder(list[bytes]).decode


def _pack_side(side: Side | None) -> bytes | None:
    return None if side is None else _encode(msgspec.structs.replace(side, row=wire(side.row)))


def _pack_row(row: dict[str, Any] | None) -> bytes | None:
    return None if row is None else _encode(wire(row))


def _item(row: Any) -> Item:
    return Item(
        id=row.id,
        table=row.table_name,
        key=row.row_key,
        reason=row.reason,
        detail=row.detail,
        policy=row.policy,
        status=row.status,
        base=None if row.base is None else _decode_row(row.base),
        local=None if row.local is None else _decode_side(row.local),
        remote=None if row.remote is None else _decode_side(row.remote),
        events=[] if row.events is None else _decode_events(row.events),
        detected_at=row.detected_at,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by,
        resolution=row.resolution,
        event_count=_event_count(row),
    )


def _event_count(row: Any) -> int:
    """How many events an item holds: counted when written, or (for items
    parked before that) read from its events."""
    if row.event_count is not None:
        return row.event_count
    return 0 if row.events is None else len(_decode_events(row.events))


#: Item columns a listing shows: no sides, no events.
_LISTED = tuple(
    review_items.c[name]
    for name in (
        "id",
        "table_name",
        "row_key",
        "reason",
        "detail",
        "policy",
        "status",
        "detected_at",
        "resolved_at",
        "resolved_by",
        "resolution",
        "event_count",
    )
)
CLOSED = "closed"  # a listing's status: resolved or obsolete

#: How a page is ordered (see :func:`page`): by these columns, then by id.
ORDERS = {
    "age": ("detected_at",),
    "newest": ("detected_at",),
    "table": ("table_name", "detected_at"),
    "reason": ("reason", "detected_at"),
    "decided": ("decided",),
}


def _matching(
    status: str | None, table: str | None, reason: str | None, parked_before: dt.datetime | None
) -> list[sa.ColumnElement[bool]]:
    c = review_items.c
    conditions = []
    if status == CLOSED:
        conditions.append(c.status != Status.OPEN)
    elif status is not None:
        conditions.append(c.status == status)
    if table is not None:
        conditions.append(c.table_name == table)
    if reason is not None:
        conditions.append(c.reason == reason)
    if parked_before is not None:
        conditions.append(c.detected_at <= parked_before.astimezone(dt.UTC).replace(tzinfo=None))
    return conditions


def page(
    conn: Connection,
    *,
    status: str | None = None,
    table: str | None = None,
    reason: str | None = None,
    parked_before: dt.datetime | None = None,
    order: str = "age",
    limit: int | None = None,
) -> list[Item]:
    """The first ``limit`` items (None: all) matching the filters, in the
    order ``order`` names (see :data:`ORDERS`; ``newest`` and ``decided``
    newest first), without their sides or events (``base``, ``local``,
    ``remote`` None, ``events`` empty; ``event_count`` says how many): a
    page of a long queue costs what the page holds. ``status`` may be
    :data:`CLOSED`. ``[]`` when nothing matches."""
    c = review_items.c
    descending = order in ("newest", "decided")
    by = [
        sa.func.coalesce(c.resolved_at, c.detected_at) if name == "decided" else c[name]
        for name in ORDERS[order]
    ] + [c.id]
    unread = [sa.null().label(name) for name in ("base", "local", "remote")]
    select = (
        sa.select(
            *_LISTED,
            *unread,
            # Only an item counted before event_count existed has its events read.
            sa.case((c.event_count.is_(None), c.events)).label("events"),
        )
        .where(*_matching(status, table, reason, parked_before))
        .order_by(*(column.desc() if descending else column for column in by))
        .limit(limit)
    )
    return [_item(row) for row in conn.execute(select)]


def counts(
    conn: Connection,
    *,
    status: str | None = None,
    table: str | None = None,
    reason: str | None = None,
    parked_before: dt.datetime | None = None,
) -> list[tuple[str, str, int]]:
    """How many items match the filters, by table and reason: ``(table,
    reason, count)``; one grouped query; ``[]`` when none does."""
    c = review_items.c
    select = (
        sa.select(c.table_name, c.reason, sa.func.count())
        .where(*_matching(status, table, reason, parked_before))
        .group_by(c.table_name, c.reason)
    )
    return [(table, reason, count) for table, reason, count in conn.execute(select)]


def items(conn: Connection, *, status: str | None = None, table: str | None = None) -> list[Item]:
    """The node's review items (optionally of one status or table), oldest
    first; ``[]`` when the queue is empty."""
    select = sa.select(review_items).order_by(review_items.c.id)
    if status is not None:
        select = select.where(review_items.c.status == status)
    if table is not None:
        select = select.where(review_items.c.table_name == table)
    return [_item(row) for row in conn.execute(select)]


def open_groups(conn: Connection) -> list[tuple[str, str, int, dt.datetime]]:
    """The node's open items grouped by table and reason: ``(table, reason,
    count, when the oldest was parked)``, by table then reason; ``[]`` when
    none is open. One grouped query, whatever the queue's length."""
    c = review_items.c
    select = (
        sa.select(c.table_name, c.reason, sa.func.count(), sa.func.min(c.detected_at))
        .where(c.status == Status.OPEN)
        .group_by(c.table_name, c.reason)
        .order_by(c.table_name, c.reason)
    )
    return [(table, reason, count, oldest) for table, reason, count, oldest in conn.execute(select)]


def get(conn: Connection, item_id: int) -> Item | None:
    """One item by its id (None if the node has none)."""
    found = conn.execute(sa.select(review_items).where(review_items.c.id == item_id)).first()
    return None if found is None else _item(found)


def has_open(conn: Connection) -> bool:
    """Whether the node has any open item (one cheap query)."""
    c = review_items.c
    return conn.execute(sa.select(c.id).where(c.status == Status.OPEN).limit(1)).first() is not None


def open_count(conn: Connection) -> int:
    """How many items are open on the node (0 for an empty queue)."""
    c = review_items.c
    return conn.execute(sa.select(sa.func.count()).where(c.status == Status.OPEN)).scalar_one()


def superseded(
    conn: Connection, dialect: Dialect, ids: Collection[int] | None = None
) -> dict[int, str]:
    """The open items (of ``ids``; None: all) whose row's current version
    descends from every version in them (a change made after seeing every
    side superseded them), by id, with what superseded them; ``{}`` for
    none. Reads only.

    A pass closes such items as the change arrives; this finds the rest
    (an item parked in the same batch as the change that supersedes it).
    """
    if ids is None:
        pending = items(conn, status=Status.OPEN)
    else:
        pending = []
        c = review_items.c
        ids = sorted(ids)
        for start in range(0, len(ids), dialect.in_chunk):
            chunk = ids[start : start + dialect.in_chunk]
            select = sa.select(review_items).where(c.status == Status.OPEN, c.id.in_(chunk))
            pending += [_item(row) for row in conn.execute(select)]
    keys: dict[str, set[str]] = {}
    for item in pending:
        keys.setdefault(item.table, set()).add(item.key)
    current = versions.load_many(conn, dialect, keys)
    found = {}
    for item in pending:
        seen = current.get(item.table, {}).get(item.key)
        if seen is not None and not item.from_sink and item.superseded_by(seen.version):
            how = "deleted" if seen.deleted else "changed"
            found[item.id] = f"superseded: the row was {how} by {seen.origin} since"
    return found


def sweep(
    conn: Connection, dialect: Dialect, now: dt.datetime, ids: Collection[int] | None = None
) -> int:
    """Close the :func:`superseded` items (of ``ids``; None: all) as
    obsolete, in the caller's transaction; how many."""
    obsolete = superseded(conn, dialect, ids)
    write(conn, [], {}, obsolete, now)
    return len(obsolete)


def open_items(
    conn: Connection, dialect: Dialect, keys: Mapping[str, Collection[str]]
) -> dict[tuple[str, str], Item]:
    """The open items of these rows (table -> row keys), by (table, key).

    One cheap query when the queue has no open item at all (the usual case);
    otherwise one look-up per table and chunk of keys.
    """
    c = review_items.c
    if not has_open(conn):
        return {}
    found: dict[tuple[str, str], Item] = {}
    for table, table_keys in keys.items():
        table_keys = sorted(table_keys)
        for start in range(0, len(table_keys), dialect.in_chunk):
            chunk = table_keys[start : start + dialect.in_chunk]
            select = sa.select(review_items).where(
                c.status == Status.OPEN,
                c.table_name == table,
                c.row_key.in_(chunk),
                c.row_key != HELD_KEY,  # holds a whole table's events, not the row's
                ~c.policy.startswith(SINK_PREFIX),  # a sink's failure is not the row's item
            )
            for row in conn.execute(select):
                found[(table, row.row_key)] = _item(row)
    return found


def _fit(key: str) -> str:
    """A row key that fits the column (the events keep the whole key)."""
    limit = review_items.c.row_key.type.length
    return key if len(key) <= limit else key[: limit - 12] + "…(truncated)"


def write(
    conn: Connection,
    parkings: Sequence[Parking],
    joined: Mapping[int, Sequence[Parking]],
    obsolete: Mapping[int, str],
    now: dt.datetime,
) -> None:
    """Write new items, add parkings to open items (``joined``: item id ->
    parkings in order) and close ``obsolete`` ones (id -> what superseded
    them), in the caller's transaction."""
    moment = now.astimezone(dt.UTC).replace(tzinfo=None)
    if parkings:
        conn.execute(
            review_items.insert(),
            [
                {
                    "table_name": p.table,
                    "row_key": _fit(p.key),
                    "reason": p.reason.value,
                    "detail": p.detail,
                    "policy": p.policy,
                    "status": Status.OPEN.value,
                    "base": _pack_row(p.base),
                    "local": _pack_side(p.local),
                    "remote": _pack_side(p.remote),
                    "events": _encode(p.events),
                    "event_count": len(p.events),
                    "detected_at": moment,
                }
                for p in parkings
            ],
        )
    c = review_items.c
    for item_id, added in joined.items():
        stored = conn.execute(sa.select(c.events).where(c.id == item_id)).scalar_one()
        events = _decode_events(stored) if stored is not None else []
        for p in added:
            events += p.events
        last = added[-1]
        values = {
            "reason": last.reason.value,
            "detail": last.detail,
            "events": _encode(events),
            "event_count": len(events),
        }
        known = [p.remote for p in added if p.remote is not None]
        if known:  # the newest version seen (an undecodable event has none)
            values["remote"] = _pack_side(known[-1])
        conn.execute(review_items.update().where(c.id == item_id).values(**values))
    for item_id, note in obsolete.items():
        conn.execute(
            review_items.update()
            .where(c.id == item_id)
            .values(
                status=Status.OBSOLETE.value,
                resolved_at=moment,
                resolved_by="replicator",
                resolution=note,
            )
        )


# --- held items: every event of a table, in order ---------------------------------


class Held(NamedTuple):
    """An open held item: its id, table and reason."""

    id: int
    table: str
    reason: str


def held_items(conn: Connection, tables: Collection[str] | None = None) -> dict[str, Held]:
    """The open held items (of ``tables``; None: all) by table; ``{}`` when
    there is none (one cheap query when nothing at all is open, the usual
    case; else one look-up by table and key, however long the queue)."""
    if not has_open(conn):
        return {}
    c = review_items.c
    select = sa.select(c.id, c.table_name, c.reason).where(
        c.status == Status.OPEN, c.row_key == HELD_KEY
    )
    if tables is not None:
        select = select.where(c.table_name.in_(sorted(tables)))
    return {
        row.table_name: Held(row.id, row.table_name, row.reason) for row in conn.execute(select)
    }


def hold(
    conn: Connection,
    held: Mapping[str, tuple[Reason, str, Sequence[tuple[str, bytes]]]],
    existing: Mapping[str, Held],
    now: dt.datetime,
) -> None:
    """Hold events, in the caller's transaction: per table, ``(reason,
    detail, (row key, payload) of each event in order)``, appended to the table's open held item
    (``existing``) or to a new one."""
    c, e = review_items.c, review_events.c
    moment = now.astimezone(dt.UTC).replace(tzinfo=None)
    for table, (reason, detail, payloads) in held.items():
        if table in existing:
            item_id = existing[table].id
            last = conn.execute(
                sa.select(sa.func.max(e.position)).where(e.item_id == item_id)
            ).scalar_one()
            start = 0 if last is None else last + 1
        else:
            conn.execute(
                review_items.insert().values(
                    table_name=table,
                    row_key=HELD_KEY,
                    reason=reason.value,
                    detail=detail,
                    policy="",
                    status=Status.OPEN.value,
                    event_count=0,
                    detected_at=moment,
                )
            )
            item_id = conn.execute(
                sa.select(sa.func.max(c.id)).where(
                    c.table_name == table, c.row_key == HELD_KEY, c.status == Status.OPEN
                )
            ).scalar_one()
            start = 0
        conn.execute(
            review_events.insert(),
            [
                {"item_id": item_id, "position": start + i, "row_key": key, "payload": payload}
                for i, (key, payload) in enumerate(payloads)
            ],
        )
        conn.execute(
            review_items.update()
            .where(c.id == item_id)
            .values(event_count=c.event_count + len(payloads))
        )


class HeldEvent(NamedTuple):
    """An event a held item keeps: its place in the item, its row's key
    (as the outbox gave it) and the event as encoded."""

    position: int
    row_key: str
    payload: bytes


def held_events(
    conn: Connection, item_id: int, *, after: int = -1, limit: int | None = None
) -> list[HeldEvent]:
    """A held item's events after position ``after``, in order, at most
    ``limit`` (None: all); ``[]`` when none is left."""
    e = review_events.c
    select = (
        sa.select(e.position, e.row_key, e.payload)
        .where(e.item_id == item_id, e.position > after)
        .order_by(e.position)
        .limit(limit)
    )
    return [HeldEvent(*row) for row in conn.execute(select)]


def let_go(
    conn: Connection,
    item_id: int,
    upto: int,
    now: dt.datetime,
    *,
    by: str,
    note: str,
    reason: tuple[Reason, str] | None = None,
) -> bool:
    """Remove an open held item's events up to position ``upto`` (they were
    applied, or dropped), in the caller's transaction (which has excluded
    the node's writers); when none is left, close the item as resolved
    ``by`` with ``note``; else, given ``reason`` (why its first event is
    still held, and the detail), note that. Whether it closed.

    Raises :class:`ItemClosed` when the item is no longer open (someone
    decided it meanwhile): nothing is removed."""
    c, e = review_items.c, review_events.c
    status = conn.execute(sa.select(c.status).where(c.id == item_id)).scalar_one_or_none()
    if status != Status.OPEN:
        raise ItemClosed(item_id, status)
    conn.execute(review_events.delete().where(e.item_id == item_id, e.position <= upto))
    left = conn.execute(sa.select(sa.func.count()).where(e.item_id == item_id)).scalar_one()
    values: dict[str, Any] = {"event_count": left}
    if not left:
        values.update(
            status=Status.RESOLVED.value,
            resolved_at=now.astimezone(dt.UTC).replace(tzinfo=None),
            resolved_by=by,
            resolution=note,
        )
    elif reason is not None:
        values.update(reason=reason[0].value, detail=reason[1])
    conn.execute(review_items.update().where(c.id == item_id).values(**values))
    return not left


class ItemClosed(Exception):
    """A held item was decided (closed) while it was being worked on."""

    def __init__(self, item_id: int, status: str | None) -> None:
        super().__init__(f"item {item_id} is {status or 'gone'}")
        self.item_id, self.status = item_id, status
