"""Continuous replication in process: the runner's rounds (what it runs,
how it waits and backs off, what it logs), one runner per link, the
background sync in a thread and as an asyncio task, and stopping between
batches. The `replicator run` command itself: tests/test_run_cli.py."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import replicator
from replicator import checkpoints, logs, outbox
from replicator.application import Replicator
from replicator.config import loads
from replicator.service import AsyncBackgroundSync, BackgroundSync, Runner, Timing
from replicator.sync import SyncPass

from .cluster import add_vocabulary, config, member, vocabulary


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log_lines():
    """The replicator's log lines (JSON), as `replicator run --log-format json` writes them."""
    stream = io.StringIO()
    logs.configure("json", stream=stream)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield lines
    logs.reset()


def events(lines: list[dict], kind: str) -> list[dict]:
    return [line for line in lines if line["event"] == kind]


def ran(runner: Runner) -> list[tuple[str, str, int]]:
    """The passes of the runner's last round: (source, target, events read)."""
    return [(p.source, p.target, p.read) for p in runner.last.passes]


# How long a background sync may take to carry a write over before the test
# fails: a bound for a hang, not a speed requirement (a busy machine may be
# slow), and below the interval, so that a write picked up only at the next
# interval still fails; the rounds' pace is tested with an injected clock.
CARRIED_WITHIN = Timing().interval * 2 / 3


def rounds_of(runner: Runner) -> threading.Condition:
    """A condition notified at the end of each of ``runner``'s rounds (a
    replicated row appears inside a round): what a test waits on."""
    ended = threading.Condition()
    step = runner.step

    def step_and_tell() -> float:
        try:
            return step()
        finally:
            with ended:
                ended.notify_all()

    runner.step = step_and_tell
    return ended


def wait_for(condition, rounds: threading.Condition, seconds: float = CARRIED_WITHIN) -> float:
    """Wait until ``condition`` holds, checked now and after each round;
    how long it took. Fails after ``seconds``."""
    started = time.monotonic()
    with rounds:
        held = rounds.wait_for(condition, timeout=seconds)
    assert held, f"not within {seconds} s"
    return time.monotonic() - started


@pytest.fixture
def pair(tmp_path):
    """A SQLite server and a DuckDB phone."""
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"duckdb:///{tmp_path / 'phone.duckdb'}")
    yield server, phone
    phone.close()
    server.close()


def test_a_runner_runs_the_passes_whose_source_moved_and_every_pass_each_interval(pair, log_lines):
    server, phone = pair
    clock = Clock()
    with Replicator(config(server, phone), engines={"phone": phone.engine}) as r:
        runner = Runner(r, timing=Timing(interval=60), now=clock)
        runner.step()  # the first round runs everything
        assert ran(runner) == [("phone", "server", 0), ("server", "phone", 0)]
        runner.step()
        assert ran(runner) == [], "nothing moved: no pass"

        add_vocabulary(phone, "v-1", "uno")
        delay = runner.step()
        assert ran(runner) == [("phone", "server", 1)]
        assert vocabulary(server, "v-1") is not None
        assert delay == Timing().poll, "after events, the next poll comes soon"
        runner.step()  # the server logged what it applied: its pass looks once
        assert ran(runner) == [("server", "phone", 0)]

        add_vocabulary(server, "v-2", "dos")
        runner.step()
        assert ran(runner) == [("server", "phone", 1)]
        assert vocabulary(phone, "v-2") is not None

        idle = [runner.step() for _ in range(5)]
        assert all(ran(runner) == [] for _ in idle)
        assert idle == sorted(idle) and idle[-1] == Timing().idle_poll, idle

        clock.now += 60
        runner.step()
        assert ran(runner) == [("phone", "server", 0), ("server", "phone", 0)]
        runner.close()

    passes = events(log_lines(), "pass")
    assert len(passes) == 6, "a line per pass, but for the empty one off the interval"
    recorded = 0
    for node in (server, phone):
        with node.engine.connect() as conn:
            recorded += conn.execute(sa.text("select count(*) from replicator_sync_runs")).scalar()
    assert recorded == 6, "the passes logged are those recorded"
    assert passes[2] | {"seconds": 0} == {
        **passes[2],
        "source": "phone",
        "target": "server",
        "channel": "default",
        "read": 1,
        "applied": 1,
        "status": "ok",
        "seconds": 0,
    }
    assert [e["link"] for e in events(log_lines(), "link_taken")] == ["phone"]


def test_an_unreachable_node_is_logged_once_backed_off_and_picked_up_again(tmp_path, log_lines):
    """The server's directory is missing (SQLite cannot open it), then appears."""
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    away = tmp_path / "away"
    sqlite_says = refusal_of_sqlite(away / "server.sqlite")
    settings = loads(
        f'[nodes.server]\nurl = "sqlite:///{away}/server.sqlite"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{phone.node.url}"\nrole = "local"\n'
    )
    add_vocabulary(phone, "v-1", "uno")
    clock = Clock()
    with Replicator(settings) as r:
        timing = Timing(backoff=0.5, backoff_cap=4)
        runner = Runner(r, timing=timing, rand=lambda: 1.0, now=clock)
        delays = []
        for _ in range(6):
            delays.append(runner.step())
            clock.now += delays[-1]
        assert delays == [0.5, 1, 2, 4, 4, 4], "exponential, capped"
        assert runner.last.passes == [] and "server" in runner.last.unreachable
        clock.now -= 1
        assert runner.step() == 1, "not asked again before its time"
        clock.now += 1

        away.mkdir()
        replicator.migrate(f"sqlite:///{away}/server.sqlite")
        assert runner.step() == Timing().poll, "backed off no more"
        assert ran(runner) == [("phone", "server", 1), ("server", "phone", 0)]
        runner.close()
    phone.close()

    lines = log_lines()
    (lost,) = events(lines, "node_unreachable")
    assert lost["node"] == "server" and "cannot be reached" in lost["error"]
    assert sqlite_says in lost["error"], "the database's own reason is passed on"
    (back,) = events(lines, "node_reachable")
    assert back["node"] == "server"


def refusal_of_sqlite(path: Path) -> str:
    """What SQLite itself says when it cannot open ``path``, in the words of
    the SQLite this test runs with."""
    try:
        sqlite3.connect(path).close()
    except sqlite3.OperationalError as e:
        return str(e)
    raise AssertionError(f"SQLite opened {path}")


def test_jitter_spreads_each_delay_over_its_upper_half(tmp_path):
    settings = loads(
        f'[nodes.server]\nurl = "sqlite:///{tmp_path}/no/such/server.sqlite"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "sqlite:///{tmp_path}/phone.sqlite"\nrole = "local"\n'
    )
    clock = Clock()
    with Replicator(settings) as r:
        low = Runner(r, timing=Timing(backoff=1, backoff_cap=8), rand=lambda: 0.0, now=clock)
        delays = []
        for _ in range(5):
            delays.append(low.step())
            clock.now += delays[-1]
        assert delays == [0.5, 1, 2, 4, 4]


def test_one_local_away_does_not_slow_the_others(tmp_path):
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    settings = loads(
        f'[nodes.server]\nurl = "{server.node.url}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{phone.node.url}"\nrole = "local"\n'
        f'[nodes.tablet]\nurl = "sqlite:///{tmp_path}/gone/tablet.sqlite"\nrole = "local"\n'
    )
    clock = Clock()
    with Replicator(settings) as r:
        runner = Runner(r, now=clock)
        for i in range(4):
            add_vocabulary(phone, f"v-{i}", "uno")
            delay = runner.step()
            assert delay <= Timing().idle_poll, "the phone's link polls on"
            assert "tablet" in runner.last.unreachable
            assert ("phone", "server", 1) in ran(runner)
            clock.now += delay
        runner.close()
    phone.close()
    server.close()


def test_no_password_of_a_node_url_reaches_the_log(tmp_path):
    """Port 1 refuses the connection: the error and every line stay masked."""
    settings = loads(
        '[nodes.server]\nurl = "mysql+pymysql://repl:s3cret-pw@127.0.0.1:1/app"\n'
        'role = "server"\n'
        f'[nodes.phone]\nurl = "sqlite:///{tmp_path}/phone.sqlite"\nrole = "local"\n'
    )
    for fmt in logs.FORMATS:
        stream = io.StringIO()
        logs.configure(fmt, stream=stream)
        try:
            with Replicator(settings) as r:
                runner = Runner(r)
                runner.step()
                runner.close()
                # A message quoting a URL (as a driver's might) is masked too.
                logs.logging.getLogger("replicator.test").warning(
                    "cannot use %s", "mysql+pymysql://repl:s3cret-pw@127.0.0.1:1/app"
                )
        finally:
            logs.reset()
        text = stream.getvalue()
        assert "node server is unreachable" in text
        assert "repl:***@127.0.0.1" in text
        assert "s3cret-pw" not in text


@pytest.mark.backends("sqlite", "mariadb")
def test_two_runners_on_one_link_the_second_waits_until_the_first_lets_go(
    database_url, tmp_path, log_lines
):
    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    settings = config(server, phone)
    clock = Clock()
    first, second, third = Replicator(settings), Replicator(settings), Replicator(settings)
    try:
        a = Runner(first, holder="runner A", now=clock)
        b = Runner(second, holder="runner B", now=clock)
        a.step()
        assert len(a.last.passes) == 2
        assert b.step() <= 1.0, "a waiting runner looks again within a second"
        assert b.last.passes == []
        add_vocabulary(phone, "v-1", "uno")
        for _ in range(3):
            a.step()
            clock.now += 2
            b.step()
            assert b.last.passes == [], "the second runs no pass while the first holds the link"
        assert vocabulary(server, "v-1") is not None

        # A one-off sync leaves the link alone too, naming who has it.
        result = third.sync()
        assert result.passes == [] and result.held == {"phone": "runner A"}

        (held,) = events(log_lines(), "link_held")
        assert held["link"] == "phone" and held["holder"] == "runner A"
        assert "runner A" in held["message"]

        a.stop()
        a.close()
        clock.now += 2
        b.step()
        assert len(b.last.passes) == 2, "the second takes over"
        b.close()
    finally:
        for r in (first, second, third):
            r.close()
        phone.close()
        server.close()


def test_a_stopped_pass_ends_after_its_batch_with_the_checkpoint_committed(pair):
    server, phone = pair
    for i in range(10):
        add_vocabulary(phone, f"v-{i}", f"word {i}")
    positions = [p for p, _ in outbox.read(phone.engine.connect())]
    sync_pass = SyncPass(phone.node, server.node, batch_size=3)
    result = sync_pass.run(stop=lambda: True)
    assert (result.read, result.applied, result.status) == (3, 3, "ok")
    with server.engine.connect() as conn:
        assert checkpoints.get(conn, "phone", "default") == positions[2]
    rest = sync_pass.run()
    assert rest.read == 7
    assert [vocabulary(server, f"v-{i}") is not None for i in range(10)] == [True] * 10


def test_a_background_thread_shares_the_apps_duckdb_engine(pair):
    server, phone = pair
    settings = config(server, phone)
    sync = BackgroundSync(settings, engines={"phone": phone.engine})
    rounds = rounds_of(sync.runner)
    with sync:
        assert sync.running
        add_vocabulary(phone, "v-1", "uno")
        wait_for(lambda: vocabulary(server, "v-1") is not None, rounds)
        add_vocabulary(server, "v-2", "dos")
        sync.notify()
        wait_for(lambda: vocabulary(phone, "v-2") is not None, rounds)
        lock = sync.replicator.lock("phone")
        assert "background sync" in (lock.holder() or "")
    assert not sync.running and sync.error is None
    assert lock.holder() is None, "stopping lets go of the link"


def test_an_asyncio_task_replicates_while_the_app_awaits(pair):
    server, phone = pair
    settings = config(server, phone)

    async def app() -> None:
        sync = AsyncBackgroundSync(settings, engines={"phone": phone.engine})
        rounds = rounds_of(sync.runner)
        async with sync:
            add_vocabulary(phone, "v-1", "uno")
            sync.notify()
            # Waited for in a thread: the rounds need the event loop meanwhile.
            await asyncio.to_thread(wait_for, lambda: vocabulary(server, "v-1") is not None, rounds)
            assert sync.running
        assert not sync.running

    asyncio.run(app())


def test_locks_live_beside_an_embedded_servers_file(tmp_path):
    path = tmp_path / "server.sqlite"
    settings = loads(
        f'[nodes.server]\nurl = "sqlite:///{path}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "sqlite:///{tmp_path}/phone.sqlite"\nrole = "local"\n'
    )
    with Replicator(settings) as r:
        lock = r.lock("phone")
        assert lock.acquire("me")
        assert Path(f"{path}.replicator-link-phone.lock").read_text() == "me\n"
        with Replicator(settings) as other:
            assert not other.lock("phone").acquire("you")
            assert other.lock("phone").holder() == "me"
        lock.release()
        assert r.lock("phone").holder() is None


def test_an_in_memory_servers_locks_are_one_per_database():
    settings = loads(
        '[nodes.server]\nurl = "sqlite://"\nrole = "server"\n'
        '[nodes.phone]\nurl = "sqlite://"\nrole = "local"\n'
    )
    with Replicator(settings) as one, Replicator(settings) as two:
        first = one.lock("phone")
        assert first.acquire("one") and first.acquire("one")
        assert not one.lock("phone").acquire("again"), "the same database: held"
        assert two.lock("phone").acquire("two"), "another in-memory database: free"
        first.release()


def test_stats_percentile_is_nearest_rank():
    from replicator.stats import percentile

    assert percentile([3.0], 95) == 3.0
    assert percentile([float(n) for n in range(1, 101)], 95) == 95.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0


def test_a_replicator_engine_count_stays_put_across_rounds(pair):
    """Rounds reuse the nodes' engines: no connection is left open per round."""
    server, phone = pair
    with Replicator(config(server, phone), engines={"phone": phone.engine}) as r:
        runner = Runner(r)
        for _ in range(20):
            runner.step()
        pool = r.server.get_engine().pool
        assert pool.checkedout() == 0
        runner.close()
    recorded = 0
    for node in (server, phone):
        with node.engine.connect() as conn:
            recorded += conn.execute(sa.text("select count(*) from replicator_sync_runs")).scalar()
    assert recorded == 2, "one pass each way, then nothing moved"


@pytest.mark.backends("mariadb")
def test_a_runner_cut_off_takes_back_the_lock_its_lost_connection_still_holds(database_url):
    """After a network cut the server may keep the old connection (and its
    lock) for hours: the same holder ends it; anyone else still waits."""
    settings = loads(
        f'[nodes.server]\nurl = "{database_url}"\nrole = "server"\n'
        '[nodes.phone]\nurl = "sqlite://"\nrole = "local"\n'
    )
    replicator.migrate(database_url)
    with Replicator(settings) as r:
        lock = r.lock("phone")
        assert lock.acquire("runner A")
        advisory = lock.inner  # the dialect's lock, behind the node's boundary
        lost, advisory._conn = advisory._conn, None  # cut off: the server still has it
        try:
            other = r.lock("phone")
            assert not other.acquire("runner B"), "someone else waits"
            assert other.holder() == "runner A"
            assert lock.acquire("runner A"), "the same holder takes it back"
            assert lock.held() and other.holder() == "runner A"
        finally:
            lock.release()
            with contextlib.suppress(sa.exc.DBAPIError):
                lost.close()


def test_stopping_a_background_sync_raises_what_ended_it(pair):
    server, phone = pair
    sync = BackgroundSync(config(server, phone), engines={"phone": phone.engine})

    def broken() -> float:
        raise OSError("the lock directory is not writable")

    sync.runner.step = broken
    sync.start()
    sync._thread.join(CARRIED_WITHIN)  # it ends by itself, before anyone stops it
    assert not sync.running, f"the broken round did not end the thread within {CARRIED_WITHIN} s"
    with pytest.raises(OSError, match="not writable"):
        sync.stop()


def test_a_cancelled_asyncio_sync_lets_its_round_finish_before_letting_go(pair):
    server, phone = pair
    sync = AsyncBackgroundSync(config(server, phone), engines={"phone": phone.engine})
    runner = sync.runner
    seen = []
    step, close = runner.step, runner.close
    running = threading.Event()
    go_on = threading.Event()

    def slow_step() -> float:
        seen.append("step")
        running.set()
        # A round still writing when the task is cancelled: it goes on once
        # the task has done whatever it does before the round ends, or as
        # soon as a wrong close comes first.
        assert go_on.wait(30), "the round was never let go on"
        delay = step()
        seen.append("step done")
        return delay

    def recorded_close() -> None:
        seen.append("close")
        go_on.set()
        close()

    runner.step, runner.close = slow_step, recorded_close

    async def app() -> None:
        await sync.start()
        assert await asyncio.to_thread(running.wait, 30), "no round started"
        sync._task.cancel()  # the app's loop ends without stopping it, mid-round
        # Turns of the event loop (not a wait): the cancelled task runs as
        # far as it goes while the round has not ended.
        for _ in range(100):
            await asyncio.sleep(0)
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await sync._task

    asyncio.run(app())
    assert seen == ["step", "step done", "close"]
    assert runner.stopping.is_set()
    sync.replicator.close()


@pytest.mark.backends("mariadb")
def test_a_server_without_the_runners_table_is_refused_by_name(database_url, tmp_path, log_lines):
    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    with server.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE replicator_runners")  # a schema at 0004
    try:
        with Replicator(config(server, phone)) as r:
            with pytest.raises(replicator.SchemaError, match="run `replicator init`"):
                r.sync()
            clock = Clock()
            runner = Runner(r, now=clock)
            for _ in range(3):
                clock.now += runner.step() + 30
                assert runner.last.passes == []
            runner.close()
        (error,) = events(log_lines(), "link_error")
        assert error["link"] == "phone" and "replicator_runners" in error["error"]
    finally:
        phone.close()
        server.close()


def test_a_runner_lets_go_of_a_link_whose_local_it_cannot_reach(tmp_path, log_lines):
    """The app may hold the local (a DuckDB file) and sync it itself."""
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    (tmp_path / "device").mkdir()
    phone = member("phone", f"sqlite:///{tmp_path / 'device' / 'phone.sqlite'}")
    phone.close()
    with Replicator(config(server, phone)) as r:
        runner = Runner(r)
        runner.step()
        assert r.lock("phone").holder() == runner.holder
        (tmp_path / "device").rename(tmp_path / "away")
        r.nodes["phone"].dispose()
        runner.step()
        assert r.lock("phone").holder() is None, "free for whoever can reach the phone"
        runner.close()
    (released,) = events(log_lines(), "link_released")
    assert released["link"] == "phone"
    server.close()


def test_a_link_taken_after_the_server_comes_back_bootstraps_the_empty_local(tmp_path, log_lines):
    (tmp_path / "hub").mkdir()
    server = member("server", f"sqlite:///{tmp_path / 'hub' / 'server.sqlite'}", role="server")
    add_vocabulary(server, "v-1", "uno")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    settings = config(server, phone)
    server.close()
    (tmp_path / "hub").rename(tmp_path / "down")
    clock = Clock()
    with Replicator(settings, engines={"phone": phone.engine}) as r:
        runner = Runner(r, now=clock)
        clock.now += runner.step()  # the server cannot be reached: nothing taken
        assert "server" in runner.last.unreachable
        (tmp_path / "down").rename(tmp_path / "hub")
        r.nodes["server"].dispose()
        runner.step()
        runner.close()
    (done,) = events(log_lines(), "bootstrapped")
    assert done["node"] == "phone"
    assert vocabulary(phone, "v-1") is not None
    phone.close()


def test_holder_names_are_unique_within_a_process():
    from replicator.locks import holder_name

    assert holder_name("replicator sync") != holder_name("replicator sync")


def test_a_link_backing_off_past_its_interval_does_not_make_the_runner_spin(tmp_path):
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    tablet = member("tablet", f"sqlite:///{tmp_path / 'tablet.sqlite'}")
    with tablet.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE replicator_checkpoints")  # its passes fail
    clock = Clock()
    with Replicator(config(server, phone, tablet)) as r:
        runner = Runner(r, timing=Timing(interval=1), now=clock)
        rounds = 0
        while clock.now < 1120 and rounds < 5000:
            clock.now += runner.step()
            rounds += 1
        runner.close()
        assert not runner.last.unreachable
    # Idle polls at 0.25 s would be 480 rounds; spinning would be thousands.
    assert rounds < 600, rounds
    for m in (tablet, phone, server):
        m.close()
