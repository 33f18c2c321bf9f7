"""Capture of the less common ORM write patterns (found by review), on every backend."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy import bindparam, delete, insert, update

import replicator
from replicator import outbox
from replicator.events import Operation

from .models import Employee, Engineer, Kid, Manager, Parent, Person, Tag, Thing


def captured(engine):
    with engine.connect() as conn:
        return [event for _, event in outbox.read(conn)]


def summary(engine):
    return [(e.table, e.op.value, tuple(e.key.values())) for e in captured(engine)]


def test_delete_orphan_cascade_is_captured(app, engine):
    with app.begin() as session:
        session.add(Parent(id=1, kids=[Kid(id=10), Kid(id=11)]))
    with app.begin() as session:
        parent = session.get(Parent, 1)
        parent.kids.remove(next(k for k in parent.kids if k.id == 10))
    assert summary(engine)[-1] == ("kids", "delete", (10,))


@pytest.mark.backends("sqlite", "mariadb")  # DuckDB cannot delete a parent and child together
def test_events_follow_foreign_key_order(app, engine):
    with app.begin() as session:
        session.add(Kid(id=1, parent=Parent(id=1)))
    with app.begin() as session:
        session.delete(session.get(Parent, 1))  # cascades to the kid
    assert summary(engine) == [
        ("parents", "insert", (1,)),
        ("kids", "insert", (1,)),
        ("kids", "delete", (1,)),
        ("parents", "delete", (1,)),
    ]


def test_legacy_bulk_mappings_are_captured_and_bulk_save_objects_refused(app, engine):
    with app.begin() as session:
        session.bulk_insert_mappings(Tag, [{"code": "a"}, {"code": "b", "label": "x"}])
    with app.begin() as session:
        session.bulk_update_mappings(Tag, [{"code": "a", "label": "y"}])
    with app() as session, pytest.raises(replicator.CaptureError, match="bulk_save_objects"):
        session.bulk_save_objects([Tag(code="c")])
    assert summary(engine) == [
        ("tags", "insert", ("a",)),
        ("tags", "insert", ("b",)),
        ("tags", "update", ("a",)),
    ]


def test_an_update_statement_changing_a_key_is_refused_before_it_runs(app, engine):
    with app.begin() as session:
        session.add(Tag(code="p"))
    with app() as session:
        with pytest.raises(replicator.CaptureError, match="primary key"):
            session.execute(update(Tag).where(Tag.code == "p").values(code="q"))
        session.commit()  # even if the caller goes on: nothing was changed
    with engine.connect() as conn:
        assert conn.execute(sa.select(Tag.code)).scalars().all() == ["p"]
    assert summary(engine) == [("tags", "insert", ("p",))]


def test_bulk_delete_of_a_subclass_records_only_the_rows_deleted(app, engine):
    with app.begin() as session:
        session.add_all([Employee(id=1, name="a"), Manager(id=2, name="b")])
    with app.begin() as session:
        session.execute(delete(Manager))
    assert summary(engine) == [
        ("employees", "insert", (1,)),
        ("employees", "insert", (2,)),
        ("employees", "delete", (2,)),
    ]


def test_bulk_statements_with_bound_parameters(app, engine):
    with app.begin() as session:
        session.add_all([Tag(code="a"), Tag(code="b")])
    with app.begin() as session:
        session.execute(update(Tag).where(Tag.code == bindparam("c")).values(label="z"), {"c": "b"})
    assert summary(engine)[2:] == [("tags", "update", ("b",))]


def test_columns_named_unlike_their_attributes_and_onupdate_columns(app, engine):
    with app.begin() as session:
        session.execute(insert(Thing), [{"tid": 1, "label": "a"}])
        session.add(Thing(tid=2, label="b"))
    with app.begin() as session:
        session.get(Thing, 2).label = "c"
        session.execute(update(Thing).where(Thing.tid == 1).values(label="d"))
    events = captured(engine)
    assert [e.row for e in events[:2]] == [
        {"thing id": 1, "label": "a", "touched": 0},
        {"thing id": 2, "label": "b", "touched": 0},
    ]
    unit_of_work, statement = events[2:]
    assert unit_of_work.row == {"thing id": 2, "label": "c", "touched": 99}
    assert unit_of_work.changed.keys() == {"label", "touched"}
    assert statement.changed == {"label": "a", "touched": 0}


def test_setting_an_expired_attribute_to_its_value_gives_no_event(app, engine):
    with app.begin() as session:
        session.add(Tag(code="t", label="same"))
    with app() as session:
        tag = session.get(Tag, "t")
        session.commit()  # expires tag
        tag.label = "same"
        session.commit()
        tag.label = "other"
        session.commit()
    assert [(e.op, e.changed) for e in captured(engine)] == [
        (Operation.INSERT, {}),
        (Operation.UPDATE, {"label": "same"}),
    ]


def test_orm_upsert_of_an_existing_row_is_an_update(app, engine):
    with app.begin() as session:
        session.add(Tag(code="u", label="old"))
    name = engine.dialect.name
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    elif name == "duckdb":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.mysql import insert as upsert
    statement = upsert(Tag)
    if name == "mysql":
        statement = statement.on_duplicate_key_update(label=statement.inserted.label)
    else:
        statement = statement.on_conflict_do_update(
            index_elements=[Tag.code], set_={"label": statement.excluded.label}
        )
    with app.begin() as session:
        session.execute(statement, [{"code": "u", "label": "new"}, {"code": "v", "label": "v"}])
    events = captured(engine)[1:]
    assert sorted((e.op.value, e.key["code"], e.changed.get("label")) for e in events) == [
        ("insert", "v", None),
        ("update", "u", "old"),
    ]


def test_bulk_statements_on_joined_inheritance_are_refused_before_they_run(app, engine):
    with app.begin() as session:
        session.add(Engineer(id=1, name="a", language="py"))
    with app() as session, pytest.raises(replicator.CaptureError, match="several tables"):
        session.execute(insert(Engineer), [{"id": 2, "name": "b", "language": "c"}])
    assert summary(engine) == [("persons", "insert", (1,)), ("engineers", "insert", (1,))]
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(Person)).scalar() == 1


def test_bulk_insert_result_counts_rows(app, engine):
    with app.begin() as session:
        result = session.execute(insert(Tag), [{"code": "a"}, {"code": "b"}])
        assert result.rowcount == 2


def test_events_carry_values_as_stored_and_one_key_per_row(app, engine):
    from decimal import Decimal

    from .models import Price

    moment = dt.datetime(2026, 1, 2, 3, 4, 5, 654321)
    with app() as session:
        price = Price(amount=Decimal("1.5"), label="a", priced_at=moment)
        session.add(price)
        session.commit()
        price.label = "b"  # the session still holds Decimal("1.5") here
        session.commit()
        session.delete(price)
        session.commit()
    with engine.connect() as conn:
        # What the database made of the values, read back the way the app would.
        conn.execute(
            sa.insert(Price.__table__).values(amount=Decimal("1.5"), label="x", priced_at=moment)
        )
        stored_amount, stored_at = conn.execute(sa.select(Price.amount, Price.priced_at)).one()
    events = captured(engine)
    assert [e.key for e in events] == [{"amount": stored_amount}] * 3
    assert [e.version for e in events] == [{"local": 1}, {"local": 2}, {"local": 3}]
    assert events[0].row == {"amount": stored_amount, "label": "a", "priced_at": stored_at}
