"""Values typed once (replicator.values, behind Dialect.describe and
Dialect.written): a column's values read from any database come back as the
event carries them, and an event's values go into any database, for the
column types real models use (UUID keys, Numeric, JSON, Enum, Boolean,
fractional seconds), with the server on every backend."""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

import replicator
from replicator import outbox, values, versions
from replicator.bootstrap import bootstrap
from replicator.dialects import for_connection
from replicator.events import row_key
from replicator.node import Node
from replicator.review import ReviewQueue
from replicator.sync import replicate
from replicator.values import Json
from replicator.verify import verify

MICROSECONDS = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
TIME_OF_DAY = sa.Time().with_variant(mysql.TIME(fsp=6), "mysql", "mariadb")


class Size(enum.Enum):
    SMALL = "s"
    LARGE = "l"


class Base(DeclarativeBase):
    pass


class Product(Base):
    """A model as apps write them: a UUID key, money, a document, flags."""

    __tablename__ = "products"
    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(sa.String(40))
    price: Mapped[decimal.Decimal] = mapped_column(sa.Numeric(10, 2))
    weight: Mapped[float | None] = mapped_column(sa.Float)
    size: Mapped[Size] = mapped_column(sa.Enum(Size, native_enum=False, length=10))
    active: Mapped[bool] = mapped_column(default=True)
    attributes: Mapped[dict | list | str | None] = mapped_column(sa.JSON)
    made_at: Mapped[dt.datetime | None] = mapped_column(MICROSECONDS)
    made_on: Mapped[dt.date | None] = mapped_column(sa.Date)
    opens_at: Mapped[dt.time | None] = mapped_column(TIME_OF_DAY)
    code: Mapped[bytes | None] = mapped_column(sa.LargeBinary(16))


class ProductTag(Base):
    """A many-to-many link: a table of key columns only."""

    __tablename__ = "product_tags"
    product_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("products.id"), primary_key=True)
    tag: Mapped[str] = mapped_column(sa.String(20), primary_key=True)


def _typed_row(engine: sa.Engine, shape, held=None) -> dict:
    with engine.connect() as conn:
        raw = conn.execute(sa.select(sa.table("products", *map(sa.column, shape.columns))))
        return shape.typed(raw.mappings().one(), held)


ROW = {
    "id": uuid.UUID("6f1f7a2e-9d43-4c61-8f0e-2a5b8c9d0e1f"),
    "name": "chair",
    "price": decimal.Decimal("12.50"),
    "weight": 1.25,
    "size": "s",
    "active": True,
    "attributes": {"colors": ["red", "oak"], "stackable": True},
    "made_at": dt.datetime(2026, 3, 4, 5, 6, 7, 123456),
    "made_on": dt.date(2026, 3, 4),
    "opens_at": dt.time(9, 30, 0, 250000),
    "code": b"\x00\x01\xfe",
}


def test_describe_gives_each_column_the_kind_events_carry(engine):
    Base.metadata.create_all(engine)
    dialect = for_connection(engine)
    with engine.connect() as conn:
        shape = dialect.describe(conn, "products")
    kinds = dict(zip(shape.columns, shape.kinds, strict=True))
    expected = {
        "name": str,
        "price": decimal.Decimal,
        "weight": float,
        "size": str,
        "active": bool,  # MariaDB spells it TINYINT(1)
        "made_at": dt.datetime,
        "made_on": dt.date,
        "opens_at": dt.time,
        "code": bytes,
    }
    assert {c: kinds[c] for c in expected} == expected
    # MariaDB spells it LONGTEXT CHECK (json_valid(...)); duckdb-engine
    # returns its documents decoded.
    assert kinds["attributes"] is (values.DecodedJson if engine.name == "duckdb" else Json)
    # A UUID column is CHAR(32) to SQLite and MariaDB: text, unless an
    # event says the column holds UUIDs.
    assert kinds["id"] in (str, uuid.UUID)
    assert shape.kinds_held(ROW)["id"] is uuid.UUID
    assert shape.integer_key is None


def test_an_events_values_written_read_back_as_the_event_carries_them(engine):
    Base.metadata.create_all(engine)
    dialect = for_connection(engine)
    with engine.begin() as conn:
        shape = dialect.describe(conn, "products")
        written = dialect.written_row(ROW, shape)
        dialect.upsert_rows(conn, shape.table(), list(written), [tuple(written.values())])

    assert _typed_row(engine, shape, held=ROW) == ROW


def test_a_json_column_holding_a_string_document_reads_back_as_the_string(engine):
    """A JSON column is decoded by its type, not by the type of the event's
    value: the document "oak" is the string oak, not the text '"oak"'."""
    Base.metadata.create_all(engine)
    dialect = for_connection(engine)
    row = {**ROW, "attributes": "oak"}
    with engine.begin() as conn:
        shape = dialect.describe(conn, "products")
        written = dialect.written_row(row, shape)
        dialect.upsert_rows(conn, shape.table(), list(written), [tuple(written.values())])

    assert _typed_row(engine, shape, held=row)["attributes"] == "oak"


def _member(name: str, url: str, role: str):
    engine = sa.create_engine(url)
    replicator.migrate(engine)
    Base.metadata.create_all(engine)
    sessions = sessionmaker(engine)
    handle = replicator.capture(sessions, node=name)
    return Node(name, role=role, engine=engine), engine, sessions, handle


@pytest.fixture
def nodes(database_url, tmp_path):
    """A server on the backend under test and a SQLite local, "phone"."""
    made = [
        _member("server", database_url, "server"),
        _member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}", "local"),
    ]
    yield made
    for _, engine, _, handle in made:
        handle.stop()
        engine.dispose()


def _product(sessions, **changes) -> None:
    with sessions.begin() as session:
        product = session.get(Product, ROW["id"])
        if product is None:
            session.add(Product(**{**ROW, "size": Size.SMALL, **changes}))
        else:
            for column, value in changes.items():
                setattr(product, column, value)


def test_uuid_keys_decimals_and_documents_replicate_both_ways(nodes):
    (server, _, server_sessions, _), (phone, _, phone_sessions, _) = nodes
    _product(phone_sessions)

    up = replicate(phone, server)
    _product(server_sessions, price=decimal.Decimal("9.99"), attributes=["sale"])
    down = replicate(server, phone)

    assert (up.ok, up.applied, down.ok, down.applied) == (True, 1, True, 1), (up, down)
    with phone_sessions() as session:
        product = session.get(Product, ROW["id"])
        assert (product.price, product.attributes) == (decimal.Decimal("9.99"), ["sale"])
    checked = verify(server, phone)
    assert checked.equal, checked


def test_a_link_table_of_key_columns_only_replicates_both_ways(nodes):
    """Its upsert has no column to update: it must keep the row, not fail."""
    (server, _, server_sessions, _), (phone, _, phone_sessions, _) = nodes
    _product(phone_sessions)
    with phone_sessions.begin() as session:
        session.add_all([ProductTag(product_id=ROW["id"], tag=t) for t in ("oak", "red")])
    up = replicate(phone, server)
    again = replicate(phone, server)  # nothing new, and a redelivery keeps the rows
    with server_sessions.begin() as session:
        session.delete(session.get(ProductTag, (ROW["id"], "red")))
        session.add(ProductTag(product_id=ROW["id"], tag="sale"))
    down = replicate(server, phone)

    assert all(p.ok for p in (up, again, down)), (up, again, down)
    with phone_sessions() as session:
        tags = sorted(t.tag for t in session.scalars(sa.select(ProductTag)))
    assert tags == ["oak", "sale"]
    checked = verify(server, phone)
    assert checked.equal, checked


def test_the_same_edit_on_both_sides_is_identical_not_a_conflict(nodes):
    """The server's row, read back to compare with the local's, is typed as
    the event carries it: a UUID key (32 hex digits in SQLite), a decimal
    (a float in SQLite), a JSON document (text everywhere) are equal."""
    (server, _, server_sessions, _), (phone, _, phone_sessions, _) = nodes
    _product(phone_sessions)
    replicate(phone, server)
    replicate(server, phone)

    for sessions in (server_sessions, phone_sessions):
        _product(sessions, price=decimal.Decimal("7.25"), attributes={"tags": ["x"]})
    up = replicate(phone, server)

    assert up.ok, up.error
    assert (up.conflicts, up.parked, dict(up.conflicts_by_policy)) == (1, 0, {"identical": 1})


def test_a_merged_decision_types_each_value_by_its_column(nodes):
    (server, _, server_sessions, _), (phone, _, phone_sessions, _) = nodes
    _product(phone_sessions)
    replicate(phone, server)
    replicate(server, phone)
    _product(server_sessions, name="stool")
    _product(phone_sessions, name="bench")
    parked = replicate(phone, server, policy="manual_review")
    queue = ReviewQueue([server, phone])
    (item,) = queue.list().items
    assert parked.conflicts == 1 and item.table == "products", parked

    with pytest.raises(replicator.ConfigurationError, match="column 'price' takes a number"):
        queue.resolve(item.ref, merge={"price": "cheap"})
    queue.resolve(item.ref, merge={"name": "bench", "price": "3.10", "made_on": "2026-05-06"})

    with server_sessions() as session:
        product = session.get(Product, ROW["id"])
        assert (product.name, product.price, product.made_on) == (
            "bench",
            decimal.Decimal("3.10"),
            dt.date(2026, 5, 6),
        )


@pytest.mark.parametrize(
    ("given", "kind", "expected"),
    [
        (5, int, 5),
        (5, float, 5.0),
        (0.1, decimal.Decimal, decimal.Decimal("0.1")),
        ("2.50", decimal.Decimal, decimal.Decimal("2.50")),
        ("2026-01-02T10:00", dt.datetime, dt.datetime(2026, 1, 2, 10)),
        ("6f1f7a2e-9d43-4c61-8f0e-2a5b8c9d0e1f", uuid.UUID, ROW["id"]),
        ({"a": 1}, Json, {"a": 1}),
        ("anything", None, "anything"),
        (None, int, None),
    ],
)
def test_parsed_takes_what_json_gives_for_a_column_of_each_kind(given, kind, expected):
    assert values.parsed(given, kind) == expected
    assert type(values.parsed(given, kind)) is type(expected)


@pytest.mark.parametrize(
    ("given", "kind", "says"),
    [
        (True, int, "takes an integer, not True"),
        (1.5, int, "takes an integer, not 1.5"),
        (1, bool, "takes true or false, not 1"),
        ("x", decimal.Decimal, "takes a number, not 'x'"),
        (3, str, "takes text, not 3"),
        ("tuesday", dt.date, "takes a date in ISO form, not 'tuesday'"),
        ("AA==", bytes, "holds bytes; it cannot be set here"),
    ],
)
def test_parsed_refuses_a_value_not_of_the_columns_kind_saying_what_it_takes(given, kind, says):
    with pytest.raises(values.NotOfKind) as refused:
        values.parsed(given, kind)
    assert str(refused.value) == says


@pytest.mark.parametrize(
    ("stored", "kind", "expected"),
    [
        ("2026-01-02 03:04:05.000006", dt.datetime, dt.datetime(2026, 1, 2, 3, 4, 5, 6)),
        ("2026-01-02T03:04", dt.datetime, dt.datetime(2026, 1, 2, 3, 4)),
        (1, bool, True),
        (12.5, decimal.Decimal, decimal.Decimal("12.5")),
        ('{"a": [1]}', Json, {"a": [1]}),
        ("6f1f7a2e9d434c618f0e2a5b8c9d0e1f", uuid.UUID, ROW["id"]),
        (dt.timedelta(hours=9, microseconds=5), dt.time, dt.time(9, 0, 0, 5)),  # pymysql
        (dt.timedelta(hours=25), dt.time, dt.timedelta(hours=25)),  # no time of day
        (86400, dt.datetime, 86400),  # never a date counted from 1970
        ("not a date", dt.date, "not a date"),
        ("{broken", Json, "{broken"),
    ],
)
def test_typed_reads_what_drivers_return_and_leaves_what_it_cannot(stored, kind, expected):
    assert values.typed(stored, kind) == expected


def _insert_on_both(nodes, **values) -> None:
    for _, _, sessions, _ in nodes:
        _product(sessions, **values)


@pytest.mark.parametrize("document", ['{"a": 1}', "[1, 2]", "5", "true"])
def test_the_same_json_string_document_on_both_sides_is_identical(nodes, document):
    """A string document that is itself valid JSON stays a string on every
    server (duckdb-engine returns documents decoded: not decoded twice)."""
    (server, _, _, _), (phone, _, _, _) = nodes
    _insert_on_both(nodes, attributes=document)

    up = replicate(phone, server)

    assert up.ok, up.error
    assert (up.parked, dict(up.conflicts_by_policy)) == (0, {"identical": 1}), up
    checked = verify(server, phone)
    assert checked.equal, checked


@pytest.mark.parametrize(
    ("on_server", "on_phone"),
    [(True, 1), ("1", 1), ("[1, 2]", [1, 2]), (0, False), ({"x": 1}, '{"x": 1}')],
)
def test_verify_tells_json_documents_of_other_types_apart(nodes, on_server, on_phone):
    (server, _, server_sessions, _), (phone, _, phone_sessions, _) = nodes
    _product(server_sessions, attributes=on_server)
    _product(phone_sessions, attributes=on_phone)

    checked = verify(server, phone)

    (products,) = [t for t in checked.tables if t.table == "products"]
    assert len(products.differing) == 1, checked


@pytest.mark.parametrize("pruned", [False, True], ids=["logged", "log-pruned"])
def test_a_uuid_keyed_orphan_is_removed_under_the_key_its_events_carry(nodes, pruned):
    """A batch that only deletes a parent has no event of the child's table:
    the child's key is typed as the target's log carries it (a UUID, which
    SQLite keeps as 32 hex digits), or, with the log pruned, as the row's
    version is kept; so its version is the row's own, and the delete sent
    to every node carries the key as events do."""
    (server, server_engine, server_sessions, _), (phone, _, phone_sessions, _) = nodes
    _product(phone_sessions)
    replicate(phone, server)
    replicate(server, phone)
    with server_sessions.begin() as session:  # the server adds a child ...
        session.add(ProductTag(product_id=ROW["id"], tag="sale"))
    with phone_sessions.begin() as session:  # ... while the phone deletes its parent
        session.delete(session.get(Product, ROW["id"]))
    if pruned:
        log = outbox.outbox
        with server_engine.begin() as conn:
            conn.execute(sa.delete(log).where(log.c.table_name == "product_tags"))

    up = replicate(phone, server)
    down = replicate(server, phone)

    assert up.ok and down.ok, (up, down)
    queue = ReviewQueue([server, phone])
    (item,) = queue.list().items
    assert (item.table, item.reason, item.key) == (
        "product_tags",
        "missing_parent",
        row_key([ROW["id"], "sale"]),
    )
    with server_engine.connect() as conn:
        stored = versions.load(conn, "product_tags", [item.key], for_connection(server_engine))
    assert stored[item.key].deleted, stored
    with server_engine.connect() as conn:
        (removal,) = [e for _, e in outbox.read(conn, table="product_tags") if e.op == "delete"]
    assert removal.key == {"product_id": ROW["id"], "tag": "sale"}, removal.key
    checked = verify(server, phone)
    assert checked.equal, checked


def test_a_bootstrap_copies_typed_values_and_the_versions_of_uuid_keyed_rows(nodes, tmp_path):
    """Rows are copied as events carry them: a UUID key (32 hex digits in
    SQLite) finds its version, a JSON string document stays a string, and a
    TIME (a duration from pymysql) is a time of day."""
    (server, _, _, _), (phone, _, phone_sessions, _) = nodes
    _product(phone_sessions, attributes="[1, 2]")
    with phone_sessions.begin() as session:
        session.add(ProductTag(product_id=ROW["id"], tag="oak"))
    assert replicate(phone, server).ok
    tablet, tablet_engine, tablet_sessions, handle = _member(
        "tablet", f"sqlite:///{tmp_path / 'tablet.sqlite'}", "local"
    )
    try:
        copied = bootstrap(server, tablet)

        assert copied.rows == {"product_tags": 1, "products": 1}, copied
        with tablet_sessions() as session:
            product = session.get(Product, ROW["id"])
            assert (product.attributes, product.opens_at) == ("[1, 2]", ROW["opens_at"])
        with tablet_engine.connect() as conn:
            stored = versions.load(
                conn, "products", [row_key([ROW["id"]])], for_connection(tablet_engine)
            )
        assert row_key([ROW["id"]]) in stored, "expected the row's version copied with it"
        checked = verify(server, tablet)
        assert checked.equal, checked
    finally:
        handle.stop()
        tablet_engine.dispose()
