"""The installed `replicator` command, run as a user would run it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

REPLICATOR = shutil.which("replicator", path=str(Path(sys.executable).parent)) or "replicator"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([REPLICATOR, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_demo_prints_captured_events(tmp_path):
    result = run("demo", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Captured change events" in result.stdout
    assert "15 events captured in 3 transactions" in result.stdout
    for table in ("user_profiles", "messages", "vocabulary_items", "learning_progress"):
        assert table in result.stdout
    assert "local -> server" in result.stdout and "server -> local" in result.stdout
    assert " no " not in result.stdout.split("Both nodes after the syncs")[1]
    conflicts = result.stdout.split("Conflicts, one per policy")[1]
    for policy in (
        "latest_timestamp",
        "server_wins",
        "local_wins",
        "merge_fields",
        "keep_longer_message (custom)",
        "manual_review",
    ):
        assert policy in conflicts
    assert "level=3, xp=55" in conflicts  # merged
    assert "Parked for review on the server: item server:1, documents" in result.stdout
    assert "replicator review resolve server:1 --merge" in result.stdout
    passes = result.stdout.split("without a conflict")[1].split("Both nodes")[0]
    # Read by its cells, not by how rich spaces its columns.
    rows = [line.split() for line in passes.splitlines()]
    assert ["server", "->", "local", "default", "1", "1", "0", "0"] in [r[:8] for r in rows]
    assert "Café con leche y churros, o café solo" in conflicts  # both now hold it
    assert "Vector sinks" in result.stdout
    search = result.stdout.split("Searching the device's vector store")[1]
    assert "churros" in search.splitlines()[1]  # the nearest document
    settings = str(tmp_path / "replicator.toml")
    status = json.loads(run("sink", "status", "--json", "--config", settings).stdout)
    assert [(s["sink"], s["lag"], s["documents"]) for s in status["sinks"]] == [("documents", 0, 2)]
    found = run("sink", "query", "documents", "la cuenta", "-n", "1", "--json", "-c", settings)
    [nearest] = json.loads(found.stdout)["results"]
    assert "cuenta" in nearest["document"]
    history = run("review", "history", "--json", "--config", str(tmp_path / "replicator.toml"))
    [decided] = json.loads(history.stdout)["items"]
    assert (decided["ref"], decided["status"], decided["resolved_by"]) == (
        "server:1",
        "resolved",
        "demo",
    )
    engine = sa.create_engine(f"duckdb:///{tmp_path / 'local.duckdb'}")
    with engine.connect() as conn:
        # The session's 15 events, then one edit per table while apart.
        own = "SELECT count(*) FROM replicator_outbox WHERE origin = 'local'"
        assert conn.exec_driver_sql(own).scalar() == 21
        # The tutor's addition for this user arrived; the one for another user did not.
        words = conn.exec_driver_sql("SELECT word FROM vocabulary_items ORDER BY word").scalars()
        assert list(words) == ["café", "cuenta", "pan"]
    engine.dispose()


def test_demo_on_sqlite(tmp_path):
    result = run("demo", "--dir", str(tmp_path), "--store", "sqlite")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "local.sqlite").exists()


def test_init_creates_the_tables_on_every_node_twice(tmp_path):
    (tmp_path / "replicator.toml").write_text(
        '[nodes.server]\nurl = "sqlite:///server.sqlite"\nrole = "server"\n'
        '[nodes.local]\nurl = "duckdb:///local.duckdb"\nrole = "local"\n'
    )
    for said in ("created", "are up to date"):
        result = run("init", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"server: replicator tables {said}" in result.stdout
        assert f"local: replicator tables {said}" in result.stdout
    for url in (
        f"sqlite:///{tmp_path / 'server.sqlite'}",
        f"duckdb:///{tmp_path / 'local.duckdb'}",
    ):
        engine = sa.create_engine(url)
        assert "replicator_outbox" in sa.inspect(engine).get_table_names()
        engine.dispose()


def test_configuration_errors_exit_2_and_name_the_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[nodes.server]\nurl = "sqlite:///s.sqlite"\nrole = "boss"\n')
    result = run("init", "--config", str(path))
    assert result.returncode == 2
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "nodes.server.role: Invalid enum value 'boss'" in message and str(path) in message
    result = run("init", "--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 2 and "no such config file" in result.stderr


def test_unreachable_node_exits_1(tmp_path):
    (tmp_path / "replicator.toml").write_text(
        '[nodes.server]\nurl = "mysql+pymysql://nobody:secret@127.0.0.1:1/app"\nrole = "server"\n'
    )
    result = run("init", cwd=tmp_path)
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert "node server (mysql+pymysql://nobody:***@127.0.0.1:1/app) cannot be reached" in message
    assert "secret" not in result.stderr, "passwords are masked"


def test_usage_error_exits_2():
    assert run("demo", "--store", "oracle").returncode == 2
    assert run("no-such-command").returncode == 2


def sync_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "replicator.toml"
    path.write_text(
        '[nodes.server]\nurl = "sqlite:///server.sqlite"\nrole = "server"\n'
        '[nodes.phone]\nurl = "sqlite:///phone.sqlite"\nrole = "local"\n' + extra
    )
    return path


def two_nodes(tmp_path: Path, session_on: str, extra: str = "") -> None:
    """A config of a SQLite server and phone, both migrated, with the app's
    study session captured on one of them."""
    from .cluster import NOW, app, member

    sync_config(tmp_path, extra)
    for name, role in (("server", "server"), ("phone", "local")):
        m = member(name, f"sqlite:///{tmp_path / name}.sqlite", role=role)
        if name == session_on:
            app.run_session(m.sessions, user_id="u-42", now=NOW)
        m.close()


def test_sync_applies_once_then_reports_nothing_to_apply(tmp_path):
    import json

    two_nodes(tmp_path, session_on="phone")

    first = run("sync", "--json", cwd=tmp_path)
    again = run("sync", "--json", cwd=tmp_path)
    text = run("sync", cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    passes = json.loads(first.stdout)["passes"]
    fields = {"source", "target", "channel", "read", "applied", "skipped", "conflicts"}
    assert fields | {"parked", "failed", "seconds"} <= set(passes[0])
    assert [(p["source"], p["target"], p["applied"]) for p in passes] == [
        ("phone", "server", 15),
        ("server", "phone", 0),
    ]
    assert [p["applied"] for p in json.loads(again.stdout)["passes"]] == [0, 0]
    assert text.returncode == 0 and "phone -> server" in text.stdout
    for target, source in (("server", "phone"), ("phone", "server")):
        engine = sa.create_engine(f"sqlite:///{tmp_path / target}.sqlite")
        with engine.connect() as conn:
            runs = conn.exec_driver_sql(
                "SELECT source, count(*) FROM replicator_sync_runs GROUP BY source"
            ).all()
        engine.dispose()
        assert runs == [(source, 3)]  # every pass is recorded on its target


def test_sync_config_mistakes_exit_2_and_name_the_key(tmp_path):
    cases = [
        ("[replication]\nbatch_sise = 10\n", "replication.batch_sise: unknown key"),
        ('[replication]\npolicy = "coin_flip"\n', "replication.policy: unknown policy"),
    ]
    for extra, message in cases:
        sync_config(tmp_path, extra)
        result = run("sync", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
    (tmp_path / "replicator.toml").write_text(
        '[nodes.server]\nurl = "postgresqlx://u:secret@h/db"\nrole = "server"\n'
    )
    result = run("sync", "--config", str(tmp_path / "replicator.toml"))
    assert result.returncode == 2
    assert "nodes.server.url" in result.stderr and "secret" not in result.stderr


def test_sync_exits_1_when_a_node_cannot_be_reached(tmp_path):
    sync_config(tmp_path)
    (tmp_path / "replicator.toml").write_text(
        '[nodes.server]\nurl = "mysql+pymysql://root:hunter2@127.0.0.1:1/none"\n'
        'role = "server"\n[nodes.phone]\nurl = "sqlite:///phone.sqlite"\nrole = "local"\n'
    )
    result = run("init", cwd=tmp_path)
    assert result.returncode == 1
    result = run("sync", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot be reached" in result.stderr and "hunter2" not in result.stderr


def test_replay_dry_run_then_replay_restore_a_tampered_local(tmp_path):
    import json

    two_nodes(tmp_path, session_on="phone")
    assert run("sync", cwd=tmp_path).returncode == 0
    phone = sa.create_engine(f"sqlite:///{tmp_path / 'phone.sqlite'}")
    with phone.begin() as conn:
        conn.exec_driver_sql("UPDATE messages SET content = 'XXX'")

    dry = run("replay", "--node", "phone", "--from", "1", "--dry-run", "--json", cwd=tmp_path)
    text = run("replay", "--node", "phone", "--since", "2000-01-01T00:00:00", cwd=tmp_path)

    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert (report["dry_run"], report["start"], report["updated"]) == (True, 1, 2)
    assert text.returncode == 0, text.stderr
    assert "positions 1..15 of server's log onto phone" in text.stdout
    assert "update 2" in text.stdout
    with phone.connect() as conn:
        contents = conn.exec_driver_sql("SELECT content FROM messages").scalars().all()
    phone.dispose()
    assert "XXX" not in contents


def test_replay_usage_errors_exit_2_and_say_which(tmp_path):
    sync_config(tmp_path)
    both = run("replay", "--node", "phone", "--from", "1", "--since", "2026-01-01", cwd=tmp_path)
    neither = run("replay", "--node", "phone", cwd=tmp_path)
    bad_time = run("replay", "--node", "phone", "--since", "yesterday", cwd=tmp_path)
    unknown = run("replay", "--node", "tablet", "--from", "1", cwd=tmp_path)

    assert [r.returncode for r in (both, neither, bad_time, unknown)] == [2, 2, 2, 2]
    assert "exactly one of --from and --since" in both.stderr
    assert "--since: not an ISO time: 'yesterday'" in bad_time.stderr
    assert "no node 'tablet'" in unknown.stderr and "server, phone" in unknown.stderr


def test_log_shows_a_rows_history_across_nodes_and_the_row_at_a_time(tmp_path):
    import datetime as dt
    import json

    from freezegun import freeze_time

    from .cluster import add_vocabulary, edit_vocabulary, member

    sync_config(tmp_path)
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    # The edits are stamped by the capturing clock, stepped here: a minute
    # apart, with `between` in the middle (not a wall-clock moment waited for).
    start = dt.datetime(2026, 11, 24, 9, 0)
    with freeze_time(start):
        add_vocabulary(phone, "v-1", "mesa")
    phone.close()
    assert run("sync", cwd=tmp_path).returncode == 0
    between = start + dt.timedelta(seconds=30)
    with freeze_time(start + dt.timedelta(minutes=1)):
        edit_vocabulary(server, "v-1", translation="table")
    server.close()

    row = ("log", "--node", "server", "--table", "vocabulary_items", "--key")
    found = run(*row, "v-1", "--json", cwd=tmp_path)
    then = run(*row, "v-1", "--at", between.isoformat(), "--json", cwd=tmp_path)
    text = run(*row, '["v-1"]', cwd=tmp_path)
    bad = run("log", "--node", "server", "--key", "v-1", cwd=tmp_path)

    assert found.returncode == 0, found.stderr
    changes = json.loads(found.stdout)["changes"]
    assert [(c["origin"], c["op"]) for c in changes] == [("phone", "insert"), ("server", "update")]
    assert changes[1]["changed"] == {"translation": ["?", "table"]}
    assert json.loads(then.stdout)["row"]["translation"] == "?"
    assert text.returncode == 0 and 'translation: "?" -> "table"' in text.stdout
    assert bad.returncode == 2 and "--key and --at need --table" in bad.stderr


def test_bootstrap_fills_an_empty_local_once(tmp_path):
    import json

    two_nodes(tmp_path, session_on="server")

    first = run("bootstrap", "--node", "phone", "--json", cwd=tmp_path)
    again = run("bootstrap", "--node", "phone", cwd=tmp_path)
    server = run("bootstrap", "--node", "server", cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert (report["position"], report["rows"]["vocabulary_items"]) == (15, 2)
    assert again.returncode == 1 and "not empty" in again.stderr
    assert server.returncode == 2 and "only a local is bootstrapped" in server.stderr


def test_prune_reports_and_exits_1_when_a_replica_is_behind(tmp_path):
    import json

    from .cluster import member

    two_nodes(tmp_path, session_on="server", extra='[replication]\nretention = "0s"\n')
    phone = sa.create_engine(f"sqlite:///{tmp_path / 'phone.sqlite'}")
    with phone.begin() as conn:  # the phone reached position 3 of the server's log, once
        conn.exec_driver_sql(
            "INSERT INTO replicator_checkpoints (source, channel, position, updated_at) "
            "VALUES ('server', 'default', 3, '2026-11-24')"
        )
    phone.dispose()

    first = run("prune", "--json", cwd=tmp_path)
    bad = run("prune", "--retention", "soon", cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    server_outbox = json.loads(first.stdout)["outboxes"][0]
    assert (server_outbox["deleted"], server_outbox["through"]) == (3, 3)
    assert bad.returncode == 2 and "--retention: 'soon' is not a duration" in bad.stderr
    (tmp_path / "phone.sqlite").unlink()  # a new phone: behind what was pruned, not empty
    m = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    from .cluster import add_vocabulary

    add_vocabulary(m, "v-9", "own")
    m.close()
    behind = run("prune", cwd=tmp_path)
    assert behind.returncode == 1
    assert "phone has not applied events server has pruned" in behind.stderr
    assert "replicator bootstrap --node phone" in behind.stderr


def test_verify_exits_1_naming_the_keys_that_differ(tmp_path):
    import json

    two_nodes(tmp_path, session_on="phone")
    assert run("sync", cwd=tmp_path).returncode == 0
    same = run("verify", cwd=tmp_path)
    phone = sa.create_engine(f"sqlite:///{tmp_path / 'phone.sqlite'}")
    with phone.begin() as conn:
        conn.exec_driver_sql("UPDATE user_profiles SET display_name = 'X'")
    phone.dispose()
    differ = run("verify", "--table", "user_profiles", cwd=tmp_path)
    as_json = run("verify", "--json", cwd=tmp_path)

    assert same.returncode == 0, same.stderr
    assert "phone vs server: messages: 2 / 2 rows, same" in same.stdout
    assert differ.returncode == 1
    assert 'user_profiles: 1 / 1 rows, 1 differ: ["u-42"]' in differ.stdout
    [node] = json.loads(as_json.stdout)["nodes"]
    assert [t["differing"] for t in node["tables"] if t["table"] == "user_profiles"] == [
        ['["u-42"]']
    ]
