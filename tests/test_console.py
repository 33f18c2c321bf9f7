"""`replicator console`, the review web app, over HTTP: a real uvicorn
server on loopback in a background thread, a SQLite server and a SQLite
phone with conflicts parked on the server, and httpx as the browser. Every
decision made through a form is checked in the databases, and after a
sync on both replicas; every refused request is checked to change nothing."""

from __future__ import annotations

import datetime as dt
import html
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from starlette.requests import HTTPConnection
from starlette.routing import Route

from replicator import parking
from replicator.application import Replicator
from replicator.console import create_app
from replicator.console.auth import COOKIE, SESSION_SECONDS, Guard
from replicator.errors import ConfigurationError

from .cluster import apart, config, member, sync, vocabulary
from .test_cli import REPLICATOR
from .test_layering import _in, all_imports
from .test_review_cli import write_config

TOKEN = "console-test-token-4f9c2a7e1b"
BOT = "support-bot"  # who decides for bearer requests


@contextmanager
def served(app) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port in a background
    thread, until the block ends; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # Open long polls (the gateway's waits) are not waited for at the end.
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


class Console:
    """A served console over a parked pair, and what a test asks of it."""

    def __init__(self, url: str, server, phone, replicator: Replicator) -> None:
        self.url = url
        self.server = server
        self.phone = phone
        self.replicator = replicator

    def client(self, **options) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **options)

    def login(self, name: str = "ana") -> httpx.Client:
        client = self.client()
        response = client.post("/login", data={"token": TOKEN, "name": name})
        assert response.status_code == 303, response.text
        return client

    def bearer(self, token: str = TOKEN) -> httpx.Client:
        return self.client(headers={"Authorization": f"Bearer {token}"})

    def open_refs(self) -> list[str]:
        return [i.ref for i in self.replicator.review().list(sweep=False).items]

    def state(self):
        """Everything a refused request must leave as it was."""
        return (
            self.server.events(),
            self.server.state(),
            self.phone.events(),
            self.phone.state(),
            self.open_refs(),
        )


@pytest.fixture
def console(tmp_path) -> Iterator[Console]:
    """Five rows both sides edited while apart, parked on the server
    (server:1 a day earlier than the rest), behind a console showing two
    items a page."""
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    apart(server, phone, count=5)
    with server.engine.begin() as conn:
        conn.execute(
            parking.review_items.update()
            .where(parking.review_items.c.id == 1)
            .values(detected_at=dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=1))
        )
    engines = {"server": server.engine, "phone": phone.engine}
    with Replicator(config(server, phone), engines=engines) as replicator:
        app = create_app(replicator.review, TOKEN, by=BOT, page_size=2)
        with served(app) as url:
            yield Console(url, server, phone, replicator)
    phone.close()
    server.close()


def csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, f"no CSRF field in {page.url}"
    return found.group(1)


def text(page: httpx.Response) -> str:
    """The page's words, tags removed and entities decoded."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page.text)).split())


def field(page: httpx.Response, column: str) -> str:
    """The value of the merge form's input for ``column``."""
    found = re.search(rf'name="field\.{column}" value="([^"]*)"', page.text)
    assert found, f"no merge field {column}"
    return html.unescape(found.group(1))


def refs(page: httpx.Response) -> list[str]:
    """The items a list page links to, in order."""
    return re.findall(r'<td><a href="/items/[^"]+">([^<]+)</a></td>', page.text)


# --- who may come in -------------------------------------------------------------


def test_no_page_opens_without_the_token(console):
    before = console.state()
    anonymous = console.client()

    for path in ("/", "/items", "/items/server:1", "/history"):
        response = anonymous.get(path)
        assert response.status_code == 303, (path, response.status_code)
        assert response.headers["location"].startswith("/login?next="), path
    assert anonymous.get("/login").status_code == 200
    assert "htmx" in anonymous.get("/static/htmx.min.js").text
    assert anonymous.get("/static/console.css").status_code == 200
    refused = anonymous.post("/items/server:1/take", data={"side": "server"})
    assert refused.status_code == 401

    assert console.bearer("not-the-token").get("/items").status_code == 401
    assert console.bearer().get("/items").status_code == 200

    nameless = anonymous.post("/login", data={"token": TOKEN, "name": " "})
    assert nameless.status_code == 400 and "Give your name" in text(nameless)
    wrong = anonymous.post("/login", data={"token": "not-the-token", "name": "eve"})
    assert wrong.status_code == 401 and "not the console's token" in text(wrong)
    assert "set-cookie" not in wrong.headers
    assert anonymous.get("/").status_code == 303

    right = anonymous.post("/login", data={"token": TOKEN, "name": "ana", "next": "/history"})
    assert (right.status_code, right.headers["location"]) == (303, "/history")
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie, cookie
    page = anonymous.get("/")
    assert page.status_code == 200 and "5 open items" in text(page)
    assert "deciding as ana" in text(page)
    assert "default-src 'self'" in page.headers["content-security-policy"]

    forged = console.client()
    value = anonymous.cookies["replicator_console"]
    forged.cookies.set("replicator_console", value[:-2] + ("AA" if value[-2:] != "AA" else "BB"))
    assert forged.get("/").status_code == 303
    elsewhere = console.client().post(
        "/login", data={"token": TOKEN, "name": "ana", "next": "//evil.example/"}
    )
    assert elsewhere.headers["location"] == "/"
    assert console.state() == before


def test_a_session_ends_after_its_time_and_with_another_token():
    now = [1_000_000.0]
    guard = Guard(TOKEN, default_by=BOT, clock=lambda: now[0])
    cookie = guard.session_cookie("ana")

    def user(guard: Guard):
        return guard.user(
            HTTPConnection(
                {"type": "http", "headers": [(b"cookie", f"{COOKIE}={cookie}".encode())]}
            )
        )

    assert user(guard).name == "ana"
    assert user(Guard(TOKEN + "-new", default_by=BOT)) is None
    now[0] += SESSION_SECONDS
    assert user(guard) is None
    with pytest.raises(ConfigurationError, match="REPLICATOR_CONSOLE_TOKEN"):
        Guard(" ", default_by=BOT)


def test_every_form_post_needs_its_sessions_csrf_token(console):
    before = console.state()
    ana, bob = console.login("ana"), console.login("bob")
    posted = {
        "/logout": {},
        "/items/server:1/take": {"side": "server"},
        "/items/server:1/merge": {"field.translation": "x", "shown.translation": '"server 0"'},
        "/items/server:1/discard": {},
        "/bulk/preview": {"action": "discard"},
        "/bulk/decide": {},
    }
    routes = {
        r.path.replace("{ref:str}", "server:1")
        for r in create_app(console.replicator.review, TOKEN).routes
        if isinstance(r, Route) and "POST" in (r.methods or ())
    }
    assert routes - {"/login"} == set(posted), "a POST route this test does not check"
    bobs = csrf(bob.get("/items"))

    for path, data in posted.items():
        for token in (None, "", "forged", bobs):
            form = data if token is None else {**data, "csrf": token}
            response = ana.post(path, data=form)
            assert response.status_code == 403, (path, token, response.status_code)
            assert "security token" in text(response)
    assert console.state() == before
    assert ana.get("/").status_code == 200, "a refused logout left the session as it was"


# --- reading -----------------------------------------------------------------------


def test_the_summary_links_each_group_to_its_list(console):
    ana = console.login()

    page = ana.get("/")

    assert "server vocabulary_items manual_review 5 1d 0h" in text(page)
    assert 'href="/items?node=server&amp;table=vocabulary_items&amp;reason=manual_review"' in (
        page.text
    )
    listed = ana.get("/items?node=server&table=vocabulary_items&reason=manual_review")
    assert refs(listed) == ["server:1", "server:2"] and "1-2 of 5" in text(listed)


def test_the_list_is_paged_and_filtered_with_counts(console):
    ana = console.login()
    events = {i.ref: i.event_count for i in console.replicator.review().list().items}

    first = ana.get("/items")
    assert refs(first) == ["server:1", "server:2"]
    assert "1-2 of 5" in text(first) and "page 1 of 3" in text(first)
    assert 'rel="next" href="/items?page=2"' in first.text and 'rel="prev"' not in first.text
    counts = re.findall(r'<td class="num">([\d,]+)</td>', first.text)
    assert counts == [str(events["server:1"]), str(events["server:2"])]
    assert "by reason: manual_review 5" in text(first)

    last = ana.get("/items?page=3")
    assert refs(last) == ["server:5"] and "5-5 of 5" in text(last)
    assert 'rel="prev" href="/items?page=2"' in last.text and 'rel="next"' not in last.text

    beyond = ana.get("/items?page=9")
    assert beyond.status_code == 200 and refs(beyond) == []
    assert "No items on this page" in text(beyond)

    assert refs(ana.get("/items?older_than=12h")) == ["server:1"]
    assert "1-1 of 1" in text(ana.get("/items?older_than=12h"))
    newest = ana.get("/items?reason=manual_review&sort=newest")
    assert refs(newest) == ["server:5", "server:4"]
    assert 'href="/items?reason=manual_review&amp;page=2&amp;sort=newest"' in newest.text
    for empty in ("/items?node=phone", "/items?table=documents", "/items?reason=key_collision"):
        page = ana.get(empty)
        assert page.status_code == 200 and refs(page) == [], empty
        assert "No open items match this filter" in text(page)

    for bad, status, message in (
        ("/items?older_than=soon", 400, "'soon' is not a duration"),
        ("/items?node=tablet", 400, "unknown node 'tablet'"),
        ("/items?page=0", 400, "page must be a number from 1 on"),
        ("/items?sort=size", 400, "sort must be one of"),
        ("/items/server:99", 404, "no review item 99 on server"),
        ("/items/oops", 400, "'oops' is not a review item"),
    ):
        page = ana.get(bad)
        assert page.status_code == status and message in text(page), (bad, text(page))

    assert "No closed items" in text(ana.get("/history"))


def test_the_item_page_puts_the_sides_next_to_each_other_with_changes_marked(console):
    page = console.login().get("/items/server:1")

    assert page.status_code == 200
    cells = re.findall(r'<td class="value( changed)?"[^>]*>([^<]*)', page.text)
    changed = [html.unescape(value).strip() for mark, value in cells if mark]
    # translation: the server's and the local's; strength: the server's.
    assert changed == ['"server 0"', '"phone 0"', "0.5"], changed
    words = text(page)
    assert "local (phone)" in words and "Events parked" in words
    for button in ("Take server", "Take local", "Discard the incoming version", "Merge"):
        assert button in words
    assert field(page, "translation") == '"server 0"' and field(page, "strength") == "0.5"


# --- deciding ----------------------------------------------------------------------


def test_take_merge_and_discard_through_the_forms_settle_both_replicas(console):
    ana = console.login("ana")

    def decide(ref: str, action: str, **data: str) -> httpx.Response:
        page = ana.get(f"/items/{ref}")
        response = ana.post(f"/items/{ref}/{action}", data={"csrf": csrf(page), **data})
        assert response.status_code == 303, text(response)
        assert response.headers["location"] == f"/items/{ref}?decided=1"
        return ana.get(response.headers["location"])

    took = decide("server:1", "take", side="server")
    assert "Decided: took server" in text(took) and "by ana" in text(took)
    decide("server:2", "take", side="local")
    merged = decide(
        "server:3",
        "merge",
        **{
            "field.translation": "both",  # not JSON: the text as typed
            "shown.translation": '"server 2"',
            "field.strength": "2",  # JSON: the number 2
            "shown.strength": "0.5",
            "field.word": '"word 2"',  # as shown: left out of the merge
            "shown.word": '"word 2"',
        },
    )
    assert 'merged {"translation": "both", "strength": 2}' in text(merged)
    decide("server:4", "discard")
    by_bot = console.bearer().post("/items/server:5/take", data={"side": "local"})
    assert by_bot.status_code == 303, "a bearer request needs no CSRF token"

    assert console.open_refs() == []
    sync(console.server, console.phone)
    decided = {
        "v-0": ("server 0", 0.5),
        "v-1": ("phone 1", 0.0),
        "v-2": ("both", 2.0),
        "v-3": ("server 3", 0.5),
        "v-4": ("phone 4", 0.0),
    }
    for key, row in decided.items():
        assert vocabulary(console.server, key) == vocabulary(console.phone, key) == row, key
    assert console.server.state() == console.phone.state()

    history = ana.get("/history")
    assert refs(history) and "1-2 of 5" in text(history)
    everything = [r for page in (1, 2, 3) for r in refs(ana.get(f"/history?page={page}"))]
    assert sorted(everything) == [f"server:{n}" for n in range(1, 6)]
    assert "support-bot" in text(ana.get("/history?page=1"))

    before = console.state()
    again = ana.post("/items/server:1/take", data={"csrf": csrf(history), "side": "local"})
    assert again.status_code == 409 and "server:1 is already resolved" in text(again)
    assert console.state() == before


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        ({"strength": "strong"}, 400, "merge: column 'strength' takes a number, not 'strong'"),
        ({"translation": "42"}, 400, "merge: column 'translation' takes text, not 42"),
        ({"colour": "red"}, 400, "merge: table 'vocabulary_items' has no column 'colour'"),
        ({"item_id": '"v-9"'}, 400, "merge: column 'item_id' is part of the row's key"),
        ({}, 400, "merge: change at least one field to merge"),
    ],
    ids=["wrong-type", "number-for-text", "unknown-column", "key-column", "nothing-changed"],
)
def test_a_bad_merge_is_shown_on_the_page_and_changes_nothing(console, fields, status, message):
    ana = console.login()
    page = ana.get("/items/server:1")
    before = console.state()
    data = {"csrf": csrf(page)}
    for column, value in fields.items():
        data |= {f"field.{column}": value, f"shown.{column}": "" if column == "colour" else "?"}

    refused = ana.post("/items/server:1/merge", data=data)

    assert refused.status_code == status and message in text(refused), text(refused)
    for column, value in fields.items():
        if column != "colour":  # a column the table lacks has no input to refill
            assert field(refused, column) == value, "the field keeps what was entered"
    assert refused.headers["hx-push-url"] == "false"
    assert console.state() == before


def test_a_refused_take_is_shown_and_changes_nothing(console):
    ana = console.login()
    token = csrf(ana.get("/items"))
    before = console.state()

    both = ana.post("/items/server:1/take", data={"csrf": token, "side": "both"})
    unknown = ana.post("/items/server:99/discard", data={"csrf": token})

    assert both.status_code == 400 and "take must be server or local, not 'both'" in text(both)
    assert unknown.status_code == 404 and "no review item 99 on server" in text(unknown)
    assert console.state() == before


def test_bulk_decides_the_filter_only_after_a_dry_run_preview(console):
    ana = console.login()
    listed = ana.get("/items?table=vocabulary_items")
    assert '<input type="hidden" name="table" value="vocabulary_items">' in listed.text
    form = {"csrf": csrf(listed), "table": "vocabulary_items", "action": "local"}
    before = console.state()

    preview = ana.post("/bulk/preview", data=form, headers={"HX-Request": "true"})
    assert preview.status_code == 200
    assert "5 of 5 matching items would be decided (take local)" in text(preview)
    assert "<html" not in preview.text, "htmx gets the preview alone"
    assert re.findall(r"<tr><td>(server:\d)</td>", preview.text) == [
        f"server:{n}" for n in range(1, 6)
    ]
    assert '{"item_id":"v-1","user_id":"u-42","word":"word 1","translation":"phone 1"' in (
        html.unescape(preview.text)
    )
    assert console.state() == before, "a preview decides nothing"
    ticket = re.search(r'name="ticket" value="([^"]+)"', preview.text).group(1)

    for refused in ({}, {"ticket": ticket[:-3] + "xyz"}, {"ticket": _ticket_of(console, "bob")}):
        response = ana.post("/bulk/decide", data={"csrf": form["csrf"], **refused})
        assert response.status_code == 400 and "Preview the bulk decision first" in text(response)
    assert console.state() == before

    console.replicator.review().discard("server:1", by="carol")  # the queue moves on
    stale = ana.post("/bulk/decide", data={"csrf": form["csrf"], "ticket": ticket})
    assert stale.status_code == 409
    assert "5 items matched then, 4 match now. Nothing was decided" in text(stale)
    assert console.open_refs() == [f"server:{n}" for n in range(2, 6)]

    again = ana.post("/bulk/preview", data=form)
    assert "Bulk decision" in text(again), "a plain form post gets the preview as a page"
    assert "4 of 4 matching items would be decided" in text(again)
    ticket = re.search(r'name="ticket" value="([^"]+)"', again.text).group(1)
    done = ana.post("/bulk/decide", data={"csrf": form["csrf"], "ticket": ticket})
    assert done.status_code == 303
    assert done.headers["location"] == "/items?table=vocabulary_items&decided=4&how=local"
    assert "Decided 4 items (take local)" in text(ana.get(done.headers["location"]))
    assert console.open_refs() == []

    sync(console.server, console.phone)
    for i in range(1, 5):
        assert (
            vocabulary(console.server, f"v-{i}")
            == vocabulary(console.phone, f"v-{i}")
            == (
                f"phone {i}",
                0.0,
            )
        )
    assert console.server.state() == console.phone.state()


def _ticket_of(console: Console, name: str) -> str:
    """A valid ticket of another session: it admits only that session."""
    other = console.login(name)
    listed = other.get("/items")
    preview = other.post("/bulk/preview", data={"csrf": csrf(listed), "action": "discard"})
    return re.search(r'name="ticket" value="([^"]+)"', preview.text).group(1)


# --- the command -------------------------------------------------------------------


def test_the_command_needs_a_token_and_serves_on_loopback(tmp_path):
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    apart(server, phone, count=1)
    path = str(write_config(tmp_path, server, phone))
    env = {k: v for k, v in os.environ.items() if k != "REPLICATOR_CONSOLE_TOKEN"}

    def console_command(*args: str, token: str | None = None):
        extra = {} if token is None else {"REPLICATOR_CONSOLE_TOKEN": token}
        return [REPLICATOR, "console", "--config", path, *args], {**env, **extra}

    for token, message in ((None, "REPLICATOR_CONSOLE_TOKEN is not set"), ("short", "too short")):
        argv, environment = console_command(token=token)
        result = subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and message in result.stderr, result.stderr

    with socket.socket() as probe:  # a free port (the command binds it itself)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv, environment = console_command("--port", str(port), "--by", BOT, token=TOKEN)
    process = subprocess.Popen(argv, env=environment, stderr=subprocess.PIPE, text=True)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)
        deadline = time.monotonic() + 30
        while True:
            try:
                if client.get("/login").status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, process.stderr.read()
                assert time.monotonic() < deadline, "the console did not start"
                time.sleep(0.05)
        listed = client.get("/items", headers={"Authorization": f"Bearer {TOKEN}"})
        assert "server:1" in text(listed) and f"deciding as {BOT}" in text(listed)
        assert client.get("/items").status_code == 303
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=20)
        phone.close()
        server.close()
    assert process.returncode == 0, stderr
    assert f"replicator console on http://127.0.0.1:{port}/" in stderr


def test_the_library_never_imports_the_console():
    wrong = [
        f"{i.module} line {i.line} imports {i.target}"
        for i in all_imports()
        if not _in(i.module, "replicator.console")
        and not _in(i.module, "replicator.cli")
        and _in(i.target, "replicator.console")
    ]
    assert wrong == [], "the library imports the console: " + "; ".join(wrong)


def test_a_bulk_decision_larger_than_its_sample_counts_every_item(console):
    from replicator.parking import Parking, Reason, write

    with console.phone.engine.begin() as conn:
        corrupt = [
            Parking(
                table="notes",
                key=f'["n-{i}"]',
                reason=Reason.CORRUPT_PAYLOAD,
                detail="cannot be decoded",
                events=[b"\x00"],
            )
            for i in range(2)
        ]
        write(conn, corrupt, {}, {}, dt.datetime.now(dt.UTC))
    ana = console.login()
    form = {"csrf": csrf(ana.get("/items")), "action": "discard"}

    preview = ana.post("/bulk/preview", data=form)
    assert "7 of 7 matching items would be decided (discard)" in text(preview), text(preview)
    assert "and 2 more." in text(preview)
    ticket = re.search(r'name="ticket" value="([^"]+)"', preview.text).group(1)
    done = ana.post("/bulk/decide", data={"csrf": form["csrf"], "ticket": ticket})

    assert done.status_code == 303 and "decided=7" in done.headers["location"]
    assert "Decided 7 items (discard)" in text(ana.get(done.headers["location"]))
    assert console.open_refs() == []
