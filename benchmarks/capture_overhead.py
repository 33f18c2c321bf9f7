"""How much does automatic capture slow down ordinary ORM writes?

Runs each ORM write workload twice per repetition on each backend:

* **baseline**: a fresh database, the benchmark table only, no capture;
* **with capture**: a fresh database, ``replicator.migrate(engine)`` and
  ``replicator.capture(sessionmaker, node="local")``, so every flush also
  appends change events to ``replicator_outbox`` in the same transaction.

Two workloads of plain unit-of-work usage of a 5-column model (client-side
UUID string key), chosen with ``--workload bulk,edit`` (default both):

* **bulk** (``--rows``, default 10,000): insert every row with
  ``session.add_all``, then load and modify two attributes of every row,
  then load and ``session.delete`` every row, each phase committing in
  batches of 500.
* **load-and-edit** (``edit``; ``--edit-rows``, default 2,000): insert every
  row with ``session.add_all`` in batches of 500, then edit the rows one by
  one, the way an app's request handler does: per row a session of its own,
  the row loaded by primary key with ``session.get`` (with ``--keys
  integer``: a select by its unique business id), one attribute changed
  (even rows: the title) or two (odd rows: score and timestamp), commit; one
  transaction per edit.

Each phase is timed with ``time.perf_counter``; setup (creating the
database, migrating, calling ``capture()``) is not timed. Baseline and
captured runs alternate, and the tables report the median over the
repetitions, per backend and workload, as ratio = with capture / baseline
against the limit of 1.3x.

Each run happens in a fresh interpreter (``multiprocessing`` "spawn"), after
an untimed warm-up run of the same mode and workload on a small throwaway
database that fills SQLAlchemy's statement caches. Capture's SQLAlchemy
session hooks are process-wide and stay installed once a ``capture()`` call
installed them, so a separate process keeps every baseline free of them.

Every captured run must leave exactly one event per write in the outbox:
``3 * rows`` for bulk (insert, update, delete), ``2 * rows`` for
load-and-edit (insert, edit); and load-and-edit must leave every row with
its edit. Otherwise the script exits with status 1, so a passing run also
proves that capture happened.

Run from the repository root::

    .venv/bin/python benchmarks/capture_overhead.py
    .venv/bin/python benchmarks/capture_overhead.py --rows 1000 --edit-rows 300 --repeat 1
    .venv/bin/python benchmarks/capture_overhead.py --workload edit --backends sqlite,mariadb
    .venv/bin/python benchmarks/capture_overhead.py --backends sqlite,duckdb --duckdb-repeat 1

MariaDB: the server named by ``REPLICATOR_TEST_MARIADB_URL`` (default
``mysql+pymysql://root@127.0.0.1:3306/test``); each run creates a database
``bench_<hex>`` and drops it afterwards. An unreachable server is reported
and skipped. DuckDB executes the ORM's per-row statements at a few thousand
rows per second, so its runs take much longer than the others; hence the
smaller default of the load-and-edit workload.
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
#: The workloads, by --workload: their phases, in order.
WORKLOADS = {"bulk": ("insert", "update", "delete"), "edit": ("insert", "edit")}
#: Change events a captured run must leave per row, by workload.
EVENTS_PER_ROW = {"bulk": 3, "edit": 2}
#: How the tables name a workload.
WORKLOAD_NAMES = {"bulk": "bulk", "edit": "load-and-edit"}
BATCH = 500
LIMIT = 1.3
DEFAULT_ROWS = 10_000
DEFAULT_EDIT_ROWS = 2_000
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


def get_one(session: Session, key: str, keys: str):
    """The row ``key``, loaded by its key: ``session.get`` by primary key (UUID
    keys), a select by the unique business id (integer keys)."""
    model, _, by = MODELS[keys]
    if by == "id":
        return session.get(model, key)
    return session.scalars(sa.select(model).where(getattr(model, by) == key)).one()


def edit_phase(factory: sessionmaker, ids: list[str], keys: str) -> None:
    """Each row on its own, as an app's request handler edits one: a session
    and a transaction per row; load the row by key, change one attribute
    (even rows: the title) or two (odd rows: score and timestamp), commit."""
    now = dt.datetime(2024, 6, 1, 12, 0, 0)
    for i, key in enumerate(ids):
        with factory.begin() as session:
            obj = get_one(session, key, keys)
            if i % 2:
                obj.score += 1
                obj.updated = now
            else:
                obj.title = f"{obj.title} (edited)"


def run_workload(
    factory: sessionmaker, rows: list[RowSpec], keys: str, workload: str = "bulk"
) -> dict[str, float]:
    """The workload's phases over every row; seconds per phase (and ``total``).

    bulk: insert, update and delete every row, in batches; edit: insert every
    row in batches, then edit each row in a transaction of its own."""
    ids = [r.id for r in rows]
    every = {
        "insert": lambda: insert_phase(factory, rows, keys),
        "update": lambda: update_phase(factory, ids, keys),
        "delete": lambda: delete_phase(factory, ids, keys),
        "edit": lambda: edit_phase(factory, ids, keys),
    }
    timings: dict[str, float] = {}
    for name in WORKLOADS[workload]:
        start = time.perf_counter()
        every[name]()
        timings[name] = time.perf_counter() - start
    timings["total"] = sum(timings[p] for p in WORKLOADS[workload])
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
    backend: str,
    rows: list[RowSpec],
    *,
    captured: bool,
    keys: str = "uuid",
    workload: str = "bulk",
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
                timings = run_workload(factory, rows, keys, workload)
            finally:
                if handle is not None:
                    handle.stop()
            verify(engine, backend, rows, captured=captured, keys=keys, workload=workload)
            return timings
        finally:
            engine.dispose()


def verify(
    engine: Engine,
    backend: str,
    rows: list[RowSpec],
    *,
    captured: bool,
    keys: str = "uuid",
    workload: str = "bulk",
) -> None:
    """The workload left the rows it should; a captured run logged one event per write.

    bulk deleted every row; edit left every row, each edited once (the odd
    rows' scores one higher, the even rows' titles marked)."""
    model, _, _ = MODELS[keys]
    table = model.__tablename__
    left = count(engine, table)
    if workload == "bulk" and left:
        raise BenchmarkError(f"{backend}: {left} rows left after the delete phase")
    if workload == "edit":
        with engine.connect() as conn:
            score, titles = conn.execute(
                sa.select(
                    sa.func.coalesce(sa.func.sum(model.score), 0),
                    sa.func.sum(sa.case((model.title.like("% (edited)"), 1), else_=0)),
                )
            ).one()
        odd = len(rows) // 2
        expected_score = sum(r.score for r in rows) + odd
        titles = titles or 0
        if left != len(rows) or score != expected_score or titles != len(rows) - odd:
            raise BenchmarkError(
                f"{backend}: after the edits {left} rows (expected {len(rows)}), score sum "
                f"{score} (expected {expected_score}), {titles} edited titles "
                f"(expected {len(rows) - odd})"
            )
    if captured:
        per_row = EVENTS_PER_ROW[workload]
        events = count(engine, "replicator_outbox")
        if events != per_row * len(rows):
            raise BenchmarkError(
                f"{backend}: replicator_outbox holds {events} events after the captured "
                f"{WORKLOAD_NAMES[workload]} run, expected exactly {per_row * len(rows)} "
                f"({per_row} x {len(rows)} rows)"
            )


# --- a backend's measurements ---------------------------------------------------------


@dataclass
class Result:
    backend: str
    workload: str
    rows: int
    repeat: int
    baseline: list[dict[str, float]]
    captured: list[dict[str, float]]

    def median(self, mode: str, phase: str) -> float:
        runs = self.baseline if mode == "baseline" else self.captured
        return statistics.median(run[phase] for run in runs)

    def ratio(self, phase: str) -> float:
        return self.median("captured", phase) / self.median("baseline", phase)


def warm_then_run(
    backend: str, count: int, captured: bool, keys: str, workload: str = "bulk"
) -> dict[str, float]:
    """A warm-up run and the timed run, in the current (fresh) process."""
    rows = make_rows(count)
    run_once(backend, rows[:WARMUP_ROWS], captured=captured, keys=keys, workload=workload)
    return run_once(backend, rows, captured=captured, keys=keys, workload=workload)


def run_in_fresh_process(
    backend: str, count: int, *, captured: bool, keys: str = "uuid", workload: str = "bulk"
) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(warm_then_run, backend, count, captured, keys, workload).result()


def measure(
    backend: str, count: int, repeat: int, keys: str = "uuid", workload: str = "bulk"
) -> Result:
    result = Result(backend, workload, count, repeat, [], [])
    name = WORKLOAD_NAMES[workload]
    for i in range(1, repeat + 1):
        for captured, runs in ((False, result.baseline), (True, result.captured)):
            timings = run_in_fresh_process(
                backend, count, captured=captured, keys=keys, workload=workload
            )
            runs.append(timings)
            mode = "with capture" if captured else "baseline"
            progress(f"{backend} {name} run {i}/{repeat} {mode}: {format_timings(timings)}")
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
                WORKLOAD_NAMES[r.workload],
                str(r.rows),
                f"{r.median('baseline', 'total'):.3f}",
                f"{r.median('captured', 'total'):.3f}",
                f"{ratio:.2f}x",
                f"{LIMIT}x",
                "ok" if ratio <= LIMIT else "OVER",
            ]
        )
    header = [
        "backend",
        "workload",
        "rows",
        "baseline s",
        "with capture s",
        "ratio",
        "limit",
        "verdict",
    ]
    return markdown_table(header, rows)


def phase_table(results: Sequence[Result]) -> str:
    rows = [
        [
            r.backend,
            WORKLOAD_NAMES[r.workload],
            phase,
            f"{r.median('baseline', phase):.3f}",
            f"{r.median('captured', phase):.3f}",
            f"{r.ratio(phase):.2f}x",
        ]
        for r in results
        for phase in WORKLOADS[r.workload]
    ]
    header = ["backend", "workload", "phase", "baseline s", "with capture s", "ratio"]
    return markdown_table(header, rows)


def report(results: Sequence[Result], skipped: dict[str, str], args: argparse.Namespace) -> str:
    lines = ["## Capture overhead", ""]
    if "bulk" in args.workloads:
        lines.append(
            f"Workload bulk: {args.rows} rows of a 5-column model ({args.keys} keys); insert "
            "(add_all), update (2 attributes) and delete (session.delete) through the unit "
            f"of work, committed in batches of {BATCH}."
        )
    if "edit" in args.workloads:
        get = "session.get by primary key" if args.keys == "uuid" else "a select by uid"
        lines.append(
            f"Workload load-and-edit: {args.edit_rows} rows of the same model inserted "
            f"(add_all, batches of {BATCH}); then each row on its own: a session, {get}, "
            "one attribute (even rows) or two (odd rows) changed, commit: one transaction "
            "per edit."
        )
    lines += [
        f"Median of the repetitions per backend and workload; ratio = with capture / "
        f"baseline; limit {LIMIT}x.",
        f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}, "
        f"{platform.system()} {platform.machine()}.",
        "",
    ]
    if results:
        lines += [summary_table(results), "", "### Per phase", "", phase_table(results), ""]
        repeats = ", ".join(f"{r.backend} {WORKLOAD_NAMES[r.workload]} {r.repeat}" for r in results)
        lines.append(f"Repetitions (baseline/captured pairs): {repeats}.")
        checks = []
        if "bulk" in args.workloads:
            checks.append(f"bulk exactly 3 x {args.rows} events")
        if "edit" in args.workloads:
            checks.append(
                f"load-and-edit exactly 2 x {args.edit_rows} events (one per insert and per "
                "edit), and every edit landed"
            )
        lines.append(f"Outbox check passed: every captured run logged {'; '.join(checks)}.")
    if args.duckdb_repeat and args.duckdb_repeat != args.repeat and "duckdb" in args.backends:
        lines.append(
            f"Note: DuckDB ran {args.duckdb_repeat} repetition(s) instead of {args.repeat} "
            "(--duckdb-repeat), to bound the run time."
        )
    lines += [f"Skipped {backend}: {why}" for backend, why in skipped.items()]
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=DEFAULT_ROWS,
        help=f"rows written by the bulk workload (default {DEFAULT_ROWS})",
    )
    parser.add_argument(
        "--edit-rows",
        type=int,
        default=DEFAULT_EDIT_ROWS,
        help=f"rows inserted and then edited one by one by the load-and-edit workload "
        f"(default {DEFAULT_EDIT_ROWS})",
    )
    parser.add_argument(
        "--workload",
        dest="workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from {','.join(WORKLOADS)} (default: both)",
    )
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
    args.workloads = list(dict.fromkeys(w.strip() for w in args.workloads.split(",") if w.strip()))
    unknown = sorted(set(args.workloads) - set(WORKLOADS))
    if unknown or not args.workloads:
        parser.error(
            f"unknown workload(s) {', '.join(unknown) or '(none)'}; "
            f"choose from {', '.join(WORKLOADS)}"
        )
    if min(args.rows, args.edit_rows, args.repeat, args.duckdb_repeat or 1) < 1:
        parser.error("--rows, --edit-rows, --repeat and --duckdb-repeat must be positive")
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
            for workload in args.workloads:
                rows = args.rows if workload == "bulk" else args.edit_rows
                repeat = repeat_for(backend, args)
                results.append(measure(backend, rows, repeat, args.keys, workload))
    except BenchmarkError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(report(results, skipped, args))
    print(f"Wall time of the benchmark: {time.perf_counter() - started:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
