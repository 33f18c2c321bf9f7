"""Events the target cannot take are parked in its review queue with their
reason and every version, and the rest of the batch is applied (invariant 7):
a row the target refuses (unique constraint), a table it lacks, and an
event that cannot be decoded. The server runs on every backend."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from replicator import review
from replicator.events import decode_event
from replicator.sync import replicate

from .cluster import add_vocabulary, app, edit_vocabulary


class Base(DeclarativeBase):
    pass


class Label(Base):
    __tablename__ = "labels"
    label_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)


@pytest.fixture
def pair(pair):
    for m in pair:
        Base.metadata.create_all(m.engine)
    return pair


def open_items(m):
    with m.engine.connect() as conn:
        return review.items(conn, status="open")


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
    assert (item.table, item.key, item.reason) == ("labels", '["l-phone"]', "constraint_violation")
    assert "refused" in item.detail and "name" in item.detail.lower(), item.detail
    assert item.remote.row == {"label_id": "l-phone", "name": "verbs"}
    assert item.local is None  # the server never had this row
    assert [decode_event(p).key for p in item.events] == [{"label_id": "l-phone"}]


def test_an_event_for_a_missing_table_is_parked_and_later_ones_join_its_item(pair):
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
    [item] = open_items(server)  # one open item per row
    assert (item.table, item.key, item.reason) == ("documents", '["d-1"]', "missing_table")
    assert "'documents' does not exist" in item.detail
    assert [decode_event(p).op for p in item.events] == ["insert", "update"]
    assert item.remote.row["content"] == "dos"  # the newest version


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
