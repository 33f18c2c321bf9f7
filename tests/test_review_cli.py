"""`replicator review`, run as an operator would: the installed command in a
subprocess, against a MariaDB server and a SQLite local (end to end), and
its input errors on SQLite alone."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from replicator.cli import app
from replicator.review import Filter, ReviewQueue
from replicator.tables import review_items

from .cluster import apart, member, vocabulary
from .test_cli import run


def write_config(tmp_path: Path, *members, extra: str = "") -> Path:
    nodes = "".join(
        f'[nodes.{m.name}]\nurl = "{m.node.url}"\nrole = "{m.node.role}"\n' for m in members
    )
    path = tmp_path / "replicator.toml"
    path.write_text(nodes + '[tables.vocabulary_items]\npolicy = "manual_review"\n' + extra)
    return path


def review(config: Path, *args: str):
    return run("review", *args, "--config", str(config))


def as_json(result) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def parked(database_url, tmp_path):
    """A MariaDB server and a SQLite phone with four rows both edited while
    apart, parked on the server; and their configuration file."""
    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    apart(server, phone, count=4)
    yield server, phone, write_config(tmp_path, server, phone)
    phone.close()
    server.close()


@pytest.mark.backends("mariadb")
def test_an_operator_lists_shows_and_decides_every_item_then_sync_settles_them(parked):
    server, phone, config = parked

    listed = review(config, "list")
    assert listed.returncode == 0, listed.stderr
    for n in (1, 2, 3, 4):
        assert f"server:{n}" in listed.stdout
    assert "4 open items; by table: vocabulary_items 4; by reason: manual_review 4" in (
        " ".join(listed.stdout.split())
    )
    items = as_json(review(config, "list", "--json"))["items"]
    assert [(i["id"], i["node"], i["status"], i["reason"]) for i in items] == [
        (n, "server", "open", "manual_review") for n in (1, 2, 3, 4)
    ]
    assert {"table", "key", "detected_at"} <= items[0].keys()

    shown = review(config, "show", "server:1")
    assert shown.returncode == 0, shown.stderr
    assert '"server 0" *' in shown.stdout and '"phone 0" *' in shown.stdout
    assert "local (phone)" in shown.stdout and "Events parked" in shown.stdout
    document = as_json(review(config, "show", "server:1", "--json"))
    assert document["base"]["translation"] == "?"
    assert document["server"]["translation"] == "server 0"
    assert document["local"]["translation"] == "phone 0"
    assert document["changed"] == {"server": ["translation", "strength"], "local": ["translation"]}

    bad = review(config, "resolve", "server:3", "--merge", '{"colour": "red"}')
    assert bad.returncode == 2 and "no column 'colour'" in bad.stderr

    for args in (
        ("resolve", "server:1", "--take", "server"),
        ("resolve", "server:2", "--take", "local", "--by", "ana"),
        ("resolve", "server:3", "--merge", '{"translation": "both", "strength": 2}'),
        ("discard", "server:4"),
    ):
        decided = review(config, *args)
        assert decided.returncode == 0, decided.stderr
        assert "replicates on the next sync" in decided.stdout

    def state():
        item = as_json(review(config, "show", "server:1", "--json"))
        del item["age_seconds"]
        return item, server.events(), server.state()

    before = state()
    again = review(config, "resolve", "server:1", "--take", "local")
    assert again.returncode == 1
    assert "server:1 is already resolved" in " ".join(again.stderr.split())
    assert state() == before

    synced = run("sync", "--config", str(config))
    assert synced.returncode == 0, synced.stderr

    decided_rows = {
        "v-0": ("server 0", 0.5),
        "v-1": ("phone 1", 0.0),
        "v-2": ("both", 2.0),
        "v-3": ("server 3", 0.5),
    }
    for key, row in decided_rows.items():
        assert vocabulary(server, key) == vocabulary(phone, key) == row, key
    assert server.state() == phone.state()
    assert as_json(review(config, "list", "--json"))["items"] == []
    history = as_json(review(config, "history", "--json"))["items"]
    assert sorted((i["ref"], i["status"]) for i in history) == [
        (f"server:{n}", "resolved") for n in (1, 2, 3, 4)
    ]
    assert {i["ref"]: i["resolved_by"] for i in history}["server:2"] == "ana"


@pytest.mark.backends("mariadb")
def test_bulk_resolve_with_a_dry_run_first(parked):
    server, phone, config = parked

    preview = review(
        config, "resolve", "--table", "vocabulary_items", "--take", "local", "--dry-run"
    )
    assert preview.returncode == 0, preview.stderr
    assert "4 of 4 matching items would be decided (take local)" in preview.stdout
    assert len(as_json(review(config, "list", "--json"))["items"]) == 4

    done = as_json(
        review(config, "resolve", "--table", "vocabulary_items", "--take", "local", "--json")
    )
    assert (done["matched"], len(done["decided"]), done["dry_run"]) == (4, 4, False)
    assert run("sync", "--config", str(config)).returncode == 0
    for i in range(4):
        assert vocabulary(server, f"v-{i}") == vocabulary(phone, f"v-{i}") == (f"phone {i}", 0.0)


@pytest.fixture
def sqlite_parked(tmp_path):
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    apart(server, phone, count=2)
    yield server, phone, write_config(tmp_path, server, phone)
    phone.close()
    server.close()


USAGE_ERRORS = [
    (("resolve", "server:1"), "give exactly one of --take"),
    (("resolve", "server:1", "--take", "server", "--merge", "{}"), "give exactly one"),
    (("resolve", "server:1", "--take", "both"), "--take must be server or local"),
    (("resolve", "server:1", "--merge", "{oops"), "--merge: not JSON"),
    (("resolve", "server:1", "--merge", "[1]"), "give a JSON object"),
    (("resolve", "server:1", "--merge", '{"strength": "x"}'), "column 'strength' takes"),
    (("resolve", "--take", "server"), "give an item ID, filters"),
    (("resolve", "server:1", "--take", "server", "--table", "t"), "not both"),
    (("resolve", "--merge", '{"word": "x"}', "--all"), "--merge settles one item"),
    (("discard", "server:x"), "is not a review item"),
    (("list", "--older-than", "soon"), "--older-than"),
    (("list", "--sort", "size"), "sort must be one of"),
    (("list", "--node", "tablet"), "unknown node 'tablet'"),
]


def test_usage_errors_exit_2_say_what_was_wrong_and_change_nothing(sqlite_parked):
    """In process (typer's runner): the same command, without a start-up per case."""
    server, _, config = sqlite_parked
    before = server.events(), server.state()
    runner = CliRunner()

    for args, message in USAGE_ERRORS:
        result = runner.invoke(app, ["review", *args, "--config", str(config)])
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.stderr.split()), (args, result.stderr)

    assert (server.events(), server.state()) == before
    assert len(as_json(review(config, "list", "--json"))["items"]) == 2


def test_an_unknown_item_or_unreachable_node_exits_1_and_says_which(sqlite_parked, tmp_path):
    server, phone, _ = sqlite_parked
    config = write_config(
        tmp_path,
        server,
        phone,
        extra='[nodes.tablet]\nurl = "mysql+pymysql://root@127.0.0.1:1/gone"\nrole = "local"\n',
    )

    listed = review(config, "list", "--json")
    assert listed.returncode == 1
    assert len(json.loads(listed.stdout)["items"]) == 2  # what could be read is listed
    assert "unreachable: tablet" in listed.stderr

    unknown = review(config, "show", "server:9")
    assert unknown.returncode == 1 and "no review item 9 on server" in unknown.stderr
    gone = review(config, "resolve", "tablet:1", "--take", "server")
    assert gone.returncode == 1
    assert "node tablet" in gone.stderr and "cannot be reached" in gone.stderr
    bulk = review(config, "discard", "--all")
    assert bulk.returncode == 1 and "nothing was decided" in " ".join(bulk.stderr.split())
    assert len(as_json(review(config, "list", "--node", "server", "--json"))["items"]) == 2


# --- review summary: the open queue counted by node, table and reason -------------


def _parked_at(server) -> dt.datetime:
    with server.engine.connect() as conn:
        oldest = conn.execute(sa.select(sa.func.min(review_items.c.detected_at))).scalar_one()
    return oldest.replace(tzinfo=dt.UTC)


def test_summary_counts_open_items_by_node_table_and_reason_with_the_oldest_age(parked):
    server, phone, _ = parked
    oldest = _parked_at(server)
    queue = ReviewQueue([server.node, phone.node], now=lambda: oldest + dt.timedelta(hours=2))

    summary = queue.summary()

    assert summary.open == 4 and not summary.unreachable, summary
    (group,) = summary.groups
    assert (group.node, group.table, group.reason, group.count) == (
        "server",
        "vocabulary_items",
        "manual_review",
        4,
    )
    assert (group.oldest_at, group.oldest_age_seconds) == (oldest, 7200.0)
    assert queue.summary("phone").groups == [], "the phone parked nothing"


def test_a_decided_item_leaves_the_summary(parked):
    server, phone, _ = parked
    queue = ReviewQueue([server.node, phone.node])
    queue.resolve("server:1", take="server")

    (group,) = queue.summary().groups
    assert group.count == 3


# A DuckDB server is a file this process holds open: no command can open it.
@pytest.mark.backends("sqlite", "mariadb")
def test_the_command_prints_the_groups_or_json_and_refuses_an_unknown_node(parked):
    _, _, config = parked

    shown = review(config, "summary")
    as_json = review(config, "summary", "--json")
    unknown = review(config, "summary", "--node", "tablet")

    assert shown.returncode == 0, shown.stderr
    words = " ".join(shown.stdout.split())
    assert "server vocabulary_items manual_review 4" in words, shown.stdout
    assert "4 open items" in words
    document = json.loads(as_json.stdout)
    assert document["open"] == 4
    assert [(g["table"], g["count"]) for g in document["groups"]] == [("vocabulary_items", 4)]
    assert unknown.returncode == 2 and "tablet" in unknown.stderr, unknown.stderr


# --- review list: pages of a queue of any length --------------------------------


def _park_on(member, table: str, at: dt.datetime, events: int) -> None:
    """An item of ``table`` on ``member``'s queue, parked ``at``, holding
    ``events`` (undecodable) events."""
    from replicator.parking import Parking, Reason, write

    parked = Parking(
        table=table,
        key='["k"]',
        reason=Reason.MISSING_TABLE,
        detail=f"table {table!r} does not exist on the target",
        events=[b"\x00"] * events,
    )
    with member.engine.begin() as conn:
        write(conn, [parked], {}, {}, at)


@pytest.fixture
def two_queues(parked):
    """Four conflicts on the server, and two items on the phone: one parked
    before them, one after."""
    server, phone, config = parked
    oldest = _parked_at(server)
    _park_on(phone, "notes", oldest - dt.timedelta(hours=1), events=3)
    _park_on(phone, "notes", oldest + dt.timedelta(hours=1), events=1)
    return server, phone, config, oldest


def test_list_pages_through_every_node_in_order_and_counts_every_match(two_queues):
    server, phone, _, oldest = two_queues
    queue = ReviewQueue([server.node, phone.node], now=lambda: oldest + dt.timedelta(hours=2))

    pages = [queue.list(limit=2, offset=offset) for offset in (0, 2, 4, 6)]

    assert [[i.ref for i in p.items] for p in pages] == [
        ["phone:1", "server:1"],
        ["server:2", "server:3"],
        ["server:4", "phone:2"],
        [],
    ]
    assert {(p.total, p.offset) for p in pages} == {(6, 0), (6, 2), (6, 4), (6, 6)}
    assert pages[0].by_table == {"notes": 2, "vocabulary_items": 4}
    assert pages[0].by_reason == {"missing_table": 2, "manual_review": 4}
    assert [i.event_count for i in pages[0].items] == [3, 1]
    newest = queue.list(sort="newest", limit=3)
    assert [i.ref for i in newest.items] == ["phone:2", "server:4", "server:3"]
    by_node = queue.list(sort="node", limit=2, offset=1)
    assert [i.ref for i in by_node.items] == ["phone:2", "server:1"]
    only = queue.list(Filter(table="notes", older_than=dt.timedelta(hours=2)))
    assert [i.ref for i in only.items] == ["phone:1"] and only.total == 1


def test_an_item_parked_before_counts_were_kept_is_counted_from_its_events(two_queues):
    _, phone, _, _ = two_queues
    with phone.engine.begin() as conn:
        conn.execute(sa.update(review_items).values(event_count=None))

    listed = ReviewQueue([phone.node]).list()

    assert [i.event_count for i in listed.items] == [3, 1]


def test_a_page_leaves_out_items_a_later_change_superseded_and_fills_up(parked):
    from replicator import parking, versions
    from replicator.versions import RowVersion

    server, phone, _ = parked
    with server.engine.connect() as conn:
        first = parking.items(conn, status="open")[0]
    fixed = versions.merge(first.local.version, first.remote.version, {"server": 9})
    with server.engine.begin() as conn:
        row = {("vocabulary_items", first.key): RowVersion(fixed, 1, "x", False)}
        versions.store(conn, server.node.dialect, row)

    page = ReviewQueue([server.node, phone.node]).list(limit=2)

    assert [i.ref for i in page.items] == ["server:2", "server:3"]
    assert (page.obsolete, page.total) == (1, 3)


@pytest.mark.backends("sqlite", "mariadb")
def test_the_command_pages_and_says_how_to_see_the_next_page(two_queues):
    _, _, config, _ = two_queues

    shown = review(config, "list", "--limit", "2", "--offset", "2")
    document = as_json(review(config, "list", "--limit", "2", "--offset", "4", "--json"))
    negative = review(config, "list", "--offset", "-1")

    assert shown.returncode == 0, shown.stderr
    assert "server:2" in shown.stdout and "server:4" not in shown.stdout
    words = " ".join(shown.stdout.split() + shown.stderr.split())
    assert "6 open items" in words
    assert "2 more not shown (--offset 4 shows the next page" in words, words
    assert [i["ref"] for i in document["items"]] == ["server:4", "phone:2"]
    assert (document["total"], document["offset"], document["more"]) == (6, 4, 0)
    assert document["items"][1]["event_count"] == 1
    assert negative.returncode == 2 and "--offset" in negative.stderr
