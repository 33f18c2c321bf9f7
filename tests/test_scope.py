"""Scoped locals: a local with ``scope = {user_id = ...}`` holds only its
user's rows; rows that leave or enter the scope on the server leave or reach
it; a local cannot write outside its scope; tables without the scope column
replicate whole or not at all, as configured."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from replicator.errors import CaptureError
from replicator.sync import replicate

from .cluster import add_vocabulary, edit_vocabulary, member

SCOPE = {"user_id": "u-42"}


class Reference(DeclarativeBase):
    pass


class Language(Reference):
    """Shared reference data: no user_id column."""

    __tablename__ = "languages"
    code: Mapped[str] = mapped_column(sa.String(8), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


@pytest.fixture
def scoped(database_url, tmp_path):
    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}", scope=SCOPE)
    for m in (server, phone):
        Reference.metadata.create_all(m.engine)
    yield server, phone
    phone.close()
    server.close()


def words(m) -> list[str]:
    return [row[2] for row in m.rows("vocabulary_items")]


def test_a_scoped_local_receives_only_its_users_rows(scoped):
    server, phone = scoped
    add_vocabulary(server, "v-1", "mesa", user_id="u-42")
    add_vocabulary(server, "v-2", "silla", user_id="u-7")

    result = replicate(server.node, phone.node)

    assert words(phone) == ["mesa"]
    assert (result.read, result.applied, result.skipped) == (2, 1, 1)


def test_rows_leaving_and_entering_the_scope_on_the_server_leave_and_reach_the_local(scoped):
    server, phone = scoped
    add_vocabulary(server, "v-1", "mesa", user_id="u-42")
    add_vocabulary(server, "v-2", "silla", user_id="u-7")
    replicate(server.node, phone.node)

    edit_vocabulary(server, "v-1", user_id="u-7")  # leaves phone's scope
    edit_vocabulary(server, "v-2", user_id="u-42")  # enters it
    replicate(server.node, phone.node)

    assert words(phone) == ["silla"]
    assert phone.rows("vocabulary_items") == [
        r for r in server.rows("vocabulary_items") if r[1] == "u-42"
    ]
    assert phone.own_events() == []  # nothing the server sent was captured on the phone
    # Back in scope later: the row arrives again, with its latest values.
    edit_vocabulary(server, "v-1", user_id="u-42", translation="table")
    replicate(server.node, phone.node)
    assert words(phone) == ["mesa", "silla"]
    assert phone.rows("vocabulary_items")[0][3] == "table"


def test_a_scoped_local_cannot_write_another_users_row(scoped):
    _, phone = scoped
    with pytest.raises(CaptureError, match=r"user_id = 'u-7' is outside node 'phone'"):
        add_vocabulary(phone, "v-1", "mesa", user_id="u-7")
    add_vocabulary(phone, "v-2", "silla", user_id="u-42")
    with pytest.raises(CaptureError, match="outside"):
        edit_vocabulary(phone, "v-2", user_id="u-7")

    assert [r[:2] for r in phone.rows("vocabulary_items")] == [("v-2", "u-42")]
    assert [e.key for e in phone.events()] == [{"item_id": "v-2"}]


@pytest.mark.parametrize("unscoped, expected", [("all", ["es"]), ("none", [])])
def test_a_table_without_the_scope_column_replicates_as_configured(scoped, unscoped, expected):
    server, phone = scoped
    with server.sessions.begin() as session:
        session.add(Language(code="es", name="Spanish"))
    with phone.sessions.begin() as session:
        session.add(Language(code="fr", name="French"))
    options = {"unscoped": {"languages": unscoped}}

    replicate(server.node, phone.node, **options)
    replicate(phone.node, server.node, **options)

    with phone.engine.connect() as conn:
        on_phone = conn.execute(sa.select(Language.code).order_by(Language.code)).scalars()
        assert [c for c in on_phone if c != "fr"] == expected
    with server.engine.connect() as conn:
        on_server = conn.execute(sa.select(Language.code).order_by(Language.code)).scalars()
        assert [c for c in on_server if c != "es"] == [c.replace("es", "fr") for c in expected]


@pytest.mark.parametrize(
    "policy, phone_keeps",
    [("server_wins", False), ("local_wins", True)],
)
def test_a_settlement_moving_a_row_out_of_scope_deletes_it_there(scoped, policy, phone_keeps):
    server, phone = scoped
    add_vocabulary(phone, "v-1", "mesa")
    replicate(phone.node, server.node)
    replicate(server.node, phone.node)
    edit_vocabulary(phone, "v-1", translation="desk")  # while apart:
    edit_vocabulary(server, "v-1", user_id="u-7")  # a tutor gives the word to another user

    up = replicate(phone.node, server.node, policy=policy)
    down = replicate(server.node, phone.node)

    assert (up.conflicts, down.conflicts) == (1, 0)
    kept = [(r[0], r[1], r[3]) for r in phone.rows("vocabulary_items")]
    if phone_keeps:  # the phone's row, in its scope, on both sides
        assert kept == [("v-1", "u-42", "desk")]
        assert [(r[0], r[1], r[3]) for r in server.rows("vocabulary_items")] == kept
    else:  # the server's row, now another user's: gone from the phone
        assert kept == []
        assert [(r[0], r[1]) for r in server.rows("vocabulary_items")] == [("v-1", "u-7")]
