"""The capture contract, run against SQLite, DuckDB and MariaDB."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy import delete, insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

import replicator
from replicator import outbox
from replicator.events import ChangeEvent, Operation

from .models import Base, Item, Membership, Tag


def captured(engine: Engine) -> list[ChangeEvent]:
    with engine.connect() as conn:
        return [event for _, event in outbox.read(conn)]


def test_unit_of_work_insert_gives_one_event_per_row(app, engine):
    with app.begin() as session:
        session.add_all([Item(name="a"), Item(name="b", qty=2)])
        session.add(Tag(code="t-1", label="one"))
        session.add(Membership(user_id="u-1", group_id=7, role="owner"))

    events = captured(engine)
    assert all(e.op is Operation.INSERT for e in events)
    assert sorted((e.table, repr(e.key)) for e in events) == sorted(
        [
            ("items", repr({"id": 1})),
            ("items", repr({"id": 2})),
            ("tags", repr({"code": "t-1"})),
            ("memberships", repr({"user_id": "u-1", "group_id": 7})),
        ]
    )
    assert len(events) == 4
    items = sorted((e for e in events if e.table == "items"), key=lambda e: e.key["id"])
    assert [e.row for e in items] == [
        {"id": items[0].key["id"], "name": "a", "qty": 0, "status": "new"},
        {"id": items[1].key["id"], "name": "b", "qty": 2, "status": "new"},
    ], "the after-image includes the key the database generated and its server default"
    assert {e.origin for e in events} == {"local"}
    assert all(e.version == {"local": 1} for e in events)
    assert len({e.txid for e in events}) == 1, "one transaction, one txid"
    assert len({e.event_id for e in events}) == 4


def test_unit_of_work_update_records_changed_columns_and_new_version(app, engine):
    with app.begin() as session:
        session.add_all([Item(name="a", qty=1), Item(name="b", qty=1)])
    with app.begin() as session:
        for item in session.scalars(sa.select(Item)):
            item.qty = 5

    updates = [e for e in captured(engine) if e.op is Operation.UPDATE]
    assert len(updates) == 2
    for event in updates:
        assert event.changed == {"qty": 1}
        assert event.row is not None and event.row["qty"] == 5 and event.row["status"] == "new"
        assert event.version == {"local": 2}, "the update descends from the insert"


def test_unit_of_work_delete_gives_one_event_with_the_old_row(app, engine):
    with app.begin() as session:
        session.add(Tag(code="t-1", label="one"))
    with app.begin() as session:
        session.delete(session.get(Tag, "t-1"))

    delete_event = captured(engine)[-1]
    assert delete_event.op is Operation.DELETE
    assert delete_event.key == {"code": "t-1"}
    assert delete_event.row is None
    assert delete_event.changed["label"] == "one"
    assert delete_event.version == {"local": 2}


def test_orm_bulk_insert_gives_one_event_per_row(app, engine):
    with app.begin() as session:
        result = session.execute(insert(Item), [{"name": f"n{i}", "qty": i} for i in range(5)])
        assert result.all() == [], "the caller's result has no rows it did not ask for"

    events = captured(engine)
    assert len(events) == 5
    assert all(e.op is Operation.INSERT for e in events)
    with engine.connect() as conn:
        stored = {r.id: r._asdict() for r in conn.execute(sa.select(Item.__table__))}
    assert {e.key["id"]: e.row for e in events} == stored


def test_orm_bulk_insert_keeps_the_callers_returning(app, engine):
    with app.begin() as session:
        codes = session.scalars(
            insert(Tag).returning(Tag.code), [{"code": "x"}, {"code": "y"}]
        ).all()
    assert sorted(codes) == ["x", "y"]
    assert sorted(e.key["code"] for e in captured(engine)) == ["x", "y"]


def test_orm_bulk_update_gives_one_event_per_changed_row(app, engine):
    with app.begin() as session:
        session.add_all([Item(name=f"n{i}", qty=i) for i in range(6)])
    with app.begin() as session:
        session.execute(update(Item).where(Item.qty >= 3).values(qty=Item.qty + 10))

    updates = [e for e in captured(engine) if e.op is Operation.UPDATE]
    assert sorted(e.row["qty"] for e in updates) == [13, 14, 15]
    assert all(e.changed == {"qty": e.row["qty"] - 10} for e in updates)
    assert all(e.version == {"local": 2} for e in updates)


def test_orm_bulk_update_by_primary_key(app, engine):
    with app.begin() as session:
        session.add_all([Tag(code="a", label="1"), Tag(code="b", label="2"), Tag(code="c")])
    with app.begin() as session:
        session.execute(update(Tag), [{"code": "a", "label": "A"}, {"code": "b", "label": "2"}])

    updates = [e for e in captured(engine) if e.op is Operation.UPDATE]
    assert [(e.key, e.changed, e.row["label"]) for e in updates] == [
        ({"code": "a"}, {"label": "1"}, "A")
    ], "b was set to the value it had: no event"


def test_orm_bulk_delete_gives_one_event_per_row(app, engine):
    with app.begin() as session:
        session.add_all([Membership(user_id="u", group_id=g, role="r") for g in range(4)])
    with app.begin() as session:
        session.execute(delete(Membership).where(Membership.group_id < 3))

    deletes = [e for e in captured(engine) if e.op is Operation.DELETE]
    assert sorted(e.key["group_id"] for e in deletes) == [0, 1, 2]
    assert all(e.key == {"user_id": "u", "group_id": e.changed["group_id"]} for e in deletes)


def test_rollback_leaves_no_event(app, engine):
    with app() as session:
        session.add(Item(name="gone"))
        session.flush()  # the row and its event are written ...
        session.execute(insert(Tag), [{"code": "gone"}])
        session.rollback()  # ... and undone together
    with app() as session:
        session.add(Tag(code="kept"))
        session.commit()
    assert [e.key for e in captured(engine)] == [{"code": "kept"}]


def test_update_that_changes_nothing_gives_no_event(app, engine):
    with app.begin() as session:
        session.add(Tag(code="t", label="same"))
    with app.begin() as session:
        tag = session.get(Tag, "t")
        tag.label = "same"
    with app.begin() as session:
        session.execute(update(Tag).where(Tag.code == "t").values(label="same"))
    assert [e.op for e in captured(engine)] == [Operation.INSERT]


def test_composite_and_string_keys_and_typed_values_round_trip(app, engine):
    ref = uuid.uuid4()
    created = dt.datetime(2026, 1, 2, 3, 4, 5)
    with app.begin() as session:
        session.add(
            Tag(
                code="k/ä",
                label=None,
                price=decimal.Decimal("12.50"),
                created=created,
                day=dt.date(2026, 1, 2),
                ref=ref,
            )
        )
        session.add(Membership(user_id="u-42", group_id=3, role="member"))

    tag, membership = sorted(captured(engine), key=lambda e: e.table, reverse=True)
    assert tag.key == {"code": "k/ä"}
    assert tag.row == {
        "code": "k/ä",
        "label": None,
        "price": decimal.Decimal("12.50"),
        "created": created,
        "day": dt.date(2026, 1, 2),
        "ref": ref,
    }
    assert list(membership.key.items()) == [("user_id", "u-42"), ("group_id", 3)]
    with engine.connect() as conn:
        keys = conn.execute(sa.select(outbox.outbox.c.row_key).order_by("position")).scalars().all()
    assert keys == ['["k/ä"]', '["u-42",3]']


def test_primary_key_change_is_a_delete_and_an_insert(app, engine):
    with app.begin() as session:
        session.add(Tag(code="old", label="x"))
    with app.begin() as session:
        session.get(Tag, "old").code = "new"
    events = captured(engine)[1:]
    assert [(e.op, e.key) for e in events] == [
        (Operation.DELETE, {"code": "old"}),
        (Operation.INSERT, {"code": "new"}),
    ]


def test_outbox_rows_of_one_flush_are_one_statement(app, engine):
    statements: list[str] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        if "replicator_outbox" in statement and statement.lstrip().upper().startswith("INSERT"):
            statements.append(statement)

    with app.begin() as session:
        session.add_all([Tag(code=f"t{i}") for i in range(50)])
        session.add_all([Item(name=f"i{i}") for i in range(50)])
    assert len(captured(engine)) == 100
    assert len(statements) == 1, f"expected one outbox INSERT for the flush, saw {len(statements)}"


def test_events_of_sequential_writes_have_increasing_timestamps_and_versions(app, engine):
    for label in ["1", "2", "3"]:
        with app.begin() as session:
            tag = session.get(Tag, "t") or Tag(code="t")
            tag.label = label
            session.add(tag)
    events = captured(engine)
    assert [e.version for e in events] == [{"local": 1}, {"local": 2}, {"local": 3}]
    assert events[0].hlc < events[1].hlc < events[2].hlc
    assert len({e.txid for e in events}) == 3


def test_replicator_tables_are_never_captured(app, engine):
    from sqlalchemy.orm import DeclarativeBase

    from replicator.tables import checkpoints

    class Other(DeclarativeBase):
        pass

    class Checkpoint(Other):
        __table__ = checkpoints

    try:
        with app.begin() as session:
            session.add(
                Checkpoint(
                    source="server", channel="", position=1, updated_at=dt.datetime(2026, 1, 1)
                )
            )
        assert captured(engine) == []
    finally:
        Other.registry.dispose()


def test_timestamps_increase_when_the_wall_clock_steps_back_an_hour(app, engine):
    from freezegun import freeze_time

    with freeze_time("2026-11-24 12:00:00") as frozen:
        with app.begin() as session:
            session.add(Tag(code="t", label="before"))
        frozen.move_to("2026-11-24 11:00:00")
        with app.begin() as session:
            session.get(Tag, "t").label = "after"
    first, second = captured(engine)
    assert second.hlc > first.hlc


def test_clock_resumes_above_stored_timestamps_after_a_restart(engine):
    from freezegun import freeze_time

    replicator.migrate(engine)
    Base.metadata.create_all(engine)
    factory = sessionmaker(bind=engine)
    with freeze_time("2026-11-24 12:00:00"):
        handle = replicator.capture(factory, node="local")
        with factory.begin() as session:
            session.add(Tag(code="t", label="1"))
        handle.stop()
    engine.dispose()  # the process "restarts" with its wall clock an hour behind
    with freeze_time("2026-11-24 11:00:00"):
        handle = replicator.capture(factory, node="local")
        try:
            with factory.begin() as session:
                # Another row: its own version history cannot carry the order.
                session.add(Tag(code="u", label="2"))
        finally:
            handle.stop()
    first, second = captured(engine)
    assert second.hlc > first.hlc


def test_capture_before_the_replicator_tables_exist_says_what_to_do(engine):
    Base.metadata.create_all(engine)
    with pytest.raises(replicator.SchemaError, match=r"replicator init.*migrate"):
        replicator.capture(engine, node="local")


def test_capture_of_a_table_without_primary_key_fails_at_capture_time(engine):
    import gc

    from sqlalchemy.orm import DeclarativeBase

    replicator.migrate(engine)

    class Other(DeclarativeBase):
        pass

    keyless = sa.Table(
        "keyless", Other.metadata, sa.Column("a", sa.Integer), sa.Column("b", sa.Integer)
    )

    class Keyless(Other):
        __table__ = keyless
        __mapper_args__ = {"primary_key": [keyless.c.a]}

    try:
        with pytest.raises(replicator.CaptureError, match=r"'keyless'.*no primary key.*exclude"):
            replicator.capture(engine, node="local")
        handle = replicator.capture(engine, node="local", exclude={"keyless"})
        handle.stop()
    finally:
        Other.registry.dispose()
        del Keyless, Other
        gc.collect()


def test_one_engine_is_one_node(app, engine):
    with pytest.raises(replicator.ConfigurationError, match="already captured as node 'local'"):
        replicator.capture(engine, node="other")
    assert replicator.capture(engine, node="local") is replicator.capture(app, node="local")


def test_core_statements_on_plain_tables_are_not_captured(app, engine):
    """The replicator applies remote changes through Core: no echo."""
    with app.begin() as session:
        session.execute(Tag.__table__.insert(), [{"code": "applied"}])
        session.add(Tag(code="app-write"))
    assert [e.key for e in captured(engine)] == [{"code": "app-write"}]


def test_row_keys_that_differ_only_in_case_are_different_rows(engine):
    """Version state compares keys exactly, whatever the database's collation."""
    from replicator import versions
    from replicator.dialects import for_connection

    replicator.migrate(engine)
    with engine.begin() as conn:
        dialect = for_connection(conn)
        versions.advance(conn, dialect, "t", "a", [versions.Bump('["abc"]', 1, False)])
        versions.advance(conn, dialect, "t", "b", [versions.Bump('["ABC"]', 1, False)])
        stored = versions.load(conn, "t", ['["abc"]', '["ABC"]'])
    assert {k: v.version for k, v in stored.items()} == {'["abc"]': {"a": 1}, '["ABC"]': {"b": 1}}


def test_deleting_and_re_adding_a_row_in_one_flush_is_one_update(app, engine):
    with app.begin() as session:
        session.add(Tag(code="t", label="old"))
    with app.begin() as session:
        session.delete(session.get(Tag, "t"))
        session.flush()  # two flushes: a delete, then an insert
        session.add(Tag(code="t", label="new"))
    with app.begin() as session:
        session.delete(session.get(Tag, "t"))
        session.add(Tag(code="t", label="newer"))  # one flush: SQLAlchemy's row switch
    ops = [(e.op, e.row and e.row["label"]) for e in captured(engine)]
    assert ops == [
        (Operation.INSERT, "old"),
        (Operation.DELETE, None),
        (Operation.INSERT, "new"),
        (Operation.UPDATE, "newer"),
    ]
    assert [e.version for e in captured(engine)][-1] == {"local": 4}


def test_node_names_are_checked(engine):
    replicator.migrate(engine)
    with pytest.raises(replicator.ConfigurationError, match="node name"):
        replicator.capture(engine, node='bad"name')


def test_bulk_statements_see_pending_objects_as_the_statement_does(app, engine):
    """SQLAlchemy autoflushes before a bulk statement; capture must read after that."""
    with app.begin() as session:
        session.add_all([Tag(code="a", label="x"), Tag(code="b", label="x")])
        session.execute(update(Tag).where(Tag.label == "x").values(label="y"))
        session.add(Tag(code="c", label="z"))
        session.execute(delete(Tag).where(Tag.code == "c"))
    events = [(e.op, e.key["code"], e.row and e.row["label"]) for e in captured(engine)]
    assert sorted(events[:2]) == [(Operation.INSERT, "a", "x"), (Operation.INSERT, "b", "x")]
    assert sorted(events[2:4]) == [(Operation.UPDATE, "a", "y"), (Operation.UPDATE, "b", "y")]
    assert events[4:] == [(Operation.INSERT, "c", "z"), (Operation.DELETE, "c", None)]


def test_scoped_sessions_and_sessions_bound_to_a_connection_are_captured(engine):
    from sqlalchemy.orm import Session, scoped_session

    replicator.migrate(engine)
    Base.metadata.create_all(engine)
    scoped = scoped_session(sessionmaker(bind=engine))
    handle = replicator.capture(scoped, node="local")
    try:
        scoped.add(Tag(code="scoped"))
        scoped.commit()
        scoped.remove()
        with engine.connect() as conn, Session(bind=conn) as session:
            session.add(Tag(code="on-a-connection"))
            session.commit()
            conn.commit()
    finally:
        handle.stop()
    assert [e.key["code"] for e in captured(engine)] == ["scoped", "on-a-connection"]


def test_outbox_head_is_zero_when_empty_then_the_last_position(app, engine):
    with engine.connect() as conn:
        assert outbox.head(conn) == 0
    with app.begin() as session:
        session.add_all([Tag(code="a"), Tag(code="b")])
    with engine.connect() as conn:
        positions = [position for position, _ in outbox.read(conn)]
        assert outbox.head(conn) == positions[-1] and len(positions) == 2
