"""`replicator console` in a real browser: Playwright driving Debian's
chromium against a console on loopback over a MariaDB server and a SQLite
phone. A person logs in, filters the list, opens an item, merges two
fields, and sees the decision reach the phone on the next sync; then
discards the rest in bulk after the preview.

Chromium missing: skipped here, a failure under CI (``CI`` set), where
``.ci/run`` installs it. ``REPLICATOR_SCREENSHOTS=1`` saves the list and the
item page as docs/console-list.png and docs/console-item.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from replicator.application import Replicator
from replicator.console import create_app

from .cluster import apart, config, member, sync, vocabulary
from .test_console import TOKEN, served

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[1] / "docs"


def _missing(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI must run the browser test (.ci/run installs chromium)")
    pytest.skip(why)


@pytest.fixture
def chromium():
    """Playwright's chromium, as Debian's binary."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -c requirements.lock -e '.[test]')")
    path = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if path is None:
        _missing("Debian's chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path)
        yield browser
        browser.close()


@pytest.fixture
def parked(database_url, tmp_path):
    """A MariaDB server with three conflicts parked, a SQLite phone, and
    the console over them."""
    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    apart(server, phone, count=3)
    engines = {"server": server.engine, "phone": phone.engine}
    with (
        Replicator(config(server, phone), engines=engines) as replicator,
        served(create_app(replicator.review, TOKEN)) as url,
    ):
        yield url, server, phone, replicator
    phone.close()
    server.close()


@pytest.mark.backends("mariadb")
def test_a_person_merges_an_item_and_discards_the_rest_in_bulk(chromium, parked):
    from playwright.sync_api import expect

    url, server, phone, replicator = parked
    screenshots = os.environ.get("REPLICATOR_SCREENSHOTS") == "1"
    page = chromium.new_page(viewport={"width": 1280, "height": 760})
    problems: list[str] = []  # a script error or a CSP violation fails the test
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.on("pageerror", lambda e: problems.append(str(e)))

    page.goto(url + "/items")
    page.fill("input[name=token]", TOKEN)
    page.fill("input[name=name]", "ana")
    page.click("button:has-text('Log in')")
    expect(page.locator("h1")).to_have_text("Open items")

    page.fill("input[name=table]", "vocabulary_items")
    page.click("button:has-text('Filter')")
    page.wait_for_url("**/items?table=vocabulary_items**")
    rows = page.locator("table.items tbody tr")
    expect(rows).to_have_count(3)
    expect(page.locator(".pager .total")).to_have_text("3")
    if screenshots:
        page.screenshot(path=str(DOCS / "console-list.png"), full_page=True)

    page.click("a:has-text('server:1')")
    page.wait_for_url("**/items/server:1")
    expect(page.locator("td.changed")).to_have_count(3)
    page.fill("input[name='field.translation']", "merged by hand")
    page.fill("input[name='field.strength']", "0.9")
    if screenshots:
        page.screenshot(path=str(DOCS / "console-item.png"), full_page=True)
    page.click("button.merge-button")
    expect(page.locator(".done")).to_contain_text('merged {"translation": "merged by hand"')
    expect(page.locator("h1 .status")).to_have_text("resolved")

    sync(server, phone)
    assert vocabulary(server, "v-0") == vocabulary(phone, "v-0") == ("merged by hand", 0.9)

    page.click("nav a:has-text('Open items')")
    expect(rows).to_have_count(2)
    page.check("input[name=action][value=discard]")
    page.click("button:has-text('Preview')")
    expect(page.locator(".would")).to_contain_text(
        "2 of 2 matching items would be decided (discard)"
    )
    assert len(replicator.review().list().items) == 2, "the preview decided nothing"
    page.click("button.confirm")
    expect(page.locator(".done")).to_contain_text("Decided 2 items (discard)")
    expect(page.locator(".empty")).to_have_text("No open items.")

    sync(server, phone)
    for i in (1, 2):
        assert vocabulary(server, f"v-{i}") == vocabulary(phone, f"v-{i}") == (f"server {i}", 0.5)
    assert server.state() == phone.state()
    assert problems == []
