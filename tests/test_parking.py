"""Events the target cannot take are parked in its review queue with their
reason and every version, and the rest of the batch is applied (invariant 7):
a row the target refuses (unique constraint), a table it lacks, and an
event that cannot be decoded. The server runs on every backend."""

from __future__ import annotations

import datetime as dt

import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from replicator import parking
from replicator.events import decode_event
from replicator.sync import replicate

from .cluster import add_vocabulary, app, edit_vocabulary
from .models import Label, Labels

REFUSED = "the target refused the row: "
START = dt.datetime(2026, 12, 5, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def pair(pair):
    for m in pair:
        Labels.metadata.create_all(m.engine)
    return pair


def open_items(m):
    with m.engine.connect() as conn:
        return parking.items(conn, status="open")


def vocabulary_keys(m):
    return [row[0] for row in m.rows("vocabulary_items")]


def test_a_row_the_target_refuses_is_parked_and_the_rest_of_the_batch_applied(pair):
    server, local = pair
    with server.sessions.begin() as session:
        session.add(Label(label_id="l-server", name="verbs"))
    with local.sessions.begin() as session:  # one transaction: one batch
        session.add(app.VocabularyItem(item_id="v-1", user_id="u-42", word="a", translation="?"))
        session.add(Label(label_id="l-phone", name="verbs"))  # the server has "verbs"
        session.add(app.VocabularyItem(item_id="v-2", user_id="u-42", word="b", translation="?"))

    result = replicate(local.node, server.node)
    again = replicate(local.node, server.node)

    assert result.ok, result.error
    assert (result.read, result.applied, result.parked) == (3, 2, 1)
    assert (again.read, again.parked) == (0, 0)
    assert vocabulary_keys(server) == ["v-1", "v-2"]
    with server.engine.connect() as conn:
        labels = conn.execute(sa.select(Label.__table__)).all()
    assert labels == [("l-server", "verbs")]  # the server's row is untouched
    [item] = open_items(server)
    assert (item.table, item.key, item.reason) == ("labels", '["l-phone"]', "unique_violation")
    # Which value, held by which row; then the database's own reason (worded
    # as each driver words it).
    named = "labels: name = 'verbs' is held by another row (label_id='l-server')"
    assert item.detail.startswith(named), item.detail
    assert f"({REFUSED}" in item.detail and item.detail.split(REFUSED)[1].strip(), item.detail
    assert item.remote.row == {"label_id": "l-phone", "name": "verbs"}
    assert item.local is None  # the server never had this row
    assert [decode_event(p).key for p in item.events] == [{"label_id": "l-phone"}]


def held_events(m, item):
    with m.engine.connect() as conn:
        return [decode_event(e.payload) for e in parking.held_events(conn, item.id)]


def test_events_for_a_missing_table_are_held_in_one_item_and_later_ones_join_it(pair):
    server, local = pair
    with server.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE documents")
    server.node.forget_shapes()
    with local.sessions.begin() as session:
        session.add(app.VocabularyItem(item_id="v-1", user_id="u-42", word="a", translation="?"))
        session.add(
            app.Document(
                document_id="d-1", user_id="u-42", language="es", filename="f", content="uno"
            )
        )

    first = replicate(local.node, server.node)
    with local.sessions.begin() as session:
        session.get(app.Document, "d-1").content = "dos"
    add_vocabulary(local, "v-2", "b")
    second = replicate(local.node, server.node)

    assert (first.applied, first.parked, second.applied, second.parked) == (1, 1, 1, 1)
    assert vocabulary_keys(server) == ["v-1", "v-2"]
    [item] = open_items(server)  # one item for the table, not one per row
    assert (item.table, item.key, item.reason) == ("documents", "*", "missing_table")
    assert item.held and item.event_count == 2 and item.events == []
    assert "'documents' does not exist" in item.detail
    assert [e.op for e in held_events(server, item)] == ["insert", "update"]


def test_5000_events_for_a_missing_table_are_one_item_then_applied_in_order_once_it_exists(pair):
    """A device writes a table the server lacks (a deploy went wrong): every
    event is held in one item, in order, while the rest replicates; once the
    table exists the next pass applies them, oldest first, exactly once."""
    server, local = pair
    with server.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE documents")
    server.node.forget_shapes()
    count = 2500
    with local.sessions.begin() as session:
        for i in range(count):
            session.add(
                app.Document(
                    document_id=f"d-{i}", user_id="u-42", language="es", filename="f", content="v1"
                )
            )
    with local.sessions.begin() as session:  # 2,500 updates after 2,500 inserts
        for document in session.scalars(sa.select(app.Document)):
            document.content = "v2"
    add_vocabulary(local, "v-1", "a")

    held = replicate(local.node, server.node)
    with local.sessions.begin() as session:  # while held: later events join the item
        session.get(app.Document, "d-0").content = "v3"
        session.delete(session.get(app.Document, "d-1"))
    joined = replicate(local.node, server.node)

    assert (held.read, held.applied, held.parked) == (2 * count + 1, 1, 2 * count)
    assert (joined.read, joined.parked) == (2, 2)
    assert vocabulary_keys(server) == ["v-1"]
    [item] = open_items(server)
    assert (item.key, item.reason, item.event_count) == ("*", "missing_table", 2 * count + 2)

    app.Document.__table__.create(server.engine)
    server.node.forget_shapes()
    released = replicate(local.node, server.node)
    again = replicate(local.node, server.node)

    assert released.ok, released.error
    assert (released.applied, released.parked) == (2 * count + 2, 0)
    assert (again.read, again.applied) == (0, 0)
    assert open_items(server) == []
    with server.engine.connect() as conn:
        closed = parking.get(conn, item.id)
        assert parking.held_events(conn, item.id) == []
        forwarded = (
            conn.execute(
                sa.text(
                    "SELECT payload FROM replicator_outbox WHERE table_name = 'documents' "
                    "ORDER BY position"
                )
            )
            .scalars()
            .all()
        )
    assert closed.status == "resolved" and "in order" in closed.resolution
    with local.engine.connect() as conn:
        written = (
            conn.execute(
                sa.text(
                    "SELECT payload FROM replicator_outbox WHERE table_name = 'documents' "
                    "ORDER BY position"
                )
            )
            .scalars()
            .all()
        )
    # Applied (and forwarded by the server) in the order they were written.
    assert [decode_event(p).event_id for p in forwarded] == [
        decode_event(p).event_id for p in written
    ]
    rows = sorted(server.rows("documents"))
    assert rows == sorted(local.rows("documents"))
    assert len(rows) == count - 1


def test_an_undecodable_event_is_parked_whole_and_its_neighbours_applied(pair):
    server, local = pair
    with local.sessions.begin() as session:
        for i in range(3):
            session.add(
                app.VocabularyItem(item_id=f"v-{i}", user_id="u-42", word="w", translation="?")
            )
    corrupt = b"\xc1 not msgpack"
    with local.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE replicator_outbox SET payload = ? WHERE row_key = ?", (corrupt, '["v-1"]')
        )

    result = replicate(local.node, server.node)
    edit_vocabulary(local, "v-1", translation="still here")
    later = replicate(local.node, server.node)

    assert (result.read, result.applied, result.parked) == (3, 2, 1)
    [item] = open_items(server)
    assert (item.table, item.key, item.reason) == ("vocabulary_items", '["v-1"]', "corrupt_payload")
    assert "cannot be decoded" in item.detail
    assert (item.events, item.remote) == ([corrupt], None)  # kept whole, version unknown
    # The later update carries the whole row: the server has it now, and the
    # item stays open (an unknown version is never superseded).
    assert (later.applied, later.parked) == (1, 0)
    assert vocabulary_keys(server) == ["v-0", "v-1", "v-2"]


class Checked(DeclarativeBase):
    pass


class Score(Checked):
    __tablename__ = "scores"
    score_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    points: Mapped[int]


@pytest.mark.backends("mariadb")
def test_a_row_failing_a_check_constraint_on_mariadb_is_parked(pair):
    # pymysql reports a CHECK violation as an OperationalError, not an
    # IntegrityError: the dialect still knows it for a refused row.
    server, local = pair
    Checked.metadata.create_all(local.engine)
    with server.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE scores (score_id VARCHAR(36) PRIMARY KEY, "
            "points INTEGER NOT NULL CHECK (points >= 0))"
        )
    with local.sessions.begin() as session:
        session.add_all([Score(score_id="s-1", points=3), Score(score_id="s-2", points=-1)])

    result = replicate(local.node, server.node)

    assert result.ok, result.error
    assert (result.applied, result.parked) == (1, 1)
    [item] = open_items(server)
    assert (item.key, item.reason) == ('["s-2"]', "constraint_violation")
    assert item.detail.startswith(REFUSED) and item.detail[len(REFUSED) :].strip(), item.detail


@pytest.mark.backends("mariadb")
def test_a_mariadb_target_without_strict_mode_is_refused_with_the_reason(pair):
    # Without strict mode MariaDB alters what it cannot store and only warns.
    server, local = pair
    sa.event.listen(
        server.engine,
        "connect",
        lambda dbapi, _: dbapi.cursor().execute("SET SESSION sql_mode = ''"),
    )
    server.engine.dispose()
    add_vocabulary(local, "v-1", "a")

    result = replicate(local.node, server.node)

    assert result.status == "failed"
    assert "strict mode" in result.error and "STRICT_TRANS_TABLES" in result.error
    assert vocabulary_keys(server) == []


def _documents_held(server, local, count):
    with server.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE documents")
    server.node.forget_shapes()
    with local.sessions.begin() as session:
        for i in range(count):
            session.add(
                app.Document(
                    document_id=f"d-{i}", user_id="u-42", language="es", filename="f", content="x"
                )
            )
    replicate(local.node, server.node)
    [item] = open_items(server)
    return item


def test_a_person_applies_a_held_item_once_its_table_exists_or_discards_it(pair):
    from replicator.errors import ArgumentError, ReviewError
    from replicator.review import ReviewQueue
    from replicator.sync import settlement

    server, local = pair
    item = _documents_held(server, local, 30)
    queue = ReviewQueue([server.node, local.node], settle=settlement)
    ref = f"server:{item.id}"

    shown = queue.show(ref)
    with pytest.raises(ReviewError, match="cannot be applied yet: table 'documents' does not"):
        queue.resolve(ref, take="local")
    with pytest.raises(ArgumentError, match="holds 30 events of table 'documents'"):
        queue.resolve(ref, merge={"content": "y"})
    with pytest.raises(ArgumentError, match=r"take local to apply them .* or discard to drop"):
        queue.resolve(ref, take="server")  # would drop them: only discard says so
    app.Document.__table__.create(server.engine)
    server.node.forget_shapes()
    decided = queue.resolve(ref, take="local", by="ana")

    assert (shown.key, shown.event_count, len(shown.events)) == ("*", 30, 20)
    assert [e.op for e in shown.events] == ["insert"] * 20
    assert (decided.ref, decided.by) == (ref, "ana")
    assert len(server.rows("documents")) == 30
    assert open_items(server) == []
    with server.engine.connect() as conn:
        assert parking.get(conn, item.id).resolved_by == "ana"


def test_discarding_a_held_item_drops_its_events_and_a_pass_applies_none(pair):
    from replicator.review import ReviewQueue

    server, local = pair
    item = _documents_held(server, local, 5)

    ReviewQueue([server.node]).discard(f"server:{item.id}", by="ana")
    app.Document.__table__.create(server.engine)
    server.node.forget_shapes()
    later = replicate(local.node, server.node)

    assert (later.read, later.applied) == (0, 0)
    assert server.rows("documents") == []
    with server.engine.connect() as conn:
        closed = parking.get(conn, item.id)
        assert parking.held_events(conn, item.id) == []
    assert closed.status == "resolved" and "discarded its 5 held events" in closed.resolution


# DuckDB cannot drop a column of a table other tables refer to.
@pytest.mark.backends("sqlite", "mariadb")
def test_events_for_a_missing_column_are_held_until_the_column_is_added(pair):
    server, local = pair
    with server.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE vocabulary_items DROP COLUMN strength")
    server.node.forget_shapes()
    add_vocabulary(local, "v-1", "a")
    add_vocabulary(local, "v-2", "b")
    edit_vocabulary(local, "v-1", translation="uno")

    held = replicate(local.node, server.node)
    [item] = open_items(server)
    with server.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE vocabulary_items ADD COLUMN strength FLOAT")
    server.node.forget_shapes()
    released = replicate(local.node, server.node)

    assert (held.parked, released.applied) == (3, 3)
    assert (item.key, item.reason, item.event_count) == ("*", "missing_column", 3)
    assert "no column 'strength'" in item.detail
    assert vocabulary_keys(server) == ["v-1", "v-2"]
    assert server.rows("vocabulary_items") == local.rows("vocabulary_items")
    assert open_items(server) == []


def test_an_undecodable_event_in_a_held_flood_is_parked_on_its_own_when_released(pair):
    server, local = pair
    with server.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE documents")
    server.node.forget_shapes()
    with local.sessions.begin() as session:
        for i in range(3):
            session.add(
                app.Document(
                    document_id=f"d-{i}", user_id="u-42", language="es", filename="f", content="x"
                )
            )
    corrupt = b"\xc1 not msgpack"
    with local.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE replicator_outbox SET payload = ? WHERE row_key = ?", (corrupt, '["d-1"]')
        )
    replicate(local.node, server.node)
    [held] = open_items(server)

    app.Document.__table__.create(server.engine)
    server.node.forget_shapes()
    released = replicate(local.node, server.node)

    assert (released.applied, released.parked) == (2, 1)
    assert [r[0] for r in server.rows("documents")] == ["d-0", "d-2"]
    [item] = open_items(server)  # the corrupt event, on its own, for a person
    assert (item.key, item.reason, item.events) == ('["d-1"]', "corrupt_payload", [corrupt])
    with server.engine.connect() as conn:
        closed = parking.get(conn, held.id)
    assert (closed.status, closed.event_count) == ("resolved", 0)


def test_a_release_stops_at_an_event_the_table_still_cannot_take(pair):
    """Held events are applied up to the first the target still cannot take
    (a column it lacks); that one stays first in the item, which says why,
    and nothing after it is applied out of order."""
    from replicator.events import encode_event

    server, local = pair
    with local.sessions.begin() as session:
        for i in range(4):
            session.add(
                app.Document(
                    document_id=f"d-{i}", user_id="u-42", language="es", filename="f", content="x"
                )
            )
    with local.engine.connect() as conn:
        logged = conn.exec_driver_sql(
            "SELECT row_key, payload FROM replicator_outbox WHERE table_name = 'documents' "
            "ORDER BY position"
        ).all()
    events = [(key, decode_event(payload)) for key, payload in logged]
    wider = events[2][1]
    events[2] = (events[2][0], msgspec.structs.replace(wider, row={**wider.row, "colour": "red"}))
    with server.engine.begin() as conn:
        held = [(key, encode_event(event)) for key, event in events]
        parking.hold(conn, {"documents": (parking.Reason.MISSING_TABLE, "gone", held)}, {}, START)

    first = replicate(local.node, server.node)
    [item] = open_items(server)

    # The pass's own four events of the table join the item, after the rest.
    assert (first.applied, first.parked) == (2, 4)
    assert [r[0] for r in server.rows("documents")] == ["d-0", "d-1"]
    assert (item.reason, item.event_count) == ("missing_column", 6)
    assert "no column 'colour'" in item.detail
    assert [e.key["document_id"] for e in held_events(server, item)] == [
        "d-2",
        "d-3",
        "d-0",
        "d-1",
        "d-2",
        "d-3",
    ]


def test_a_held_item_decided_meanwhile_is_left_as_decided():
    engine = sa.create_engine("sqlite://")
    from replicator.tables import metadata

    metadata.create_all(engine)
    with engine.begin() as conn:
        parking.hold(
            conn, {"t": (parking.Reason.MISSING_TABLE, "gone", [('["a"]', b"x")])}, {}, START
        )
        [item] = parking.held_items(conn).values()
        parking.let_go(conn, item.id, 0, START, by="ana", note="discarded")
        with pytest.raises(parking.ItemClosed):
            parking.let_go(conn, item.id, 0, START + dt.timedelta(1), by="replicator", note="x")
        assert parking.get(conn, item.id).resolution == "discarded"
