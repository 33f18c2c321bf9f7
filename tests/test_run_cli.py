"""`replicator run` as a service, in a subprocess, between a SQLite phone
and a MariaDB server reached as a user with a password: writes on either
side reach the other within 2 seconds, SIGTERM stops it cleanly, a network
cut (a TCP proxy between it and MariaDB) is ridden out; `status` and
`stats` report it. The password appears in none of their output."""

from __future__ import annotations

import contextlib
import json
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from replicator import checkpoints, outbox

from .cluster import add_vocabulary, member, vocabulary
from .test_cli import REPLICATOR, run

SECRET = "pw-" + uuid.uuid4().hex[:10]


@pytest.fixture
def user_url(database_url):
    """The test database as a user of its own, with a password."""
    url = make_url(database_url)
    user = f"repl_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url)
    hosts = ("%%", "localhost", "127.0.0.1")  # %% is pymysql's escaped %
    with admin.begin() as conn:
        for host in hosts:
            conn.exec_driver_sql(f"CREATE USER '{user}'@'{host}' IDENTIFIED BY '{SECRET}'")
            conn.exec_driver_sql(f"GRANT ALL ON {url.database}.* TO '{user}'@'{host}'")
    yield url.set(username=user, password=SECRET)
    with admin.begin() as conn:
        for host in hosts:
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{user}'@'{host}'")
    admin.dispose()


class Proxy:
    """A TCP proxy to MariaDB that a test can cut (every connection closed,
    new ones refused) and restore on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.sockets: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self.listener = self.listener, None
        # Shut down first: a bare close leaves the socket listening while
        # the accepting thread still blocks on it.
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        for s in list(self.sockets):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.sockets.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(a, selectors.EVENT_READ, b)
        selector.register(b, selectors.EVENT_READ, a)
        try:
            while True:
                for key, _ in selector.select():
                    data = key.fileobj.recv(65536)
                    if not data:
                        return
                    key.data.sendall(data)
        except OSError:
            return
        finally:
            for s in (a, b):
                s.close()
                self.sockets.discard(s)


def write_config(tmp_path: Path, server_url: str, phone_url: str) -> Path:
    path = tmp_path / "replicator.toml"
    path.write_text(
        f'[nodes.server]\nurl = "{server_url}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{phone_url}"\nrole = "local"\n'
        "[replication]\ninterval_seconds = 5\n"
    )
    return path


def start(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [REPLICATOR, "run", "--config", str(config), "--log-format", "json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop(service: subprocess.Popen[str]) -> tuple[int, str, str]:
    service.send_signal(signal.SIGTERM)
    out, err = service.communicate(timeout=30)
    return service.returncode, out, err


def seen_within(condition, seconds: float) -> float:
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"not replicated within {seconds} s"
        # The service is another process, and the row its pass writes is all
        # there is to see: polled, briefly, until the deadline.
        time.sleep(0.02)
    return time.monotonic() - started


def lines_of(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@pytest.fixture
def nodes(database_url, tmp_path):
    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    yield server, phone
    phone.close()
    server.close()


@pytest.mark.backends("mariadb")
def test_run_carries_writes_both_ways_within_two_seconds_and_stops_on_sigterm(
    nodes, user_url, tmp_path
):
    server, phone = nodes
    config = write_config(tmp_path, user_url.render_as_string(hide_password=False), phone.node.url)
    service = start(config)
    outputs = []
    try:
        add_vocabulary(phone, "from-phone", "uno")
        seen_within(lambda: vocabulary(server, "from-phone") is not None, 10)  # starting up
        for i in range(3):
            add_vocabulary(phone, f"phone-{i}", "uno")
            seen_within(lambda i=i: vocabulary(server, f"phone-{i}") is not None, 2)
            add_vocabulary(server, f"server-{i}", "dos")
            seen_within(lambda i=i: vocabulary(phone, f"server-{i}") is not None, 2)

        during = run("status", "--json", "--config", str(config))
        outputs.append(during)
        assert during.returncode == 0, during.stderr
        links = json.loads(during.stdout)["links"]
        assert all("(replicator run) since" in link["runner"] for link in links), links
    finally:
        code, out, err = stop(service)
    outputs.append(subprocess.CompletedProcess([], code, out, err))
    assert code == 0, err
    lines = lines_of(err)
    assert lines[-1]["event"] == "stopped"
    assert any(line["event"] == "pass" and line["applied"] for line in lines)

    # The checkpoints are committed: each side has applied all of the other's log.
    with phone.engine.connect() as conn:
        phone_head = outbox.head(conn)
        phone_checkpoint = checkpoints.get(conn, "server", "default")
    with server.engine.connect() as conn:
        server_head = outbox.head(conn)
        server_checkpoint = checkpoints.get(conn, "phone", "default")
    assert server_checkpoint == phone_head
    assert phone_checkpoint == server_head

    after = [run(c, "--json", "--config", str(config)) for c in ("status", "stats")]
    outputs += after
    status, stats = (json.loads(r.stdout) for r in after)
    assert all(link["lag"] == 0 and not link["syncing"] for link in status["links"])
    assert all(link["runner"] is None for link in status["links"])
    assert (stats["failed"], stats["applied"]) == (0, 7), stats
    for result in outputs:
        assert SECRET not in result.stdout + result.stderr


@pytest.mark.backends("mariadb")
def test_run_rides_out_a_network_cut_logging_it_once_and_losing_nothing(nodes, user_url, tmp_path):
    server, phone = nodes
    proxy = Proxy((user_url.host or "127.0.0.1", user_url.port or 3306))
    through_proxy = user_url.set(host="127.0.0.1", port=proxy.port)
    config = write_config(
        tmp_path, through_proxy.render_as_string(hide_password=False), phone.node.url
    )
    from replicator.service import Timing

    service = start(config)
    # The service's log as it writes it, read by a thread of its own, so
    # that the test can wait for a line.
    logged: list[str] = []
    more = threading.Condition()

    def read_log() -> None:
        try:
            for line in service.stderr:
                with more:
                    logged.append(line)
                    more.notify_all()
        finally:
            with more:
                more.notify_all()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()

    def wait_for_line(event: str, seconds: float) -> None:
        def seen() -> bool:
            found = any(line["event"] == event for line in lines_of("".join(logged)))
            return found or not reader.is_alive()

        with more:
            assert more.wait_for(seen, seconds) and reader.is_alive(), (
                f"the service logged no {event} within {seconds} s: {''.join(logged)}"
            )

    try:
        add_vocabulary(phone, "before", "uno")
        seen_within(lambda: vocabulary(server, "before") is not None, 10)

        proxy.cut()
        cut = time.monotonic()
        for i in range(5):
            add_vocabulary(phone, f"cut-{i}", "dos")
        add_vocabulary(server, "server-side", "tres")
        wait_for_line("node_unreachable", 15)
        noticed = time.monotonic()
        # Kept cut while the runner's backoff retries, by the subprocess's
        # own clock (a test cannot step it, nor see a retry): the first
        # comes within `backoff` seconds of the failure it noticed, the next
        # within twice that. Two retries failing must not log the cut again.
        hold = 3 * Timing().backoff
        with more:
            assert not more.wait_for(lambda: not reader.is_alive(), hold), (
                f"the service ended during the cut: {''.join(logged)}"
            )
        proxy.restore()
        restored = time.monotonic()

        for i in range(5):
            seen_within(lambda i=i: vocabulary(server, f"cut-{i}") is not None, 15)
        seen_within(lambda: vocabulary(phone, "server-side") is not None, 5)
        caught_up = time.monotonic()
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            code = service.wait(timeout=30)
        finally:
            service.kill()
            reader.join(30)
            out, err = service.stdout.read(), "".join(logged)
            if proxy.listener is not None:  # not cut already (a failure during the cut)
                proxy.cut()
    assert code == 0, err
    lines = lines_of(err)
    lost = [line for line in lines if line["event"] == "node_unreachable"]
    back = [line for line in lines if line["event"] == "node_reachable"]
    assert [line["node"] for line in lost] == ["server"], lost
    assert [line["node"] for line in back] == ["server"], back
    # The outage it reports began after the cut and before the test saw it
    # logged, and ended after the restore and before the rows came over.
    assert restored - noticed - 0.001 <= back[0]["seconds"] <= caught_up - cut + 0.001, (
        f"expected the outage reported between {restored - noticed:.3f} s (seen logged "
        f"to restored) and {caught_up - cut:.3f} s (cut to caught up), got {back[0]}"
    )
    assert SECRET not in out + err


def test_run_refuses_bad_options_with_exit_2(tmp_path):
    from typer.testing import CliRunner

    from replicator.cli import app

    config = write_config(
        tmp_path, f"sqlite:///{tmp_path}/server.sqlite", f"sqlite:///{tmp_path}/phone.sqlite"
    )
    runner = CliRunner()
    for args, message in (
        (["run", "--interval", "0"], "--interval must be more than 0 seconds"),
        (["run", "--log-format", "xml"], "--log-format must be text or json"),
        (["run", "--direction", "sideways"], "--direction must be up, down or bidirectional"),
        (["stats", "--days", "0"], "--days must be more than 0"),
    ):
        result = runner.invoke(app, [*args, "--config", str(config)])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output


def test_no_command_shows_a_nodes_password(tmp_path):
    """Every command, against a server that refuses the connection (port 1)
    and a config naming it with a password: each fails, and says so
    without the password."""
    from typer.testing import CliRunner

    from replicator.cli import app

    secret = "never-" + uuid.uuid4().hex[:8]
    config = write_config(
        tmp_path,
        f"mysql+pymysql://repl:{secret}@127.0.0.1:1/app",
        f"sqlite:///{tmp_path}/phone.sqlite",
    )
    broken = tmp_path / "broken.toml"
    broken.write_text(f'[nodes.server]\nurl = "mysql+pymysql://repl:{secret}@127.0.0.1:1/app"\n')
    runner = CliRunner()
    commands = [
        ["init"],
        ["sync"],
        ["sync", "--json"],
        ["status"],
        ["status", "--json"],
        ["stats"],
        ["stats", "--json"],
        ["replay", "--node", "phone", "--from", "1", "--dry-run"],
        ["bootstrap", "--node", "phone"],
        ["prune"],
        ["verify"],
        ["log", "--node", "server"],
        ["review", "list"],
        ["review", "history"],
        ["review", "show", "1"],
    ]
    for args in commands:
        result = runner.invoke(app, [*args, "--config", str(config)])
        output = result.stdout + (result.stderr if result.stderr_bytes is not None else "")
        assert result.exit_code != 0, (args, output)
        assert secret not in output, (args, output)
    result = runner.invoke(app, ["sync", "--config", str(broken)])
    assert result.exit_code == 2 and secret not in result.output


SPIN = """
import sys
from replicator.service import Runner

spinning = int(sys.argv[2])  # rounds before it says so


def step(self):  # rounds back to back: the loop lives in wake.wait()
    self.rounds += 1
    if self.rounds == spinning:  # its signal handlers are installed by now
        print("spinning", flush=True)
    return 0.0


Runner.step = step
from replicator.cli import main

sys.argv = ["replicator", "run", "--config", sys.argv[1]]
main()
"""


def test_sigterm_stops_a_runner_whatever_its_loop_is_doing(tmp_path):
    """A signal handler must not take a lock its own thread may hold (the
    runner's wake-up event, waited on between rounds)."""
    config = write_config(
        tmp_path, f"sqlite:///{tmp_path}/server.sqlite", f"sqlite:///{tmp_path}/phone.sqlite"
    )
    (tmp_path / "spin.py").write_text(SPIN)
    # Signalled once the loop has spun a few rounds, or many: the signal
    # lands wherever the loop happens to be then.
    for rounds in (1, 10, 100, 1_000, 10_000, 100_000):
        service = subprocess.Popen(
            [sys.executable, str(tmp_path / "spin.py"), str(config), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert service.stdout.readline() == "spinning\n"
        service.send_signal(signal.SIGTERM)
        try:
            assert service.wait(timeout=10) == 0
        finally:
            service.kill()
            service.stdout.close()


def test_sync_says_an_embedded_server_in_a_missing_directory_cannot_be_reached(tmp_path):
    from typer.testing import CliRunner

    from replicator.cli import app

    config = write_config(
        tmp_path, f"sqlite:///{tmp_path}/gone/server.sqlite", f"sqlite:///{tmp_path}/phone.sqlite"
    )
    result = CliRunner().invoke(app, ["sync", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "server" in result.output and "cannot be reached" in result.output
