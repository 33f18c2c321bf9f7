"""The installed `replicator` command, run as a user would run it."""

from __future__ import annotations

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
    engine = sa.create_engine(f"duckdb:///{tmp_path / 'local.duckdb'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM replicator_outbox").scalar() == 15
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
    for _ in range(2):
        result = run("init", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "server: replicator tables are up to date" in result.stdout
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
    assert "connecting to mysql+pymysql://nobody:***@127.0.0.1:1/app failed" in result.stderr
    assert "secret" not in result.stderr, "passwords are masked"


def test_usage_error_exits_2():
    assert run("demo", "--store", "oracle").returncode == 2
    assert run("no-such-command").returncode == 2
