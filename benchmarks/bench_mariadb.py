"""MariaDB for the benchmarks: is the server there, and a throw-away database on it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa


def unreachable(server: sa.URL) -> str | None:
    """Why the server cannot be used (password hidden), or None when it can."""
    admin = sa.create_engine(server.set(database=None))
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as e:
        return f"{server.render_as_string(hide_password=True)} is unreachable: {e.orig}"
    finally:
        admin.dispose()
    return None


@contextmanager
def database(server: sa.URL, name: str) -> Iterator[str]:
    """The URL of a new, empty MariaDB database ``name``, dropped afterwards."""
    admin = sa.create_engine(server.set(database=None))
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
        try:
            yield server.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.begin() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    finally:
        admin.dispose()
