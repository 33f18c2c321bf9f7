"""What a captured flush sends to the database, and the statements capture
keeps between flushes (built once, reused for the same table and node)."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

import replicator
from replicator import outbox
from replicator.dialects import for_connection
from replicator.events import ChangeEvent, Operation
from replicator.tables import row_versions

from .models import Base, Membership, Tag


def captured(engine: Engine) -> list[ChangeEvent]:
    with engine.connect() as conn:
        return [event for _, event in outbox.read(conn)]


def stored_versions(engine: Engine) -> dict[tuple[str, str], tuple[dict, bool]]:
    c = row_versions.c
    with engine.connect() as conn:
        rows = conn.execute(sa.select(c.table_name, c.row_key, c.version, c.deleted)).all()
    return {(t, key): (json.loads(version), bool(deleted)) for t, key, version, deleted in rows}


def test_a_one_row_edit_adds_one_version_and_one_outbox_statement(app, engine):
    with app.begin() as session:
        session.add(Tag(code="t", label="a"))
    statements: list[str] = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    with app() as session:
        tag = session.get(Tag, "t")
        tag.label = "b"
        sa.event.listen(engine, "before_cursor_execute", seen)
        try:
            session.commit()
        finally:
            sa.event.remove(engine, "before_cursor_execute", seen)

    dialect = for_connection(engine)
    expected = 2  # the version upsert and the outbox insert
    if not dialect.advances_versions_in_sql:
        expected += 1  # the read of the row's version
    if dialect.concurrent_writers:
        expected += 1  # joining the outbox writers (see dialects/mariadb.py)
    ours = [s for s in statements if "replicator_" in s]
    assert len(ours) == expected, f"expected {expected} statements of capture, saw {ours}"
    assert len(statements) == expected + 1, f"expected the app's UPDATE besides, saw {statements}"
    assert [(e.op, e.version) for e in captured(engine)][-1] == (Operation.UPDATE, {"local": 2})


def test_flushes_alternating_tables_and_operations_get_their_own_versions(app, engine):
    with app.begin() as session:
        session.add(Tag(code="a", label="1"))
        session.add(Membership(user_id="u", group_id=1, role="r"))
    with app.begin() as session:  # one flush: the update first, then the delete
        tag, membership = session.get(Tag, "a"), session.get(Membership, ("u", 1))
        session.delete(tag)
        membership.role = "s"
    assert stored_versions(engine)[("tags", '["a"]')] == ({"local": 2}, True)
    with app.begin() as session:
        session.add(Tag(code="a", label="2"))
    with app.begin() as session:
        session.delete(session.get(Membership, ("u", 1)))

    events = [(e.table, e.op, e.version) for e in captured(engine)]
    assert events == [
        ("tags", Operation.INSERT, {"local": 1}),
        ("memberships", Operation.INSERT, {"local": 1}),
        ("memberships", Operation.UPDATE, {"local": 2}),
        ("tags", Operation.DELETE, {"local": 2}),
        ("tags", Operation.INSERT, {"local": 3}),
        ("memberships", Operation.DELETE, {"local": 3}),
    ]
    assert stored_versions(engine) == {
        ("tags", '["a"]'): ({"local": 3}, False),
        ("memberships", '["u",1]'): ({"local": 3}, True),
    }


def test_a_key_change_versions_the_old_key_as_deleted_and_the_new_one_as_new(app, engine):
    with app.begin() as session:
        session.add_all([Tag(code="a", label="1"), Tag(code="z", label="2")])
    with app.begin() as session:
        session.get(Tag, "a").code = "b"  # a delete and an insert, in one version round
        session.get(Tag, "z").label = "3"

    events = [(e.op, e.key, e.version) for e in captured(engine)[2:]]
    assert sorted(events, key=repr) == sorted(
        [
            (Operation.DELETE, {"code": "a"}, {"local": 2}),
            (Operation.INSERT, {"code": "b"}, {"local": 1}),
            (Operation.UPDATE, {"code": "z"}, {"local": 2}),
        ],
        key=repr,
    )
    assert stored_versions(engine) == {
        ("tags", '["a"]'): ({"local": 2}, True),
        ("tags", '["b"]'): ({"local": 1}, False),
        ("tags", '["z"]'): ({"local": 2}, False),
    }


def test_two_captured_databases_keep_their_own_node_in_statements_built_once(tmp_path: Path):
    factories, engines, handles = [], [], []
    for name in ("phone", "tablet"):
        engine = sa.create_engine(f"sqlite:///{tmp_path / f'{name}.sqlite'}")
        replicator.migrate(engine)
        Base.metadata.create_all(engine)
        factory = sessionmaker(bind=engine)
        handles.append(replicator.capture(factory, node=name))
        factories.append(factory)
        engines.append(engine)
    try:
        for round_ in range(3):  # alternating, so each reuses what it built first
            for factory in factories:
                with factory.begin() as session:
                    tag = session.get(Tag, "t") or Tag(code="t")
                    tag.label = str(round_)
                    session.add(tag)
        for name, engine in zip(("phone", "tablet"), engines, strict=True):
            events = captured(engine)
            assert [(e.origin, e.version) for e in events] == [
                (name, {name: 1}),
                (name, {name: 2}),
                (name, {name: 3}),
            ]
            assert stored_versions(engine) == {("tags", '["t"]'): ({name: 3}, False)}
    finally:
        for handle, engine in zip(handles, engines, strict=True):
            handle.stop()
            engine.dispose()
