"""How fast does a bulk review decision settle a long queue, and in how much memory?

* **Queue**: a server node (MariaDB by default, ``--backend sqlite`` for a
  SQLite file) with ``--items`` parked conflicts (default 100,000) on one
  4-column table (``readings``: text key, user, integer, text): the
  server's row and its version (``server:2 phone:1``), and an open
  ``manual_review`` item with both sides (the server's row, and the
  phone's concurrent update, ``server:1 phone:2``, with its encoded event),
  the base row and the policy: what a sync parks for a row both sides
  edited. They are written directly (rows, versions, items in batches of
  1,000, untimed), not through 100,000 real conflicts; the library reads
  and decides them as any others. A second table, ``singles``, gets
  ``--singles`` such items (default 2,000) for the one-at-a-time peer.
* **Bulk**: ``ReviewQueue.resolve_matching(Filter(table="readings"),
  take="local")`` in a child process (so that its peak RSS, ``VmHWM``, is
  its own), first with ``dry_run=True`` (decides, checks and writes the
  rows, then rolls back), then for real. items/s = items / wall seconds.
  Afterwards every row must hold the phone's values and no item be open.
* **One at a time**: ``ReviewQueue.resolve(ref, take="local")`` per item
  of ``singles``, in a child process: the path bulk decisions took before.
* **Review list**: ``ReviewQueue.list(limit=50)`` (sweep on, as ``replicator
  review list`` calls it) and ``ReviewQueue.summary()`` in a child process
  over the ``--items`` parked items (before ``singles`` are parked and
  anything is decided): the first page and the counts a person looks at
  first. Seconds for both, against a limit of 1 second (ratio = seconds /
  1.0; target <= 1).
* **Raw rate**: the same number of rows written over the same table in the
  same run with the driver's fastest batched upsert, 1,000 rows per
  ``executemany`` of ``INSERT ... ON DUPLICATE KEY UPDATE`` (SQLite: ``ON
  CONFLICT DO UPDATE``), one transaction: the server's rows put back over
  the decided ones (every row changes).

Target: the bulk decision reaches at least 0.2 of the raw rate; its peak
RSS stays flat with the queue's length (bounded batches).

Run from the repository root::

    .venv/bin/python benchmarks/review.py [--items 100000] [--backend mariadb|sqlite] [--url URL]

MariaDB: ``--url`` (default: ``REPLICATOR_BENCH_MARIADB_URL`` or
``mysql+pymysql://root@127.0.0.1:3306/test``); the run creates a database
``replicator_bench_review_<hex>`` and drops it afterwards. The script exits
with status 1 when MariaDB is unreachable or a check fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import platform
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import bench_mariadb
import sqlalchemy as sa
from child import in_child

import replicator
from replicator import parking, versions
from replicator.clock import from_datetime
from replicator.conflicts import Side
from replicator.dialects import for_connection
from replicator.events import ChangeEvent, Operation, encode_event, new_id, row_key
from replicator.parking import Parking, Reason
from replicator.versions import RowVersion

BATCH = 1000
TARGET_RATIO = 0.2
PAGE = 50
LIST_LIMIT = 1.0  # seconds for the first page and the summary
DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
NOW = dt.datetime(2026, 11, 24, 9, 30, tzinfo=dt.UTC)

metadata = sa.MetaData()
TABLES = {
    name: sa.Table(
        name,
        metadata,
        sa.Column("reading_id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("value", sa.Integer, nullable=False),
        sa.Column("note", sa.String(100), nullable=False),
    )
    for name in ("readings", "singles")
}
COLUMNS = ("reading_id", "user_id", "value", "note")


def row(i: int, side: str) -> dict:
    """Row ``i`` as ``side`` holds it (``base``: before both edited it)."""
    return {
        "reading_id": f"r-{i:08d}",
        "user_id": f"u-{i % 97}",
        "value": i + {"base": 0, "server": 1, "phone": 2}[side],
        "note": f"{side} {i}",
    }


def park(url: str, table: str, count: int) -> None:
    """``count`` rows of ``table`` both sides edited, parked on the server."""
    engine = sa.create_engine(url)
    hlc = from_datetime(NOW - dt.timedelta(hours=1))
    server_version, phone_version = {"server": 2, "phone": 1}, {"server": 1, "phone": 2}
    with engine.connect() as conn:
        dialect = for_connection(conn)
        for start in range(0, count, BATCH):
            rows, stored, parkings = [], {}, []
            for i in range(start, min(start + BATCH, count)):
                base, server, phone = row(i, "base"), row(i, "server"), row(i, "phone")
                key = row_key([server["reading_id"]])
                rows.append(tuple(server.values()))
                stored[(table, key)] = RowVersion(server_version, hlc + 2, "server", False)
                event = ChangeEvent(
                    event_id=new_id(),
                    origin="phone",
                    table=table,
                    key={"reading_id": server["reading_id"]},
                    op=Operation.UPDATE,
                    row=phone,
                    changed={"value": base["value"], "note": base["note"]},
                    version=phone_version,
                    hlc=hlc + 1,
                    txid=new_id(),
                )
                parkings.append(
                    Parking(
                        table=table,
                        key=key,
                        reason=Reason.MANUAL_REVIEW,
                        detail="concurrent changes by server and phone; policy manual_review "
                        "leaves the decision to a person",
                        policy="manual_review",
                        base=base,
                        local=Side(
                            row=server, version=server_version, hlc=hlc + 2, origin="server"
                        ),
                        remote=Side(row=phone, version=phone_version, hlc=hlc + 1, origin="phone"),
                        events=[encode_event(event)],
                    )
                )
            with conn.begin():
                dialect.insert_rows(conn, TABLES[table], COLUMNS, rows)
                versions.store(conn, dialect, stored)
                parking.write(conn, parkings, {}, {}, NOW - dt.timedelta(minutes=30))
    engine.dispose()


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM; ``ru_maxrss`` elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_bulk(url: str, dry_run: bool, results: multiprocessing.Queue) -> None:
    from replicator.node import Node
    from replicator.review import Filter, ReviewQueue

    node = Node("server", url=url, role="server")
    queue = ReviewQueue([node], now=lambda: NOW)
    clock = time.perf_counter()
    result = queue.resolve_matching(
        Filter(table="readings"), take="local", by="bench", dry_run=dry_run
    )
    seconds = time.perf_counter() - clock
    node.dispose()
    results.put((result.decided_count, seconds, peak_rss_mb()))


def child_list(url: str, count: int, results: multiprocessing.Queue) -> None:
    from replicator.node import Node
    from replicator.review import ReviewQueue

    node = Node("server", url=url, role="server")
    queue = ReviewQueue([node], now=lambda: NOW)
    clock = time.perf_counter()
    listing = queue.list(limit=PAGE)
    summary = queue.summary()
    seconds = time.perf_counter() - clock
    node.dispose()
    if len(listing.items) != min(PAGE, count) or listing.total != count or summary.open != count:
        raise SystemExit(
            f"list: {len(listing.items)} items listed of {listing.total}, "
            f"{summary.open} open in the summary, for {count} parked"
        )
    results.put((len(listing.items), seconds, peak_rss_mb()))


def child_single(url: str, count: int, results: multiprocessing.Queue) -> None:
    from replicator.node import Node
    from replicator.review import ReviewQueue

    node = Node("server", url=url, role="server")
    with node.connect() as conn:
        ids = [item.id for item in parking.items(conn, status="open", table="singles")]
    queue = ReviewQueue([node], now=lambda: NOW)
    clock = time.perf_counter()
    for item_id in ids:
        queue.resolve(f"server:{item_id}", take="local", by="bench")
    seconds = time.perf_counter() - clock
    node.dispose()
    results.put((len(ids), seconds, peak_rss_mb()))


def raw_upsert(url: str, count: int) -> float:
    """Seconds to put the server's rows back over the decided ones with the
    driver's fastest batched upsert."""
    images = [tuple(row(i, "server").values()) for i in range(count)]
    engine = sa.create_engine(url)
    backend = engine.dialect.name
    marker = "?" if backend == "sqlite" else "%s"
    update = ", ".join(f"{c} = {{}}" for c in COLUMNS[1:])
    if backend == "sqlite":
        tail = "ON CONFLICT (reading_id) DO UPDATE SET " + update.format(
            *(f"excluded.{c}" for c in COLUMNS[1:])
        )
    else:
        tail = "ON DUPLICATE KEY UPDATE " + update.format(*(f"VALUES({c})" for c in COLUMNS[1:]))
    statement = f"INSERT INTO readings VALUES ({', '.join([marker] * 4)}) {tail}"
    clock = time.perf_counter()
    with engine.begin() as conn:
        cursor = conn.connection.driver_connection.cursor()
        for start in range(0, count, BATCH):
            cursor.executemany(statement, images[start : start + BATCH])
    seconds = time.perf_counter() - clock
    with engine.connect() as conn:
        notes = conn.exec_driver_sql("SELECT note FROM readings ORDER BY reading_id").scalars()
        if list(notes) != [image[3] for image in images]:
            raise SystemExit("raw: the table does not hold the rows written")
    engine.dispose()
    return seconds


def check_decided(url: str, count: int) -> None:
    """Every row holds the phone's values, no item is open, one event each."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        notes = list(
            conn.exec_driver_sql("SELECT note FROM readings ORDER BY reading_id").scalars()
        )
        still = conn.exec_driver_sql(
            "SELECT count(*) FROM replicator_review_items WHERE status = 'open' "
            "AND table_name = 'readings'"
        ).scalar_one()
        events = conn.exec_driver_sql(
            "SELECT count(*) FROM replicator_outbox WHERE table_name = 'readings'"
        ).scalar_one()
    engine.dispose()
    if notes != [f"phone {i}" for i in range(count)] or still or events != count:
        raise SystemExit(
            f"bulk: {still} items still open, {events} events for {count} items, "
            f"rows decided: {notes == [f'phone {i}' for i in range(count)]}"
        )


@contextmanager
def server_database(backend: str, url: str) -> Iterator[str]:
    """A fresh, empty server database's URL, removed afterwards."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory(prefix="replicator-review-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'server.sqlite'}"
        return
    server = sa.make_url(url)
    problem = bench_mariadb.unreachable(server)
    if problem:
        raise SystemExit(problem)
    with bench_mariadb.database(server, f"replicator_bench_review_{uuid.uuid4().hex[:12]}") as db:
        yield db


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--singles", type=int, default=2_000, help="decided one at a time")
    parser.add_argument("--backend", choices=("mariadb", "sqlite"), default="mariadb")
    parser.add_argument(
        "--url", default=os.environ.get("REPLICATOR_BENCH_MARIADB_URL", DEFAULT_URL)
    )
    args = parser.parse_args(argv)
    count = args.items
    with server_database(args.backend, args.url) as url:
        engine = sa.create_engine(url)
        replicator.migrate(engine)
        metadata.create_all(engine)
        engine.dispose()
        print(
            f"# parking {count:,} + {args.singles:,} conflicts on {args.backend}", file=sys.stderr
        )
        park(url, "readings", count)
        print(f"# review list, first page ({PAGE})", file=sys.stderr)
        _, list_seconds, list_rss = in_child(child_list, url, count)
        park(url, "singles", args.singles)
        runs = []
        for name, dry_run in (("resolve_matching, dry run", True), ("resolve_matching", False)):
            print(f"# {name}", file=sys.stderr)
            decided, seconds, rss = in_child(child_bulk, url, dry_run)
            if decided != count:
                raise SystemExit(f"{name}: decided {decided} of {count} items")
            runs.append((name, decided, seconds, rss))
        check_decided(url, count)
        print("# one at a time", file=sys.stderr)
        decided, seconds, rss = in_child(child_single, url, args.singles)
        runs.append(("resolve, one item at a time", decided, seconds, rss))
        print("# raw upsert", file=sys.stderr)
        raw_seconds = raw_upsert(url, count)
    raw_rate = count / raw_seconds
    print(f"## Bulk review decisions ({args.backend})\n")
    print(
        f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}, "
        f"{platform.system()} {platform.machine()}.\n"
    )
    print(
        f"| run | items | seconds | items/s | ratio to raw (target >= {TARGET_RATIO}) "
        "| peak RSS MB |"
    )
    print("|---|---|---|---|---|---|")
    print(f"| raw batched upsert | {count:,} | {raw_seconds:.1f} | {raw_rate:,.0f} | 1.000 | |")
    for name, decided, seconds, rss in runs:
        rate = decided / seconds
        print(
            f"| {name} | {decided:,} | {seconds:.1f} | {rate:,.0f} | {rate / raw_rate:.3f} "
            f"| {rss:.0f} |"
        )
    print(
        f"| review list, first page ({PAGE}) of the {count:,} items, and summary "
        f"(limit {LIST_LIMIT:g} s; ratio = seconds / {LIST_LIMIT:g}) | {count:,} "
        f"| {list_seconds:.2f} | | {list_seconds / LIST_LIMIT:.3f} | {list_rss:.0f} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
