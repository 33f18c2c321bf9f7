"""Property: replaying the captured events reproduces the table, whatever the app did.

Random transactions of unit-of-work and bulk writes, each committed or rolled
back, then: applying the outbox's events in order to an empty table gives
exactly the table's contents (one event per row change, none for rolled-back
or no-op changes, after-images complete), every insert is of a row not there
yet and every update or delete of one that is, and each row's versions count
up one by one.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from replicator import outbox
from replicator.events import Operation
from replicator.tables import outbox as outbox_table
from replicator.tables import row_versions

from .models import Tag

pytestmark = pytest.mark.backends("sqlite", "duckdb", "mariadb")

codes = st.sampled_from([f"k{i}" for i in range(8)])
labels = st.sampled_from(["a", "b", "c", None])
operation = st.one_of(
    st.tuples(st.just("put"), codes, labels),  # add, or modify if present
    st.tuples(st.just("delete"), codes),
    st.tuples(st.just("bulk_insert"), st.lists(codes, max_size=3, unique=True)),
    st.tuples(st.just("bulk_relabel"), labels, labels),
    st.tuples(st.just("bulk_delete"), st.lists(codes, max_size=3, unique=True)),
)
transactions = st.lists(
    st.tuples(st.lists(operation, min_size=1, max_size=5), st.booleans()),  # (ops, commit?)
    min_size=1,
    max_size=6,
)


def run(session: Session, op: tuple) -> None:
    kind = op[0]
    if kind == "put":
        tag = session.get(Tag, op[1])
        if tag is None:
            session.add(Tag(code=op[1], label=op[2]))
        else:
            tag.label = op[2]
    elif kind == "delete":
        tag = session.get(Tag, op[1])
        if tag is not None:
            session.delete(tag)
    elif kind == "bulk_insert":
        session.flush()
        present = set(session.scalars(sa.select(Tag.code)))
        new = [{"code": c, "label": "bulk"} for c in op[1] if c not in present]
        if new:
            session.execute(sa.insert(Tag), new)
    elif kind == "bulk_relabel":
        session.execute(
            sa.update(Tag)
            .where(Tag.label.is_(None) if op[1] is None else Tag.label == op[1])
            .values(label=op[2])
        )
    elif kind == "bulk_delete":
        session.execute(sa.delete(Tag).where(Tag.code.in_(op[1])))


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=transactions)
def test_replaying_the_outbox_reproduces_the_table(app, engine, history):
    with engine.begin() as conn:  # a fresh start for every example (Core: not captured)
        for table in (Tag.__table__, outbox_table, row_versions):
            conn.execute(table.delete())
    for ops, commit in history:
        with app() as session:
            for op in ops:
                run(session, op)
            if commit:
                session.commit()
            else:
                session.rollback()

    with engine.connect() as conn:
        events = [event for _, event in outbox.read(conn)]
        stored = {r.code: r.label for r in conn.execute(sa.select(Tag.code, Tag.label))}

    replayed: dict[str, str | None] = {}
    versions: dict[str, int] = {}
    for event in events:
        code = event.key["code"]
        if event.op is Operation.INSERT:
            assert code not in replayed, f"insert of a row that is there: {event}"
        else:
            assert code in replayed, f"{event.op} of a row that is not there: {event}"
        if event.op is Operation.DELETE:
            del replayed[code]
        else:
            assert event.row is not None
            replayed[code] = event.row["label"]
        assert event.version == {"local": versions.get(code, 0) + 1}
        versions[code] = event.version["local"]
    assert replayed == stored
