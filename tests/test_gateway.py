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
import threading
import time
from collections.abc import Iterator
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
from replicator.gateway import tokens
from replicator.gateway.app import from_config
from replicator.node import Node
from replicator.review import Filter

from . import gateway_app as app
from .proxy import Cut, Proxy
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


@pytest.fixture
def hub(database_url: str, tmp_path: Path) -> Iterator[Hub]:
    server = site("hub", database_url)
    gateway = from_config(loads(server_config(database_url)), SECRET)
    with served(gateway) as url:
        found = Hub(server, url, tmp_path)
        yield found
        for device in found.devices:
            device.close()
    server.close()


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
        session.add(app.Plan(name="free", price=0))
    result = phone.synced("up")

    (up,) = result.passes
    assert up.parked == 4 and up.applied == 2, up  # the u2 notebook and note, 2 plans
    forbidden = hub.review("forbidden")
    assert len(forbidden) == 4
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


def test_a_forged_event_cannot_take_over_or_delete_another_users_row(hub: Hub) -> None:
    theirs = hub.server.add_notebook("u2", "u2's", ("keep me",))
    (row,) = [r for r in hub.server.rows("notebooks") if r[1] == theirs]
    phone = hub.device("phone", "u1")
    phone.synced()
    token = hub.token("phone", "u1")

    def event(op: str, row_values: dict | None, changed: dict, origin: str = "phone") -> bytes:
        from replicator.events import ChangeEvent, Operation, encode_event, new_id

        return encode_event(
            ChangeEvent(
                event_id=new_id(),
                origin=origin,
                table="notebooks",
                key={"id": row[0]},
                op=Operation(op),
                row=row_values,
                changed=changed,
                version={origin: 99},
                hlc=2**60,
                txid=new_id(),
            )
        )

    taken = {
        "id": row[0],
        "code": theirs,
        "owner": "u1",
        "title": "mine now",
        "kind": "PRIVATE",
        "meta": {},
        "created_at": None,
    }
    forged = [
        # "It was mine already", says the device: the server's row says not.
        event("update", taken, {"title": "u2's"}),
        event("delete", None, {"id": row[0], "owner": "u1"}),
        # As if another node had made it.
        event("update", {**taken, "owner": "u2", "title": "by u2?"}, {}, origin="other"),
    ]
    push = {
        "channel": "default",
        "after": 0,
        "reached": 3,
        "events": [[i + 1, "notebooks", f"[{row[0]}]", p] for i, p in enumerate(forged)],
    }
    with httpx.Client(base_url=hub.gateway) as client:
        response = client.post(
            "/v1/push",
            content=msgspec.msgpack.encode(push),
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200, response.text
    pushed = msgspec.msgpack.decode(response.content)
    assert pushed["forbidden"] == 3 and pushed["counts"]["applied"] == 0, pushed
    assert [r for r in hub.server.rows("notebooks") if r[1] == theirs] == [row]
    assert (theirs, "u2", "keep me") in business(hub.server, "notes")
    # One item for the row, holding the three events, for a person to see.
    (item,) = hub.review("forbidden")
    assert item.event_count == 3 and item.key == f"[{row[0]}]", item


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
            assert found.horizon > head

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
