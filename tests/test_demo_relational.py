"""``replicator demo --app relational``: the relational reference app
(integer keys, unique emails, foreign keys) on two embedded nodes, run as a
user would run it, and its scenario as a library call."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from replicator import demo_relational

from .test_cli import run


def section(stdout: str, title: str, end: str) -> str:
    """The output from ``title`` up to the next ``end``."""
    assert title in stdout, f"{title!r} is not in the output:\n{stdout}"
    return stdout.split(title, 1)[1].split(end, 1)[0]


@pytest.mark.parametrize("store", ["duckdb", "sqlite"])
def test_relational_demo_shows_both_conversations_the_parked_items_and_equal_sides(tmp_path, store):
    result = run("demo", "--app", "relational", "--store", store, "--dir", str(tmp_path))

    assert result.returncode == 0, result.stdout + result.stderr
    conversations = section(result.stdout, "conversations by conversation_id", "\n\n")
    for title in ("On the web", "On the phone"):
        [row] = [line for line in conversations.splitlines() if title in line]
        assert row.count(title) == 2 and row.split()[-1] == "yes", (
            f"{title!r} should be on the server and the device alike: {row!r}"
        )
    queue = section(result.stdout, "The review queues after the syncs", "\n\n")
    queue = " ".join(queue.split())  # rich wraps the details
    assert "unique_violation" in queue and "email = 'grace@example.org'" in queue, queue
    assert "missing_parent" in queue, queue
    assert result.stdout.rstrip().splitlines()[-1] == "Both sides are equal."
    with_local = f"{store}:///{tmp_path / f'local.{store}'}"
    titles = []
    for url in (f"sqlite:///{tmp_path / 'server.sqlite'}", with_local):
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            titles.append(sorted(conn.exec_driver_sql("SELECT title FROM conversations").scalars()))
        engine.dispose()
    assert titles == [["On the phone", "On the web"]] * 2, titles


def test_relational_demo_run_leases_keys_parks_both_clashes_and_converges(tmp_path):
    demo = demo_relational.run(tmp_path, store="duckdb")

    assert all(demo.keys_left["local"].get(t, 0) > 0 for t in demo_relational.KEYED), (
        f"the local should hold leased keys for every integer-keyed table: {demo.keys_left}"
    )
    assert all(p.ok for passes in demo.syncs for p in passes)
    reasons = {(i.table, i.reason) for i in demo.parked}
    assert reasons == {
        ("users", "unique_violation"),
        ("conversation_messages", "missing_parent"),
    }, reasons
    [users] = [t for t in demo.before if t.table == "users"]
    assert users.differing == [("grace@example.org",)], "each side keeps its own new user"
    assert demo.equal, [(t.table, t.differing) for t in demo.tables]
    [users] = [t for t in demo.tables if t.table == "users"]
    assert users.server[("grace@example.org",)][0] == "Grace", "the server's user is kept"
    assert {i.reason for i in demo.open} == {"missing_parent"}


def test_demo_of_an_unknown_app_exits_2_naming_the_apps():
    result = run("demo", "--app", "nope")

    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "--app must be one of learning, relational, not 'nope'" in message, message
