"""What a newcomer meets in the first ten minutes with the `replicator` command:
version, help that reads as a person expects, bounded output, clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .test_cli import run

HEAVY = ("sqlalchemy", "duckdb", "chromadb", "alembic", "rich")


def test_version_and_python_dash_m():
    from importlib.metadata import version

    expected = f"replicator {version('replicator')}"
    assert run("--version").stdout.strip() == expected
    module = subprocess.run(
        [sys.executable, "-m", "replicator", "--version"], capture_output=True, text=True
    )
    assert module.returncode == 0, module.stderr
    assert module.stdout.strip() == expected


def test_help_imports_no_database_driver_nor_rich():
    """Start-up time is a benchmark's business; what this checks is why it is
    short: --help needs none of the heavy packages."""
    script = (
        "import sys\n"
        "from replicator.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "[]", f"--help imported {result.stderr.strip()}"


def test_importing_the_package_defers_sqlalchemy_but_keeps_its_names():
    import replicator

    script = "import sys, replicator; print('sqlalchemy' in sys.modules)"
    assert (
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True
        ).stdout.strip()
        == "False"
    )
    assert set(replicator.__all__) == set(replicator._EXPORTS)
    for name in replicator.__all__:
        assert getattr(replicator, name) is not None
    import replicator.capture  # the submodule does not shadow the function

    assert callable(replicator.capture) and replicator.capture.__name__ == "capture"


EVERY_COMMAND = [
    (),
    *[
        (name,)
        for name in (
            "demo",
            "init",
            "sync",
            "run",
            "status",
            "stats",
            "replay",
            "bootstrap",
            "prune",
            "verify",
            "log",
            "review",
            "sink",
            "console",
            "token",
        )
    ],
    *[("review", name) for name in ("list", "summary", "history", "show", "resolve", "discard")],
    *[("sink", name) for name in ("status", "rebuild", "query")],
    ("token", "issue"),
]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=lambda c: " ".join(c) or "replicator")
def test_help_reads_as_prose(command):
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for label in ("<bool>", "<str>", "<int>", "<float>", "<path>", "<list[str]>"):
        assert label not in text, f"`{' '.join(command)} --help` shows a type label {label}"
    assert "``" not in text, "reST markup in help"
    commands = text.split("Commands:")[1] if "Commands:" in text else ""
    for line in commands.splitlines():
        assert not line.rstrip().endswith("..."), f"a command's line is cut: {line.strip()!r}"


def test_shell_completion_can_be_installed():
    assert "--install-completion" in run("--help").stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The demo's two SQLite nodes, synced, with their configuration."""
    directory = tmp_path_factory.mktemp("demo")
    result = run("demo", "--dir", str(directory), "--store", "sqlite")
    assert result.returncode == 0, result.stderr
    return directory / "replicator.toml"


def test_log_is_bounded_and_says_how_many_more(demo):
    everything = json.loads(run("log", "-n", "server", "-c", str(demo), "--json").stdout)
    total = len(everything["changes"])
    assert total > 5
    last = run("log", "-n", "server", "-c", str(demo), "--limit", "3")
    assert last.returncode == 0, last.stderr
    assert f"{total - 3} earlier changes not shown (--limit 0 shows all)" in last.stdout
    newest = [c["position"] for c in everything["changes"][-3:]]
    shown = json.loads(run("log", "-n", "server", "-c", str(demo), "--limit", "3", "--json").stdout)
    assert [c["position"] for c in shown["changes"]] == newest
    assert "not shown" not in run("log", "-n", "server", "-c", str(demo), "--limit", "0").stdout


def test_log_prints_iso_times_and_json_values(demo):
    result = run("log", "-n", "server", "-c", str(demo), "--limit", "0")
    assert "datetime.datetime(" not in result.stdout and "Decimal(" not in result.stdout
    changes = json.loads(run("log", "-n", "server", "-c", str(demo), "--json").stdout)["changes"]
    for change in changes:
        assert "T" in change["at"]  # ISO 8601


def test_log_of_an_unknown_table_exits_2_naming_it(demo):
    result = run("log", "-n", "server", "-c", str(demo), "--table", "nosuch")
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "--table on node server: no table 'nosuch'" in message
    assert "vocabulary_items" in message  # the tables it has
    assert result.stdout == "", "nothing half-written"
    bad = run("log", "-n", "server", "-c", str(demo), "--limit", "-1")
    assert bad.returncode == 2 and "--limit" in bad.stderr


def test_sink_query_labels_its_distance_column(demo):
    result = run("sink", "query", "documents", "la cuenta", "-c", str(demo))
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.strip()).split()
    assert header == ["distance", "id", "document"]
    assert run("sink", "query", "documents", "x", "-n", "0", "-c", str(demo)).returncode == 2


def test_review_history_lists_with_a_limit_and_a_plural_that_fits(demo):
    listed = run("review", "history", "-c", str(demo))
    assert listed.returncode == 0, listed.stderr
    assert "1 closed item;" in " ".join(listed.stdout.split())
    document = json.loads(run("review", "history", "-c", str(demo), "--json").stdout)
    assert len(document["items"]) == 1 and document["more"] == 0
    limited = json.loads(run("review", "history", "-c", str(demo), "--json", "--limit", "0").stdout)
    assert [i["ref"] for i in limited["items"]] == [i["ref"] for i in document["items"]]


def test_a_bulk_decision_prints_a_count_and_a_sample():
    from types import SimpleNamespace

    from replicator.cli import review

    printed: list[str] = []
    decided = [SimpleNamespace(ref=f"server:{n}") for n in range(1, 6)]  # a sample
    result = SimpleNamespace(decided=decided, decided_count=200, matched=200)
    review._say_bulk(result, take="local", dry_run=False, say=printed.append)
    [line] = printed
    assert line.startswith("200 of 200 matching items decided (take local): server:1, server:2")
    assert "and 195 more" in line and "server:200" not in line


def test_replay_from_0_is_the_whole_log_and_a_negative_position_is_a_usage_error(demo):
    whole = run("replay", "-n", "local", "--from", "0", "--dry-run", "--json", "-c", str(demo))
    assert whole.returncode == 0, whole.stderr
    report = json.loads(whole.stdout)
    assert (report["start"], report["dry_run"]) == (1, True) and report["read"] > 0
    negative = run("replay", "-n", "local", "--from", "-1", "-c", str(demo))
    assert negative.returncode == 2 and "--from" in negative.stderr
