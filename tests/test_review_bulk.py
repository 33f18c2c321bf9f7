"""Bulk decisions in sets (replicator.bulk): the same rows, versions,
events and notes as deciding the items one at a time, in batches of bounded
size; an item decided meanwhile, or a row refused, leaves nothing
committed; a dry run writes nothing. The server runs on every backend, the
locals on SQLite."""

from __future__ import annotations

import datetime as dt
import decimal
import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from replicator import bulk, outbox, parking
from replicator.errors import ReviewError
from replicator.events import row_key
from replicator.parking import Parking, Reason
from replicator.review import Filter, ReviewQueue
from replicator.sync import replicate
from replicator.tables import review_items, row_versions, settlements

from .cluster import (
    add_vocabulary,
    apart,
    app,
    delete_vocabulary,
    edit_vocabulary,
    member,
    sync,
    vocabulary,
)
from .conftest import _fresh_database
from .models import Label, Labels

NOW = dt.datetime(2026, 11, 24, 12, 0, tzinfo=dt.UTC)


def queue(*members):
    return ReviewQueue([m.node for m in members], now=lambda: NOW)


def head(m):
    with m.engine.connect() as conn:
        return outbox.head(conn)


def items(m):
    with m.engine.connect() as conn:
        return parking.items(conn)


# --- the same decisions, one at a time and in sets ----------------------------


class Typed(DeclarativeBase):
    pass


class Reading(Typed):
    """A UUID key (CHAR(32) on SQLite and MariaDB) and values drivers
    return in forms of their own."""

    __tablename__ = "readings"
    reading_id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True)
    taken_at: Mapped[dt.datetime] = mapped_column(sa.DateTime)
    amount: Mapped[decimal.Decimal] = mapped_column(sa.Numeric(10, 2))
    note: Mapped[str] = mapped_column(sa.String(50))


READINGS = [uuid.UUID(int=n) for n in (11, 12, 13)]
POLICIES = {"policies": {"vocabulary_items": "manual_review", "readings": "manual_review"}}


def edit_reading(m, reading_id, **values):
    with m.sessions.begin() as session:
        reading = session.get(Reading, reading_id)
        for column, value in values.items():
            setattr(reading, column, value)


def corrupt_last_event(m):
    with m.engine.begin() as conn:
        position = conn.execute(sa.select(sa.func.max(outbox.outbox.c.position))).scalar()
        conn.execute(
            outbox.outbox.update()
            .where(outbox.outbox.c.position == position)
            .values(payload=b"\xc1 not msgpack")
        )


def parked_apart(server, phone):
    """Items of every kind the bulk path meets, aged so that three filters
    pick three groups: 4 hours old (taken local), 2 hours (taken server),
    new (discarded)."""
    for m in (server, phone):
        Typed.metadata.create_all(m.engine)
        Labels.metadata.create_all(m.engine)
    for i in range(12):
        add_vocabulary(phone, f"v-{i}", f"word {i}")
    with phone.sessions.begin() as session:
        for n, reading_id in enumerate(READINGS):
            session.add(
                Reading(
                    reading_id=reading_id,
                    taken_at=dt.datetime(2026, 11, 24, 8, n, 30, 250000),
                    amount=decimal.Decimal("1.50"),
                    note="first",
                )
            )
    sync(server, phone)
    for i in range(6):  # both edit
        edit_vocabulary(phone, f"v-{i}", translation=f"phone {i}")
        edit_vocabulary(server, f"v-{i}", translation=f"server {i}", strength=0.5)
    for i in (6, 7):  # the phone edits, the server deletes
        edit_vocabulary(phone, f"v-{i}", translation=f"phone {i}")
        delete_vocabulary(server, f"v-{i}")
    for i in (8, 9):  # the phone deletes, the server edits
        delete_vocabulary(phone, f"v-{i}")
        edit_vocabulary(server, f"v-{i}", translation=f"server {i}")
    edit_vocabulary(phone, "v-10", translation="phone 10")
    edit_vocabulary(server, "v-10", translation="server 10")
    for n, reading_id in enumerate(READINGS):
        edit_reading(phone, reading_id, amount=decimal.Decimal(f"{n}.25"), note="phone")
        edit_reading(server, reading_id, taken_at=dt.datetime(2026, 11, 24, 9, n), note="server")
    for m, label_id in ((server, "l-server"), (phone, "l-phone")):
        with m.sessions.begin() as session:  # one unique name, refused on each side
            session.add(Label(label_id=label_id, name="verbs"))
    edit_vocabulary(phone, "v-11", translation="phone 11")
    corrupt_last_event(phone)  # the server parks it as corrupt_payload
    replicate(phone.node, server.node, **POLICIES)
    replicate(server.node, phone.node)
    edit_vocabulary(server, "v-10", strength=7.0)  # the server's row moves on after parking
    with server.engine.begin() as conn:  # a vector sink's failure: only discarded
        parking.write(
            conn,
            [
                Parking(
                    table="vocabulary_items",
                    key=row_key(["v-0"]),
                    reason=Reason.SINK_ERROR,
                    detail="the embedder failed",
                    policy="sink:memory",
                )
            ],
            {},
            {},
            NOW,
        )
    old = {"v-0", "v-1", "v-6", "v-8", "v-10", str(READINGS[0])}
    middle = {"v-2", "v-3", "v-7", "v-9", str(READINGS[1])}
    for m in (server, phone):
        with m.engine.begin() as conn:
            for item in parking.items(conn):
                key = item.key.strip('["]')
                hours = 4 if key in old else 2 if key in middle else 0
                conn.execute(
                    review_items.update()
                    .where(review_items.c.id == item.id)
                    .values(detected_at=(NOW - dt.timedelta(hours=hours)).replace(tzinfo=None))
                )


STEPS = [
    (Filter(older_than=dt.timedelta(hours=3)), "local"),
    (Filter(older_than=dt.timedelta(hours=1)), "server"),
    (Filter(), "discard"),
]


def one_at_a_time(server, phone):
    q = queue(server, phone)
    for where, decision in STEPS:
        for listed in sorted(q.list(where, sweep=False).items, key=lambda i: (i.node, i.id)):
            if decision == "discard":
                q.discard(listed.ref, by="ops")
            elif not listed.policy.startswith("sink:"):
                q.resolve(listed.ref, take=decision, by="ops")


def in_sets(server, phone):
    q = queue(server, phone)
    for where, decision in STEPS:
        take = None if decision == "discard" else decision
        q.resolve_matching(where, take=take, discard=take is None, by="ops")


def outcome(m, since):
    """What deciding left on a node, but for what differs by nature: the
    events' ids, transaction ids and timestamps."""
    with m.engine.connect() as conn:
        labels = conn.execute(sa.select(Label.__table__).order_by("label_id")).all()
        readings = conn.execute(sa.select(Reading.__table__).order_by("reading_id")).all()
        stored = conn.execute(
            sa.select(
                row_versions.c.table_name,
                row_versions.c.row_key,
                row_versions.c.version,
                row_versions.c.origin,
                row_versions.c.deleted,
            ).order_by(row_versions.c.table_name, row_versions.c.row_key)
        ).all()
        settled = conn.execute(
            sa.select(settlements).order_by(settlements.c.table_name, settlements.c.row_key)
        ).all()
        events = [
            (e.origin, e.table, row_key(list(e.key.values())), e.op, e.row, e.changed, e.version)
            for _, e in outbox.read(conn, after=since)
        ]
    notes = [
        (i.id, i.status, i.resolved_by, re.sub(r"change [0-9a-f]{32}", "change ?", i.resolution))
        for i in items(m)
    ]
    return {
        "rows": (m.state(), labels, readings),
        "versions": [(*row[:2], *(row[2:])) for row in stored],
        "settlements": [tuple(row) for row in settled],
        "events": sorted(events, key=lambda e: (e[1], e[2])),
        "notes": notes,
    }


@pytest.fixture
def two_copies(request, database_url, tmp_path: Path):
    """Two (server, phone) pairs, the servers on the backend under test."""
    backend = request.node.callspec.params["database_url"]
    second = _fresh_database(backend, tmp_path / "second")
    (tmp_path / "second").mkdir()
    pairs = []
    try:
        for name, url in (("first", database_url), ("second", next(second))):
            phone_url = f"sqlite:///{tmp_path / name}-phone.sqlite"
            pairs.append((member("server", url, role="server"), member("phone", phone_url)))
        yield pairs
    finally:
        for server, phone in pairs:
            phone.close()
            server.close()
        second.close()


def test_deciding_in_sets_leaves_what_deciding_one_at_a_time_leaves(two_copies):
    (server_a, phone_a), (server_b, phone_b) = two_copies
    for server, phone in two_copies:
        parked_apart(server, phone)
    assert [len(items(m)) for m in (server_a, phone_a)] == [17, 1]
    since = {m.name: head(m) for m in (server_a, phone_a)}
    assert since == {m.name: head(m) for m in (server_b, phone_b)}

    one_at_a_time(server_a, phone_a)
    in_sets(server_b, phone_b)

    for one, other in ((server_a, server_b), (phone_a, phone_b)):
        expected, found = outcome(one, since[one.name]), outcome(other, since[other.name])
        for what in expected:
            assert found[what] == expected[what], f"{one.name}: {what}"
    assert all(i.status == "resolved" for m in (server_b, phone_b) for i in items(m))
    for server, phone in two_copies:
        sync(server, phone)
    # The same replicas (which differ only by the row whose event nobody
    # could read: discarding it wrote nothing).
    assert (server_b.state(), phone_b.state()) == (server_a.state(), phone_a.state())
    assert vocabulary(server_b, "v-11") != vocabulary(phone_b, "v-11")
    assert vocabulary(server_b, "v-10") == ("phone 10", 0.0)  # taken local
    assert vocabulary(server_b, "v-7") is None  # taken server: deleted
    assert vocabulary(server_b, "v-4") == ("server 4", 0.5)  # discarded


# --- at scale ---------------------------------------------------------------------


def test_twenty_thousand_parked_conflicts_are_decided_and_replicate(tmp_path):
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    count = 20_000
    try:
        with phone.sessions.begin() as session:
            session.add_all(
                app.VocabularyItem(
                    item_id=f"v-{i:05}", user_id="u-42", word=f"w{i}", translation="?"
                )
                for i in range(count)
            )
        sync(server, phone)
        for m in (phone, server):  # every row edited on both sides
            with m.sessions.begin() as session:
                for row in session.scalars(sa.select(app.VocabularyItem)):
                    row.translation = f"{m.name} {row.item_id}"
        sync(server, phone)
        q = queue(server, phone)
        assert q.summary().open == count
        seen = []

        result = q.resolve_matching(
            Filter(table="vocabulary_items"),
            take="local",
            by="ops",
            progress=lambda done, total: seen.append((done, total)),
        )
        sync(server, phone)

        assert (result.matched, result.decided_count, result.written) == (count, count, count)
        assert [d.ref for d in result.decided] == [f"server:{n}" for n in range(1, 6)]
        assert seen[0] == (0, count) and seen[-1] == (count, count)
        assert q.summary().open == 0
        rows = server.rows("vocabulary_items")
        assert rows == phone.rows("vocabulary_items")
        assert len(rows) == count
        assert all(row[3] == f"phone {row[0]}" for row in rows)
    finally:
        phone.close()
        server.close()


# --- nothing committed ----------------------------------------------------------


def snapshot(*members):
    return [(m.events(), m.state(), [(i.id, i.status) for i in items(m)]) for m in members]


@pytest.mark.backends("sqlite", "mariadb")
def test_an_item_decided_meanwhile_fails_the_bulk_and_nothing_is_committed(pair):
    server, phone = pair
    apart(server, phone, count=3)
    # Someone closes item 3 while the bulk writes the rows (a trigger does
    # it in the bulk's own transaction: between its read and its update).
    with server.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER meanwhile AFTER UPDATE ON vocabulary_items FOR EACH ROW BEGIN "
            "UPDATE replicator_review_items SET status = 'resolved' WHERE id = 3; END"
        )
    before = snapshot(server, phone)

    with pytest.raises(ReviewError, match="item server:3 was decided meanwhile; nothing changed"):
        queue(server, phone).resolve_matching(Filter(), take="local")

    assert snapshot(server, phone) == before
    assert [i.status for i in items(server)] == ["open", "open", "open"]


def test_a_dry_run_decides_and_checks_everything_and_writes_nothing(pair):
    server, phone = pair
    apart(server, phone, count=4)
    q = queue(server, phone)
    before = snapshot(server, phone)

    preview = q.resolve_matching(Filter(table="vocabulary_items"), take="local", dry_run=True)

    assert (preview.matched, preview.decided_count, preview.written, preview.dry_run) == (
        4,
        4,
        4,
        True,
    )
    assert [d.row["translation"] for d in preview.decided] == [f"phone {i}" for i in range(4)]
    assert snapshot(server, phone) == before
    # A row the database would refuse fails the dry run as it would the decision.
    with server.engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX one_meaning ON vocabulary_items (translation)")
    add_vocabulary(server, "v-9", "otra")
    edit_vocabulary(server, "v-9", translation="phone 3")
    with pytest.raises(ReviewError, match="refused the decided row"):
        q.resolve_matching(Filter(), take="local", dry_run=True)
    assert [i.status for i in items(server)] == ["open"] * 4


def test_progress_is_reported_after_every_batch(pair):
    server, phone = pair
    apart(server, phone, count=5)
    seen = []

    result = bulk.decide_matching(
        queue(server, phone),
        Filter(),
        "server",
        batch_size=2,
        progress=lambda done, total: seen.append((done, total)),
    )

    assert seen == [(0, 5), (2, 5), (4, 5), (5, 5)]
    assert (result.decided_count, result.by_node, len(result.decided)) == (5, {"server": 5}, 5)
    assert [i.status for i in items(server)] == ["resolved"] * 5


def test_a_sink_failure_is_skipped_by_take_and_closed_by_discard(pair):
    server, phone = pair
    apart(server, phone, count=1)
    with server.engine.begin() as conn:
        parking.write(
            conn,
            [
                Parking(
                    table="vocabulary_items",
                    key=row_key(["v-0"]),
                    reason=Reason.SINK_ERROR,
                    detail="the embedder failed",
                    policy="sink:memory",
                )
            ],
            {},
            {},
            NOW,
        )
    q = queue(server, phone)

    taken = q.resolve_matching(Filter(), take="server")
    discarded = q.resolve_matching(Filter(), discard=True)

    assert (taken.matched, taken.decided_count, taken.skipped) == (2, 1, 1)
    assert (discarded.matched, discarded.decided_count, discarded.written) == (1, 1, 0)
    assert "nothing written" in items(server)[-1].resolution


class ServerLabels(DeclarativeBase):
    pass


class ServerLabel(ServerLabels):
    """The server's labels table has a column the phone's lacks."""

    __tablename__ = "labels"
    label_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)
    colour: Mapped[str | None] = mapped_column(sa.String(20))


def test_a_held_item_is_applied_in_bulk_once_it_can_be_or_discarded(pair):
    """A held item keeps every event of its table, not one row: taking the
    incoming side applies them all (refused while the table cannot take
    them), discarding drops them."""
    server, phone = pair
    ServerLabels.metadata.create_all(server.engine)
    Labels.metadata.create_all(phone.engine)
    with server.sessions.begin() as session:
        session.add(ServerLabel(label_id="l-1", name="verbs", colour="red"))
        session.add(ServerLabel(label_id="l-2", name="nouns", colour="blue"))
    replicate(server.node, phone.node)  # held on the phone: it lacks a column
    [item] = items(phone)
    assert item.held and item.event_count == 2
    q = queue(server, phone)
    before = snapshot(server, phone)

    with pytest.raises(ReviewError, match=f"phone:{item.id} cannot be applied yet"):
        q.resolve_matching(Filter(), take="server")
    kept = q.resolve_matching(Filter(), take="local")  # would drop them: passed over
    assert (kept.decided_count, kept.skipped) == (0, 1)
    assert snapshot(server, phone) == before
    with phone.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE labels ADD COLUMN colour VARCHAR(20)")
    phone.node.forget_shapes()
    applied = q.resolve_matching(Filter(), take="server")

    assert (applied.decided_count, applied.written) == (1, 0)
    assert [i.status for i in items(phone)] == ["resolved"]
    with phone.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT label_id, colour FROM labels ORDER BY 1").all()
    assert [tuple(r) for r in rows] == [("l-1", "red"), ("l-2", "blue")]


def test_a_held_item_discarded_in_bulk_drops_its_events(pair):
    server, phone = pair
    ServerLabels.metadata.create_all(server.engine)
    Labels.metadata.create_all(phone.engine)
    with server.sessions.begin() as session:
        session.add(ServerLabel(label_id="l-1", name="verbs", colour="red"))
    replicate(server.node, phone.node)
    [item] = items(phone)

    discarded = queue(server, phone).resolve_matching(Filter(), discard=True)

    assert (discarded.decided_count, discarded.written) == (1, 0)
    assert [i.status for i in items(phone)] == ["resolved"]
    with phone.engine.connect() as conn:
        assert parking.held_events(conn, item.id) == []
