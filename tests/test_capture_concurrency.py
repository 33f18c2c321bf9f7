"""Capture under concurrent writers on the server (MariaDB, InnoDB row locks)."""

from __future__ import annotations

import itertools
import threading
import uuid
from collections import Counter, defaultdict

import pytest
import sqlalchemy as sa

from replicator import outbox
from replicator.versions import Order, compare

from .models import Tag

pytestmark = pytest.mark.backends("mariadb")


@pytest.fixture
def node() -> str:
    return "server"


def test_eight_concurrent_writers_neither_deadlock_nor_lose_versions(app, engine):
    shared = [f"shared-{i}" for i in range(12)]
    with app.begin() as session:
        session.add_all([Tag(code=code, label="0") for code in shared])
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(25):
                with app.begin() as session:
                    # New rows (gaps in the version table's index) and updates
                    # of rows other writers update too, locked in one global
                    # order so the app itself cannot deadlock.
                    session.add_all([Tag(code=uuid.uuid4().hex) for _ in range(10)])
                    session.flush()
                    for code in sorted({shared[(n + i) % 12], shared[(n * 5 + i + 1) % 12]}):
                        session.get(Tag, code).label = f"{n}-{i}"
                        session.flush()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [], f"writers failed (deadlocks?): {errors[:3]}"

    with engine.connect() as conn:
        events = [event for _, event in outbox.read(conn)]
    updates = sum(len({(n + i) % 12, (n * 5 + i + 1) % 12}) for n in range(8) for i in range(25))
    assert Counter(e.op.value for e in events) == {"insert": 12 + 8 * 25 * 10, "update": updates}
    by_row = defaultdict(list)
    for event in events:
        by_row[event.table, tuple(event.key.values())].append(event)
    for history in by_row.values():
        history.sort(key=lambda e: e.version["server"])
        counters = [e.version["server"] for e in history]
        assert counters == list(range(1, len(history) + 1)), "each change descends from the last"
        for earlier, later in itertools.pairwise(history):
            assert compare(later.version, earlier.version) is Order.AFTER
            assert later.hlc > earlier.hlc


def test_a_stale_snapshot_does_not_give_a_stale_version(app, engine):
    with app.begin() as session:
        session.add(Tag(code="t", label="1"))
    first = app()
    first.begin()
    first.execute(sa.select(sa.func.count()).select_from(Tag))  # snapshot taken here
    with app.begin() as second:
        second.get(Tag, "t").label = "2"  # commits after the snapshot
    first.execute(sa.update(Tag).where(Tag.code == "t").values(label="3"))
    first.commit()
    first.close()
    with engine.connect() as conn:
        versions = [event.version for _, event in outbox.read(conn)]
    assert versions == [{"server": 1}, {"server": 2}, {"server": 3}]
