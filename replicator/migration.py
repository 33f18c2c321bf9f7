"""Creating and upgrading the replicator's tables with alembic.

The migrations keep their own version table, ``replicator_alembic_version``,
so they never collide with an application's own alembic history in the same
database.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from replicator.dialects.duckdb import register_alembic
from replicator.errors import ConfigurationError, ConnectivityError, SchemaError
from replicator.resources import resource_dir

VERSION_TABLE = "replicator_alembic_version"


def alembic_config(connection: Connection | None = None) -> Any:
    """An alembic ``Config`` for the replicator's migrations.

    With ``connection``, the migrations run on it (inside its transaction).
    Alembic is imported here, not with the package: most commands never
    migrate, and it takes a noticeable part of every command's start.
    """
    from alembic.config import Config

    register_alembic()
    config = Config()
    config.set_main_option("script_location", str(resource_dir("migrations")))
    config.set_main_option("version_table", VERSION_TABLE)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(target: str | Engine | Connection, revision: str = "head") -> None:
    """Create or upgrade the replicator's tables on one database.

    ``target`` is a SQLAlchemy URL, an engine or a connection (use the app's
    own engine for a DuckDB file the app holds open: DuckDB lets one process
    write a file at a time). Idempotent: at the target revision already, it
    changes nothing.
    """
    if isinstance(target, Connection):
        _upgrade(target, revision)
        return
    if isinstance(target, str):
        try:
            engine = create_engine(target)
        except Exception as e:
            raise ConfigurationError(f"cannot use database URL {target!r}: {e}") from e
        try:
            _run(engine, revision)
        finally:
            engine.dispose()
    else:
        _run(target, revision)


def _run(engine: Engine, revision: str) -> None:
    try:
        conn = engine.connect()
    except DBAPIError as e:
        url = engine.url.render_as_string(hide_password=True)
        raise ConnectivityError(f"connecting to {url} failed: {e.orig}") from e
    with conn, conn.begin():
        _upgrade(conn, revision)


def _upgrade(conn: Connection, revision: str) -> None:
    from alembic import command

    try:
        command.upgrade(alembic_config(conn), revision)
    except Exception as e:
        url = conn.engine.url.render_as_string(hide_password=True)
        raise SchemaError(f"migrating the replicator's tables on {url} failed: {e}") from e
