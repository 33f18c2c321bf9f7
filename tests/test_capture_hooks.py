"""Where capture hooks into SQLAlchemy: nothing outside what it was given.

The legacy ``Session.bulk_*`` methods fire no event, so capture wraps them on
``Session`` (a session of the captured engine may come from any factory),
only while a capture lasts, and a session of another engine goes through the
wrappers to SQLAlchemy's own methods unchanged.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import replicator
from replicator import outbox

from .models import Base, Tag

LEGACY = ("bulk_insert_mappings", "bulk_update_mappings", "bulk_save_objects")
# Read at collection, before any test captures anything.
STOCK = {name: vars(Session)[name] for name in LEGACY}


def captured(engine):
    with engine.connect() as conn:
        return [(e.table, e.op.value, tuple(e.key.values())) for _, e in outbox.read(conn)]


def assert_stock(cls):
    for name in LEGACY:
        assert getattr(cls, name) is STOCK[name], f"{cls.__name__}.{name} is {getattr(cls, name)}"
        assert STOCK[name].__module__ == "sqlalchemy.orm.session", STOCK[name].__module__


def test_stock_methods_are_sqlalchemys_own():
    assert_stock(Session)


def test_a_session_capture_was_not_given_behaves_as_stock_sqlalchemy(app, engine, tmp_path):
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.sqlite'}")
    replicator.migrate(other)
    Base.metadata.create_all(other)
    try:
        assert all(vars(Session)[name].__module__ == "replicator.capture" for name in LEGACY)

        # A plain Session of another app in the process: stock behaviour,
        # bulk_save_objects() included, and nothing in its outbox.
        with Session(other) as session, session.begin():
            session.bulk_insert_mappings(Tag, [{"code": "a"}, {"code": "b"}])
            session.bulk_update_mappings(Tag, [{"code": "a", "label": "x"}])
            session.bulk_save_objects([Tag(code="c")])
        with other.connect() as conn:
            rows = conn.execute(sa.select(Tag.code, Tag.label).order_by(Tag.code)).all()
        assert [tuple(r) for r in rows] == [("a", "x"), ("b", None), ("c", None)]
        assert captured(other) == []

        # The captured factory's sessions are captured, and so is a session
        # of the captured engine that another factory made: no write of the
        # engine goes uncaptured.
        with app.begin() as session:
            session.bulk_insert_mappings(Tag, [{"code": "a"}])
        with Session(engine) as session, session.begin():
            session.bulk_insert_mappings(Tag, [{"code": "b"}])
        with Session(engine) as session, pytest.raises(replicator.CaptureError):
            session.bulk_save_objects([Tag(code="c")])
        assert captured(engine) == [("tags", "insert", ("a",)), ("tags", "insert", ("b",))]
    finally:
        other.dispose()


def test_stop_takes_the_wrappers_off(engine):
    replicator.migrate(engine)
    Base.metadata.create_all(engine)
    factory = sessionmaker(bind=engine)
    handle = replicator.capture(factory, node="local")
    assert Session.bulk_insert_mappings is not STOCK["bulk_insert_mappings"]
    handle.stop()
    assert not any(name in vars(factory.class_) for name in LEGACY)
    assert_stock(Session)
    assert_stock(factory.class_)


def test_a_capture_given_an_engine_wraps_session_until_it_stops(engine):
    replicator.migrate(engine)
    Base.metadata.create_all(engine)
    handle = replicator.capture(engine, node="local")
    try:
        assert Session.bulk_insert_mappings is not STOCK["bulk_insert_mappings"]
        with Session(engine) as session, session.begin():
            session.bulk_insert_mappings(Tag, [{"code": "a"}])
        with Session(engine) as session, pytest.raises(replicator.CaptureError):
            session.bulk_save_objects([Tag(code="b")])
    finally:
        handle.stop()
    assert_stock(Session)
    assert captured(engine) == [("tags", "insert", ("a",))]
    with Session(engine) as session, session.begin():
        session.bulk_insert_mappings(Tag, [{"code": "c"}])  # no longer captured
    assert captured(engine) == [("tags", "insert", ("a",))]


def test_a_factory_and_its_engine_share_one_capture_and_its_wrappers(engine):
    replicator.migrate(engine)
    Base.metadata.create_all(engine)
    factory = sessionmaker(bind=engine)
    handle = replicator.capture(factory, node="local")
    assert replicator.capture(engine, node="local") is handle
    assert Session.bulk_insert_mappings is not STOCK["bulk_insert_mappings"]
    handle.stop()
    assert_stock(Session)
    assert_stock(factory.class_)


def test_an_update_changing_a_key_is_refused_before_it_runs(app, engine):
    """Refused from the statement's SET clause, not after the fact by rolling
    back the transaction: the session's earlier work survives."""
    with app.begin() as session:
        session.add(Tag(code="p"))
    with app() as session:
        session.add(Tag(code="kept"))
        session.flush()
        with pytest.raises(replicator.CaptureError, match="primary key"):
            session.execute(update(Tag).where(Tag.code == "p").values({Tag.code: "q"}))
        with pytest.raises(replicator.CaptureError, match="primary key"):
            session.execute(update(Tag).where(Tag.code == "p").ordered_values(("code", "q")))
        session.commit()
    with engine.connect() as conn:
        assert sorted(conn.execute(sa.select(Tag.code)).scalars()) == ["kept", "p"]


@pytest.mark.backends("sqlite", "duckdb")  # MariaDB has no ON CONFLICT DO NOTHING
def test_an_insert_on_conflict_do_nothing_records_only_the_new_rows(app, engine):
    if engine.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as upsert
    else:
        from sqlalchemy.dialects.postgresql import insert as upsert
    with app.begin() as session:
        session.add(Tag(code="old", label="kept"))
    with app.begin() as session:
        session.execute(
            upsert(Tag).on_conflict_do_nothing(),
            [{"code": "old", "label": "ignored"}, {"code": "new", "label": "n"}],
        )
    assert captured(engine) == [("tags", "insert", ("old",)), ("tags", "insert", ("new",))]
    with pytest.raises(replicator.CaptureError, match="without primary keys"), app() as session:
        session.execute(upsert(Tag).on_conflict_do_nothing(), [{"label": "keyless"}])
