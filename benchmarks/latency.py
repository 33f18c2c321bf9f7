"""How long does a write take to reach the other node with the service running?

* **Nodes**: a SQLite phone (the app's) and a server: MariaDB when
  ``REPLICATOR_TEST_MARIADB_URL`` is set (a fresh database on it), else a
  SQLite file. Both migrated, with the reference app's tables.
* **Service**: ``replicator run`` in a child process, as an operator runs
  it (default timing: heads polled every 0.05 s after activity, at most
  0.25 s apart when idle).
* **App**: writes ``--rate`` vocabulary rows per second (default 200), one
  ORM transaction each, for ``--seconds`` (default 60), on the phone; each
  row carries its commit time.
* **Observer**: polls the server every 5 ms for new rows; a row's lag is
  the time it was first seen there minus its commit time (so the figures
  include up to 5 ms of polling).

Prints p50, p99 and max lag, against the target: p99 under 1 s.

Run from the repository root::

    .venv/bin/python benchmarks/latency.py [--seconds 60] [--rate 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

import replicator
from replicator.resources import load_example
from replicator.stats import percentile

app = load_example("learning_app")
LIMIT = 1.0
REPLICATOR = str(Path(sys.executable).with_name("replicator"))


def server_url(tmp: Path) -> tuple[str, str, object]:
    """The server's URL, what it is, and how to drop it afterwards."""
    base = os.environ.get("REPLICATOR_TEST_MARIADB_URL")
    if not base:
        return f"sqlite:///{tmp / 'server.sqlite'}", "sqlite", lambda: None
    url = sa.engine.make_url(base)
    name = f"replicator_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")

    def drop() -> None:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")

    return url.set(database=name).render_as_string(hide_password=False), "mariadb", drop


def prepare(url: str, node: str):
    engine = sa.create_engine(url)
    replicator.migrate(engine)
    app.Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine)
    replicator.capture(sessions, node=node)
    return engine, sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="replicator-latency-") as tmp:
        tmp_path = Path(tmp)
        url, kind, drop = server_url(tmp_path)
        try:
            lags = measure(tmp_path, url, args.seconds, args.rate)
        finally:
            drop()
    lags.sort()
    p50, p99, worst = percentile(lags, 50), percentile(lags, 99), lags[-1]
    print(
        f"# latency: phone (sqlite) -> server ({kind}), {args.rate:g} rows/s for "
        f"{args.seconds:g} s, `replicator run` with its default timing; "
        f"{platform.python_version()}, {os.cpu_count()} cores"
    )
    print("| link | rows | p50 s | p99 s | max s | limit (p99) | p99/limit | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    verdict = "ok" if p99 < LIMIT else "OVER"
    print(
        f"| phone -> server ({kind}) | {len(lags)} | {p50:.3f} | {p99:.3f} | {worst:.3f} "
        f"| {LIMIT:.1f} | {p99 / LIMIT:.2f} | {verdict} |"
    )


def measure(tmp: Path, url: str, seconds: float, rate: float) -> list[float]:
    server_engine, _ = prepare(url, "server")
    phone_url = f"sqlite:///{tmp / 'phone.sqlite'}"
    _, phone_sessions = prepare(phone_url, "phone")
    config = tmp / "replicator.toml"
    config.write_text(
        f'[nodes.server]\nurl = "{url}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{phone_url}"\nrole = "local"\n'
    )
    log = open(tmp / "service.log", "w")  # noqa: SIM115 (a pipe nobody reads would fill up)
    service = subprocess.Popen(
        [REPLICATOR, "run", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=log
    )
    items = app.VocabularyItem.__table__
    seen: dict[str, float] = {}
    written: dict[str, float] = {}
    done = threading.Event()

    def observe() -> None:
        last = ""
        with server_engine.connect() as conn:
            while not done.is_set() or len(seen) < len(written):
                rows = conn.execute(sa.select(items.c.item_id).where(items.c.item_id > last)).all()
                conn.rollback()  # a new snapshot for the next look
                now = time.time()
                for (item_id,) in rows:
                    seen.setdefault(item_id, now)
                    last = max(last, item_id)
                time.sleep(0.005)

    def write(n: int) -> None:
        item_id = f"lat-{n:08d}"
        with phone_sessions.begin() as session:
            session.add(
                app.VocabularyItem(item_id=item_id, user_id="u-1", word="w", translation="t")
            )
        written[item_id] = time.time()

    try:
        write(0)  # the service is up once this one arrives
        while "lat-00000000" not in _ids(server_engine):
            assert service.poll() is None, (tmp / "service.log").read_text()
            time.sleep(0.05)
        observer = threading.Thread(target=observe)
        observer.start()
        started = time.monotonic()
        n = 1
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate) + 1
            while n <= due:
                write(n)
                n += 1
            time.sleep(max(0.0, n / rate - (time.monotonic() - started)))
        done.set()
        observer.join(timeout=30)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
        log.close()
    passes = (tmp / "service.log").read_text().count(" pass ")
    print(f"# the service logged {passes} passes (the empty ones between intervals go unlogged)")
    written.pop("lat-00000000")
    missing = set(written) - set(seen)
    assert not missing, f"{len(missing)} rows never arrived"
    return [seen[i] - written[i] for i in written]


def _ids(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT item_id FROM vocabulary_items")).scalars())


if __name__ == "__main__":
    main()
