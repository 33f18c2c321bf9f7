"""A column's values as events carry them, whichever database held them.

An event carries each value as the Python type of its column: ``DateTime``
gives ``datetime``, ``Numeric`` ``Decimal``, ``Boolean`` ``bool``, a JSON
column the decoded document. Drivers return some of them in forms of their
own: SQLite dates as text and decimals as floats, JSON documents as text
everywhere, MariaDB booleans as integers. This module is the one place that
turns

- a stored value into the event's value (:func:`typed`),
- an event's value into one a driver takes (:func:`written`),
- a value a person gave as JSON into a column's value (:func:`parsed`).

A column's *kind* is the Python type its values have (:data:`Kind`): the
dialects find it from the column's SQLAlchemy type, reflected from the
database (:func:`kind_of`, see ``Dialect.describe``), or from a value the
column is known to hold (:func:`kind_like`). Conversions are msgspec's
(``msgspec.convert``).
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Mapping
from typing import Any

import msgspec
import sqlalchemy as sa


class Json:
    """The kind of a JSON column: any JSON document, stored as text, which
    the driver returns as text."""


class DecodedJson(Json):
    """The kind of a JSON column whose driver returns its documents decoded
    (duckdb-engine): a string it returns is the document, not its text."""


def is_json(kind: Kind) -> bool:
    """Whether ``kind`` is a JSON column's."""
    return isinstance(kind, type) and issubclass(kind, Json)


#: The Python type of a column's values; :class:`Json` for a JSON column,
#: None where the column's type does not say (its values are taken as given).
Kind = type | None

#: The kinds a value is converted to; any other Python type is not a kind.
KINDS: frozenset[type] = frozenset(
    {
        bool,
        int,
        float,
        decimal.Decimal,
        str,
        bytes,
        dt.datetime,
        dt.date,
        dt.time,
        dt.timedelta,
        uuid.UUID,
        Json,
        DecodedJson,
    }
)

_TIMES = (dt.datetime, dt.date, dt.time)
_DAY = dt.timedelta(days=1)


def kind_of(type_: sa.types.TypeEngine) -> Kind:
    """The kind of a column of SQLAlchemy type ``type_`` (None when the type
    does not say, as for a type reflected as ``NullType``)."""
    if isinstance(type_, sa.JSON):
        return Json
    # A Float is a Numeric: ask it first. MariaDB's DOUBLE reflects with
    # asdecimal=True, yet its driver returns floats, as events carry them.
    if isinstance(type_, sa.Float):
        return float
    if isinstance(type_, sa.Numeric):
        return decimal.Decimal
    if isinstance(type_, sa.Enum):
        return str  # stored as its text (see Dialect.stored)
    try:
        found = type_.python_type
    except NotImplementedError:
        return None
    return found if found in KINDS else None


def kind_like(value: Any) -> Kind:
    """The kind of a column that holds ``value`` (None for None)."""
    if isinstance(value, dict | list):
        return Json
    found = type(value)
    return found if found in KINDS else None


def typed(value: Any, kind: Kind) -> Any:
    """``value`` as read from a database, as the event's value of a column
    of ``kind``. Never raises: a value that is not of a form the kind can
    take is returned as it is (None and an unknown kind too)."""
    if value is None or kind is None or kind is DecodedJson or type(value) is kind:
        return value
    if kind is dt.time and isinstance(value, dt.timedelta):
        # pymysql returns a TIME as the duration since midnight.
        return (dt.datetime.min + value).time() if dt.timedelta(0) <= value < _DAY else value
    if kind is Json:
        if isinstance(value, str | bytes):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value
    try:
        # Strict but for booleans: lax msgspec would also read an integer
        # as a date (seconds since 1970), which no driver means.
        return msgspec.convert(value, kind, strict=kind is not bool)
    except msgspec.ValidationError:
        if kind in _TIMES and isinstance(value, str):
            try:  # ISO forms beyond RFC 3339 ("2024-01-02T10:00")
                return kind.fromisoformat(value)  # type: ignore[attr-defined]
            except ValueError:
                pass
        return value


def typed_row(row: Mapping[str, Any], kinds: Mapping[str, Kind]) -> dict[str, Any]:
    """``row`` (column -> value as read) with each value :func:`typed` by
    ``kinds`` (column -> kind; a column it lacks is taken as given)."""
    return {c: typed(v, kinds.get(c)) for c, v in row.items()}


def kind_held(declared: Kind, held: Any) -> Kind:
    """The kind of a column whose type says ``declared`` and that an event
    gives the value ``held``: the event's own type wins (SQLite declares a
    UUID column CHAR(32), yet it holds UUIDs), except in a JSON column,
    which holds documents of any type (a string among them)."""
    if is_json(declared):
        return declared
    return kind_like(held) or declared


def written(value: Any, kind: Kind = None) -> Any:
    """An event's value of a column of ``kind`` as every driver takes it:
    JSON documents as text, a string, number or boolean among them when
    the column is a JSON column (a dialect adds what its driver needs: see
    ``Dialect.written``)."""
    if isinstance(value, dict | list) or (is_json(kind) and value is not None):
        return json.dumps(value)
    return value


#: How :func:`parsed` names what a column of each kind takes.
_TAKES: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    decimal.Decimal: "a number",
    str: "text",
    dt.datetime: "a date-time in ISO form",
    dt.date: "a date in ISO form",
    dt.time: "a time in ISO form",
    dt.timedelta: "a duration",
    uuid.UUID: "a UUID",
}


class NotOfKind(ValueError):
    """A value given for a column is not of the column's kind; the message
    says so of the column (``"takes an integer, not 'x'"``)."""


def parsed(value: Any, kind: Kind) -> Any:
    """``value``, as JSON gives it (a person's input), as a value of a column
    of ``kind``: raises :class:`NotOfKind` saying what the column takes
    when it is not one. None, a JSON column and an unknown kind take any
    value as given; a bytes column takes none (JSON has no bytes)."""
    if value is None or kind is None or is_json(kind):
        return value
    if kind is bytes:
        raise NotOfKind("holds bytes; it cannot be set here")
    wrong = NotOfKind(f"takes {_TAKES[kind]}, not {value!r}")
    if kind in _TIMES:
        if not isinstance(value, str):
            raise wrong
        try:  # Python's ISO parser: it takes the forms people type
            return kind.fromisoformat(value)  # type: ignore[attr-defined]
        except ValueError:
            raise wrong from None
    if kind is decimal.Decimal and isinstance(value, float):
        value = str(value)  # 0.1 as typed, not as the nearest binary float
    try:
        return msgspec.convert(value, kind)
    except msgspec.ValidationError:
        raise wrong from None
