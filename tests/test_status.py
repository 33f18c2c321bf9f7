"""`replicator status` and `replicator stats` against known runs: the
figures they print are those of the passes the test ran (SQLite server and
phone, and a tablet that cannot be reached)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from typer.testing import CliRunner

from replicator import outbox
from replicator.application import Replicator
from replicator.clock import utcnow
from replicator.config import load
from replicator.stats import percentile
from replicator.stats import stats as stats_of

from .cluster import add_vocabulary, edit_vocabulary, member


@pytest.fixture
def nodes(tmp_path):
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    config = tmp_path / "replicator.toml"
    config.write_text(
        f'[nodes.server]\nurl = "{server.node.url}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{phone.node.url}"\nrole = "local"\n'
        f'[nodes.tablet]\nurl = "sqlite:///{tmp_path}/gone/tablet.sqlite"\nrole = "local"\n'
        '[tables.vocabulary_items]\npolicy = "manual_review"\n'
    )
    yield server, phone, config
    phone.close()
    server.close()


def cli(*args: str) -> tuple[int, dict]:
    from replicator.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, json.loads(result.stdout)


def test_status_and_stats_report_the_runs_that_happened(nodes):
    server, phone, config = nodes
    for i in range(3):
        add_vocabulary(phone, f"v-{i}", f"word {i}")
    with Replicator(load(config)) as r:
        first = r.sync()
        edit_vocabulary(phone, "v-0", translation="phone")
        edit_vocabulary(server, "v-0", translation="server")
        second = r.sync()
    runs = first.passes + second.passes
    with phone.engine.connect() as conn:
        synced_to = outbox.head(conn)
    add_vocabulary(phone, "v-3", "tres")
    add_vocabulary(phone, "v-4", "cuatro")

    code, status = cli("status", "--json", "--config", str(config))
    assert code == 1, "a node cannot be reached"
    links = {(link["source"], link["target"]): link for link in status["links"]}
    up = links[("phone", "server")]
    assert (up["head"], up["checkpoint"], up["lag"]) == (synced_to + 2, synced_to, 2)
    assert up["lag_seconds"] >= 0 and up["last_sync"] is not None and up["reachable"]
    assert up["syncing"] is False and up["runner"] is None
    down = links[("server", "phone")]
    assert down["lag"] == 0 and down["lag_seconds"] == 0
    for link in (links[("tablet", "server")], links[("server", "tablet")]):
        assert link["reachable"] is False and "unable to open database file" in link["error"]
        assert link["last_sync"] is None
    by_node = {n["name"]: n for n in status["nodes"]}
    assert by_node["server"]["open_review_items"] == 1, "the parked conflict"
    assert by_node["tablet"]["reachable"] is False
    assert status["open_review_items"] == 1

    code, stats = cli("stats", "--json", "--config", str(config))
    assert code == 1 and list(stats["unreachable"]) == ["tablet"]
    failed = [p for p in runs if not p.ok]
    assert len(failed) == 4, "each sync: tablet up and down"
    seconds = [p.seconds for p in runs]
    assert stats | {"since": None, "links": None, "last_success": None} == {
        "passes": 8,
        "succeeded": 4,
        "deferred": 0,
        "failed": 4,
        "read": sum(p.read for p in runs),
        "applied": sum(p.applied for p in runs),
        "conflicts": 1,
        "conflicts_by_policy": {"manual_review": 1},
        "parked": 1,
        # Summed in another order than the database returns the runs in.
        "mean_seconds": pytest.approx(sum(seconds) / 8, abs=2e-6),
        "p95_seconds": round(percentile(seconds, 95), 6),
        "last_success": None,
        "last_failure": stats["last_failure"],
        "last_error": failed[-1].error,
        "days": 7.0,
        "since": None,
        "links": None,
        "unreachable": stats["unreachable"],
    }
    assert stats["applied"] == 3, "three rows up; the edits conflict (parked, held)"
    up_totals = next(
        link for link in stats["links"] if (link["source"], link["target"]) == ("phone", "server")
    )
    assert (up_totals["passes"], up_totals["applied"], up_totals["parked"]) == (2, 3, 1)
    assert up_totals["last_success"] == up["last_sync"]

    with Replicator(load(config)) as r:
        later = stats_of(r, days=1, now=utcnow() + dt.timedelta(days=1, minutes=1))
        earlier = stats_of(r, days=1, now=utcnow() + dt.timedelta(hours=23))
    assert (later.passes, later.mean_seconds, later.last_success) == (0, None, None)
    assert earlier.passes == 8, "a day back from then"
