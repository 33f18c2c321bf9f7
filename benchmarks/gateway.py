"""How many devices can one sync gateway serve, and how fast does a write
reach another device of the same user?

* **Server**: a fresh MariaDB database (the replicator's tables and a small
  notes app: ``notebooks`` and ``notes``, integer keys the database
  numbers, an ``owner`` scope column) behind one ``replicator serve``
  process on this machine (``--gateway-workers``, default 1: uvicorn runs
  in that process; with more, its worker processes are counted with it),
  its rate limit raised out of the way (``requests_per_second``,
  ``burst``).
* **Devices**: ``--devices`` simulated devices (default 200), each its own
  SQLite file set up as an app sets itself up (``replicator.migrate``, the
  app's ``create_all``, ``replicator.capture`` under its name) and its own
  ``Replicator`` (kept for the whole run, as an app keeps it) over a
  ``replicator.toml`` whose server node is the gateway's URL with a token
  (``tokens.issue``, scope ``owner = u<k>``). Devices ``2k`` and ``2k+1``
  share owner ``u<k>``: each is the other's partner. They run as threads,
  one per device, in ``--procs`` worker processes (default 2; 200 Python
  processes would not fit 2 cores), a pair always in the same process.
  Before the clock starts every device syncs once (it leases its key
  blocks; a first sync that fails is tried again, up to 5 times, and
  reported; nothing is timed), and each worker freezes what it has set
  up out of the garbage collector (``gc.freeze``): hundreds of devices
  in one process are a cost of the simulation, not one a device pays.
* **Loop** (every device, for ``--seconds``, default 60, starts staggered
  over one think time): write one notebook with one note (one ORM
  transaction: 2 events; the notebook carries the writer, a sequence
  number and ``time.time()`` of the write), ``sync()`` (up, then down),
  look for the partner's new notebooks, sleep ``--think`` seconds (default
  0.5, +-10% jitter). With ``--write-every S`` a device writes at most
  every S seconds and only syncs in between. The same loop for the gateway
  and for the direct peer, so that the two compare. A device does not use
  the gateway's long poll (``Gateway.wait``) here: the peer has nothing
  like it, and that wait ends whenever the server's log moves at all,
  whoever wrote it, so with hundreds of devices writing it ends at every
  tick of the gateway's watcher (0.1 s) and the loop becomes a sync loop
  without think time.
* **Latency**: for each partner write, the time its notebook was first
  found in the partner's database (after the partner's ``sync()``
  returned) minus the write's ``time.time()``: end to end, including up
  to one think time of the partner (its next sync), so the floor is about
  ``think`` + 2 syncs at p99. After ``--seconds`` the devices stop writing
  and keep syncing until everything written has reached the partner (at
  most ``--drain`` seconds, default 60 + devices / 5): every write gets a
  latency, or the run fails.
* **Rates** (syncs that ended inside the window): pushes/s = up passes
  that pushed at least one event, per second; events/s = events those
  passes applied on the server, per second. Deferred passes: passes that
  read nothing because the server's commit-order horizon could not be
  read in time (the writers' lock, see ``dialects/mariadb.py``).
* **Where the time goes**: the gateway's peak RSS (``VmHWM`` of its
  processes, the whole run including the devices' first syncs); CPU
  seconds of the gateway, of the device processes and of ``mariadbd``
  during the window, and per sync. The devices' own Python work runs on
  the same 2 cores as the gateway and MariaDB (and whatever else the
  machine runs): a real device brings its own CPU.
* **Peer**: the same devices, loop and duration, whose server node is the
  MariaDB database itself (no gateway; the local node carries the scope),
  on a fresh database. Each device closes its server connections after
  every sync (``Replicator.server.dispose()``), and at most
  ``--direct-slots`` devices (default 30, all processes together) sync at
  once, waiting for a slot inside their sync time: a direct sync holds up
  to ~4 connections (its passes' and its two advisory locks'), and 200
  devices syncing freely pass MariaDB's ``max_connections`` (151 by
  default) and fail with "Too many connections" (``--direct-slots 0``
  shows it). The peak number of connections to the benchmark's database, and how many were opened
  per second (sampled every 0.05 s), are reported for both runs.

Targets: p99 under 1 s at 200 devices; the largest N of those measured
(``--sweep``) whose p99 stays under 2 s is stated. Ratio = p99 / limit,
the limit being 1 s up to 200 devices and 2 s above.

Run from the repository root::

    .venv/bin/python benchmarks/gateway.py [--devices 200] [--seconds 60] [--think 0.5]
    .venv/bin/python benchmarks/gateway.py --devices 10 --seconds 10   # a smoke test
    .venv/bin/python benchmarks/gateway.py --devices 1000 --skip-direct
    .venv/bin/python benchmarks/gateway.py --sweep 20,50,200 --skip-direct

MariaDB: ``--url`` (default: ``REPLICATOR_BENCH_MARIADB_URL`` or
``mysql+pymysql://root@127.0.0.1:3306/test``); each run creates a
database ``replicator_bench_gateway_<hex>`` and drops it afterwards (the
gateway stopped first), also when the run fails. Device files live in a
temporary directory. The script exits with status 1 when MariaDB is
unreachable or a check fails (a write that never reached the partner or
the server, a worker or the gateway that died).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import logging
import math
import multiprocessing
import os
import platform
import queue as queue_module
import random
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from hashlib import sha1
from pathlib import Path
from typing import Any

import bench_mariadb
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

import replicator

DEFAULT_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
LIMIT_AT_200 = 1.0  # p99 seconds, up to 200 devices
LIMIT_ABOVE = 2.0  # p99 seconds, above 200 devices
SECRET_ENV = "REPLICATOR_GATEWAY_SECRET"
SAMPLE = 0.05  # seconds between samples of MariaDB's connections
SERVE = [sys.executable, "-m", "replicator", "serve"]
#: Direct peer: devices syncing at once (each holds up to ~4 MariaDB
#: connections while it syncs: its passes' and its two advisory locks').
DIRECT_SLOTS = 30
#: Tries of a device's first sync (it leases its keys) before the run fails.
SETUP_TRIES = 5


class BenchmarkError(Exception):
    """The run could not prove what it measures (lost writes, a dead process)."""


# --- the app ------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Notebook(Base):
    __tablename__ = "notebooks"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(sa.String(36), index=True)
    writer: Mapped[str] = mapped_column(sa.String(64), index=True)
    seq: Mapped[int] = mapped_column(sa.Integer)
    written_at: Mapped[float] = mapped_column(sa.Double)
    title: Mapped[str] = mapped_column(sa.String(200))
    notes: Mapped[list[Note]] = relationship(
        back_populates="notebook", cascade="all, delete-orphan"
    )


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    notebook_id: Mapped[int] = mapped_column(sa.ForeignKey("notebooks.id"), index=True)
    owner: Mapped[str] = mapped_column(sa.String(36), index=True)
    body: Mapped[str] = mapped_column(sa.Text)
    notebook: Mapped[Notebook] = relationship(back_populates="notes")


# --- a device -----------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    name: str
    partner: str
    owner: str
    database: str  # the SQLite file
    config: str  # its replicator.toml


@dataclass(frozen=True)
class Settings:
    mode: str  # gateway | direct
    think: float
    write_every: float


@dataclass
class Tally:
    """What the devices of one worker did (summed), and their latencies."""

    devices: int = 0
    writes: int = 0
    delivered: int = 0
    latencies: list[float] = field(default_factory=list)
    syncs: int = 0  # ended in the window
    failed: int = 0  # syncs with a failed pass, in the window
    failed_drain: int = 0
    deferred: int = 0  # passes deferred (the server's horizon could not be read in time)
    errors: dict[str, int] = field(default_factory=dict)  # first words -> count
    pushes: int = 0
    events: int = 0
    sync_seconds: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0
    undelivered: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # own writes never pushed

    def add(self, other: Tally) -> None:
        for name in COUNTED:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latencies += other.latencies
        self.sync_seconds += other.sync_seconds
        self.undelivered += other.undelivered
        self.pending += other.pending
        for error, count in other.errors.items():
            self.errors[error] = self.errors.get(error, 0) + count


COUNTED = ("devices", "writes", "delivered", "syncs", "failed", "failed_drain", "deferred")
COUNTED += ("pushes", "events", "cpu_seconds")


class Device:
    def __init__(self, spec: Spec, settings: Settings, slots: Any = None) -> None:
        from replicator.application import Replicator
        from replicator.config import load

        self.spec, self.settings, self.slots = spec, settings, slots
        self.engine = sa.create_engine(f"sqlite:///{spec.database}")
        replicator.migrate(self.engine)
        Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(bind=self.engine)
        self.capture = replicator.capture(self.sessions, node=spec.name)
        self.replicator = Replicator(load(spec.config), engines={spec.name: self.engine})
        self.seq = 0
        self.seen = 0  # the partner's largest sequence number found here
        self.tally = Tally(devices=1)
        self.rng = random.Random(spec.name)

    def write(self) -> None:
        self.seq += 1
        with self.sessions.begin() as session:
            book = Notebook(
                owner=self.spec.owner,
                writer=self.spec.name,
                seq=self.seq,
                written_at=time.time(),
                title=f"{self.spec.name} #{self.seq}",
            )
            book.notes = [Note(owner=self.spec.owner, body=f"note {self.seq} " + "x" * 80)]
            session.add(book)
        self.tally.writes += 1

    def sync(self, end: float) -> bool:
        """One ``sync()``; counted when it ends inside the window. True when
        every pass went through."""
        from replicator.errors import describe

        started = time.time()
        errors: list[str] = []
        pushed = applied = deferred = 0
        if self.slots is not None:
            self.slots.acquire()  # waiting for a slot is part of the sync's time
        try:
            result = self.replicator.sync()
            for found in result.passes:
                if not found.ok:
                    errors.append(found.error or "failed")
                elif found.status == "deferred":
                    deferred += 1
                elif found.source == self.spec.name and found.read:
                    pushed += 1
                    applied += found.applied
        except Exception as e:  # a sync that raises is counted as failed
            errors.append(describe(e))
        finally:
            if self.settings.mode == "direct":
                self.replicator.server.dispose()  # hold no connection between syncs
            if self.slots is not None:
                self.slots.release()
        ended = time.time()
        if ended <= end:
            self.tally.syncs += 1
            self.tally.sync_seconds.append(ended - started)
            self.tally.pushes += pushed > 0
            self.tally.events += applied
            self.tally.failed += bool(errors)
            self.tally.deferred += deferred
        else:
            self.tally.failed_drain += bool(errors)
        for error in errors:
            words = " ".join(error.split()[:30])
            self.tally.errors[words] = self.tally.errors.get(words, 0) + 1
        self.arrivals()
        return not errors

    def arrivals(self) -> None:
        """Record the partner's notebooks that arrived since the last look."""
        now = time.time()
        nb = Notebook.__table__.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(nb.seq, nb.written_at).where(
                    nb.writer == self.spec.partner, nb.seq > self.seen
                )
            ).all()
        for seq, written_at in rows:
            self.tally.latencies.append(now - written_at)
            self.tally.delivered += 1
            self.seen = max(self.seen, seq)

    def pause(self) -> None:
        time.sleep(self.settings.think * self.rng.uniform(0.9, 1.1))

    def run(
        self, start: float, end: float, drain_end: float, finals: dict[str, int | None]
    ) -> None:
        """The loop (see the module's doc), then the drain."""
        try:
            time.sleep(max(0.0, start + self.rng.uniform(0, self.settings.think) - time.time()))
            wrote_at = -math.inf
            while time.time() < end:
                if time.time() - wrote_at >= self.settings.write_every:
                    self.write()
                    wrote_at = time.time()
                self.sync(end)
                if time.time() < end:
                    self.pause()
        except Exception as e:  # counted; the check then finds what it left undone
            error = f"the device's loop stopped: {type(e).__name__}: {e}"
            self.tally.errors[error] = self.tally.errors.get(error, 0) + 1
        finally:
            finals[self.spec.name] = self.seq
        pushed = False
        try:
            while time.time() < drain_end:
                pushed = self.sync(end) or pushed
                final = finals.get(self.spec.partner)
                if pushed and final is not None and self.seen >= final:
                    break
                self.pause()
        except Exception as e:
            error = f"the device's drain stopped: {type(e).__name__}: {e}"
            self.tally.errors[error] = self.tally.errors.get(error, 0) + 1
        if not pushed:
            self.tally.pending.append(self.spec.name)
        final = finals.get(self.spec.partner)
        if final is None or self.seen < final:
            self.tally.undelivered.append(
                f"{self.spec.partner} -> {self.spec.name}: {self.seen} of {final}"
            )

    def close(self) -> None:
        self.replicator.close()
        self.capture.stop()
        self.engine.dispose()


def drive(
    specs: list[Spec],
    settings: Settings,
    slots: Any,
    go: multiprocessing.Queue,
    results: multiprocessing.Queue,
) -> None:
    """A worker process: its devices set up and synced once, then, once
    told the window, one thread per device."""
    logging.getLogger("replicator").setLevel(logging.CRITICAL)  # counted, not logged
    devices: list[Device] = []
    try:
        devices = [Device(spec, settings, slots) for spec in specs]

        def first_sync(device: Device) -> bool:
            for _ in range(SETUP_TRIES):
                if device.sync(math.inf):
                    return True
                time.sleep(1.0)
            return False

        with ThreadPoolExecutor(8) as pool:
            first = list(pool.map(first_sync, devices))
        setup = Tally()
        for device in devices:
            setup.add(device.tally)
            device.tally = Tally(devices=1)
        if not all(first):
            raise BenchmarkError(
                f"{first.count(False)} first syncs failed {SETUP_TRIES} times: {setup.errors}"
            )
        # Hundreds of devices' engines, clients and mappers in one process:
        # left to the collector, every full collection walks them all while
        # every device thread waits for the GIL (a cost of simulating many
        # devices in one process, not one a device pays).
        gc.collect()
        gc.freeze()
        results.put(("ready", setup.errors))
        start, end, drain_end = go.get()
        finals: dict[str, int | None] = {}
        before = resource.getrusage(resource.RUSAGE_SELF)
        threads = [
            threading.Thread(
                target=device.run, args=(start, end, drain_end, finals), name=device.spec.name
            )
            for device in devices
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, end - time.time()))
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu_end = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        for thread in threads:
            thread.join()
        total = Tally()
        for device in devices:
            total.add(device.tally)
        total.cpu_seconds = cpu_end
        results.put(("done", total))
    except BaseException:
        results.put(("error", traceback.format_exc()))
    finally:
        for device in devices:
            with suppress(Exception):
                device.close()


# --- the machine ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command (empty: gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``replicator serve --workers N`` runs
    its workers as child processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of the processes ``pids`` (0 for one gone)."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pids: list[int]) -> float:
    """The sum of the processes' peak resident set sizes (``VmHWM``), in MB."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
    return total / 1024


def mariadbd_pid() -> int | None:
    """The local MariaDB server's process, when it runs on this machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("mariadbd", "mysqld"):
                    return int(entry.name)
            except OSError:
                continue
    return None


@contextmanager
def serving(
    db_url: str, tmp: Path, secret: str, workers: int
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``replicator serve`` over the database ``db_url``, in a process of its
    own; its URL and process. Stopped (killed if need be) at the end."""
    config = tmp / "server.toml"
    config.write_text(
        f'[nodes.hub]\nurl = "{db_url}"\nrole = "server"\n'
        "[gateway]\nrequests_per_second = 1000000.0\nburst = 1000000\n"
    )
    port = free_port()
    log = open(tmp / "gateway.log", "w")  # noqa: SIM115 (a pipe nobody reads would fill up)
    process = subprocess.Popen(
        [*SERVE, "--config", str(config), "--port", str(port), "--workers", str(workers)],
        env={**os.environ, SECRET_ENV: secret},
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise BenchmarkError(f"replicator serve exited: {gateway_log(tmp)}")
            if time.monotonic() > deadline:
                raise BenchmarkError("replicator serve did not answer within 60 s")
            time.sleep(0.1)
        yield url, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def gateway_log(tmp: Path, lines: int = 20) -> str:
    path = tmp / "gateway.log"
    text = path.read_text() if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


class Connections:
    """The MariaDB connections to the benchmark's database while it runs
    (``information_schema.PROCESSLIST`` every :data:`SAMPLE` seconds; other
    databases' and this sampler's own not counted): the peak, and when
    each connection id was first seen (a connection that opens and closes
    between two samples is missed: :meth:`opened` is a lower bound)."""

    def __init__(self, url: str) -> None:
        self.url, self.peak = url, 0
        self.database = sa.make_url(url).database
        self.first_seen: dict[int, float] = {}
        self.began: float | None = None  # the first sample
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        engine = sa.create_engine(sa.make_url(self.url).set(database=None))
        ids = sa.text(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = :db AND ID <> CONNECTION_ID()"
        )
        try:
            with engine.connect() as conn:
                while not self.stop.is_set():
                    found = conn.execute(ids, {"db": self.database}).scalars().all()
                    conn.rollback()
                    now = time.time()
                    self.began = self.began or now
                    self.peak = max(self.peak, len(found))
                    for connection in found:
                        self.first_seen.setdefault(connection, now)
                    self.stop.wait(SAMPLE)
        finally:
            engine.dispose()

    def opened(self, start: float, end: float) -> int:
        """Connections first seen from ``start`` to ``end`` (those there at
        the first sample not counted)."""
        return sum(1 for t in self.first_seen.values() if t != self.began and start <= t <= end)

    def __enter__(self) -> Connections:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


# --- one run -----------------------------------------------------------------------------


@dataclass
class Run:
    mode: str
    devices: int
    seconds: float
    tally: Tally
    gateway_rss: float | None = None
    gateway_cpu: float | None = None
    mariadb_cpu: float | None = None
    connections: int = 0
    opened: int = 0  # MariaDB connections opened in the window (seen: a lower bound)
    gateway_errors: int = 0
    wall: float = 0.0
    problems: list[str] = field(default_factory=list)
    setup_errors: dict[str, int] = field(default_factory=dict)  # first syncs, retried
    code: str = ""  # the library's revision at the run's start

    @property
    def name(self) -> str:
        return "gateway" if self.mode == "gateway" else "direct to MariaDB (peer)"

    @property
    def limit(self) -> float:
        return LIMIT_AT_200 if self.devices <= 200 else LIMIT_ABOVE

    def percentile(self, p: float) -> float:
        return percentile(self.tally.latencies, p)


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (nan for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def progress(message: str) -> None:
    print(f"# {message}", file=sys.stderr, flush=True)


def device_specs(count: int, tmp: Path, mode: str, db_url: str, gateway: str, secret: str):
    from replicator.gateway import tokens

    now = dt.datetime.now(dt.UTC)
    specs = []
    for i in range(count):
        name, partner, owner = f"d{i:04d}", f"d{i ^ 1:04d}", f"u{i // 2}"
        directory = tmp / "devices" / name
        directory.mkdir(parents=True)
        database = directory / f"{name}.sqlite"
        if mode == "gateway":
            token = tokens.issue(secret, name, {"owner": owner}, now=now)
            server = f'url = "{gateway}"\nrole = "server"\ntoken = "{token}"\n'
            scope = ""
        else:
            server = f'url = "{db_url}"\nrole = "server"\n'
            scope = f'scope = {{ owner = "{owner}" }}\n'
        config = directory / "replicator.toml"
        config.write_text(
            f"[nodes.hub]\n{server}"
            f'[nodes.{name}]\nurl = "sqlite:///{database}"\nrole = "local"\n{scope}'
        )
        specs.append(Spec(name, partner, owner, str(database), str(config)))
    return specs


def collect(results: multiprocessing.Queue, workers: list, kind: str, deadline: float) -> list:
    """One ``kind`` message from every worker; raises when one fails, dies
    or the deadline passes."""
    found = []
    while len(found) < len(workers):
        try:
            message = results.get(timeout=1)
        except queue_module.Empty:
            message = None
        if message is None:
            dead = [w for w in workers if not w.is_alive() and w.exitcode]
            if dead:
                raise BenchmarkError(f"a device worker died (exit code {dead[0].exitcode})")
            if time.time() > deadline:
                raise BenchmarkError(f"the device workers did not report {kind!r} in time")
            continue
        if message[0] == "error":
            raise BenchmarkError(f"a device worker failed:\n{message[1]}")
        found.append(message[1])
    return found


def run(mode: str, count: int, args: argparse.Namespace, server: sa.URL) -> Run:
    """One run of ``count`` devices in ``mode`` on a fresh database."""
    started = time.perf_counter()
    code = revision()
    secret = secrets.token_urlsafe(48)
    context = multiprocessing.get_context("spawn")
    name = f"replicator_bench_gateway_{uuid.uuid4().hex[:12]}"
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="repl-gateway-")))
        db_url = stack.enter_context(bench_mariadb.database(server, name))
        engine = sa.create_engine(db_url)
        replicator.migrate(engine)
        Base.metadata.create_all(engine)
        engine.dispose()
        gateway_url, gateway = "", None
        if mode == "gateway":
            gateway_url, gateway = stack.enter_context(
                serving(db_url, tmp, secret, args.gateway_workers)
            )

            @stack.push
            def show_log(kind: Any, error: BaseException | None, trace: Any) -> bool:
                if isinstance(error, BenchmarkError):
                    progress(f"gateway log (last lines):\n{gateway_log(tmp)}")
                return False

        specs = device_specs(count, tmp, mode, db_url, gateway_url, secret)
        settings = Settings(mode, args.think, args.write_every)
        results = context.Queue()
        slots = None
        if mode == "direct" and args.direct_slots:
            slots = context.BoundedSemaphore(args.direct_slots)
        workers, gos = [], []
        procs = max(1, min(args.procs, count // 2))
        pairs = [specs[i : i + 2] for i in range(0, count, 2)]
        for w in range(procs):
            mine = [s for pair in pairs[w::procs] for s in pair]
            go = context.Queue()
            worker = context.Process(
                target=drive, args=(mine, settings, slots, go, results), daemon=True
            )
            worker.start()
            workers.append(worker)
            gos.append(go)

        @stack.callback
        def stop_workers() -> None:
            for worker in workers:
                worker.join(timeout=5)
                if worker.is_alive():
                    worker.terminate()
                    worker.join()

        progress(f"{mode}, {count} devices: setting up (migrate, capture, first sync)")
        setup_errors: dict[str, int] = {}
        for errors in collect(results, workers, "ready", time.time() + 60 + 2.0 * count):
            for error, n in errors.items():
                setup_errors[error] = setup_errors.get(error, 0) + n
        if gateway is not None and gateway.poll() is not None:
            raise BenchmarkError(f"replicator serve exited: {gateway_log(tmp)}")
        mariadb = mariadbd_pid()
        served = tree(gateway.pid) if gateway is not None else []
        database = [mariadb] if mariadb else []
        with Connections(db_url) as connections:
            start = time.time() + 1.0
            end = start + args.seconds
            drain_end = end + args.drain
            for go in gos:
                go.put((start, end, drain_end))
            progress(f"{mode}, {count} devices: running for {args.seconds:g} s")
            time.sleep(max(0.0, start - time.time()))
            cpu_at = {"gateway": cpu_seconds(served), "mariadb": cpu_seconds(database)}
            time.sleep(max(0.0, end - time.time()))
            cpu = {
                "gateway": cpu_seconds(served) - cpu_at["gateway"],
                "mariadb": cpu_seconds(database) - cpu_at["mariadb"],
            }
            progress(f"{mode}, {count} devices: draining (at most {args.drain:g} s)")
            tallies = collect(results, workers, "done", drain_end + 120)
        total = Tally()
        for tally in tallies:
            total.add(tally)
        result = Run(mode, count, args.seconds, total, connections=connections.peak)
        result.opened = connections.opened(start, end)
        result.setup_errors = setup_errors
        result.code = code
        if mariadb:
            result.mariadb_cpu = cpu["mariadb"]
        if gateway is not None:
            if gateway.poll() is not None:
                raise BenchmarkError(f"replicator serve died: {gateway_log(tmp)}")
            result.gateway_rss = peak_rss_mb(tree(gateway.pid))
            result.gateway_cpu = cpu["gateway"]
            log = (tmp / "gateway.log").read_text()
            # Everything it logs past its start line is a warning or an error
            # (uvicorn's own, or the library's through logging's last resort).
            result.gateway_errors = sum(
                1
                for line in log.splitlines()
                if line.strip() and not line.startswith(("replicator gateway on", "Traceback", " "))
            )
            if result.gateway_errors:
                progress(f"gateway log (last lines):\n{gateway_log(tmp, 10)}")
        result.problems = check(result, db_url)
    result.wall = time.perf_counter() - started
    progress(
        f"{mode}, {count} devices: p50 {result.percentile(50):.3f} s, "
        f"p99 {result.percentile(99):.3f} s, {result.wall:.0f} s wall"
    )
    return result


def check(result: Run, db_url: str) -> list[str]:
    """What went wrong: a write that did not reach its partner or the
    server (exactly once), an event the server refused."""
    tally = result.tally
    problems = []
    if tally.undelivered:
        problems.append(
            f"{len(tally.undelivered)} devices lack partner writes after the drain, e.g. "
            + "; ".join(tally.undelivered[:3])
        )
    if tally.pending:
        problems.append(f"{len(tally.pending)} devices never pushed their last writes")
    if tally.delivered != tally.writes:
        problems.append(f"{tally.delivered} of {tally.writes} writes reached the partner")
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            books = conn.exec_driver_sql("SELECT count(*) FROM notebooks").scalar_one()
            notes = conn.exec_driver_sql("SELECT count(*) FROM notes").scalar_one()
            items = conn.exec_driver_sql(
                "SELECT count(*) FROM replicator_review_items WHERE status = 'open'"
            ).scalar_one()
    finally:
        engine.dispose()
    if books != tally.writes or notes != tally.writes:
        problems.append(
            f"the server holds {books} notebooks and {notes} notes for {tally.writes} writes"
        )
    if items:
        problems.append(f"{items} review items are open on the server (forbidden or conflicts)")
    return problems


# --- output ----------------------------------------------------------------------------


def figure(value: float | None, digits: int = 2) -> str:
    return "" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def report(runs: list[Run], args: argparse.Namespace, environment: str) -> str:
    lines = [
        "## Sync gateway under load",
        "",
        environment,
        f"Loop per device: write 1 notebook + 1 note (2 events), sync (up, down), "
        f"think {args.think:g} s (+-10%)"
        + (f"; a write at most every {args.write_every:g} s" if args.write_every else "")
        + f"; {args.procs} device processes, one thread per device.",
        "",
        "| run | devices | seconds | pushes/s | events/s | p50 latency s | p99 latency s "
        "| ratio p99 to limit (1 s up to 200 devices, 2 s above) | gateway peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        p99 = r.percentile(99)
        lines.append(
            f"| {r.name} | {r.devices:,} | {r.seconds:g} | {r.tally.pushes / r.seconds:,.1f} "
            f"| {r.tally.events / r.seconds:,.1f} | {figure(r.percentile(50), 3)} "
            f"| {figure(p99, 3)} | {figure(p99 / r.limit, 2)} "
            f"| {figure(r.gateway_rss, 0)} |"
        )
    lines += [
        "",
        "| run | devices | writes (all delivered) | syncs in window "
        "| failed syncs (window + drain) | deferred passes | sync p50 s | sync p99 s "
        "| max latency s "
        "| MariaDB connections: peak / opened per s "
        "| CPU s in window: gateway / devices / mariadbd "
        "| CPU ms per sync: gateway / device | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        t = r.tally
        cpu = " / ".join(
            figure(v, 0) if v is not None else "-"
            for v in (r.gateway_cpu, t.cpu_seconds, r.mariadb_cpu)
        )
        per_sync = " / ".join(
            figure(1000 * v / t.syncs, 0) if v is not None and t.syncs else "-"
            for v in (r.gateway_cpu, t.cpu_seconds)
        )
        lines.append(
            f"| {r.name} | {r.devices:,} | {t.writes:,} | {t.syncs:,} "
            f"| {t.failed:,} + {t.failed_drain:,} | {t.deferred:,} "
            f"| {figure(percentile(t.sync_seconds, 50), 3)} "
            f"| {figure(percentile(t.sync_seconds, 99), 3)} "
            f"| {figure(max(t.latencies, default=math.nan), 3)} "
            f"| {r.connections} / {r.opened / r.seconds:.1f} "
            f"| {cpu} "
            f"| {per_sync} | {r.wall:.0f} |"
        )
    failures = [(r, "", e, n) for r in runs for e, n in r.tally.errors.items()]
    failures += [
        (r, "first sync, retried: ", e, n) for r in runs for e, n in r.setup_errors.items()
    ]
    if failures:
        lines += ["", "Failed passes (first words of the error, count):", ""]
        for r, when, error, n in sorted(failures, key=lambda f: -f[3])[:12]:
            lines.append(f"* {r.name}, {r.devices} devices: {when}{n} x `{error}`")
    for r in runs:
        for problem in r.problems:
            lines.append(f"* CHECK FAILED, {r.name}, {r.devices} devices: {problem}")
    logged = [r for r in runs if r.gateway_errors]
    for r in logged:
        lines.append(
            f"* gateway, {r.devices} devices: {r.gateway_errors} warnings or errors in its log"
        )
    lines.append("")
    gateway_runs = [r for r in runs if r.mode == "gateway"]
    at_200 = [r for r in gateway_runs if r.devices == 200]
    for r in at_200:
        p99 = r.percentile(99)
        lines.append(
            f"Target p99 < {LIMIT_AT_200:g} s at 200 devices: "
            f"{'met' if p99 < LIMIT_AT_200 else 'MISSED'} (p99 {p99:.3f} s)."
        )
    under = [r.devices for r in gateway_runs if r.percentile(99) < LIMIT_ABOVE]
    measured = ", ".join(str(r.devices) for r in gateway_runs)
    if gateway_runs:
        lines.append(
            f"Largest N measured (of {measured}) whose gateway p99 stays under "
            f"{LIMIT_ABOVE:g} s: {max(under) if under else 'none'}."
        )
    for r in gateway_runs:
        peers = [p for p in runs if p.mode == "direct" and p.devices == r.devices]
        for p in peers:
            lines.append(
                f"At {r.devices} devices the gateway's p99 is "
                f"{r.percentile(99) / p.percentile(99):.2f}x the direct peer's, its events/s "
                f"{r.tally.events / max(p.tally.events, 1):.2f}x."
            )
    return "\n".join(lines)


def code(runs: list[Run]) -> str:
    """The library's code each run started with (it can change under a
    long benchmark in a working tree)."""
    by_code: dict[str, list[str]] = {}
    for r in runs:
        by_code.setdefault(r.code, []).append(f"{r.mode} {r.devices}")
    if len(by_code) <= 1:
        return next(iter(by_code), revision())
    return "; ".join(f"{c} ({', '.join(names)})" for c, names in by_code.items())


def revision() -> str:
    """The repository's commit, and whether the library differs from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "diff", "HEAD", "--", "replicator"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    if not changed:
        return f"commit {commit}"
    digest = sha1(changed).hexdigest()[:8]
    return f"commit {commit} + uncommitted changes in replicator/ (diff {digest})"


def environment(server: sa.URL, runs: list[Run]) -> str:
    import uvicorn

    engine = sa.create_engine(server.set(database=None))
    try:
        with engine.connect() as conn:
            version = conn.exec_driver_sql("SELECT VERSION()").scalar_one()
            limit = conn.exec_driver_sql("SELECT @@max_connections").scalar_one()
    finally:
        engine.dispose()
    return (
        f"Code: {code(runs)}. "
        f"Python {platform.python_version()}, SQLAlchemy {sa.__version__}, uvicorn "
        f"{uvicorn.__version__}, MariaDB {version} (max_connections {limit}), "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs "
        "(gateway, devices and MariaDB share them)."
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200, help="simulated devices (even)")
    parser.add_argument("--sweep", default="", help="device counts to run, e.g. 50,200,1000")
    parser.add_argument("--seconds", type=float, default=60.0, help="the timed window")
    parser.add_argument("--think", type=float, default=0.5, help="seconds between syncs")
    parser.add_argument(
        "--write-every", type=float, default=0.0, help="a device writes at most every S s"
    )
    parser.add_argument("--procs", type=int, default=2, help="device worker processes")
    parser.add_argument(
        "--gateway-workers", type=int, default=1, help="replicator serve --workers (default 1)"
    )
    parser.add_argument(
        "--direct-slots",
        type=int,
        default=DIRECT_SLOTS,
        help=f"direct peer: syncs at once, all devices (default {DIRECT_SLOTS}; 0: no limit)",
    )
    parser.add_argument(
        "--drain",
        type=float,
        default=None,
        help="at most this long to deliver the last writes (default 60 + devices / 5 s)",
    )
    parser.add_argument("--skip-direct", action="store_true", help="no direct-to-MariaDB peer")
    parser.add_argument("--skip-gateway", action="store_true", help="only the direct peer")
    parser.add_argument(
        "--url", default=os.environ.get("REPLICATOR_BENCH_MARIADB_URL", DEFAULT_URL)
    )
    args = parser.parse_args(argv)
    args.counts = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.devices]
    args.drain_given = args.drain
    if any(n < 2 or n % 2 for n in args.counts):
        parser.error("device counts must be even and at least 2 (devices come in pairs)")
    if args.seconds <= 0 or args.think < 0 or args.procs < 1:
        parser.error("--seconds must be positive, --think not negative, --procs at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Killed with SIGTERM: unwind, so that the gateway stops and the database is dropped.
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))
    server = sa.make_url(args.url)
    problem = bench_mariadb.unreachable(server)
    if problem:
        print(f"FAILED: MariaDB at {problem}", file=sys.stderr)
        return 1
    started = time.perf_counter()
    runs: list[Run] = []
    try:
        for count in args.counts:
            args.drain = args.drain_given if args.drain_given is not None else 60 + count / 5
            if not args.skip_gateway:
                runs.append(run("gateway", count, args, server))
            if not args.skip_direct:
                runs.append(run("direct", count, args, server))
    except BenchmarkError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        if runs:
            print(report(runs, args, environment(server, runs)))
        return 1
    print(report(runs, args, environment(server, runs)))
    print(f"\nWall time of the benchmark: {time.perf_counter() - started:.0f} s.")
    failed = [r for r in runs if r.problems]
    for r in failed:
        print(f"FAILED: {r.name}, {r.devices} devices: " + "; ".join(r.problems), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
