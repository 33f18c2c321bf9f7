"""How fast does a replay rebuild a fresh node from the log, and in how much memory?

* **Log**: a SQLite server node whose outbox holds ``--events`` change events
  (default 1,000,000, and 250,000 to show memory stays flat) for one
  4-column table (``readings``: text key, user, integer, text): 70% inserts,
  30% updates of earlier rows, appended 1,000 per transaction through
  ``replicator.outbox.append`` (the log is the input, so it is written
  directly, not through the ORM).
* **Replay**: ``replicator.replay.replay(log, node, start=1)`` onto a fresh
  DuckDB and a fresh SQLite node (replicator tables and an empty
  ``readings`` table), batch size 1,000, each in a child process so that its
  peak RSS (``VmHWM``) is its own. events/s = events / wall seconds.
  Afterwards the node's table must equal the log's final rows.
* **Raw rate**: the same row images (the row after every event, in log
  order) loaded into a fresh ``readings`` table on the same kind of
  database, 1,000 per batch, with its fastest bulk path: on SQLite the
  faster of ``executemany`` of a one-row ``INSERT ... ON CONFLICT DO
  UPDATE`` and one multi-row ``VALUES`` upsert per batch (both run; the
  second is about twice as fast); on DuckDB one columnar ``INSERT ... SELECT
  unnest(?) ... ON CONFLICT DO UPDATE`` per batch (compacted to the last
  image per key); a commit every 10 batches.

Targets: at least 0.5 of the raw rate; peak RSS under 250 MB, flat from
250k to 1M events.

Run from the repository root::

    .venv/bin/python benchmarks/replay.py [--events 1000000] [--small 250000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from child import in_child

import replicator
from replicator import outbox
from replicator.dialects import for_connection
from replicator.events import ChangeEvent, Operation, new_id, row_key
from replicator.node import Node

BATCH = 1000
UPDATE_SHARE = 0.3
TARGET_RATIO = 0.5
RSS_LIMIT_MB = 250
RAW_COMMIT_EVERY = 10
SEED = 7

metadata = sa.MetaData()
readings = sa.Table(
    "readings",
    metadata,
    sa.Column("reading_id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(36), nullable=False),
    sa.Column("value", sa.Integer, nullable=False),
    sa.Column("note", sa.String(100), nullable=False),
)
COLUMNS = [c.name for c in readings.columns]


def make_log(path: Path, events: int) -> dict[str, tuple]:
    """Write the log; return the final row per key."""
    engine = sa.create_engine(f"sqlite:///{path}")
    replicator.migrate(engine)
    metadata.create_all(engine)
    rng = random.Random(SEED)
    final: dict[str, tuple] = {}
    versions: dict[str, int] = {}
    keys: list[str] = []
    hlc = 1 << 40
    with engine.connect() as conn:
        dialect = for_connection(conn)
        for start in range(0, events, BATCH):
            txid = new_id()
            batch = []
            for i in range(start, min(start + BATCH, events)):
                hlc += 1
                if keys and rng.random() < UPDATE_SHARE:
                    key = rng.choice(keys)
                    old = final[key]
                    row = {**dict(zip(COLUMNS, old, strict=True)), "value": i}
                    op, changed = Operation.UPDATE, {"value": old[2]}
                else:
                    key = f"r-{i:08d}"
                    keys.append(key)
                    row = {"reading_id": key, "user_id": f"u-{i % 97}", "value": i, "note": f"n{i}"}
                    op, changed = Operation.INSERT, {}
                versions[key] = versions.get(key, 0) + 1
                final[key] = tuple(row.values())
                event = ChangeEvent(
                    event_id=new_id(),
                    origin="server",
                    table="readings",
                    key={"reading_id": key},
                    op=op,
                    row=row,
                    changed=changed,
                    version={"server": versions[key]},
                    hlc=hlc,
                    txid=txid,
                )
                batch.append((row_key([key]), event))
            with conn.begin():
                outbox.append(conn, dialect, batch)
    engine.dispose()
    return final


def fresh_node(url: str) -> None:
    engine = sa.create_engine(url)
    replicator.migrate(engine)
    metadata.create_all(engine)
    engine.dispose()


def child_replay(log_path: str, url: str, queue: multiprocessing.Queue) -> None:
    from replicator.replay import replay

    log = Node("server", url=f"sqlite:///{log_path}", role="server")
    node = Node("device", url=url, role="local")
    clock = time.perf_counter()
    result = replay(log, node, start=1, batch_size=BATCH)
    seconds = time.perf_counter() - clock
    # The peak of the replay itself, before the check below reads the table.
    rss = peak_rss_mb()
    with node.connect() as conn:
        rows = {r[0]: tuple(r) for r in conn.execute(sa.select(readings))}
    node.dispose()
    log.dispose()
    queue.put((result.read, seconds, rss, rows))


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM). Not ``ru_maxrss``:
    Linux carries that over from the parent at fork, whose RSS grows with
    the log this script keeps in memory."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_raw(log_path: str, url: str, method: str, queue: multiprocessing.Queue) -> None:
    """Load the row images with one of the database's bulk upserts: on SQLite
    ``executemany`` of a one-row statement, or (``method="values"``) one
    multi-row ``VALUES`` statement per batch, which SQLite takes about twice
    as fast; on DuckDB the columnar statement."""
    log = sa.create_engine(f"sqlite:///{log_path}")
    with log.connect() as conn:
        images = [tuple(e.row.values()) for _, e in outbox.read(conn)]
    log.dispose()
    engine = sa.create_engine(url)
    backend = engine.dialect.name
    upsert = (
        "ON CONFLICT (reading_id) DO UPDATE SET user_id = excluded.user_id, "
        "value = excluded.value, note = excluded.note"
    )
    clock = time.perf_counter()
    # One transaction per 10 batches, as a replay commits per batch at most
    # that often (DuckDB 2.0 fails one huge upsert transaction with an
    # internal "corrupted string segment" error).
    for first in range(0, len(images), BATCH * RAW_COMMIT_EVERY):
        with engine.begin() as conn:
            raw = conn.connection.driver_connection
            cursor = raw if backend == "duckdb" else raw.cursor()
            for start in range(first, min(first + BATCH * RAW_COMMIT_EVERY, len(images)), BATCH):
                part = images[start : start + BATCH]
                if backend == "duckdb":
                    last = {row[0]: row for row in part}
                    cursor.execute(
                        "INSERT INTO readings SELECT unnest(?), unnest(?), unnest(?), unnest(?) "
                        + upsert,
                        [list(c) for c in zip(*last.values(), strict=True)],
                    )
                elif method == "values":
                    cursor.execute(
                        "INSERT INTO readings VALUES "
                        + ", ".join(["(?, ?, ?, ?)"] * len(part))
                        + " "
                        + upsert,
                        [v for row in part for v in row],
                    )
                else:
                    cursor.executemany("INSERT INTO readings VALUES (?, ?, ?, ?) " + upsert, part)
    seconds = time.perf_counter() - clock
    engine.dispose()
    queue.put((len(images), seconds, 0.0, {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=250_000, help="the smaller log, for RSS")
    args = parser.parse_args(argv)
    lines = []
    with tempfile.TemporaryDirectory(prefix="replicator-replay-") as tmp:
        for events in (args.small, args.events):
            log_path = Path(tmp) / f"log-{events}.sqlite"
            print(f"# writing a log of {events} events", file=sys.stderr)
            final = make_log(log_path, events)
            for backend in ("duckdb", "sqlite"):
                methods = ["columnar"] if backend == "duckdb" else ["executemany", "values"]
                urls = [
                    f"{backend}:///{Path(tmp) / f'{kind}-{events}.{backend}'}"
                    for kind in ("replay", *methods)
                ]
                for url in urls:
                    fresh_node(url)
                print(f"# replaying {events} events into {backend}", file=sys.stderr)
                read, seconds, rss, rows = in_child(child_replay, str(log_path), urls[0])
                if read != events or rows != final:
                    raise SystemExit(f"{backend}: the replayed table differs from the log")
                raw: dict[str, float] = {}
                for method, url in zip(methods, urls[1:], strict=True):
                    loaded, raw_seconds, _, _ = in_child(child_raw, str(log_path), url, method)
                    raw[method] = loaded / raw_seconds
                best = max(raw, key=raw.__getitem__)
                rate, raw_rate = events / seconds, raw[best]
                lines.append((backend, events, seconds, rate, raw_rate, best, rss))
                print(
                    f"# {backend} {events}: {rate:,.0f} events/s, raw {raw_rate:,.0f} rows/s, "
                    f"peak RSS {rss:.0f} MB",
                    file=sys.stderr,
                )
    print("## Replay\n")
    print(
        f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}, "
        f"{platform.system()} {platform.machine()}.\n"
    )
    print(
        "| node | events | seconds | events/s | raw rows/s | raw method "
        f"| ratio (target >= {TARGET_RATIO}) | peak RSS MB (target < {RSS_LIMIT_MB}) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for backend, events, seconds, rate, raw_rate, method, rss in lines:
        print(
            f"| {backend} | {events:,} | {seconds:.1f} | {rate:,.0f} | {raw_rate:,.0f} "
            f"| {method} | {rate / raw_rate:.3f} | {rss:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
