"""The TOML configuration: the spec's example decodes; mistakes name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from replicator import config
from replicator.errors import ConfigurationError

SPEC_EXAMPLE = """
[nodes.server]
url  = "mysql+pymysql://root@127.0.0.1:3306/app"
role = "server"

[nodes.local]
url   = "duckdb:///local.duckdb"
role  = "local"
scope = { user_id = "u-42" }

[replication]
direction  = "bidirectional"
policy     = "latest_timestamp"
batch_size = 1000
interval_seconds = 15

[tables.user_profiles]
policy  = "server_wins"
channel = "essential"

[channels.essential]
priority = 1

[sinks.documents]
kind = "chroma"
node = "local"
path = "chroma"
collection = "documents"
table = "documents"
id_column = "document_id"
text_column = "content"
metadata_columns = ["user_id", "language", "filename"]
embedding_column = ""
embedding_function = ""
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "replicator.toml"
    path.write_text(text)
    return path


def test_the_spec_example_decodes(tmp_path):
    settings = config.load(write(tmp_path, SPEC_EXAMPLE))
    assert settings.server == "server"
    assert settings.locals == ["local"]
    assert settings.nodes["local"].scope == {"user_id": "u-42"}
    assert settings.nodes["local"].url == f"duckdb:///{tmp_path / 'local.duckdb'}", (
        "embedded paths are relative to the config file"
    )
    assert settings.tables["user_profiles"].policy == "server_wins"
    assert settings.channels["essential"].priority == 1
    assert settings.sinks["documents"].metadata_columns == ["user_id", "language", "filename"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('direction  = "bidirectional"', 'direction = "sideways"'),
            r"replication\.direction: .*'sideways'; allowed: 'bidirectional', 'down', 'up'",
        ),
        (("batch_size = 1000", "batch_size = 0"), r"replication\.batch_size: .*>= 1"),
        (("batch_size = 1000", 'batch_size = "many"'), r"replication\.batch_size: Expected `int`"),
        (
            ('policy  = "server_wins"', 'policy = "coin_flip"'),
            r"tables\.user_profiles\.policy: unknown policy 'coin_flip'",
        ),
        (('role = "server"', 'role = "local"'), r"nodes: exactly one node"),
        (
            ("priority = 1", "priority = 1\nurgent = true"),
            r"channels\.essential\.urgent: unknown key",
        ),
        (('role  = "local"', ""), r"nodes\.local\.role: required key is missing"),
        (('channel = "essential"', 'channel = "nope"'), r"tables\.user_profiles\.channel: unknown"),
        (('node = "local"', 'node = "phone"'), r"sinks\.documents\.node: unknown node 'phone'"),
        (('url  = "mysql+pymysql', 'url = "mysqlx+nodriver'), r"nodes\.server\.url: not a usable"),
        (('url  = "mysql+pymysql', 'url = "no url at all'), r"nodes\.server\.url: not a usable"),
        (("priority = 1", "priority = 1\nbatch_size = -5"), r"channels\.essential\.batch_size"),
        (
            ('channel = "essential"', 'channel = "essential"\nunscoped = "some"'),
            r"unscoped: .*'all', 'none'",
        ),
    ],
)
def test_mistakes_name_the_file_and_the_key(tmp_path, edit, message):
    path = write(tmp_path, SPEC_EXAMPLE.replace(*edit))
    with pytest.raises(ConfigurationError, match=message) as error:
        config.load(path)
    assert str(error.value).startswith(f"{path}: ")


def test_custom_resolver_policy_is_accepted(tmp_path):
    text = SPEC_EXAMPLE.replace('policy  = "server_wins"', 'policy = "myapp.conflicts:resolve"')
    assert config.load(write(tmp_path, text)).tables["user_profiles"].policy == (
        "myapp.conflicts:resolve"
    )


def test_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigurationError, match="no such config file"):
        config.load(tmp_path / "absent.toml")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        config.load(write(tmp_path, "[nodes\n"))
