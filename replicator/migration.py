"""Creating and upgrading the replicator's tables with alembic.

The migrations keep their own version table, ``replicator_alembic_version``,
so they never collide with an application's own alembic history in the same
database.
"""

from __future__ import annotations

from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from replicator.dialects.duckdb import register_alembic
from replicator.errors import (
    ConfigurationError,
    ConnectivityError,
    DatabaseError,
    SchemaError,
    describe,
)
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


#: What :func:`migrate` did: made the tables, moved them to a newer revision, or nothing.
Migrated = Literal["created", "upgraded", "up to date"]


def migrate(target: str | Engine | Connection, revision: str = "head") -> Migrated:
    """Create or upgrade the replicator's tables on one database; says which.

    ``target`` is a SQLAlchemy URL, an engine or a connection (use the app's
    own engine for a DuckDB file the app holds open: DuckDB lets one process
    write a file at a time). Idempotent: at the target revision already, it
    changes nothing and returns ``"up to date"``; ``"created"`` when there
    were no replicator tables, ``"upgraded"`` when an older revision was there.
    """
    if isinstance(target, Connection):
        return _upgrade(target, revision)
    if isinstance(target, str):
        try:
            engine = create_engine(target)
        except Exception as e:
            raise ConfigurationError(f"cannot use database URL {target!r}: {e}") from e
        try:
            return _run(engine, revision)
        finally:
            engine.dispose()
    return _run(target, revision)


def _run(engine: Engine, revision: str) -> Migrated:
    # migrate() is given an engine, not a node: it opens its connection
    # itself, so it translates the driver's errors itself, as Node.connect
    # does (a failed migration is a SchemaError, see _upgrade).
    try:
        conn = engine.connect()
    except DBAPIError as e:
        url = engine.url.render_as_string(hide_password=True)
        raise ConnectivityError(f"connecting to {url} failed: {e.orig}") from e
    try:
        with conn, conn.begin():
            return _upgrade(conn, revision)
    except SQLAlchemyError as e:  # the commit
        raise DatabaseError(describe(e)) from e


def _upgrade(conn: Connection, revision: str) -> Migrated:
    from alembic import command  # imported here for the reason alembic_config gives

    try:
        before = _revision(conn)
        command.upgrade(alembic_config(conn), revision)
        after = _revision(conn)
    except Exception as e:
        url = conn.engine.url.render_as_string(hide_password=True)
        raise SchemaError(f"migrating the replicator's tables on {url} failed: {e}") from e
    if before is None:
        return "created"
    return "up to date" if before == after else "upgraded"


def _revision(conn: Connection) -> str | None:
    """The revision the replicator's tables are at; None when they do not exist."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
