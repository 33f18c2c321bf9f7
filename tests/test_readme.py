"""The README's examples run, so they cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from replicator import outbox

README = Path(__file__).parent.parent / "README.md"


def write_example(directory: Path, marker: str) -> None:
    """Write the README's Python example that contains ``marker`` to
    ``directory / "example.py"``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (directory / "example.py").write_text(next(block for block in blocks if marker in block))


def run_example(directory: Path) -> subprocess.CompletedProcess[str]:
    """Run the ``example.py`` written in ``directory``, there."""
    return subprocess.run(
        [sys.executable, "example.py"], cwd=directory, capture_output=True, text=True, timeout=120
    )


def test_capture_example_runs_and_captures(tmp_path):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "example.py").write_text(code)
    result = run_example(tmp_path)
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(f"duckdb:///{tmp_path / 'local.duckdb'}")
    with engine.connect() as conn:
        events = [(e.table, e.key, e.op.value) for _, e in outbox.read(conn)]
    engine.dispose()
    assert events == [("notes", {"note_id": "n-1"}, "insert")]


def test_replication_example_runs_every_pass(tmp_path):
    from .cluster import NOW, app, member

    write_example(tmp_path, "replicator.Replicator(")
    (tmp_path / "replicator.toml").write_text(
        '[nodes.server]\nurl = "sqlite:///server.sqlite"\nrole = "server"\n'
        '[nodes.phone]\nurl = "sqlite:///phone.sqlite"\nrole = "local"\n'
        '[tables.user_profiles]\nchannel = "essential"\n[channels.essential]\npriority = 1\n'
    )
    for name, role in (("server", "server"), ("phone", "local")):
        m = member(name, f"sqlite:///{tmp_path / name}.sqlite", role=role)
        if name == "phone":
            app.run_session(m.sessions, user_id="u-42", now=NOW)
        m.close()

    result = run_example(tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "phone -> server essential 2",
        "phone -> server default 13",
        "server -> phone essential 0",
        "server -> phone default 0",
    ]


def test_the_custom_policy_example_is_the_demo_apps_resolver():
    from replicator.conflicts import Conflict, Side

    from .cluster import app

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    namespace: dict = {}
    exec(next(b for b in blocks if "def keep_longer_message" in b), namespace)

    def conflict(server, local):
        def side(text, origin):
            row = None if text is None else {"content": text}
            return Side(row=row, version={origin: 1}, hlc=1, origin=origin)

        return Conflict(
            "messages", {}, None, side(server, "server"), side(local, "phone"), frozenset()
        )

    for server, local in [
        ("short", "longer text"),
        ("longer text", "short"),
        (None, "x"),
        ("x", None),
    ]:
        case = conflict(server, local)
        assert namespace["keep_longer_message"](case) == app.keep_longer_message(case)


def test_the_review_example_decides_through_the_library(tmp_path):
    from .cluster import add_vocabulary, edit_vocabulary, member, vocabulary
    from .cluster import sync as sync_members

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (tmp_path / "example.py").write_text(next(b for b in blocks if "r.review()" in b))
    (tmp_path / "replicator.toml").write_text(
        '[nodes.server]\nurl = "sqlite:///server.sqlite"\nrole = "server"\n'
        '[nodes.phone]\nurl = "sqlite:///phone.sqlite"\nrole = "local"\n'
    )
    server = member("server", f"sqlite:///{tmp_path / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    add_vocabulary(phone, "v-1", "mesa")
    sync_members(server, phone)  # under manual_review: the next conflict is parked
    edit_vocabulary(phone, "v-1", translation="table")
    edit_vocabulary(server, "v-1", strength=0.5)  # the server changed only the strength
    sync_members(server, phone)

    result = run_example(tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == "0 open\n"
    sync_members(server, phone)
    assert vocabulary(server, "v-1") == vocabulary(phone, "v-1") == ("table", 0.0)
    phone.close()
    server.close()


def test_background_sync_example_replicates_from_the_apps_duckdb_engine(tmp_path):
    write_example(tmp_path, "BackgroundSync(")
    (tmp_path / "replicator.toml").write_text(
        '[nodes.server]\nurl = "sqlite:///server.sqlite"\nrole = "server"\n'
        '[nodes.phone]\nurl = "duckdb:///phone.duckdb"\nrole = "local"\n'
    )
    server = sa.create_engine(f"sqlite:///{tmp_path / 'server.sqlite'}")
    import replicator

    replicator.migrate(server)
    with server.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE notes (note_id VARCHAR PRIMARY KEY, text VARCHAR)")

    result = run_example(tmp_path)

    assert result.returncode == 0, result.stderr
    with server.connect() as conn:
        notes = conn.exec_driver_sql("SELECT note_id, text FROM notes ORDER BY note_id").all()
    server.dispose()
    assert notes == [("n-1", "written on the phone"), ("n-2", "written while awaiting")]


def test_the_configuration_reference_documents_every_key_and_its_example_loads():
    """Each key config.py accepts has a row in the README's Configuration
    section, and its complete example is a valid configuration."""
    import msgspec

    from replicator import config

    text = README.read_text()
    section = text[text.index("## Configuration\n") : text.index("### Before the first sync")]
    for struct in (
        config.NodeConfig,
        config.ReplicationConfig,
        config.TableConfig,
        config.ChannelConfig,
        config.SinkConfig,
        config.GatewayConfig,
    ):
        for field in msgspec.structs.fields(struct):
            assert f"`{field.name}`" in section, f"{struct.__name__}.{field.name} is undocumented"
    example = re.search(r"A complete example:\n\n```toml\n(.*?)```", section, re.S).group(1)
    loaded = config.loads(example)
    assert loaded.server == "server" and loaded.locals == ["phone", "laptop"]
