"""Per-database behaviour, one module per database.

The engine above never asks which database it talks to: it asks
:func:`for_connection` for a :class:`Dialect` and calls its bulk paths. Each
module here keeps everything that differs for its database (bulk insert and
upsert statements, row locks, DDL quirks) in one place.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, Connection, Engine, make_url

from replicator.dialects.base import Dialect
from replicator.dialects.duckdb import DuckDBDialect
from replicator.dialects.mariadb import MariaDBDialect
from replicator.dialects.sqlite import SQLiteDialect
from replicator.errors import ConfigurationError

_BY_NAME: dict[str, Dialect] = {
    "sqlite": SQLiteDialect(),
    "mysql": MariaDBDialect(),
    "mariadb": MariaDBDialect(),
    "duckdb": DuckDBDialect(),
}


def for_connection(bind: Connection | Engine) -> Dialect:
    """The dialect module for a connection or engine.

    Raises :class:`ConfigurationError` for a database the replicator does
    not support (it names the supported ones).
    """
    name = bind.dialect.name
    try:
        return _BY_NAME[name]
    except KeyError:
        supported = ", ".join(sorted({"sqlite", "duckdb", "mariadb"}))
        raise ConfigurationError(
            f"database {name!r} is not supported; use one of: {supported}"
        ) from None


def for_url(url: str | URL) -> Dialect | None:
    """The dialect module for a database URL, before any engine is made;
    None when the replicator does not know its database (making an engine
    for it then says what is wrong)."""
    return _BY_NAME.get(make_url(url).get_backend_name())


__all__ = ["Dialect", "for_connection", "for_url"]
