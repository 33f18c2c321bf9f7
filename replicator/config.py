"""The TOML configuration (``replicator.toml``), decoded into typed structs.

Every error names the file and the key, and says what is allowed::

    replicator.toml: replication.direction: Expected `str` matching one of
    'up', 'down', 'bidirectional', got 'sideways'

Relative paths in embedded-store URLs (``duckdb:///local.duckdb``,
``sqlite:///local.sqlite``) and sink paths are taken relative to the config
file's directory, so a config works from whatever directory it is used.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from sqlalchemy.engine import make_url

from replicator.errors import ArgumentError, ConfigurationError

DEFAULT_PATH = Path("replicator.toml")
#: A node URL with one of these schemes names a sync gateway, not a database.
GATEWAY_SCHEMES = ("https://", "http://")

POLICIES = ("latest_timestamp", "server_wins", "local_wins", "merge_fields", "manual_review")
_CUSTOM_POLICY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class NodeConfig(_Section):
    url: str
    role: Literal["server", "local"]
    scope: dict[str, Any] = {}
    # Seconds to wait for a server to answer a connection attempt.
    connect_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 5.0
    # A server reached through the sync gateway (url = "https://..."): the
    # device's token, or the environment variable that holds it.
    token: str = ""
    token_env: str = ""


class GatewayConfig(_Section):
    """``[gateway]``: how ``replicator serve`` treats devices."""

    # Tables devices may read but never write.
    read_only: list[str] = []
    # The largest request body taken (after decompression), in bytes.
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 31)] = 16 * 1024 * 1024
    # Requests per second a device may make (its bucket holds `burst`).
    requests_per_second: Annotated[float, msgspec.Meta(gt=0)] = 50.0
    burst: Annotated[int, msgspec.Meta(ge=1)] = 200
    # The longest a device's wait for new events is held open.
    wait_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 25.0
    # How often a gateway process reads the revocation list again.
    revocation_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0


class ReplicationConfig(_Section):
    direction: Literal["up", "down", "bidirectional"] = "bidirectional"
    policy: str = "latest_timestamp"
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    interval_seconds: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    # How long applied events stay in an outbox: "7d", "12h", "30m", "90s".
    retention: str = "7d"
    # Integer keys per block leased to a local for each integer-keyed table
    # (see replicator.keys); a pass leases another below half a block.
    key_block: Annotated[int, msgspec.Meta(ge=2, le=1_000_000_000)] = 10_000


class TableConfig(_Section):
    policy: str | None = None
    channel: str = "default"
    # For a table without a scoped local's scope column(s): replicated to and
    # from that local whole ("all"), or not at all ("none").
    unscoped: Literal["all", "none"] = "all"


class ChannelConfig(_Section):
    priority: int = 100
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None


class SinkConfig(_Section):
    kind: Literal["chroma"]
    node: str
    path: str
    collection: str
    table: str
    id_column: str
    text_column: str
    metadata_columns: list[str] = []
    embedding_column: str = ""
    embedding_function: str = ""


class Config(_Section):
    """A whole configuration. ``path`` is the file it came from (if any)."""

    nodes: dict[str, NodeConfig]
    replication: ReplicationConfig = ReplicationConfig()
    tables: dict[str, TableConfig] = {}
    channels: dict[str, ChannelConfig] = {}
    sinks: dict[str, SinkConfig] = {}
    gateway: GatewayConfig = GatewayConfig()
    path: str = ""

    @property
    def server(self) -> str:
        """The name of the server node."""
        return next(name for name, node in self.nodes.items() if node.role == "server")

    @property
    def locals(self) -> list[str]:
        """The names of the local nodes, in file order."""
        return [name for name, node in self.nodes.items() if node.role == "local"]


def load(path: str | Path = DEFAULT_PATH) -> Config:
    """Read and check a config file; raises :class:`ConfigurationError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ArgumentError(
            f"{path}: no such config file (give its path as `config`, or create {DEFAULT_PATH})",
            "config",
        ) from None
    except OSError as e:
        raise ConfigurationError(f"{path}: cannot read the config file: {e.strerror}") from e
    return loads(text, source=path)


def loads(text: str, source: str | Path = "<config>") -> Config:
    """Parse and check config text; ``source`` names it in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"{source}: not valid TOML: {e}") from e
    config = _convert(raw, source)
    base = Path(source).parent if isinstance(source, Path) else Path.cwd()
    config = msgspec.structs.replace(config, path=str(source))
    config = msgspec.structs.replace(config, nodes=_resolve(config, base))
    _check(config, str(source))
    return config


_NAMED_SECTIONS = {
    "nodes": NodeConfig,
    "tables": TableConfig,
    "channels": ChannelConfig,
    "sinks": SinkConfig,
}


def _convert(raw: dict[str, Any], source: str | Path) -> Config:
    # msgspec reports a path inside a table of named entries as `nodes[...]`;
    # converting each named entry on its own keeps its name in the message.
    for section, struct in _NAMED_SECTIONS.items():
        entries = raw.get(section)
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            try:
                msgspec.convert(entry, struct)
            except msgspec.ValidationError as e:
                raise ConfigurationError(
                    f"{source}: {_explain(str(e), prefix=f'{section}.{name}')}"
                ) from e
    try:
        return msgspec.convert(raw, Config)
    except msgspec.ValidationError as e:
        raise ConfigurationError(f"{source}: {_explain(str(e))}") from e


def _explain(message: str, prefix: str = "") -> str:
    """msgspec's "... - at `$.replication.direction`" as "replication.direction: ..."."""
    match = re.match(r"^(.*) - at `\$\.?(.*)`$", message)
    problem, where = match.groups() if match else (message, "")
    where = re.sub(r"\[(\d+)\]", r".\1", where)
    where = ".".join(part for part in (prefix, where) if part)
    for pattern, meaning in (
        (r"Object contains unknown field `(.+)`", "unknown key"),
        (r"Object missing required field `(.+)`", "required key is missing"),
    ):
        field = re.match(pattern, problem)
        if field:
            return (
                f"{where}.{field.group(1)}: {meaning}" if where else f"{field.group(1)}: {meaning}"
            )
    allowed = _allowed_values(where)
    if allowed:
        problem += f"; allowed: {', '.join(repr(v) for v in allowed)}"
    return f"{where}: {problem}" if where else problem


def _allowed_values(where: str) -> tuple[Any, ...] | None:
    """The values a Literal-typed key accepts (``replication.direction``)."""
    info = msgspec.inspect.type_info(Config)
    for part in where.split("."):
        if isinstance(info, msgspec.inspect.StructType):
            info = next((f.type for f in info.fields if f.name == part), None)
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type
        else:
            return None
    return info.values if isinstance(info, msgspec.inspect.LiteralType) else None


def _resolve(config: Config, base: Path) -> dict[str, NodeConfig]:
    nodes = {}
    for name, node in config.nodes.items():
        url = node.url
        if url.startswith(GATEWAY_SCHEMES):
            nodes[name] = node  # a sync gateway, checked in _check
            continue
        try:
            parsed = make_url(url)
            parsed.get_dialect()  # an unknown database or driver fails here
        except Exception as e:
            raise ConfigurationError(
                f"{config.path or '<config>'}: nodes.{name}.url: not a usable database URL "
                f"({mask_password(url)!r}): {e}"
            ) from e
        database = parsed.database
        if (
            parsed.get_backend_name() in ("sqlite", "duckdb")
            and database
            and database != ":memory:"
            and not Path(database).is_absolute()
        ):
            url = parsed.set(database=str(base / database)).render_as_string(hide_password=False)
        nodes[name] = msgspec.structs.replace(node, url=url)
    return nodes


_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def duration(text: str) -> dt.timedelta:
    """``"7d"``, ``"12h"``, ``"30m"``, ``"90s"`` (or ``"0"``) as a timedelta."""
    match = re.fullmatch(r"\s*(\d+)\s*([dhms]?)\s*", text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration; use e.g. '7d', '12h', '30m' or '90s'")
    return dt.timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2) or "s"])


def mask_password(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, even unparsable."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _check(config: Config, source: str) -> None:
    def fail(key: str, problem: str) -> None:
        raise ConfigurationError(f"{source}: {key}: {problem}")

    if not config.nodes:
        fail("nodes", "at least one [nodes.NAME] section is required")
    servers = [name for name, node in config.nodes.items() if node.role == "server"]
    if len(servers) != 1:
        fail("nodes", f'exactly one node needs role = "server", found {len(servers)}')
    _check_policy(config.replication.policy, "replication.policy", fail)
    try:
        duration(config.replication.retention)
    except ValueError as e:
        fail("replication.retention", str(e))
    for table, settings in config.tables.items():
        if settings.policy is not None:
            _check_policy(settings.policy, f"tables.{table}.policy", fail)
        if settings.channel != "default" and settings.channel not in config.channels:
            known = ", ".join(sorted(config.channels)) or "none are defined"
            fail(f"tables.{table}.channel", f"unknown channel {settings.channel!r} ({known})")
    for name, node in config.nodes.items():
        gateway = node.url.startswith(GATEWAY_SCHEMES)
        if gateway and node.role != "server":
            fail(
                f"nodes.{name}.url",
                "a sync gateway's URL is the server's; a local needs a database URL",
            )
        if gateway and not (node.token or node.token_env):
            fail(
                f"nodes.{name}", "a server reached through a sync gateway needs token or token_env"
            )
        if not gateway and (node.token or node.token_env):
            fail(
                f"nodes.{name}.token",
                "only a server reached through a sync gateway (https://...) takes a token",
            )
    for sink, settings in config.sinks.items():
        if settings.node not in config.nodes:
            fail(f"sinks.{sink}.node", f"unknown node {settings.node!r}")


def _check_policy(policy: str, key: str, fail: Any) -> None:
    if policy not in POLICIES and not _CUSTOM_POLICY.match(policy):
        fail(
            key, f"unknown policy {policy!r}; use one of {', '.join(POLICIES)} or 'module:function'"
        )
