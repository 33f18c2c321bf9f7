"""How much does automatic capture slow down ordinary ORM writes?

Runs one ORM write workload twice per repetition on each backend:

* **baseline**: a fresh database, the benchmark table only, no capture;
* **with capture**: a fresh database, ``replicator.migrate(engine)`` and
  ``replicator.capture(sessionmaker, node="local")``, so every flush also
  appends change events to ``replicator_outbox`` in the same transaction.

The workload is plain unit-of-work usage of a 5-column model (client-side
UUID string key): insert every row with ``session.add_all``, then load and
modify two attributes of every row, then load and ``session.delete`` every
row, each phase committing in batches of 500. Each phase is timed with
``time.perf_counter``; setup (creating the database, migrating, calling
``capture()``) is not timed. Baseline and captured runs alternate, and the
tables report the median over the repetitions.

Each run happens in a fresh interpreter (``multiprocessing`` "spawn"), after
an untimed warm-up run of the same mode on a small throwaway database that
fills SQLAlchemy's statement caches. Capture's SQLAlchemy session hooks are
process-wide and stay installed once a ``capture()`` call installed them, so
a separate process keeps every baseline free of them.

Every captured run must leave exactly ``3 * rows`` events in the outbox (one
per insert, update and delete); otherwise the script exits with status 1, so
a passing run also proves that capture happened.

Run from the repository root::

    .venv/bin/python benchmarks/capture_overhead.py
    .venv/bin/python benchmarks/capture_overhead.py --rows 2000 --repeat 1
    .venv/bin/python benchmarks/capture_overhead.py --backends sqlite,duckdb --duckdb-repeat 1

MariaDB: the server named by ``REPLICATOR_TEST_MARIADB_URL`` (default
``mysql+pymysql://root@127.0.0.1:3306/test``); each run creates a database
``bench_<hex>`` and drops it afterwards. An unreachable server is reported
and skipped. DuckDB executes the ORM's per-row UPDATE and DELETE statements
at a few thousand rows per second, so its runs take much longer than the
others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import multiprocessing
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bench_mariadb
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import replicator

BACKENDS = ("sqlite", "duckdb", "mariadb")
PHASES = ("insert", "update", "delete")
BATCH = 500
LIMIT = 1.5
WARMUP_ROWS = 200
MARIADB_ENV = "REPLICATOR_TEST_MARIADB_URL"
MARIADB_DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


class Base(DeclarativeBase):
    pass


class BenchRow(Base):
    __tablename__ = "bench_rows"

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(36))
    title: Mapped[str] = mapped_column(sa.String(200))
    score: Mapped[int] = mapped_column(sa.Integer)
    updated: Mapped[dt.datetime] = mapped_column(sa.DateTime)


class IntBase(DeclarativeBase):
    pass


class BenchIntRow(IntBase):
    """The same row keyed as most apps key tables: an integer the database
    numbers (``--keys integer``), the business id in a unique column. With
    capture, the node is a local that takes keys from a leased block."""

    __tablename__ = "bench_int_rows"

    id: Mapped[int] = mapped_column(sa.Sequence("bench_int_rows_id_seq"), primary_key=True)
    uid: Mapped[str] = mapped_column(sa.String(36), unique=True)
    user_id: Mapped[str] = mapped_column(sa.String(36))
    title: Mapped[str] = mapped_column(sa.String(200))
    score: Mapped[int] = mapped_column(sa.Integer)
    updated: Mapped[dt.datetime] = mapped_column(sa.DateTime)


#: The model under test, by --keys: (class, its metadata, the attribute rows are found by).
MODELS = {
    "uuid": (BenchRow, Base.metadata, "id"),
    "integer": (BenchIntRow, IntBase.metadata, "uid"),
}


class BenchmarkError(Exception):
    """The benchmark could not prove what it measures (e.g. no events captured)."""


class BackendUnavailable(Exception):
    """A backend's server cannot be reached; the backend is skipped."""


# --- the workload -----------------------------------------------------------------


@dataclass(frozen=True)
class RowSpec:
    id: str
    user_id: str
    title: str
    score: int


def make_rows(count: int, seed: int = 42) -> list[RowSpec]:
    """The same ``count`` rows for every run: client-side UUID keys, a few users."""
    rng = random.Random(seed)

    def new_uuid() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    users = [new_uuid() for _ in range(max(1, count // 100))]
    return [
        RowSpec(new_uuid(), rng.choice(users), f"item {i}: {new_uuid()}", rng.randrange(1000))
        for i in range(count)
    ]


def batches(items: Sequence, size: int = BATCH) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def insert_phase(factory: sessionmaker, rows: list[RowSpec], keys: str) -> None:
    model, _, by = MODELS[keys]
    now = dt.datetime(2024, 1, 1, 12, 0, 0)
    with factory() as session:
        for batch in batches(rows):
            session.add_all(
                model(**{by: r.id}, user_id=r.user_id, title=r.title, score=r.score, updated=now)
                for r in batch
            )
            session.commit()


def load(session: Session, ids: Sequence[str], keys: str) -> list:
    model, _, by = MODELS[keys]
    return list(session.scalars(sa.select(model).where(getattr(model, by).in_(ids))))


def update_phase(factory: sessionmaker, ids: list[str], keys: str) -> None:
    now = dt.datetime(2024, 6, 1, 12, 0, 0)
    with factory() as session:
        for batch in batches(ids):
            for obj in load(session, batch, keys):
                obj.score += 1
                obj.updated = now
            session.commit()


def delete_phase(factory: sessionmaker, ids: list[str], keys: str) -> None:
    with factory() as session:
        for batch in batches(ids):
            for obj in load(session, batch, keys):
                session.delete(obj)
            session.commit()


def run_workload(factory: sessionmaker, rows: list[RowSpec], keys: str) -> dict[str, float]:
    """Insert, update and delete every row; seconds per phase (and ``total``)."""
    ids = [r.id for r in rows]
    phases = {
        "insert": lambda: insert_phase(factory, rows, keys),
        "update": lambda: update_phase(factory, ids, keys),
        "delete": lambda: delete_phase(factory, ids, keys),
    }
    timings: dict[str, float] = {}
    for name, phase in phases.items():
        start = time.perf_counter()
        phase()
        timings[name] = time.perf_counter() - start
    timings["total"] = sum(timings[p] for p in PHASES)
    return timings


# --- databases ----------------------------------------------------------------------


def mariadb_server_url() -> sa.URL:
    return make_url(os.environ.get(MARIADB_ENV, MARIADB_DEFAULT_URL))


def check_backend(backend: str) -> None:
    """Raise :class:`BackendUnavailable` when the backend cannot be used."""
    if backend != "mariadb":
        return
    problem = bench_mariadb.unreachable(mariadb_server_url())
    if problem is not None:
        raise BackendUnavailable(problem)


@contextmanager
def fresh_database(backend: str) -> Iterator[str]:
    """The URL of a new, empty database, removed again afterwards."""
    if backend in ("sqlite", "duckdb"):
        with tempfile.TemporaryDirectory(prefix="capture-bench-") as tmp:
            yield f"{backend}:///{Path(tmp) / f'bench.{backend}'}"
    elif backend == "mariadb":
        with bench_mariadb.database(mariadb_server_url(), f"bench_{uuid.uuid4().hex[:12]}") as url:
            yield url
    else:
        raise ValueError(f"unknown backend {backend!r}")


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


# --- one run ------------------------------------------------------------------------


def run_once(
    backend: str, rows: list[RowSpec], *, captured: bool, keys: str = "uuid"
) -> dict[str, float]:
    """One timed workload on a fresh database, with or without capture."""
    model, metadata, _ = MODELS[keys]
    with fresh_database(backend) as url:
        engine = sa.create_engine(url)
        try:
            metadata.create_all(engine)
            factory = sessionmaker(bind=engine)
            handle = None
            if captured:
                replicator.migrate(engine)
                if keys == "integer":  # a local holding a leased block (untimed setup)
                    from replicator import keys as leases

                    with engine.begin() as conn:
                        leases.mark(conn, "local")
                        leases.give(conn, model.__tablename__, 1_000_001, 1_000_000 + len(rows))
                handle = replicator.capture(factory, node="local")
            gc.collect()
            try:
                timings = run_workload(factory, rows, keys)
            finally:
                if handle is not None:
                    handle.stop()
            verify(engine, backend, len(rows), captured=captured, table=model.__tablename__)
            return timings
        finally:
            engine.dispose()


def verify(engine: Engine, backend: str, rows: int, *, captured: bool, table: str) -> None:
    """The workload deleted every row; a captured run logged one event per write."""
    left = count(engine, table)
    if left:
        raise BenchmarkError(f"{backend}: {left} rows left after the delete phase")
    if captured:
        events = count(engine, "replicator_outbox")
        if events != 3 * rows:
            raise BenchmarkError(
                f"{backend}: replicator_outbox holds {events} events after the captured run, "
                f"expected exactly {3 * rows} (3 x {rows} rows)"
            )


# --- a backend's measurements ---------------------------------------------------------


@dataclass
class Result:
    backend: str
    rows: int
    repeat: int
    baseline: list[dict[str, float]]
    captured: list[dict[str, float]]

    def median(self, mode: str, phase: str) -> float:
        runs = self.baseline if mode == "baseline" else self.captured
        return statistics.median(run[phase] for run in runs)

    def ratio(self, phase: str) -> float:
        return self.median("captured", phase) / self.median("baseline", phase)


def warm_then_run(backend: str, count: int, captured: bool, keys: str) -> dict[str, float]:
    """A warm-up run and the timed run, in the current (fresh) process."""
    rows = make_rows(count)
    run_once(backend, rows[:WARMUP_ROWS], captured=captured, keys=keys)
    return run_once(backend, rows, captured=captured, keys=keys)


def run_in_fresh_process(
    backend: str, count: int, *, captured: bool, keys: str = "uuid"
) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(warm_then_run, backend, count, captured, keys).result()


def measure(backend: str, count: int, repeat: int, keys: str = "uuid") -> Result:
    result = Result(backend, count, repeat, [], [])
    for i in range(1, repeat + 1):
        for captured, runs in ((False, result.baseline), (True, result.captured)):
            timings = run_in_fresh_process(backend, count, captured=captured, keys=keys)
            runs.append(timings)
            mode = "with capture" if captured else "baseline"
            progress(f"{backend} run {i}/{repeat} {mode}: {format_timings(timings)}")
    return result


# --- output ---------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def format_timings(timings: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}s" for k, v in timings.items())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_table(results: Sequence[Result]) -> str:
    rows = []
    for r in results:
        ratio = r.ratio("total")
        rows.append(
            [
                r.backend,
                str(r.rows),
                f"{r.median('baseline', 'total'):.3f}",
                f"{r.median('captured', 'total'):.3f}",
                f"{ratio:.2f}x",
                f"{LIMIT}x",
                "ok" if ratio <= LIMIT else "OVER",
            ]
        )
    header = ["backend", "rows", "baseline s", "with capture s", "ratio", "limit", "verdict"]
    return markdown_table(header, rows)


def phase_table(results: Sequence[Result]) -> str:
    rows = [
        [
            r.backend,
            phase,
            f"{r.median('baseline', phase):.3f}",
            f"{r.median('captured', phase):.3f}",
            f"{r.ratio(phase):.2f}x",
        ]
        for r in results
        for phase in PHASES
    ]
    return markdown_table(["backend", "phase", "baseline s", "with capture s", "ratio"], rows)


def report(results: Sequence[Result], skipped: dict[str, str], args: argparse.Namespace) -> str:
    lines = [
        "## Capture overhead",
        "",
        f"Workload: {args.rows} rows of a 5-column model ({args.keys} keys); insert "
        f"(add_all), update (2 attributes) and delete (session.delete) through the unit of work, "
        f"committed in batches of {BATCH}. Median of the repetitions per backend; "
        f"ratio = with capture / baseline.",
        f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}, "
        f"{platform.system()} {platform.machine()}.",
        "",
    ]
    if results:
        lines += [summary_table(results), "", "### Per phase", "", phase_table(results), ""]
    if results:
        repeats = ", ".join(f"{r.backend} {r.repeat}" for r in results)
        lines.append(f"Repetitions (baseline/captured pairs): {repeats}.")
        lines.append(
            f"Outbox check passed: every captured run logged exactly 3 x {args.rows} events."
        )
    if args.duckdb_repeat and "duckdb" in args.backends:
        lines.append(
            f"Note: DuckDB ran {args.duckdb_repeat} repetition(s) instead of {args.repeat} "
            "(--duckdb-repeat), to bound the run time."
        )
    lines += [f"Skipped {backend}: {why}" for backend, why in skipped.items()]
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows written (default 10000)")
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated, from {','.join(BACKENDS)} (default: all)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="baseline/captured pairs per backend (default 3)"
    )
    parser.add_argument(
        "--keys",
        choices=sorted(MODELS),
        default="uuid",
        help="uuid: client-side string keys (default); integer: keys the database "
        "numbers, with capture taken from a leased block",
    )
    parser.add_argument(
        "--duckdb-repeat",
        type=int,
        default=None,
        help="repetitions for DuckDB only (default: --repeat); its runs are slow",
    )
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        parser.error(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if args.rows < 1 or args.repeat < 1 or (args.duckdb_repeat or 1) < 1:
        parser.error("--rows, --repeat and --duckdb-repeat must be positive")
    return args


def repeat_for(backend: str, args: argparse.Namespace) -> int:
    if backend == "duckdb" and args.duckdb_repeat:
        return args.duckdb_repeat
    return args.repeat


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results: list[Result] = []
    skipped: dict[str, str] = {}
    started = time.perf_counter()
    try:
        for backend in args.backends:
            try:
                check_backend(backend)
            except BackendUnavailable as e:
                skipped[backend] = str(e)
                progress(f"skipped {backend}: {e}")
                continue
            results.append(measure(backend, args.rows, repeat_for(backend, args), args.keys))
    except BenchmarkError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(report(results, skipped, args))
    print(f"Wall time of the benchmark: {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
