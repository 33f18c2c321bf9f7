"""Alembic environment for the replicator's own tables.

Run through :func:`replicator.migrate` (or ``replicator init``), which passes
the connection in ``config.attributes["connection"]``; ``alembic upgrade
head`` from the command line works too with ``-x url=...`` (or
``sqlalchemy.url`` in an ini file).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from replicator.dialects.duckdb import register_alembic
from replicator.migration import VERSION_TABLE
from replicator.tables import metadata

config = context.config
register_alembic()  # alembic ships no DuckDB implementation


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=lambda name, type_, parent: type_ != "table" or name.startswith("replicator_"),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("the replicator's migrations run online only: pass a database URL")
run_migrations_online()
