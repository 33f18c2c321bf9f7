"""Where does the wall time of a replication pass or a replay go?

Profiles one run per path with pyinstrument (a wall-clock sampler that keeps
each sample's full stack, interval ``--interval``, default 0.5 ms) and
prints, per path, the share of the sampled time per category:

* **read + decode**: reading the source's outbox and decoding its events
  (msgspec/msgpack), including the pass's wait for its read-ahead thread;
* **version look-up**: the target's stored row versions (``versions.load_many``);
* **conflict checks**: deciding per event (``apply._Batch.apply``/``_decide``/...,
  version comparison, scopes): the Python that is none of the other categories;
* **data writes**: ``apply._upsert_rows``/``_delete_rows``, with the Python
  preparing values and the driver's escaping and round trips;
* **version writes**: ``versions.store`` (and the settlements' record);
* **outbox forward**: ``outbox.append_encoded`` of what the target applied;
* **checkpoint / bookkeeping / commit**: checkpoints, parking look-ups
  (``open_items``, ``held_items``), connections, begin and commit;
* **other**: everything else (the pass's own loop, table shapes, ...).

Each sample counts for the category of the *innermost* frame on its stack
that a rule of :data:`RULES` (below) matches; a frame takes the category of
the first rule that matches it. Rules name a module file and a qualified
function name with ``*`` wildcards (``replicator/versions.py:load*``), so
they keep working when private helpers are renamed a little.

Paths (``--paths``, default all), each with ``--events`` events (default
30,000), generated the way the throughput and replay benchmarks do it (their
generators are imported from ``replication_throughput.py`` and
``replay.py``); only the pass or the replay itself is profiled:

* ``sqlite-mariadb``: one ``replicator.sync.replicate(source, target)`` pass
  from a SQLite local to a MariaDB server (reference app, ~30% updates);
* ``mariadb-duckdb``: one pass from a MariaDB server to a DuckDB local;
* ``replay-duckdb``, ``replay-sqlite``: ``replicator.replay.replay`` of a
  SQLite log (one 4-column table, 30% updates) onto a fresh DuckDB / SQLite
  node.

The pass reads its next batch in a second thread; pyinstrument samples the
main thread only, so the main thread's wait for that read counts as read +
decode, and the time the read thread itself spent (overlapped) is printed
beside the table. The profiler hooks every Python call (Python 3.11's
profiling hook, whatever the interval), which slows call-heavy Python more
than time spent waiting in a database: the wall seconds and events/s here are
profiled ones (from about 1.2x slower on the MariaDB pass to about 2x on the
SQLite replay), and the shares lean towards the Python-heavy categories
(conflict checks, value preparation). ``--no-profile`` times the same runs
without it. Compare shares between checkouts rather than reading them as
exact. ``--deciders N`` lists the frames whose rule decided the samples' categories.

Run from the repository root (MariaDB as for the throughput benchmark)::

    .venv/bin/python benchmarks/profile_paths.py
    .venv/bin/python benchmarks/profile_paths.py --events 5000 --paths replay-sqlite --top 20

and against another checkout of the package: ``PYTHONPATH=/path/to/checkout
.venv/bin/python benchmarks/profile_paths.py`` (it uses only public entry
points that the benchmarks use). Needs ``pyinstrument`` (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import fnmatch
import gc
import os
import re
import sys
import tempfile
import threading
import time
import types
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_mariadb
import replay as replay_bench
import replication_throughput as throughput
import sqlalchemy as sa
from pyinstrument import Profiler
from sqlalchemy.engine import make_url

import replicator
from replicator.node import Node

# --- the categories and their rules ---------------------------------------------------

READ = "read + decode"
VERSIONS = "version look-up"
CONFLICTS = "conflict checks"
DATA = "data writes"
VERSION_WRITES = "version writes"
FORWARD = "outbox forward"
BOOKKEEPING = "checkpoint / bookkeeping / commit"
OTHER = "other"
CATEGORIES = (READ, VERSIONS, CONFLICTS, DATA, VERSION_WRITES, FORWARD, BOOKKEEPING, OTHER)

# (category, "file:qualified function name"), both parts ``*`` patterns; the
# file part matches the end of the module's path. A frame takes the category
# of the FIRST rule that matches it (so specific rules come before the
# catch-alls of a module); a sample takes the category of its INNERMOST
# matching frame (a helper's own rule beats its caller's); no match: other.
RULES: tuple[tuple[str, str], ...] = (
    # read + decode
    (READ, "replicator/outbox.py:read_batch*"),  # with its nested fetch()
    (READ, "replicator/outbox.py:read"),
    (READ, "replicator/events.py:decode*"),
    (READ, "replicator/events.py:from_ext"),
    (READ, "replicator/sync.py:*._read"),  # the source connection around read_batch
    (READ, "replicator/replay.py:replay.<locals>.read"),
    (READ, "concurrent/futures/_base.py:Future.result"),  # waiting for the read-ahead
    # version look-up
    (VERSIONS, "replicator/versions.py:load*"),
    # data writes
    (DATA, "replicator/apply.py:_upsert_rows"),
    (DATA, "replicator/apply.py:_delete_rows"),
    # version writes
    (VERSION_WRITES, "replicator/versions.py:store*"),
    (VERSION_WRITES, "replicator/apply.py:record_settlements"),
    # outbox forward
    (FORWARD, "replicator/outbox.py:append*"),
    # checkpoint / bookkeeping / commit
    (BOOKKEEPING, "replicator/checkpoints.py:*"),
    (BOOKKEEPING, "replicator/parking.py:*"),  # open_items, held_items, write, hold
    (BOOKKEEPING, "replicator/retention.py:*"),
    (BOOKKEEPING, "replicator/keys.py:*"),  # key leases, sequences
    (BOOKKEEPING, "replicator/apply.py:_Batch._keep_sequences_ahead"),
    (BOOKKEEPING, "replicator/sync.py:*._checkpoint"),
    (BOOKKEEPING, "replicator/sync.py:*._advance"),
    (BOOKKEEPING, "replicator/sync.py:*._bounds"),
    (BOOKKEEPING, "replicator/sync.py:*._record"),
    (BOOKKEEPING, "replicator/sync.py:*._release_held"),
    (BOOKKEEPING, "replicator/sync.py:*._lease_keys"),
    (BOOKKEEPING, "replicator/replay.py:_advance_checkpoints"),
    (BOOKKEEPING, "replicator/dialects/*.py:*.exclude_writers"),
    (BOOKKEEPING, "replicator/dialects/*.py:*.horizon"),
    (BOOKKEEPING, "replicator/node.py:*.connect"),  # checkout, return to the pool
    (BOOKKEEPING, "replicator/node.py:*.begin"),  # begin ... commit
    (BOOKKEEPING, "sqlalchemy/engine/base.py:*Transaction.*"),
    (BOOKKEEPING, "sqlalchemy/engine/base.py:Connection.*begin*"),
    (BOOKKEEPING, "sqlalchemy/engine/base.py:Connection.*commit*"),
    (BOOKKEEPING, "sqlalchemy/engine/base.py:Connection.*rollback*"),
    (BOOKKEEPING, "sqlalchemy/engine/util.py:TransactionalContext.*"),
    # conflict checks: the rest of applying (after the specific rules above)
    (CONFLICTS, "replicator/apply.py:*"),  # apply_batch, _Batch.apply/_decide/_take/...
    (CONFLICTS, "replicator/versions.py:*"),  # compare, merge, increment
    (CONFLICTS, "replicator/conflicts.py:*"),
    (CONFLICTS, "replicator/scope.py:*"),  # which events a node takes
    # other, explicitly: the target's table shapes (reflected once per pass)
    (OTHER, "replicator/node.py:*.shape"),
)

DEFAULT_EVENTS = 30_000
DEFAULT_INTERVAL = 0.0005
DEFAULT_TOP = 15
PATHS = ("sqlite-mariadb", "mariadb-duckdb", "replay-duckdb", "replay-sqlite")
MARIADB_ENV = "REPLICATOR_TEST_MARIADB_URL"
MARIADB_DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/test"


class ProfileError(Exception):
    """A profiled run did not do what it should (events missing, rows differ)."""


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


# --- attributing samples -----------------------------------------------------------------


_COMPILED = [(category, re.compile(fnmatch.translate("*/" + rule))) for category, rule in RULES]


class Attribution:
    """Maps pyinstrument's frame identifiers to functions and categories (cached)."""

    def __init__(self) -> None:
        self.code_names = _qualified_names()
        self.functions: dict[str, tuple[str, str]] = {}  # frame info -> (full key, shown)
        self.categories: dict[str, str | None] = {}
        self.stacks: dict[tuple[str, ...], tuple[str, str]] = {}

    def function(self, frame_info: str) -> tuple[str, str]:
        """``(path:qualname, short path:qualname:line)`` of a frame."""
        found = self.functions.get(frame_info)
        if found is None:
            identifier, *attributes = frame_info.split("\x01")
            name, path, line = [*identifier.split("\x00"), "", "0"][:3]
            qualname = self.code_names.get((path, int(line or 0), name))
            if qualname is None:
                owner = next((a[1:] for a in attributes if a.startswith("c")), None)
                qualname = f"{owner}.{name}" if owner else name
            shown = f"{_short(path)}:{qualname}" + (f":{line}" if line != "0" else "")
            found = self.functions[frame_info] = (f"{path}:{qualname}", shown)
        return found

    def category_of_frame(self, frame_info: str) -> str | None:
        if frame_info not in self.categories:
            key = self.function(frame_info)[0]
            self.categories[frame_info] = next(
                (category for category, rule in _COMPILED if rule.match(key)), None
            )
        return self.categories[frame_info]

    def decide(self, stack: Sequence[str]) -> tuple[str, str]:
        """The category of the innermost frame of ``stack`` (root first) that
        has one, and that frame (shown); ``other`` and the leaf when none has."""
        key = tuple(stack)
        found = self.stacks.get(key)
        if found is None:
            found = next(
                (
                    (category, self.function(frame)[1])
                    for frame in reversed(stack)
                    if (category := self.category_of_frame(frame)) is not None
                ),
                (OTHER, self.function(stack[-1])[1]),
            )
            self.stacks[key] = found
        return found


def _qualified_names() -> dict[tuple[str, int, str], str]:
    """``(file, first line, name) -> co_qualname`` of every function loaded (and
    the functions nested in them): pyinstrument's samples carry only names."""
    names: dict[tuple[str, int, str], str] = {}
    seen: set[int] = set()

    def add(code: types.CodeType) -> None:
        if id(code) in seen:
            return
        seen.add(id(code))
        qualname = getattr(code, "co_qualname", code.co_name)
        names[(code.co_filename, code.co_firstlineno, code.co_name)] = qualname
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                add(const)

    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType):
            add(obj.__code__)
    return names


_SHORT: dict[str, str] = {}


def _short(path: str) -> str:
    """``path`` relative to the ``sys.path`` entry it is under (the shortest such)."""
    if path not in _SHORT:
        shown = path
        if path.startswith("/"):
            for entry in [*sys.path, os.getcwd()]:
                if entry and path.startswith(entry.rstrip("/") + "/"):
                    relative = path[len(entry.rstrip("/")) + 1 :]
                    shown = min(shown, relative, key=len)
        _SHORT[path] = shown
    return _SHORT[path]


# --- a profiled run ------------------------------------------------------------------------


@dataclass
class ReadThread:
    """The time ``outbox.read_batch`` took per thread other than the main one."""

    calls: int = 0
    wall: float = 0.0
    cpu: float = 0.0


@dataclass
class Profile:
    path: str
    events: int
    seconds: float
    samples: int
    by_category: dict[str, float]
    leaves: dict[str, Counter]  # innermost function -> category -> seconds
    deciders: dict[str, Counter]  # the frame that decided the category -> category -> seconds
    read_thread: ReadThread = field(default_factory=ReadThread)

    @property
    def sampled(self) -> float:
        return sum(self.by_category.values()) or 1.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def share(self, category: str) -> float:
        return 100 * self.by_category.get(category, 0.0) / self.sampled


@contextmanager
def read_thread_timing() -> Any:
    """Time ``replicator.outbox.read_batch`` in threads other than the main one
    (the pass's read-ahead), which pyinstrument does not sample."""
    from replicator import outbox

    spent = ReadThread()
    original = getattr(outbox, "read_batch", None)
    if original is None:
        yield spent
        return
    main = threading.main_thread()
    lock = threading.Lock()

    def timed(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is main:
            return original(*args, **kwargs)
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                spent.calls += 1
                spent.wall += time.perf_counter() - wall
                spent.cpu += time.thread_time() - cpu

    outbox.read_batch = timed
    try:
        yield spent
    finally:
        outbox.read_batch = original


def profiled(
    path: str, events: int, run: Callable[[], Any], args: argparse.Namespace
) -> tuple[Profile, Any]:
    """Run ``run()`` under the sampler (not with ``--no-profile``); the
    profile and what ``run`` returned."""
    gc.collect()
    profiler = None if args.no_profile else Profiler(interval=args.interval, async_mode="disabled")
    with read_thread_timing() as read_thread:
        started = time.perf_counter()
        if profiler is not None:
            profiler.start()
        try:
            result = run()
        finally:
            if profiler is not None:
                profiler.stop()
            seconds = time.perf_counter() - started
    if profiler is None:
        return Profile(path, events, seconds, 0, {}, {}, {}, read_thread), result
    session = profiler.last_session
    assert session is not None
    if args.html is not None:
        args.html.mkdir(parents=True, exist_ok=True)
        (args.html / f"{path}.html").write_text(profiler.output_html())
    attribution = Attribution()
    by_category: dict[str, float] = defaultdict(float)
    leaves: dict[str, Counter] = defaultdict(Counter)
    deciders: dict[str, Counter] = defaultdict(Counter)
    for stack, weight in session.frame_records:
        category, decider = attribution.decide(stack)
        by_category[category] += weight
        leaves[attribution.function(stack[-1])[1]][category] += weight
        deciders[decider][category] += weight
    profile = Profile(
        path=path,
        events=events,
        seconds=seconds,
        samples=len(session.frame_records),
        by_category=dict(by_category),
        leaves=dict(leaves),
        deciders=dict(deciders),
        read_thread=read_thread,
    )
    return profile, result


# --- the paths -----------------------------------------------------------------------------


def pass_path(
    path: str,
    workload: throughput.Workload,
    source: tuple[str, str],
    target: tuple[str, str],
    args: argparse.Namespace,
) -> Profile:
    """Generate the workload on the source (untimed), then profile one pass."""
    from replicator.sync import replicate

    (source_name, source_url), (target_name, target_url) = source, target
    progress(f"{path}: generating {len(workload)} events on the {source_name} source")
    throughput.generate(source_url, workload, node=source_name)
    expected = throughput.read_rows(source_url)
    replicator.migrate(target_url)
    throughput.create_app_tables(target_url)
    source_node = Node(name=source_name, url=source_url, role=source_name)
    target_node = Node(name=target_name, url=target_url, role=target_name)
    progress(f"{path}: {'timing' if args.no_profile else 'profiling'} the pass")
    try:
        profile, result = profiled(
            path,
            len(workload),
            lambda: replicate(source_node, target_node, batch_size=throughput.BATCH),
            args,
        )
    finally:
        source_node.dispose()
        target_node.dispose()
    if not result.ok or result.applied != len(workload):
        raise ProfileError(
            f"{path}: the pass applied {result.applied} of {len(workload)} events "
            f"({result.status}: {result.error})"
        )
    try:
        throughput.check_rows(f"{path} target", expected, target_url)
    except throughput.BenchmarkError as e:
        raise ProfileError(str(e)) from e
    return profile


def replay_path(
    path: str, log_path: Path, final: dict[str, tuple], url: str, args: argparse.Namespace
) -> Profile:
    """Profile the replay of the log at ``log_path`` onto a fresh node at ``url``."""
    from replicator.replay import replay

    replay_bench.fresh_node(url)
    log = Node("server", url=f"sqlite:///{log_path}", role="server")
    node = Node("device", url=url, role="local")
    progress(f"{path}: {'timing' if args.no_profile else 'profiling'} the replay")
    try:
        profile, result = profiled(
            path,
            args.events,
            lambda: replay(log, node, start=1, batch_size=replay_bench.BATCH),
            args,
        )
        with node.connect() as conn:
            rows = {r[0]: tuple(r) for r in conn.execute(sa.select(replay_bench.readings))}
    finally:
        node.dispose()
        log.dispose()
    if result.read != args.events or rows != final:
        raise ProfileError(
            f"{path}: the replay read {result.read} of {args.events} events"
            + ("" if rows == final else "; the node's rows differ from the log's")
        )
    return profile


def run_paths(args: argparse.Namespace) -> list[Profile]:
    server = make_url(args.mariadb_url)
    prefix = f"replicator_profile_{uuid.uuid4().hex[:12]}"
    profiles = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="repl-profile-")))
        workload = None
        log: tuple[Path, dict] | None = None
        for path in args.paths:
            if path in ("sqlite-mariadb", "mariadb-duckdb"):
                if workload is None:
                    problem = bench_mariadb.unreachable(server)
                    if problem is not None:
                        raise ProfileError(f"MariaDB at {problem}")
                    workload = throughput.make_workload(args.events)
                role = "target" if path == "sqlite-mariadb" else "source"
                mariadb = stack.enter_context(bench_mariadb.database(server, f"{prefix}_{role}"))
                if path == "sqlite-mariadb":
                    source = ("local", f"sqlite:///{tmp / 'source.sqlite'}")
                    target = ("server", mariadb)
                else:
                    source = ("server", mariadb)
                    target = ("local", f"duckdb:///{tmp / 'target.duckdb'}")
                profile = pass_path(path, workload, source, target, args)
            else:
                if log is None:
                    log_path = tmp / "log.sqlite"
                    progress(f"writing a log of {args.events} events")
                    log = (log_path, replay_bench.make_log(log_path, args.events))
                backend = path.removeprefix("replay-")
                url = f"{backend}:///{tmp / f'replay.{backend}'}"
                profile = replay_path(path, *log, url, args)
            print_profile(profile, args.top, args.deciders)
            profiles.append(profile)
    return profiles


# --- output --------------------------------------------------------------------------------


def table_header() -> list[str]:
    header = ["path", "events", "wall s", "events/s", *CATEGORIES]
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]


def table_row(profile: Profile) -> str:
    cells = [
        profile.path,
        str(profile.events),
        f"{profile.seconds:.2f}",
        f"{profile.rate:,.0f}",
        *(f"{profile.share(c):.1f}" if profile.samples else "-" for c in CATEGORIES),
    ]
    return "| " + " | ".join(cells) + " |"


def print_profile(profile: Profile, top: int, deciders: int = 0) -> None:
    print(f"## {profile.path}\n")
    how = (
        f"profiled; {profile.samples} samples over {profile.sampled:.2f} s"
        if profile.samples
        else "not profiled"
    )
    print(
        f"events: {profile.events}, wall seconds: {profile.seconds:.2f}, "
        f"events/s: {profile.rate:,.0f} ({how})\n"
    )
    if profile.samples:
        print("Share of the sampled wall time, percent:\n")
        print("\n".join([*table_header(), table_row(profile)]))
    spent = profile.read_thread
    if spent.calls:
        print(
            f"\nRead-ahead thread (not sampled, overlaps the above): {spent.calls} read_batch "
            f"calls, {spent.wall:.2f} s wall, {spent.cpu:.2f} s CPU."
        )
    if top > 0 and profile.samples:
        print(f"\nTop {top} innermost functions by self time:\n")
        print_ranked(profile, profile.leaves, top, "self s")
    if deciders > 0 and profile.samples:
        print(f"\nTop {deciders} frames that decided a sample's category (the rules' work):\n")
        print_ranked(profile, profile.deciders, deciders, "s")
    print(flush=True)


def print_ranked(profile: Profile, functions: dict[str, Counter], top: int, unit: str) -> None:
    print(f"| {unit} | % | function (file:qualname:first line) | categories |")
    print("|---|---|---|---|")
    ranked = sorted(functions.items(), key=lambda kv: -sum(kv[1].values()))
    for function, categories in ranked[:top]:
        seconds = sum(categories.values())
        split = ", ".join(f"{c} {100 * s / seconds:.0f}%" for c, s in categories.most_common(3))
        print(f"| {seconds:.3f} | {100 * seconds / profile.sampled:.1f} | `{function}` | {split} |")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--events",
        type=int,
        default=DEFAULT_EVENTS,
        help=f"events per path (default {DEFAULT_EVENTS})",
    )
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        default=list(PATHS),
        metavar="PATH",
        help=f"the paths to profile, of {', '.join(PATHS)} (default: all)",
    )
    parser.add_argument(
        "--top",
        type=int,
        default=DEFAULT_TOP,
        help=f"innermost functions listed by self time (default {DEFAULT_TOP}; 0: none)",
    )
    parser.add_argument(
        "--deciders",
        type=int,
        default=0,
        help="also list this many frames that decided samples' categories, to check the rules",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        help=f"sampling interval in seconds (default {DEFAULT_INTERVAL})",
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="time the same runs without the profiler (its overhead: compare events/s)",
    )
    parser.add_argument(
        "--html", type=Path, default=None, help="also write pyinstrument's HTML per path here"
    )
    parser.add_argument(
        "--mariadb-url",
        default=os.environ.get(MARIADB_ENV, MARIADB_DEFAULT_URL),
        help=f"MariaDB server (default: ${MARIADB_ENV} or {MARIADB_DEFAULT_URL})",
    )
    args = parser.parse_args(argv)
    if args.events < 1000:
        parser.error("--events must be at least 1000")
    args.paths = list(dict.fromkeys(args.paths))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress(f"replicator from {Path(replicator.__file__).parent}")
    try:
        profiles = run_paths(args)
    except ProfileError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    if len(profiles) > 1:
        print("## All paths: share of the sampled wall time, percent\n")
        if args.no_profile:
            print("(not profiled: times only)\n")
        print("\n".join([*table_header(), *map(table_row, profiles)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
