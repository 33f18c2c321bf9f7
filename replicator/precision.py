"""Precision: does the server keep every value a local keeps, digit for digit?

A value replicates as the database stores it. When the server's column keeps
less than a local's (MariaDB's ``DATETIME`` whole seconds against DuckDB's
``TIMESTAMP`` microseconds, a 4-byte ``FLOAT`` against an 8-byte float, a
``DECIMAL`` of fewer decimal places), the server rounds what the local sends
and the replicas differ for good: no later pass brings them together, and
``replicator verify`` names every such row. Such a column is refused, not
converted: ``replicator init`` exits without changing a node, and the passes
between that local and the server do not run, until the column is declared
as precisely on the server.

Only what is known is compared: the columns both nodes have, in the tables
both have, whose declared types fall in one family (a point in time, a time
of day, a binary float, a decimal) on both. A type not recognised is let
through, never guessed at. A local that keeps less than the server passes:
the server stores whatever it sends unchanged.

What a declared type keeps differs by database (``FLOAT`` is 4 bytes on
MariaDB and DuckDB, 8 on SQLite; ``DATETIME`` whole seconds on MariaDB and
microseconds as SQLite stores SQLAlchemy's values), so this module knows
the three databases' type names, by the node's dialect name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from sqlalchemy.engine import Connection

from replicator.errors import SchemaError
from replicator.node import Node
from replicator.tables import app_table_names

#: table -> column -> its declared type, as the database names it.
Declared = Mapping[str, Mapping[str, str]]

# The families of values compared, and what their digits count.
MOMENT = "moment"  # fractional digits of a second (DATETIME, TIMESTAMP)
TIME = "time"  # fractional digits of a second (TIME)
FLOAT = "float"  # bits of mantissa: 24 for 4 bytes, 53 for 8
DECIMAL = "decimal"  # decimal places (the scale)

# Python's datetime and time carry microseconds: finer is never seen.
_MICROSECONDS = 6
# The most digits a DECIMAL has (MariaDB's limit).
_DECIMAL_DIGITS = 65


class Kept(NamedTuple):
    """How precisely a column keeps its values: within one ``family``, a
    column of more ``digits`` keeps every value one of fewer keeps."""

    family: str
    digits: int


# Per database, a declared type's first word -> (family, digits when the
# type has no arguments; None: unknown). An argument overrides the digits:
# a time's fractional digits, a decimal's scale.
_TYPES: dict[str, dict[str, tuple[str, int | None]]] = {
    "mariadb": {
        "datetime": (MOMENT, 0),
        "timestamp": (MOMENT, 0),
        "time": (TIME, 0),
        "float": (FLOAT, 24),  # FLOAT(p) beyond 24 is made DOUBLE by MariaDB
        "double": (FLOAT, 53),
        "real": (FLOAT, 53),
        "decimal": (DECIMAL, 0),
        "numeric": (DECIMAL, 0),
        "dec": (DECIMAL, 0),
        "fixed": (DECIMAL, 0),
    },
    "duckdb": {
        "timestamp": (MOMENT, 6),
        "datetime": (MOMENT, 6),
        "timestamptz": (MOMENT, 6),
        "timestamp_us": (MOMENT, 6),
        "timestamp_ns": (MOMENT, 6),
        "timestamp_ms": (MOMENT, 3),
        "timestamp_s": (MOMENT, 0),
        "time": (TIME, 6),
        "timetz": (TIME, 6),
        "float": (FLOAT, 24),
        "float4": (FLOAT, 24),
        "real": (FLOAT, 24),
        "double": (FLOAT, 53),
        "float8": (FLOAT, 53),
        "decimal": (DECIMAL, 3),  # DuckDB's default: DECIMAL(18,3)
        "numeric": (DECIMAL, 3),
    },
    # SQLite keeps what it is given; SQLAlchemy gives it times as text with
    # microseconds, floats as 8-byte REALs, decimals rounded to the scale.
    "sqlite": {
        "datetime": (MOMENT, 6),
        "timestamp": (MOMENT, 6),
        "time": (TIME, 6),
        "float": (FLOAT, 53),
        "real": (FLOAT, 53),
        "double": (FLOAT, 53),
        "decimal": (DECIMAL, None),
        "numeric": (DECIMAL, None),
    },
}

# "datetime(6)", "decimal(10, 2) unsigned", "timestamp with time zone":
# the first word and up to two arguments.
_DECLARED = re.compile(r"\s*([a-z_][a-z0-9_]*)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?")


def kept(database: str, declared: str) -> Kept | None:
    """How a column declared ``declared`` keeps its values on ``database``
    (a dialect's name: ``mariadb``, ``duckdb``, ``sqlite``); None when the
    type is none of the families compared, or not known."""
    word, first, second = _parts(declared)
    family, digits = _TYPES.get(database, {}).get(word, (None, None))
    if family in (MOMENT, TIME):
        if first is not None and database == "mariadb":
            digits = first
        digits = None if digits is None else min(digits, _MICROSECONDS)
    elif family == DECIMAL and first is not None:
        digits = second or 0  # DECIMAL(p) has no decimal places
    if family is None or digits is None:
        return None
    return Kept(family, digits)


class Loss(NamedTuple):
    """A column the server keeps less precisely than a local."""

    table: str
    column: str
    server: str  # the server's node name
    server_database: str
    server_type: str  # declared, as the server names it
    local: str
    local_database: str
    local_type: str
    server_keeps: Kept
    local_keeps: Kept

    def __str__(self) -> str:
        """The column, both declared types, what each keeps, and the fix."""
        declare, expression = _finer(self.server_database, self.server_type, self.local_keeps)
        instead = _coarser(self.local_database, self.local_type, self.server_keeps)
        return (
            f"{self.table}.{self.column}: the server ({self.server_database}) stores "
            f"{self.server_type.upper()}, {_says(self.server_keeps)}, but local '{self.local}' "
            f"({self.local_database}) keeps {self.local_type.upper()}, "
            f"{_says(self.local_keeps)}; declare it {declare} on the server "
            f"(in SQLAlchemy: {expression})"
            + (f" or {instead} on '{self.local}'" if instead else "")
        )


def compare(
    server: Declared,
    local: Declared,
    *,
    server_database: str,
    local_database: str,
    server_name: str = "server",
    local_name: str = "local",
) -> list[Loss]:
    """The columns ``server`` keeps less precisely than ``local``, of the
    tables and columns both have, by table and then column order; empty
    when there are none (or nothing is comparable)."""
    losses = []
    for table in sorted(server.keys() & local.keys()):
        for column, local_type in local[table].items():
            server_type = server[table].get(column)
            if server_type is None:
                continue
            ours, theirs = kept(server_database, server_type), kept(local_database, local_type)
            if ours is None or theirs is None or ours.family != theirs.family:
                continue
            if ours.digits < theirs.digits:
                losses.append(
                    Loss(
                        table,
                        column,
                        server_name,
                        server_database,
                        server_type,
                        local_name,
                        local_database,
                        local_type,
                        ours,
                        theirs,
                    )
                )
    return losses


def declared(node: Node, conn: Connection, tables: list[str]) -> dict[str, dict[str, str]]:
    """The declared types of ``tables``' columns on ``node``, lower case
    (see :meth:`~replicator.dialects.base.Dialect.declared_types`)."""
    found = {}
    for table in tables:
        types = node.dialect.declared_types(conn, table)
        if types is not None:
            found[table] = types
    return found


def losses(server: Node, local: Node) -> list[Loss]:
    """The columns ``server`` keeps less precisely than ``local``: those
    :func:`compare` finds in the app tables both nodes have now. Connects
    to both; a node that cannot be reached raises ConnectivityError. A
    server reached through a sync gateway says its types in a request."""
    from replicator.remote import Gateway  # a device's server: above this module

    if isinstance(server, Gateway):
        found_there = server.tables()
        with local.connect() as lconn:
            both = sorted(set(found_there.types) & set(app_table_names(lconn)))
            found = compare(
                {t: found_there.types[t] for t in both},
                declared(local, lconn, both),
                server_database=found_there.database,
                local_database=local.dialect.name,
                server_name=server.name,
                local_name=local.name,
            )
        if found:
            local.forget_shapes()
        return found
    with server.connect() as sconn, local.connect() as lconn:
        both = sorted(set(app_table_names(sconn)) & set(app_table_names(lconn)))
        found = compare(
            declared(server, sconn, both),
            declared(local, lconn, both),
            server_database=server.dialect.name,
            local_database=local.dialect.name,
            server_name=server.name,
            local_name=local.name,
        )
    if found:
        # The app will change these columns: look at them anew next time.
        server.forget_shapes()
        local.forget_shapes()
    return found


def check(server: Node, local: Node) -> None:
    """Raise :class:`SchemaError` naming every column ``server`` keeps less
    precisely than ``local`` (see :func:`losses`), and how to fix each."""
    found = losses(server, local)
    if found:
        raise SchemaError(
            f"the server would round values of local '{local.name}': "
            + "; ".join(str(loss) for loss in found)
            + f". Nothing is replicated between {local.name} and the server until the "
            "server keeps them as precisely"
        )


def _parts(declared: str) -> tuple[str, int | None, int | None]:
    """A declared type's first word and its arguments (``"decimal(10, 2)"``:
    ``("decimal", 10, 2)``); ``""`` for a type not spelled out."""
    found = _DECLARED.match(declared.lower())
    if found is None:
        return "", None, None
    word, first, second = found.groups()
    return word, None if first is None else int(first), None if second is None else int(second)


def _says(keeps: Kept) -> str:
    """What a :class:`Kept` keeps, as a person says it."""
    if keeps.family in (MOMENT, TIME):
        return {0: "whole seconds", 3: "milliseconds", 6: "microseconds"}.get(
            keeps.digits, f"{keeps.digits} fractional digits of a second"
        )
    if keeps.family == FLOAT:
        return (
            "4-byte floats (about 7 significant digits)"
            if keeps.digits <= 24
            else "8-byte floats (about 16 significant digits)"
        )
    return {0: "no decimal places", 1: "1 decimal place"}.get(
        keeps.digits, f"{keeps.digits} decimal places"
    )


def _finer(database: str, server_type: str, wanted: Kept) -> tuple[str, str]:
    """The type to declare on the server to keep ``wanted``, and how to say
    it in SQLAlchemy."""
    word, precision, scale = _parts(server_type)
    if wanted.family == FLOAT:
        return "DOUBLE", "sa.Double()"
    if wanted.family == DECIMAL:
        # As many digits before the point as now, and the local's after it.
        digits = min((precision or 10) - (scale or 0) + wanted.digits, _DECIMAL_DIGITS)
        return (
            f"DECIMAL({digits}, {wanted.digits})",
            f"sa.Numeric({digits}, {wanted.digits})",
        )
    if database == "mariadb":
        name = {"timestamp": "TIMESTAMP", "time": "TIME"}.get(word, "DATETIME")
        generic = {"TIMESTAMP": "sa.TIMESTAMP()", "TIME": "sa.Time()"}.get(name, "sa.DateTime()")
        return (
            f"{name}({wanted.digits})",
            f'{generic}.with_variant(mysql.{name}(fsp={wanted.digits}), "mariadb", "mysql")',
        )
    if wanted.family == TIME:
        return "TIME", "sa.Time()"
    return "TIMESTAMP", "sa.DateTime()"


def _coarser(database: str, local_type: str, server_keeps: Kept) -> str | None:
    """A type the local could declare instead, to keep no more than the
    server does; None where its database has none (SQLite keeps whatever
    SQLAlchemy gives it)."""
    if server_keeps.family == DECIMAL:
        precision = _parts(local_type)[1] or 18
        name = "NUMERIC" if database == "sqlite" else "DECIMAL"
        return f"declare it {name}({precision}, {server_keeps.digits})"
    if database != "duckdb":
        return None
    if server_keeps.family == FLOAT:
        return "declare it FLOAT (sa.Float())"
    if server_keeps.family == MOMENT:
        coarse = {0: "TIMESTAMP_S", 3: "TIMESTAMP_MS"}.get(server_keeps.digits)
        return f"declare it {coarse}" if coarse else None
    return None
