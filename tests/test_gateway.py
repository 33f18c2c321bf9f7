"""The sync gateway: devices replicate over HTTP with a token, never with the
server database's URL, and the server enforces each token's scope.

Every test serves the gateway with a real uvicorn server on loopback (in a
thread, or as ``replicator serve`` processes where a test kills or doubles
them) in front of a real server database (SQLite always, MariaDB when its
URL is set), and the devices are SQLite files set up as an app sets itself
up: the replicator's tables, the app's ``create_all``, capture under the
device's name, and a ``replicator.toml`` whose server is the gateway's URL
with a token. The app (``tests/gateway_app.py``) has integer keys the
database numbers, a unique business column, a cascading foreign key, Enum
and JSON columns, a server default and a per-user scope column.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import replicator
from replicator import devices, outbox
from replicator.application import Replicator, SyncResult
from replicator.capture import Capture
from replicator.config import load, loads
from replicator.errors import CaptureError
from replicator.gateway import tokens
from replicator.gateway.app import from_config
from replicator.node import Node
from replicator.replay import replay
from replicator.review import Filter
from replicator.service import BackgroundSync, Timing

from . import gateway_app as app
from .proxy import Cut, Proxy
from .test_cli import REPLICATOR
from .test_console import served

pytestmark = pytest.mark.backends("sqlite", "mariadb")

SECRET = "gateway-test-secret-" + "s" * 40


@dataclass
class Site:
    name: str
    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    capture: Capture
    config: Path | None = None

    def close(self) -> None:
        self.capture.stop()
        self.engine.dispose()

    def sync(self, direction: str | None = None) -> SyncResult:
        assert self.config is not None
        with Replicator(load(self.config), engines={self.name: self.engine}) as r:
            return r.sync(direction)

    def synced(self, direction: str | None = None) -> SyncResult:
        result = self.sync(direction)
        failed = [f"{p.source} -> {p.target}: {p.error}" for p in result.passes if not p.ok]
        assert not failed, failed
        return result

    def rows(self, table: str) -> set[tuple[Any, ...]]:
        model = app.Base.metadata.tables[table]
        columns = [c for c in model.columns if c.name not in ("created_at",)]
        with self.engine.connect() as conn:
            return {
                tuple(repr(v) if isinstance(v, dict) else v for v in r)
                for r in conn.execute(sa.select(*columns))
            }

    def add_notebook(self, owner: str, title: str, notes: tuple[str, ...] = ()) -> str:
        with self.sessions.begin() as session:
            book = app.Notebook(owner=owner, title=title, meta={"tags": [title]})
            book.notes = [app.Note(owner=owner, body=body) for body in notes]
            session.add(book)
            session.flush()
            return book.code


def site(name: str, url: str, config: Path | None = None) -> Site:
    engine = sa.create_engine(url)
    replicator.migrate(engine)
    app.Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine)
    return Site(name, url, engine, sessions, replicator.capture(sessions, node=name), config)


@dataclass
class Hub:
    """A server database, the gateway in front of it, and its devices."""

    server: Site
    gateway: str
    tmp: Path
    devices: list[Site] = field(default_factory=list)

    def token(self, device: str, owner: str | None, expires: dt.timedelta | None = None) -> str:
        scope = {"owner": owner} if owner is not None else {}
        return tokens.issue(SECRET, device, scope, now=dt.datetime.now(dt.UTC), expires=expires)

    def device(self, name: str, owner: str | None, *, token: str | None = None) -> Site:
        path = self.tmp / name
        path.mkdir()
        config = path / "replicator.toml"
        config.write_text(
            f'[nodes.hub]\nurl = "{self.gateway}"\nrole = "server"\n'
            f'token = "{token or self.token(name, owner)}"\n'
            f'[nodes.{name}]\nurl = "sqlite:///{name}.sqlite"\nrole = "local"\n'
        )
        found = site(name, f"sqlite:///{path / f'{name}.sqlite'}", config)
        self.devices.append(found)
        return found

    def server_node(self) -> Node:
        return Node("hub", role="server", engine=self.server.engine)

    def review(self, reason: str | None = None) -> list[Any]:
        config = loads(f'[nodes.hub]\nurl = "{self.server.url}"\nrole = "server"\n')
        with Replicator(config, engines={"hub": self.server.engine}) as r:
            return r.review().list(Filter(reason=reason)).items


def server_config(url: str, **gateway: Any) -> str:
    settings = {"read_only": ["plans"], "revocation_seconds": 0, **gateway}
    lines = "".join(f"{k} = {msgspec.json.encode(v).decode()}\n" for k, v in settings.items())
    return f'[nodes.hub]\nurl = "{url}"\nrole = "server"\n[gateway]\n{lines}'


@contextmanager
def serving_hub(database_url: str, tmp_path: Path) -> Iterator[Hub]:
    """A server database, a gateway in front of it served on loopback, and
    the devices a test adds (closed at the end)."""
    server = site("hub", database_url)
    gateway = from_config(loads(server_config(database_url)), SECRET)
    with served(gateway) as url:
        found = Hub(server, url, tmp_path)
        yield found
        for device in found.devices:
            device.close()
    server.close()


@pytest.fixture
def hub(database_url: str, tmp_path: Path) -> Iterator[Hub]:
    with serving_hub(database_url, tmp_path) as found:
        yield found


def business(s: Site, table: str = "notebooks") -> set[tuple[Any, ...]]:
    """Notebooks by business columns (code, owner, title), or notes by
    (notebook code, owner, body)."""
    nb, n = app.Notebook.__table__.c, app.Note.__table__.c
    with s.engine.connect() as conn:
        if table == "notebooks":
            return set(conn.execute(sa.select(nb.code, nb.owner, nb.title)).all())
        return set(
            conn.execute(
                sa.select(nb.code, n.owner, n.body).join_from(
                    app.Note.__table__, app.Notebook.__table__, n.notebook_id == nb.id
                )
            ).all()
        )


def test_devices_replicate_through_the_gateway_within_their_scope(hub: Hub) -> None:
    with hub.server.sessions.begin() as session:
        session.add(app.Plan(name="pro", price=10))
    hub.server.add_notebook("u2", "server-side u2", ("from the web",))
    phone = hub.device("phone", "u1")
    laptop = hub.device("laptop", "u1")
    other = hub.device("other", "u2")
    for device in (phone, laptop, other):  # bootstrapped, and keys leased
        assert device.synced().bootstrapped

    code = phone.add_notebook("u1", "groceries", ("milk", "eggs"))
    phone.synced()
    laptop.synced()
    other.synced()
    phone.synced()

    assert business(hub.server) == {(code, "u1", "groceries")} | business(other)
    assert business(laptop) == business(phone) == {(code, "u1", "groceries")}
    assert business(laptop, "notes") == {(code, "u1", "milk"), (code, "u1", "eggs")}
    assert {t[1] for t in business(other)} == {"u2"}
    assert business(other, "notes") == {(t[0], "u2", "from the web") for t in business(other)}
    # Every device reads the plans, and the integer keys are the server's.
    for device in (phone, laptop, other):
        assert device.rows("plans") == hub.server.rows("plans")
    assert laptop.rows("notebooks") == phone.rows("notebooks")
    assert laptop.rows("notes") == phone.rows("notes")


def server_events(hub: Hub) -> list[Any]:
    with hub.server.engine.connect() as conn:
        return [event for _, event in outbox.read(conn)]


def test_a_device_cannot_write_outside_its_tokens_scope_whatever_its_config_says(
    hub: Hub,
) -> None:
    with hub.server.sessions.begin() as session:
        session.add(app.Plan(name="pro", price=10))
    theirs = hub.server.add_notebook("u2", "private to u2", ("secret",))
    phone = hub.device("phone", "u1")  # its config has no scope at all
    phone.synced()
    assert {t[1] for t in business(phone)} == set(), "u2's rows reached a u1 device"
    before = {t: hub.server.rows(t) for t in ("notebooks", "notes", "plans")}

    # Its capture takes anything: only the server can refuse.
    mine = phone.add_notebook("u1", "mine", ("ok",))
    phone.add_notebook("u2", "planted in u2's account", ("spam",))
    with phone.sessions.begin() as session:
        session.get(app.Plan, 1).price = 0  # a read-only table
    with pytest.raises(CaptureError, match="'plans'"), phone.sessions.begin() as session:
        session.add(app.Plan(name="free", price=0))  # no keys are leased for it either
    result = phone.synced("up")

    (up,) = result.passes
    assert up.parked == 3 and up.applied == 2, up  # the u2 notebook and note, the plan
    forbidden = hub.review("forbidden")
    assert len(forbidden) == 3
    assert all("may not write" in item.detail for item in forbidden)
    # Nothing of it was written; the device's own rows went through.
    assert hub.server.rows("plans") == before["plans"]
    assert business(hub.server) == {(theirs, "u2", "private to u2"), (mine, "u1", "mine")}
    assert (mine, "u1", "ok") in business(hub.server, "notes")
    assert len(hub.server.rows("notes")) == len(before["notes"]) + 1
    # The next syncs go on from there, and u2's rows never reach the device.
    phone.synced()
    assert phone.synced().passes[0].read == 0
    assert theirs not in {t[0] for t in business(phone)}


def test_tokens_that_are_missing_forged_expired_or_revoked_get_401_and_nothing_else(
    hub: Hub,
) -> None:
    hub.server.add_notebook("u1", "u1's", ("private",))
    good = hub.token("phone", "u1")
    forged = tokens.issue("another-secret-" + "x" * 40, "phone", {}, now=dt.datetime.now(dt.UTC))
    expired = tokens.issue(
        SECRET,
        "phone",
        {"owner": "u1"},
        now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2),
        expires=dt.timedelta(days=1),
    )
    revoked = hub.token("phone", "u1")
    claims = tokens.verify(revoked, SECRET, now=dt.datetime.now(dt.UTC))
    assert devices.revoke(
        hub.server_node(), claims.token_id, "phone", "lost", dt.datetime.now(dt.UTC)
    )
    body = msgspec.msgpack.encode({"channel": "default", "after": 0, "upto": 100})

    with httpx.Client(base_url=hub.gateway) as client:

        def pull(authorization: str | None) -> httpx.Response:
            headers = {} if authorization is None else {"Authorization": authorization}
            return client.post("/v1/pull", content=body, headers=headers)

        assert pull(f"Bearer {good}").status_code == 200
        for authorization in (
            None,
            "Bearer",
            f"Basic {good}",
            "Bearer not-a-token",
            f"Bearer {forged}",
            f"Bearer {expired}",
            f"Bearer {revoked}",
            f"Bearer {good[:-4]}AAAA",  # its signature altered
        ):
            response = pull(authorization)
            assert response.status_code == 401, (authorization, response.text)
            assert response.json() == {"error": "unauthorized", "detail": ""}
            assert response.headers["www-authenticate"] == "Bearer"

    # A device with a revoked token is told so, and changes nothing.
    phone = hub.device("phone", "u1", token=revoked)
    result = phone.sync()
    assert not result.ok
    assert all("refused this device's token (HTTP 401)" in (p.error or "") for p in result.passes)
    assert business(phone) == set()


def event_ids(site: Site, origin: str) -> list[str]:
    """The ids of ``origin``'s events in ``site``'s log, in log order."""
    with site.engine.connect() as conn:
        return [event.event_id for _, event in outbox.read(conn) if event.origin == origin]


@pytest.mark.parametrize(
    "cut",
    [
        Cut(b"POST /v1/push", 5, "request"),
        Cut(b"POST /v1/push", 30_000, "request"),
        Cut(b"POST /v1/push", 3, "response"),
        Cut(b"POST /v1/push", 60, "response"),
        Cut(b"POST /v1/pull", 2_000, "response"),
        Cut(b"POST /v1/bootstrap", 4_000, "response"),
        Cut(b"GET /v1/health", 5, "response"),
    ],
    ids=lambda c: f"{c.request.decode().split()[1]}-{c.direction}-{c.at}",
)
def test_a_connection_cut_anywhere_is_retried_and_applied_exactly_once(hub: Hub, cut: Cut) -> None:
    host, port = hub.gateway.removeprefix("http://").split(":")
    proxy = Proxy((host, int(port)), [cut])
    hub.server.add_notebook("u1", "from the web", tuple(f"note {i}" for i in range(400)))
    phone = hub.device("phone", "u1")
    phone.config.write_text(phone.config.read_text().replace(hub.gateway, proxy.url))
    try:
        phone.synced()  # bootstrapped (or cut, and bootstrapped again)
        for i in range(150):
            phone.add_notebook("u1", f"book {i}", (f"a{i}", f"b{i}"))
        with hub.server.sessions.begin() as session:
            book = session.scalars(sa.select(app.Notebook)).first()
            book.notes.extend(app.Note(owner="u1", body=f"late {i}") for i in range(300))
        phone.synced()
        phone.synced()
    finally:
        proxy.close()
    assert proxy.done == [cut], "the cut never happened"
    sent = event_ids(phone, "phone")
    assert len(sent) == 450
    # Each once: in one transaction per push, grouped by table as any pass applies.
    assert sorted(event_ids(hub.server, "phone")) == sorted(sent)
    for table in ("notebooks", "notes"):
        assert phone.rows(table) == hub.server.rows(table), table
    assert len(phone.rows("notes")) == 400 + 300 + 300
    assert business(phone) == business(hub.server)
    assert business(phone, "notes") == business(hub.server, "notes")
    assert hub.review() == []


@pytest.fixture
def strict(hub: Hub) -> Iterator[str]:
    """A second gateway over the hub's server, with small limits."""
    config = loads(
        server_config(hub.server.url, max_body_bytes=4096, requests_per_second=0.5, burst=4)
    )
    with served(from_config(config, SECRET)) as url:
        yield url


def test_bad_bodies_get_400_or_413_naming_the_problem_and_change_nothing(
    hub: Hub, strict: str
) -> None:
    phone = hub.device("phone", "u1")
    phone.synced()
    phone.add_notebook("u1", "mine", ("a",))
    before = event_ids(hub.server, "phone"), hub.server.rows("notebooks")
    token = hub.token("phone", "u1")
    auth = {"Authorization": f"Bearer {token}"}
    good = {"channel": "default", "after": 0, "reached": 1, "events": []}
    with httpx.Client(base_url=hub.gateway, headers=auth) as client:
        for body, says in (
            (b"\xc1 not msgpack", "Push: "),
            (
                msgspec.msgpack.encode({**good, "after": "zero"}),
                "Expected `int`, got `str` - at `$.after`",
            ),
            (
                msgspec.msgpack.encode({"after": 0, "reached": 1}),
                "missing required field `channel`",
            ),
            (msgspec.msgpack.encode({**good, "sneaky": 1}), "unknown field `sneaky`"),
            (msgspec.msgpack.encode({**good, "events": [[1, "notebooks"]]}), "at `$.events[0]`"),
        ):
            response = client.post("/v1/push", content=body)
            assert response.status_code == 400, response.text
            assert response.json()["error"] == "malformed body"
            assert says in response.json()["detail"], response.json()
        broken = client.post(
            "/v1/push", content=b"\x1f\x8b broken", headers={"Content-Encoding": "gzip"}
        )
        assert broken.status_code == 400 and "gzip" in broken.json()["detail"]
    with httpx.Client(base_url=strict, headers=auth) as client:
        large = msgspec.msgpack.encode({**good, "events": [[1, "t", "k", b"x" * 5000]]})
        response = client.post("/v1/push", content=large)
        assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]
        # Small when sent, too large once unpacked: refused as well.
        import gzip

        bomb = gzip.compress(msgspec.msgpack.encode({**good, "channel": "x" * 100_000}))
        assert len(bomb) < 4096
        response = client.post("/v1/push", content=bomb, headers={"Content-Encoding": "gzip"})
        assert response.status_code == 413
    assert (event_ids(hub.server, "phone"), hub.server.rows("notebooks")) == before


def test_a_device_over_its_rate_gets_429_with_retry_after_and_others_do_not(
    hub: Hub, strict: str
) -> None:
    body = msgspec.msgpack.encode({"channel": "default"})
    with httpx.Client(base_url=strict) as client:

        def bounds(device: str) -> httpx.Response:
            token = hub.token(device, "u1")
            return client.post(
                "/v1/bounds", content=body, headers={"Authorization": f"Bearer {token}"}
            )

        assert [bounds("phone").status_code for _ in range(4)] == [200] * 4  # its burst
        refused = bounds("phone")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert bounds("laptop").status_code == 200


def test_a_waiting_device_learns_of_new_events_within_a_second(hub: Hub) -> None:
    phone = hub.device("phone", "u1")
    laptop = hub.device("laptop", "u1")
    phone.synced()
    with Replicator(load(laptop.config), engines={"laptop": laptop.engine}) as r:
        r.sync()
        head = r.gateway.bounds().horizon
        woke: list[float] = []

        def wait() -> None:
            started = time.monotonic()
            found = r.gateway.wait(head, seconds=20)
            woke.append(time.monotonic() - started)
            assert found > head

        waiter = threading.Thread(target=wait)
        waiter.start()
        time.sleep(0.3)
        phone.add_notebook("u1", "new", ("x",))
        pushed_at = time.monotonic()
        phone.synced("up")
        waiter.join(20)
        assert woke, "the wait did not end"
        assert time.monotonic() - pushed_at < 1.0
        r.sync()
    assert business(laptop) == business(phone)


def test_background_sync_through_the_gateway_hears_of_new_events_by_long_poll(hub: Hub) -> None:
    phone = hub.device("phone", "u1")
    laptop = hub.device("laptop", "u1")
    laptop.synced()
    # A long interval: what wakes the phone is the gateway's answer to its wait.
    timing = Timing(interval=60, idle_poll=30, poll=0.05)
    with BackgroundSync(
        load(phone.config), engines={"phone": phone.engine}, timing=timing
    ) as background:
        code = laptop.add_notebook("u1", "from the laptop", ("hello",))
        laptop.synced("up")
        pushed = time.monotonic()
        while (code, "u1", "from the laptop") not in business(phone):
            assert time.monotonic() - pushed < 5, "the phone did not hear of the new event"
            time.sleep(0.05)
        arrived = time.monotonic() - pushed
        mine = phone.add_notebook("u1", "from the phone", ("hi",))
        background.notify()  # as an app does after it writes
        while (mine, "u1", "from the phone") not in business(hub.server):
            assert time.monotonic() - pushed < 10, "the phone's write did not reach the server"
            time.sleep(0.05)
    assert arrived < 2.0, arrived
    laptop.synced()
    assert (mine, "u1", "from the phone") in business(laptop)


def run_cli(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    assert site.config is not None
    return subprocess.run(
        [REPLICATOR, *args, "--config", str(site.config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=site.config.parent,
    )


def test_a_device_works_through_the_gateway_with_its_cli_and_never_sees_a_credential(
    hub: Hub, tmp_path: Path
) -> None:
    secrets = [hub.server.url, str(sa.make_url(hub.server.url).database)]
    url = sa.make_url(hub.server.url)
    gateway_url = hub.server.url
    if url.get_backend_name() == "mariadb" or url.get_backend_name() == "mysql":
        # A gateway whose database account has a password, to look for it.
        # pymysql formats the statement: a literal % is written %%.
        user, password = f"gw_{uuid.uuid4().hex[:8]}", f"pw-{uuid.uuid4().hex}"
        with hub.server.engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY '{password}'")
            conn.exec_driver_sql(f"GRANT ALL ON `{url.database}`.* TO '{user}'@'%%'")
        gateway_url = url.set(username=user, password=password).render_as_string(
            hide_password=False
        )
        secrets += [password, gateway_url]
    else:
        user = None
    try:
        with served(from_config(loads(server_config(gateway_url)), SECRET)) as address:
            hub.gateway = address
            hub.server.add_notebook("u1", "from the web", ("a",))
            phone = hub.device("phone", "u1")
            outputs = [run_cli(phone, "sync")]
            phone.add_notebook("u1", "mine", ("b",))
            phone.add_notebook("u2", "not mine", ("c",))  # refused by the server
            for args in (("sync",), ("status", "--json"), ("stats",), ("review", "list", "--json")):
                outputs.append(run_cli(phone, *args))
            for done in outputs:
                assert done.returncode == 0, (done.args, done.stderr)
            status = msgspec.json.decode(outputs[2].stdout)
            up = next(link for link in status["links"] if link["source"] == "phone")
            assert up["checkpoint"] == up["head"] and up["lag"] == 0, up
            assert msgspec.json.decode(outputs[4].stdout)["total"] == 0  # the phone's own queue
            assert {t[2] for t in business(phone)} == {"from the web", "mine", "not mine"}
            assert {t[2] for t in business(hub.server)} == {"from the web", "mine"}
            # `replicator run` replicates through it too, and logs no credential.
            late = phone.add_notebook("u1", "while running", ())
            running = subprocess.Popen(
                [REPLICATOR, "run", "--config", str(phone.config)],
                cwd=phone.config.parent,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            deadline = time.monotonic() + 30
            while (late, "u1", "while running") not in business(hub.server):
                assert running.poll() is None and time.monotonic() < deadline, "run did not sync"
                time.sleep(0.05)
            running.send_signal(signal.SIGTERM)
            out, err = running.communicate(timeout=30)
            assert running.returncode == 0, err
            assert "syncing link phone" in err, err
            outputs.append(subprocess.CompletedProcess(running.args, 0, out, err))
            # A device with a bad token is told so, with exit 1, and no more.
            phone.config.write_text(phone.config.read_text().replace('token = "', 'token = "x'))
            refused = run_cli(phone, "sync")
            assert refused.returncode == 1 and "HTTP 401" in refused.stderr, refused.stderr
            outputs.append(refused)
    finally:
        if user is not None:
            with hub.server.engine.begin() as conn:
                conn.exec_driver_sql(f"DROP USER '{user}'@'%%'")
    said = "".join(o.stdout + o.stderr for o in outputs)
    files = [p for p in (tmp_path / "phone").rglob("*") if p.is_file()]
    assert files, "no device files to look at"
    for secret in secrets:
        assert secret not in said, secret
        for path in files:
            assert secret.encode() not in path.read_bytes(), (secret, path)


def test_a_wiped_device_is_restored_by_replay_through_the_gateway(hub: Hub) -> None:
    hub.server.add_notebook("u1", "from the web", ("a",))
    hub.server.add_notebook("u2", "someone else's", ("z",))
    phone = hub.device("phone", "u1")
    phone.synced()
    phone.add_notebook("u1", "mine", ("b", "c"))
    phone.synced()
    kept = {t: phone.rows(t) for t in ("notebooks", "notes", "plans")}
    with phone.engine.begin() as conn:  # the app's rows lost, the replicator's kept
        for table in ("notes", "notebooks"):
            conn.execute(app.Base.metadata.tables[table].delete())
    with Replicator(load(phone.config), engines={"phone": phone.engine}) as r:
        result = replay(r.server, r.node("phone"), start=0)
    # u1's two rows from the web and the phone's own three; nothing of u2's.
    assert result.read == 5 and result.inserted == 5 and result.parked == 0, result
    assert {t: phone.rows(t) for t in kept} == kept  # its own rows too, and only u1's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(url: str, tmp: Path, port: int | None = None) -> Iterator[subprocess.Popen]:
    """``replicator serve`` in a process of its own, over the server
    database ``url``, on ``port``; stopped (killed if need be) at the end."""
    config = tmp / f"server-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(server_config(url))
    port = port or free_port()
    process = subprocess.Popen(
        [REPLICATOR, "serve", "--config", str(config), "--port", str(port)],
        env={**os.environ, tokens.SECRET_ENV: SECRET},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{process.url}/v1/health", timeout=1).status_code == 200:  # type: ignore[attr-defined]
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "replicator serve did not start"
        time.sleep(0.05)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def database(database_url: str, tmp_path: Path) -> Iterator[Site]:
    server = site("hub", database_url)
    yield server
    server.close()


def test_a_gateway_killed_with_sigkill_mid_request_loses_and_duplicates_nothing(
    database: Site, tmp_path: Path
) -> None:
    port = free_port()
    hub = Hub(database, f"http://127.0.0.1:{port}", tmp_path)
    interrupted = 0
    try:
        with serving(database.url, tmp_path, port):
            phone = hub.device("phone", "u1")
            phone.synced()
        for delay in (0.05, 0.15, 0.3):
            for i in range(200):
                phone.add_notebook("u1", f"book {delay} {i}", ("a", "b"))
            with serving(database.url, tmp_path, port) as gateway:
                outcome: list[SyncResult] = []
                syncing = threading.Thread(
                    target=lambda found=outcome: found.append(phone.sync("up"))
                )
                syncing.start()
                time.sleep(delay)
                gateway.kill()  # SIGKILL: no cleanup, mid-push or mid-answer
                gateway.wait()
                syncing.join(60)
            interrupted += not outcome[0].ok or outcome[0].passes[0].read < 600
            with serving(database.url, tmp_path, port):
                phone.synced()
                phone.synced()
    finally:
        for device in hub.devices:
            device.close()
    assert interrupted, "no kill landed during a push"
    sent = event_ids(phone, "phone")
    assert len(sent) == 1800
    assert sorted(event_ids(database, "phone")) == sorted(sent)
    for table in ("notebooks", "notes"):
        assert phone.rows(table) == database.rows(table), table
    assert hub.review() == []


def test_two_gateway_processes_serve_devices_that_converge(database: Site, tmp_path: Path) -> None:
    hub = Hub(database, "", tmp_path)
    try:
        with serving(database.url, tmp_path) as a, serving(database.url, tmp_path) as b:
            placed = {
                "phone": (a, "u1"),
                "laptop": (b, "u1"),
                "tablet": (a, "u2"),
                "desk": (b, "u2"),
            }
            devices = {}
            for name, (gateway, owner) in placed.items():
                hub.gateway = gateway.url
                devices[name] = hub.device(name, owner)
                devices[name].synced()
            for round_ in range(3):
                for name, device in devices.items():
                    for i in range(10):
                        device.add_notebook(placed[name][1], f"{name} {round_} {i}", (name,))
                workers = [threading.Thread(target=d.sync) for d in devices.values()]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join(60)
            # A wait held by gateway b ends when a device writes through gateway a.
            with Replicator(load(devices["laptop"].config)) as laptop:
                laptop.sync()
                head = laptop.gateway.head()
                ended: list[float] = []
                waiter = threading.Thread(
                    target=lambda: ended.append(laptop.gateway.wait(head, seconds=20))
                )
                waiter.start()
                time.sleep(0.2)
                devices["phone"].add_notebook("u1", "last one", ())
                written = time.monotonic()
                devices["phone"].synced("up")
                waiter.join(20)
                assert ended and ended[0] > head and time.monotonic() - written < 1.5
            for _ in range(2):
                for device in devices.values():
                    device.synced()
    finally:
        for device in hub.devices:
            device.close()
    assert business(devices["phone"]) == business(devices["laptop"])
    assert business(devices["tablet"]) == business(devices["desk"])
    assert len(business(devices["phone"])) == 2 * 30 + 1 and len(business(devices["desk"])) == 60
    assert business(database) == business(devices["phone"]) | business(devices["desk"])
    for table in ("notebooks", "notes"):
        assert devices["phone"].rows(table) == devices["laptop"].rows(table)
    assert hub.review() == []


def test_a_devices_vector_sink_follows_what_arrives_through_the_gateway(hub: Hub) -> None:
    hub.server.add_notebook("u1", "from the web", ("apples and pears",))
    hub.server.add_notebook("u2", "someone else's", ("not for the phone",))
    phone = hub.device("phone", "u1")
    phone.config.write_text(
        phone.config.read_text()
        + '[sinks.notes]\nkind = "chroma"\nnode = "phone"\npath = "chroma"\n'
        'collection = "notes"\ntable = "notes"\nid_column = "id"\ntext_column = "body"\n'
        'metadata_columns = ["owner"]\n'
    )
    phone.synced()  # bootstrapped: the sink starts from the rows
    phone.add_notebook("u1", "mine", ("bananas",))
    with hub.server.sessions.begin() as session:
        book = session.scalars(sa.select(app.Notebook).where(app.Notebook.owner == "u1")).one()
        book.notes.append(app.Note(owner="u1", body="cherries"))
    result = phone.synced()
    assert all(s.ok for s in result.sinks), result.sinks
    with Replicator(load(phone.config), engines={"phone": phone.engine}) as r:
        sink = r.sink("notes")
        assert sink.count() == 3
        assert sink.lag() == 0


def test_a_cut_bootstrap_resumes_and_misses_no_change_made_meanwhile(hub: Hub) -> None:
    with hub.server.sessions.begin() as session:
        session.add(app.Plan(name="pro", price=10))
    hub.server.add_notebook("u1", "big", tuple(uuid.uuid4().hex * 2 for _ in range(3000)))
    hub.server.add_notebook("u2", "not the phone's", ("z",))
    host, port = hub.gateway.removeprefix("http://").split(":")
    # Tables go by name: notebooks come whole, the cut falls inside notes.
    proxy = Proxy((host, int(port)), [Cut(b"POST /v1/bootstrap", 40_000, "response")])
    phone = hub.device("phone", "u1")
    phone.config.write_text(phone.config.read_text().replace(hub.gateway, proxy.url))

    def meanwhile(seconds: float) -> None:
        """Between the cut and the resumption, the server changes rows of
        the table that came whole, of the one under way, and of one to come."""
        with hub.server.sessions.begin() as session:
            book = session.scalars(sa.select(app.Notebook).where(app.Notebook.title == "big")).one()
            book.title = "renamed"
            session.delete(book.notes[0])
            book.notes[1].body = "edited"
            book.notes.append(app.Note(owner="u1", body="added"))
            session.get(app.Plan, 1).price = 12
            session.add(app.Notebook(owner="u1", title="new one"))

    try:
        with Replicator(load(phone.config), engines={"phone": phone.engine}) as r:
            r.gateway.sleep = meanwhile
            result = r.sync()
    finally:
        proxy.close()
    assert proxy.done, "the cut never happened"
    assert result.ok, [p.error for p in result.passes]
    assert result.bootstrapped["phone"].resumed == 1
    assert business(phone) == {t for t in business(hub.server) if t[1] == "u1"}
    for table in ("notes", "plans"):
        assert phone.rows(table) == {
            r for r in hub.server.rows(table) if table == "plans" or r[2] == "u1"
        }, table
    assert ("renamed" in {t[2] for t in business(phone)}) and len(phone.rows("notes")) == 3000


def test_a_transaction_larger_than_the_gateway_takes_is_pushed_in_parts(hub: Hub) -> None:
    config = loads(server_config(hub.server.url, max_body_bytes=8192))
    with served(from_config(config, SECRET)) as small:
        hub.gateway = small
        phone = hub.device("phone", "u1")
        phone.synced()
        with phone.sessions.begin() as session:  # one transaction, about 30 KB of events
            for i in range(60):
                session.add(app.Notebook(owner="u1", title=f"book {i}", meta={"i": i}))
        (up,) = phone.synced("up").passes
        assert up.applied == 60, up
        phone.add_notebook("u1", "huge", ("x" * 10_000,))  # one event past the limit
        (refused,) = phone.sync("up").passes
    assert not refused.ok and "HTTP 413" in refused.error, refused
    # Its transaction went as far as the event too large: the notebook, not its note.
    assert len(business(hub.server)) == 61 and not business(hub.server, "notes")


@pytest.mark.backends("sqlite")
def test_a_server_behind_the_gateway_that_would_round_a_devices_values_is_refused(
    tmp_path: Path,
) -> None:
    server_url = f"duckdb:///{tmp_path / 'server.duckdb'}"
    scores = sa.Table(
        "scores",
        sa.MetaData(),
        sa.Column("score_id", sa.String(36), primary_key=True),
        sa.Column("value", sa.Float()),  # DuckDB: FLOAT, 4 bytes; SQLite: 8
    )
    engine = sa.create_engine(server_url)
    replicator.migrate(engine)
    scores.metadata.create_all(engine)
    engine.dispose()
    with served(from_config(loads(server_config(server_url)), SECRET)) as url:
        hub = Hub(Site("hub", server_url, None, None, None), url, tmp_path)  # type: ignore[arg-type]
        path = tmp_path / "phone"
        path.mkdir()
        phone_url = f"sqlite:///{path / 'phone.sqlite'}"
        local = sa.create_engine(phone_url)
        replicator.migrate(local)
        scores.metadata.create_all(local)
        local.dispose()
        config = path / "replicator.toml"
        config.write_text(
            f'[nodes.hub]\nurl = "{url}"\nrole = "server"\ntoken = "{hub.token("phone", None)}"\n'
            f'[nodes.phone]\nurl = "{phone_url}"\nrole = "local"\n'
        )
        with Replicator(load(config)) as r:
            result = r.sync()
    assert [p.status for p in result.passes] == ["failed", "failed"]
    assert "scores.value: the server (duckdb) stores FLOAT, 4-byte floats" in result.passes[0].error
