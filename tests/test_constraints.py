"""A different row is never touched: an upsert that meets another row's
unique value fails on every dialect, whatever the key's type and however
the unique value is declared, and a pass parks such an event with reason
``unique_violation`` naming the column, the value and the other row."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

import replicator
from replicator.dialects import for_connection
from replicator.dialects.base import TableShape
from replicator.sync import replicate


def _tables(key: str) -> tuple[sa.MetaData, sa.Table, sa.Table]:
    metadata = sa.MetaData()

    def key_column() -> sa.Column:
        if key == "integer":  # numbered by the database: AUTO_INCREMENT on MariaDB
            return sa.Column("id", sa.Integer, primary_key=True)
        return sa.Column("id", sa.String(36), primary_key=True)

    by_constraint = sa.Table(
        "people",
        metadata,
        key_column(),
        sa.Column("email", sa.String(100), unique=True),
        sa.Column("name", sa.String(100)),
    )
    by_index = sa.Table(
        "badges",
        metadata,
        key_column(),
        sa.Column("code", sa.String(20)),
        sa.Column("owner", sa.String(20)),
        sa.Column("label", sa.String(100)),
        sa.Index("ix_badges_code_owner", "code", "owner", unique=True),
    )
    return metadata, by_constraint, by_index


@pytest.mark.parametrize("key", ["integer", "text"])
def test_an_upsert_fails_rather_than_overwrite_a_row_with_another_key(engine, key):
    metadata, people, badges = _tables(key)
    if engine.dialect.name == "duckdb" and key == "integer":
        people.c.id.default = badges.c.id.default = None  # DuckDB: no SERIAL
        people.c.id.autoincrement = badges.c.id.autoincrement = False
    metadata.create_all(engine)
    dialect = for_connection(engine)
    one, two = (1, 2) if key == "integer" else ("k-1", "k-2")
    with engine.begin() as conn:
        conn.execute(people.insert().values(id=one, email="a@x", name="first"))
        conn.execute(badges.insert().values(id=one, code="c", owner="o", label="first"))

    for table, row in (
        (people, (two, "a@x", "second")),
        (badges, (two, "c", "o", "second")),
    ):
        columns = [c.name for c in table.columns]
        with pytest.raises(DBAPIError) as refused, engine.begin() as conn:
            dialect.upsert_rows(conn, table, columns, [row])
        assert dialect.refusal(refused.value) == "constraint_violation"
        with engine.connect() as conn:
            assert conn.execute(
                sa.select(table.c.id, table.c.name if table is people else table.c.label)
            ).all() == [(one, "first")], "the other row was changed"

    # The same row (same key) is still upserted as usual.
    with engine.begin() as conn:
        dialect.upsert_rows(conn, people, ["id", "email", "name"], [(one, "a@x", "renamed")])
    with engine.connect() as conn:
        assert conn.execute(sa.select(people.c.name)).scalar_one() == "renamed"


def test_every_dialect_describes_unique_columns_and_foreign_keys(engine):
    metadata, _, _ = _tables("text")
    sa.Table(
        "mentions",
        metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("person", sa.ForeignKey("people.id")),
    )
    metadata.create_all(engine)
    dialect = for_connection(engine)
    with engine.connect() as conn:
        shapes = {t: dialect.describe(conn, t) for t in ("people", "badges", "mentions")}
    assert shapes["people"].unique == (("email",),)
    assert shapes["badges"].unique == (("code", "owner"),)
    assert shapes["mentions"].parents == ((("person",), "people", ("id",)),)
    assert isinstance(shapes["people"], TableShape) and shapes["people"].parents == ()


def test_a_pass_parks_a_unique_clash_naming_the_column_the_value_and_the_other_row(
    database_url, tmp_path
):
    from tests.test_keys import Side, side, sync

    class Base(sa.orm.DeclarativeBase):
        pass

    class Person(Base):
        __tablename__ = "persons"
        id: sa.orm.Mapped[int] = sa.orm.mapped_column(
            sa.Sequence("persons_id_seq"), primary_key=True
        )
        email: sa.orm.Mapped[str] = sa.orm.mapped_column(sa.String(100), unique=True)
        name: sa.orm.Mapped[str] = sa.orm.mapped_column(sa.String(100))

    server = side("server", database_url, "server", Base.metadata)
    local: Side = side("phone", f"duckdb:///{tmp_path / 'phone.duckdb'}", "local", Base.metadata)
    try:
        sync(server, local)
        with server.sessions.begin() as session:
            session.add(Person(email="ana@example.org", name="Ana (server)"))
        with local.sessions.begin() as session:
            session.add(Person(email="ana@example.org", name="Ana (phone)"))
        with server.sessions() as session:
            (before,) = [(p.id, p.name) for p in session.scalars(sa.select(Person))]

        up = replicate(local.node, server.node)
        assert up.parked == 1, up
        with server.sessions() as session:
            assert [(p.id, p.name) for p in session.scalars(sa.select(Person))] == [before]
        with server.node.connect() as conn:
            (item,) = _open_items(conn)
        assert item.reason == "unique_violation"
        assert "email = 'ana@example.org'" in item.detail and f"id={before[0]}" in item.detail
    finally:
        for s in (local, server):
            replicator.capture(s.sessions, node=s.node.name).stop()
            s.node.engine.dispose()


def _open_items(conn):
    from replicator.tables import review_items

    c = review_items.c
    return conn.execute(sa.select(c.reason, c.detail).where(c.status == "open")).all()


class _People(sa.orm.DeclarativeBase):
    pass


class _Person(_People):
    __tablename__ = "people_p"
    id: sa.orm.Mapped[int] = sa.orm.mapped_column(sa.Sequence("people_p_seq"), primary_key=True)
    email: sa.orm.Mapped[str] = sa.orm.mapped_column(sa.String(100), unique=True)
    name: sa.orm.Mapped[str] = sa.orm.mapped_column(sa.String(100))


class _Note(_People):
    """Refers to its author; the database clears the reference when the
    author is deleted (no ORM relationship: capture does not see it)."""

    __tablename__ = "notes_p"
    id: sa.orm.Mapped[int] = sa.orm.mapped_column(sa.Sequence("notes_p_seq"), primary_key=True)
    author: sa.orm.Mapped[int | None] = sa.orm.mapped_column(
        sa.ForeignKey("people_p.id", ondelete="SET NULL")
    )
    text: sa.orm.Mapped[str] = sa.orm.mapped_column(sa.String(100))


def _pair(database_url, tmp_path):
    from tests.test_keys import side, sync

    server = side("server", database_url, "server", _People.metadata)
    local = side("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}", "local", _People.metadata)
    sync(server, local)
    return server, local


def _close(*sides):
    for s in sides:
        replicator.capture(s.sessions, node=s.node.name).stop()
        s.node.engine.dispose()


@pytest.mark.backends("sqlite", "mariadb")  # DuckDB has no ON DELETE SET NULL
def test_a_later_edit_of_a_row_whose_earlier_change_was_parked_does_not_close_it(
    database_url, tmp_path
):
    """The parked change's values are not on the server: writing only the
    later edit's columns would leave the replicas different for good."""
    server, local = _pair(database_url, tmp_path)
    try:
        with server.sessions.begin() as session:
            session.add_all([_Person(email="a@x", name="A"), _Person(email="b@x", name="B")])
        replicate(server.node, local.node)
        with server.sessions.begin() as session:
            session.scalars(sa.select(_Person).where(_Person.email == "a@x")).one().email = "z@x"
        with local.sessions.begin() as session:
            session.scalars(sa.select(_Person).where(_Person.email == "b@x")).one().email = "z@x"
        assert replicate(local.node, server.node).parked == 1  # z@x is A's on the server
        with local.sessions.begin() as session:
            session.scalars(sa.select(_Person).where(_Person.name == "B")).one().name = "Bob"
        replicate(local.node, server.node)

        with server.node.connect() as conn:
            (item,) = _open_items(conn)
            rows = conn.execute(sa.select(_Person.email, _Person.name).order_by("id")).all()
        assert item.reason == "unique_violation", item
        assert rows == [("z@x", "A"), ("b@x", "B")], "the server took half of the phone's row"
    finally:
        _close(local, server)


@pytest.mark.backends("sqlite", "mariadb")  # DuckDB has no ON DELETE SET NULL
def test_a_reference_the_database_clears_on_delete_is_not_taken_for_an_orphan(
    database_url, tmp_path
):
    server, local = _pair(database_url, tmp_path)
    try:
        with server.sessions.begin() as session:
            author = _Person(email="a@x", name="A")
            session.add(author)
            session.flush()
            session.add(_Note(author=author.id, text="kept"))
        replicate(server.node, local.node)
        with local.sessions.begin() as session:  # the database sets the note's author NULL
            session.delete(session.scalars(sa.select(_Person)).one())
        up = replicate(local.node, server.node)
        replicate(server.node, local.node)

        assert up.parked == 0, up
        for s in (server, local):
            with s.node.connect() as conn:
                assert conn.execute(sa.select(_Note.text)).scalars().all() == ["kept"], s.node.name
                assert _open_items(conn) == [], s.node.name
    finally:
        _close(local, server)
