"""The review queue as people use it (the library the CLI calls): a decision
is a new change that descends from every version in the item, so it
replicates to every node and settles the row everywhere; bad input changes
nothing. The server runs on every backend, the locals on SQLite."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from replicator import outbox, parking, versions
from replicator.clock import HybridLogicalClock
from replicator.errors import ConfigurationError, ConnectivityError, ReviewError
from replicator.node import Node
from replicator.review import Filter, ReviewQueue, parse_ref
from replicator.sync import replicate
from replicator.versions import Order, RowVersion

from .cluster import (
    REVIEW,
    add_vocabulary,
    apart,
    app,
    delete_vocabulary,
    edit_vocabulary,
    member,
    sync,
    vocabulary,
)
from .conftest import waits_for_a_lock
from .models import Label, Labels

START = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)


def queue(*members, now=lambda: START + dt.timedelta(hours=1)):
    return ReviewQueue([m.node for m in members], now=now)


def open_items(m):
    with m.engine.connect() as conn:
        return parking.items(conn, status="open")


def head(m):
    with m.engine.connect() as conn:
        return outbox.head(conn)


def test_each_decision_settles_the_row_on_both_replicas(pair):
    server, phone = pair
    apart(server, phone, count=4)
    q = queue(server, phone)
    assert [i.ref for i in q.list().items] == [f"server:{n}" for n in (1, 2, 3, 4)]

    took_server = q.resolve("server:1", take="server", by="ana")
    took_local = q.resolve("server:2", take="local")
    merged = q.resolve("server:3", merge={"translation": "both", "strength": 2})
    discarded = q.discard("server:4", by="ana")
    sync(server, phone)

    expected = {
        "v-0": ("server 0", 0.5),  # the server's row
        "v-1": ("phone 1", 0.0),  # the phone's row
        "v-2": ("both", 2.0),  # the server's row with the merged values
        "v-3": ("server 3", 0.5),  # the server held it; the phone's edit is dropped
    }
    for key, row in expected.items():
        assert vocabulary(server, key) == vocabulary(phone, key) == row, key
    assert server.state() == phone.state()
    assert q.list().items == []
    assert [d.row["translation"] for d in (took_server, took_local, merged, discarded)] == [
        "server 0",
        "phone 1",
        "both",
        "server 3",
    ]
    history = {i.ref: i for i in q.history().items}
    assert history["server:1"].resolved_by == "ana" and history["server:1"].status == "resolved"
    assert history["server:3"].resolution.startswith('merged {"translation": "both"')
    assert history["server:4"].resolution.startswith("discarded")
    assert history["server:2"].resolved_by  # the OS user when no one is named


def test_a_decision_descends_from_every_version_so_no_replica_finds_a_conflict(pair, tmp_path):
    server, phone = pair
    laptop = member("laptop", f"sqlite:///{tmp_path / 'laptop.sqlite'}")
    try:
        add_vocabulary(phone, "v-1", "mesa")
        sync(server, phone, laptop)
        edit_vocabulary(phone, "v-1", translation="desk")
        edit_vocabulary(laptop, "v-1", translation="bureau")
        edit_vocabulary(server, "v-1", translation="table")
        sync(server, phone, laptop)  # both locals' edits join one item
        [item] = open_items(server)
        assert len(item.events) == 2

        decided = queue(server, phone, laptop).resolve(item.id, take="local")

        for parked in [item.local.version, *(e.version for e in map(decode, item.events))]:
            assert versions.compare(decided.version, parked) is Order.AFTER
        results = [replicate(m.node, server.node, **REVIEW) for m in (phone, laptop)]
        results += [replicate(server.node, m.node) for m in (phone, laptop)]
        assert [r.conflicts for r in results] == [0, 0, 0, 0]
        assert [r.applied for r in results[2:]] == [1, 1]
        # "local" is the newest version parked: the laptop's, which joined last.
        for m in (server, phone, laptop):
            assert vocabulary(m, "v-1") == ("bureau", 0.0), m.name
    finally:
        laptop.close()


def decode(payload):
    from replicator.events import decode_event

    return decode_event(payload)


def test_a_local_edit_after_taking_its_row_is_a_sequential_edit(pair):
    """The decision records which version's row it kept: the phone's later
    edit, made before the decision reached it, descends from that row."""
    server, phone = pair
    apart(server, phone)
    queue(server, phone).resolve("server:1", take="local")
    edit_vocabulary(phone, "v-0", strength=3.0)  # before the decision arrives

    up = replicate(phone.node, server.node, **REVIEW)
    replicate(server.node, phone.node)

    assert (up.applied, up.conflicts, up.parked) == (1, 0, 0)
    assert vocabulary(server, "v-0") == vocabulary(phone, "v-0") == ("phone 0", 3.0)
    assert open_items(server) == []


def test_deciding_an_item_again_fails_and_changes_nothing(pair):
    server, phone = pair
    apart(server, phone)
    q = queue(server, phone)
    q.resolve("server:1", take="server", by="ana")
    before = (head(server), vocabulary(server, "v-0"), q.show("server:1"))

    for attempt in (
        lambda: q.resolve("server:1", take="local"),
        lambda: q.discard("server:1"),
        lambda: q.resolve("server:1", merge={"translation": "x"}),
    ):
        with pytest.raises(ReviewError, match=r"server:1 is already resolved .*by ana"):
            attempt()

    assert (head(server), vocabulary(server, "v-0"), q.show("server:1")) == before
    with pytest.raises(ReviewError, match="no review item 7 on server, phone"):
        q.resolve(7, take="server")
    with pytest.raises(ReviewError, match=r"no review item 7 on server$"):
        q.resolve("server:7", take="server")


@pytest.mark.parametrize(
    "merge, message",
    [
        ({"colour": "red"}, "has no column 'colour'"),
        ({"strength": "strong"}, "column 'strength' takes a number, not 'strong'"),
        ({"translation": 3}, "column 'translation' takes text, not 3"),
        ({"item_id": "v-9"}, "column 'item_id' is part of the row's key"),
    ],
)
def test_a_bad_merge_names_the_column_and_changes_nothing(pair, merge, message):
    server, phone = pair
    apart(server, phone)
    q = queue(server, phone)
    before = (head(server), vocabulary(server, "v-0"))

    with pytest.raises(ConfigurationError, match=message):
        q.resolve("server:1", merge=merge)

    assert (head(server), vocabulary(server, "v-0")) == before
    assert [i.status for i in q.list().items] == ["open"]


def test_show_puts_the_sides_next_to_each_other_with_changes_marked(pair):
    server, phone = pair
    apart(server, phone)

    shown = queue(server, phone).show("server:1")

    assert (shown.node, shown.local_node, shown.reason, shown.status) == (
        "server",
        "phone",
        "manual_review",
        "open",
    )
    assert shown.base["translation"] == "?"
    assert (shown.server["translation"], shown.server["strength"]) == ("server 0", 0.5)
    assert (shown.local["translation"], shown.local["strength"]) == ("phone 0", 0.0)
    assert shown.changed == {"server": ["translation", "strength"], "local": ["translation"]}
    assert shown.columns[:2] == ["item_id", "user_id"]
    assert shown.server_version.origin == "server" and shown.local_version.origin == "phone"
    [event] = shown.events
    assert (event.origin, event.op, event.changed) == ("phone", "update", ["translation"])
    assert event.version == shown.local_version.version


def test_a_deleted_side_is_shown_as_none_and_taking_it_deletes_everywhere(pair):
    server, phone = pair
    add_vocabulary(phone, "v-1", "mesa")
    sync(server, phone)
    delete_vocabulary(phone, "v-1")
    edit_vocabulary(server, "v-1", translation="table")
    sync(server, phone)
    q = queue(server, phone)

    shown = q.show(1)
    assert shown.local is None and shown.server["translation"] == "table"
    assert shown.changed["local"] == shown.columns  # every column went away

    q.resolve(1, take="local")
    sync(server, phone)
    assert vocabulary(server, "v-1") is vocabulary(phone, "v-1") is None


def both_name_a_label_verbs(server, phone):
    """Labels l-server and l-phone, each named "verbs" (a unique name)."""
    for m, label_id in ((server, "l-server"), (phone, "l-phone")):
        Labels.metadata.create_all(m.engine)
        with m.sessions.begin() as session:
            session.add(Label(label_id=label_id, name="verbs"))


def test_an_item_parked_on_a_local_is_decided_there_and_reaches_the_server(pair):
    server, phone = pair
    both_name_a_label_verbs(server, phone)
    replicate(server.node, phone.node)  # the phone refuses the server's label
    [item] = open_items(phone)
    assert item.reason == "unique_violation"
    q = queue(server, phone)

    with pytest.raises(ReviewError, match="phone refused the decided row of labels"):
        q.resolve("phone:1", take="server")  # still refused: nothing changes
    assert [i.ref for i in q.list().items] == ["phone:1"]
    with phone.sessions.begin() as session:  # someone renames the phone's label
        session.get(Label, "l-phone").name = "nouns"
    q.resolve("phone:1", take="server")
    replicate(phone.node, server.node)
    replicate(server.node, phone.node)

    for m in pair:
        with m.engine.connect() as conn:
            rows = conn.execute(sa.select(Label.__table__).order_by("label_id")).all()
        assert rows == [("l-phone", "nouns"), ("l-server", "verbs")], m.name
    assert q.list().items == []


def test_bulk_decides_every_matching_item_and_dry_run_writes_nothing(pair):
    server, phone = pair
    apart(server, phone, count=3)
    add_vocabulary(server, "v-9", "other")
    q = queue(server, phone)

    preview = q.resolve_matching(Filter(table="vocabulary_items"), take="local", dry_run=True)
    assert (preview.matched, len(preview.decided), preview.dry_run) == (3, 3, True)
    assert len(q.list().items) == 3 and vocabulary(server, "v-0") == ("server 0", 0.5)
    assert q.resolve_matching(Filter(table="documents"), take="local").matched == 0

    done = q.resolve_matching(Filter(table="vocabulary_items"), take="local", by="ops")
    sync(server, phone)

    assert [d.ref for d in done.decided] == ["server:1", "server:2", "server:3"]
    assert q.list().items == []
    for i in range(3):
        assert vocabulary(server, f"v-{i}") == vocabulary(phone, f"v-{i}") == (f"phone {i}", 0.0)
    assert {i.resolved_by for i in q.history().items} == {"ops"}


def test_bulk_changes_nothing_when_one_item_cannot_be_decided(pair):
    server, phone = pair
    apart(server, phone, count=2)
    # The second row's phone version would break a unique key the server has.
    with server.engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX one_meaning ON vocabulary_items (translation)")
    add_vocabulary(server, "v-9", "uno")
    edit_vocabulary(server, "v-9", translation="phone 1")
    q = queue(server, phone)
    before = (head(server), server.state())

    with pytest.raises(ReviewError, match="refused the decided row"):
        q.resolve_matching(Filter(reason="manual_review"), take="local")

    assert (head(server), server.state()) == before
    assert [i.status for i in q.list().items] == ["open", "open"]


def test_listing_filters_sorts_and_counts(pair):
    server, phone = pair
    apart(server, phone, count=2)
    with server.engine.begin() as conn:  # the first item was parked a day earlier
        conn.execute(
            parking.review_items.update()
            .where(parking.review_items.c.id == 1)
            .values(detected_at=dt.datetime(2026, 11, 23, 9, 0))
        )
    now = dt.datetime.now(dt.UTC)
    q = queue(server, phone, now=lambda: now)

    listing = q.list()
    assert [i.ref for i in listing.items] == ["server:1", "server:2"]
    assert listing.by_table == {"vocabulary_items": 2}
    assert listing.by_reason == {"manual_review": 2}
    assert [i.ref for i in q.list(sort="newest").items] == ["server:2", "server:1"]
    assert [i.ref for i in q.list(Filter(older_than=dt.timedelta(hours=12))).items] == ["server:1"]
    assert q.list(Filter(node="phone")).items == []
    assert q.list(Filter(reason="constraint_violation")).items == []
    assert q.list(Filter(table="documents")).items == []
    with pytest.raises(ConfigurationError, match="unknown node 'tablet'"):
        q.list(Filter(node="tablet"))
    with pytest.raises(ConfigurationError, match="sort must be one of"):
        q.list(sort="size")


def test_an_unreachable_node_is_named_and_nothing_changes(pair, tmp_path):
    server, phone = pair
    apart(server, phone)
    gone = Node("tablet", url=f"sqlite:///{tmp_path / 'missing' / 'tablet.sqlite'}")
    q = ReviewQueue([server.node, phone.node, gone])

    listing = q.list()
    assert [i.ref for i in listing.items] == ["server:1"]
    assert list(listing.unreachable) == ["tablet"]
    assert "tablet" in listing.unreachable["tablet"]
    with pytest.raises(ConnectivityError, match=r"node tablet .* cannot be reached"):
        q.resolve("tablet:1", take="server")
    with pytest.raises(ReviewError, match="nothing was decided: node tablet"):
        q.resolve_matching(Filter(table="vocabulary_items"), take="server")
    assert [i.status for i in q.list().items] == ["open"]


def test_an_item_a_later_change_superseded_is_closed_when_the_queue_is_read(pair):
    """A change that descends from every version in the item (here written
    straight into the row's version, as a pass does when an item was parked
    in the same batch as the change that supersedes it) closes it."""
    server, phone = pair
    apart(server, phone, count=2)
    [first, second] = open_items(server)
    fixed = versions.merge(first.local.version, first.remote.version, {"server": 9})
    with server.engine.begin() as conn:
        versions.store(
            conn,
            server.node.dialect,
            {("vocabulary_items", first.key): RowVersion(fixed, 1, "x", False)},
        )

    listing = queue(server, phone).list()

    assert [i.ref for i in listing.items] == [f"server:{second.id}"]
    assert listing.obsolete == 1
    with server.engine.connect() as conn:
        closed = parking.get(conn, first.id)
    assert closed.status == "obsolete" and "superseded" in closed.resolution


@pytest.mark.parametrize(
    "text, ref",
    [("server:3", ("server", 3)), ("3", (None, 3)), ("a:b:12", ("a:b", 12)), (4, (None, 4))],
)
def test_item_references(text, ref):
    assert parse_ref(text) == ref


@pytest.mark.parametrize("text", ["", "server:", "x", "server:-1", "1.5", "server:³"])
def test_bad_item_references(text):
    with pytest.raises(ConfigurationError, match="is not a review item"):
        parse_ref(text)


def corrupt_last_event(m):
    with m.engine.begin() as conn:
        position = conn.execute(sa.select(sa.func.max(outbox.outbox.c.position))).scalar()
        conn.execute(
            outbox.outbox.update()
            .where(outbox.outbox.c.position == position)
            .values(payload=b"\xc1 not msgpack")
        )


def test_an_item_with_an_undecodable_event_is_only_discarded_and_nothing_is_written(pair):
    """No change can descend from a version nobody can read: writing one
    would conflict with (and could overwrite) the change it stood for."""
    server, phone = pair
    add_vocabulary(phone, "v-1", "mesa")
    sync(server, phone)
    edit_vocabulary(phone, "v-1", translation="desk")
    corrupt_last_event(phone)
    sync(server, phone)
    [item] = open_items(server)
    assert item.reason == "corrupt_payload"
    q = queue(server, phone)
    before = (server.events(), server.state())

    for decide in (
        lambda: q.resolve(item.id, take="server"),
        lambda: q.resolve(item.id, take="local"),
        lambda: q.resolve(item.id, merge={"translation": "x"}),
    ):
        with pytest.raises(ReviewError, match=r"cannot be decoded.*only discard"):
            decide()
    assert [e.decodable for e in q.show(item.id).events] == [False]
    decided = q.discard(item.id)

    assert (server.events(), server.state()) == before
    assert decided.event_id is None and decided.version is None
    [closed] = q.history().items
    assert "nothing written: an event of the item cannot be decoded" in closed.resolution


def test_an_item_on_a_scoped_local_is_decided_within_its_scope(database_url, tmp_path):
    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}", scope={"user_id": "u-42"})
    try:
        with phone.engine.begin() as conn:  # the phone allows a word once
            conn.exec_driver_sql("CREATE UNIQUE INDEX one_word ON vocabulary_items (word)")
        add_vocabulary(phone, "v-phone", "mesa")
        add_vocabulary(server, "v-server", "mesa")
        replicate(server.node, phone.node)  # refused on the phone
        [item] = open_items(phone)
        assert item.reason == "unique_violation"
        q = queue(server, phone)

        with pytest.raises(ConfigurationError, match="user_id = 'u-7', outside phone's scope"):
            q.resolve("phone:1", merge={"user_id": "u-7", "word": "mesa (2)"})
        q.resolve("phone:1", merge={"word": "mesa (2)"})
        sync(server, phone)

        assert server.rows("vocabulary_items") == phone.rows("vocabulary_items")
        assert [r[2] for r in server.rows("vocabulary_items")] == ["mesa", "mesa (2)"]
    finally:
        phone.close()
        server.close()


class Extended(DeclarativeBase):
    pass


class ServerLabel(Extended):
    """The server's labels table has a column the phone's lacks."""

    __tablename__ = "labels"
    label_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)
    colour: Mapped[str | None] = mapped_column(sa.String(20))


def test_a_row_the_table_cannot_hold_is_refused_by_name(pair):
    server, phone = pair
    Extended.metadata.create_all(server.engine)
    Labels.metadata.create_all(phone.engine)
    with server.sessions.begin() as session:
        session.add(ServerLabel(label_id="l-1", name="verbs", colour="red"))
    replicate(server.node, phone.node)
    [item] = open_items(phone)
    assert item.reason == "missing_column"
    q = queue(server, phone)

    refused = "cannot be applied yet: table 'labels': the target has no column 'colour'"
    with pytest.raises(ReviewError, match=refused):
        q.resolve("phone:1", take="server")
    assert [i.status for i in q.list().items] == ["open"]


class Scores(DeclarativeBase):
    pass


class Score(Scores):
    __tablename__ = "scores"
    score_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    note: Mapped[str] = mapped_column(sa.String(50))
    points: Mapped[float | None] = mapped_column(sa.Float)
    day: Mapped[dt.date | None] = mapped_column(sa.Date)


def test_a_merge_value_is_checked_against_the_declared_type_when_no_side_has_one(pair):
    server, phone = pair
    for m in pair:
        Scores.metadata.create_all(m.engine)
    with phone.sessions.begin() as session:
        session.add(Score(score_id="s-1", note="first"))
    review = {"policies": {"scores": "manual_review"}}
    replicate(phone.node, server.node, **review)
    replicate(server.node, phone.node)
    for m, note in ((phone, "phone"), (server, "server")):
        with m.sessions.begin() as session:
            session.get(Score, "s-1").note = note
    replicate(phone.node, server.node, **review)
    q = queue(server, phone)

    with pytest.raises(ConfigurationError, match="column 'points' takes a number, not 'high'"):
        q.resolve("server:1", merge={"points": "high"})
    with pytest.raises(ConfigurationError, match="column 'day' takes a date in ISO form"):
        q.resolve("server:1", merge={"day": "Tuesday"})
    decided = q.resolve("server:1", merge={"points": 2, "day": "2026-11-24"})

    assert (decided.row["points"], decided.row["day"]) == (2.0, dt.date(2026, 11, 24))


def test_a_decision_is_timed_after_every_version_it_settles_whatever_the_wall_clock(pair):
    server, phone = pair
    apart(server, phone)
    [item] = open_items(server)
    stopped = HybridLogicalClock(wall=lambda: 0)  # a clock far behind

    ReviewQueue([server.node, phone.node], clock=stopped).resolve(item.id, take="local")

    decision = server.events()[-1]
    assert decision.hlc > max(item.local.hlc, item.remote.hlc)


def test_bulk_commits_no_node_when_a_later_node_refuses(pair):
    """The locals' decisions are made first, the server's last; a refusal
    on the server leaves the phone's decision uncommitted too."""
    server, phone = pair
    both_name_a_label_verbs(server, phone)
    replicate(server.node, phone.node)  # phone:1: the server's label, refused there
    replicate(phone.node, server.node)  # server:1: the phone's label, refused there
    q = queue(server, phone)
    before = [(m.events(), m.state()) for m in pair]

    # Taking the local side deletes the server's label on the phone (which
    # works) and writes the phone's label on the server (refused).
    with pytest.raises(ReviewError, match="server refused the decided row of labels"):
        q.resolve_matching(Filter(table="labels"), take="local")

    assert [(m.events(), m.state()) for m in pair] == before
    assert sorted(i.ref for i in q.list().items) == ["phone:1", "server:1"]


@pytest.mark.backends("mariadb")
def test_a_decision_waits_for_an_app_transaction_changing_the_row(pair):
    """Otherwise it would decide on a version the app is about to replace,
    and the app's change would be lost (or the decision's)."""
    server, phone = pair
    apart(server, phone)
    q = queue(server, phone)
    session = server.sessions()
    session.begin()
    session.get(app.VocabularyItem, "v-0").strength = 9.0
    session.flush()  # the app's transaction holds the writers' lock, shared
    decided = []
    deciding = threading.Thread(target=lambda: decided.append(q.resolve(1, take="server")))
    deciding.start()
    try:
        waited = waits_for_a_lock(server.engine, deciding)  # not a guess at how long it takes
    finally:
        session.commit()
        session.close()
    deciding.join(10)

    assert waited, "the decision did not wait for the app's transaction"
    [decision] = decided
    assert decision.row["strength"] == 9.0  # the app's change, taken as the server's row
    with server.engine.connect() as conn:
        stored = versions.load(conn, "vocabulary_items", ['["v-0"]'])['["v-0"]']
    assert stored.version == decision.version
    sync(server, phone)
    assert vocabulary(server, "v-0") == vocabulary(phone, "v-0") == ("server 0", 9.0)
