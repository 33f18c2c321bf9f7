"""Change events: the unit of replication.

One :class:`ChangeEvent` records one change to one row: which node made it,
the row's primary key, the row after the change, the columns that changed with
their previous values, the row's causal version and a hybrid-logical-clock
timestamp. Events are immutable and stored msgpack-encoded in the outbox.

Events are encoded as msgpack arrays (``array_like``): field names are not
repeated in every outbox row. Schema evolution follows msgspec's rules for
that form: a new field is appended at the end with a default, no field is
removed or reordered, a field's type never changes, and ``schema_version`` is
bumped when the meaning of a field changes. ``schemas/change_event.json`` is
generated from this module (``python -m replicator.schemas``) and a test
fails when it is stale.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import itertools
import os
import re
import uuid
from typing import Any

import msgspec

SCHEMA_VERSION = 1

#: What a node's name may be; events carry it as ``origin``, and it is the
#: key of a node's entry in every version vector.
NODE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class Operation(enum.StrEnum):
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"


class ChangeEvent(msgspec.Struct, frozen=True, kw_only=True, array_like=True, gc=False):
    """One captured change to one row.

    ``key`` maps the table's primary-key columns to their values, in key
    order (composite and non-integer keys included). ``row`` is the full row
    after the change, ``None`` for a delete. ``changed`` maps the columns an
    update changed to their previous values (``None`` when the session had
    not loaded the previous value); for a delete it is the row as it was (the
    columns the session had loaded); for an insert it is empty, since every
    column is new. ``version`` is the row's version vector after this change (node
    name -> number of changes that node made to the row); comparing two
    vectors tells sequential edits from concurrent ones exactly. ``hlc`` is
    the hybrid-logical-clock timestamp (see :mod:`replicator.clock`), and
    ``txid`` is shared by all events of one source transaction.
    """

    event_id: str
    origin: str
    table: str
    key: dict[str, Any]
    op: Operation
    row: dict[str, Any] | None
    changed: dict[str, Any]
    version: dict[str, int]
    hlc: int
    txid: str
    schema_version: int = SCHEMA_VERSION


def new_id() -> str:
    """A fresh, globally unique id for an event or a transaction (32 hex digits).

    A random 64-bit prefix drawn once per process (again after a fork) and a
    counter: as unique as a random UUID across processes and nodes, ordered
    within a process, and about ten times cheaper than ``uuid4()``, which
    reads the OS's random source on every call.
    """
    return f"{_id_prefix}{next(_id_counter):016x}"


def _reseed_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count()


_id_prefix = ""
_id_counter = itertools.count()
_reseed_ids()
os.register_at_fork(after_in_child=_reseed_ids)


def row_key(values: tuple[Any, ...] | list[Any]) -> str:
    """The canonical text form of a primary key: a JSON array of its values.

    It is what the replicator's tables store and what ``--key`` accepts, so
    the same key always gives the same string on every node.
    """
    return _JSON_ENCODER.encode(list(values)).decode()


def key_from_text(text: str, columns: tuple[str, ...]) -> dict[str, Any] | None:
    """The inverse of :func:`row_key`: ``columns`` -> values, or None when
    ``text`` is not a key of that many columns."""
    try:
        values = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return None
    if not isinstance(values, list) or len(values) != len(columns):
        return None
    return dict(zip(columns, values, strict=True))


# --- msgpack encoding --------------------------------------------------------
#
# msgspec encodes dates, decimals and UUIDs as plain strings, which would come
# back as strings and lose their type on the way to another database. Values
# of those types are wrapped in msgpack extension types instead, so a row
# decodes to exactly the Python values it was captured with.

_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_TIME = 3
_EXT_DECIMAL = 4
_EXT_UUID = 5
_EXT_TIMEDELTA = 6

_PLAIN = frozenset({str, int, float, bool, type(None), bytes, list, dict})


def _to_ext(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return msgspec.msgpack.Ext(_EXT_DATETIME, value.isoformat().encode())
    if isinstance(value, dt.date):
        return msgspec.msgpack.Ext(_EXT_DATE, value.isoformat().encode())
    if isinstance(value, dt.time):
        return msgspec.msgpack.Ext(_EXT_TIME, value.isoformat().encode())
    if isinstance(value, decimal.Decimal):
        return msgspec.msgpack.Ext(_EXT_DECIMAL, str(value).encode())
    if isinstance(value, uuid.UUID):
        return msgspec.msgpack.Ext(_EXT_UUID, value.bytes)
    if isinstance(value, dt.timedelta):
        micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
        return msgspec.msgpack.Ext(_EXT_TIMEDELTA, str(micros).encode())
    if isinstance(value, enum.Enum):
        # SQLAlchemy's Enum type stores the member's name.
        return value.name
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def from_ext(code: int, data: memoryview) -> Any:
    raw = bytes(data)
    if code == _EXT_DATETIME:
        return dt.datetime.fromisoformat(raw.decode())
    if code == _EXT_DATE:
        return dt.date.fromisoformat(raw.decode())
    if code == _EXT_TIME:
        return dt.time.fromisoformat(raw.decode())
    if code == _EXT_DECIMAL:
        return decimal.Decimal(raw.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=raw)
    if code == _EXT_TIMEDELTA:
        return dt.timedelta(microseconds=int(raw))
    raise ValueError(f"unknown msgpack extension type {code} in a change event")


def wire(values: dict[str, Any] | None) -> dict[str, Any] | None:
    """``values`` with typed values wrapped; the same dict when none need it."""
    if values is None:
        return None
    wired = None
    for key, value in values.items():
        if type(value) not in _PLAIN:
            if wired is None:
                wired = dict(values)
            wired[key] = _to_ext(value)
    return values if wired is None else wired


def wire_values(values: list[Any]) -> list[Any]:
    """A row's ``values`` (a list) with typed values wrapped, as :func:`wire`."""
    return [v if type(v) in _PLAIN else _to_ext(v) for v in values]


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(ChangeEvent, ext_hook=from_ext)
_JSON_ENCODER = msgspec.json.Encoder()


def encode_event(event: ChangeEvent) -> bytes:
    """The msgpack bytes stored in the outbox's ``payload`` column."""
    key, row, changed = wire(event.key), wire(event.row), wire(event.changed)
    if key is not event.key or row is not event.row or changed is not event.changed:
        event = msgspec.structs.replace(event, key=key, row=row, changed=changed)
    return _ENCODER.encode(event)


def decode_event(payload: bytes) -> ChangeEvent:
    """Decode an outbox payload; raises ``msgspec.DecodeError`` if corrupt."""
    return _DECODER.decode(payload)


def decode_or_none(payload: bytes) -> ChangeEvent | None:
    """Decode an outbox payload; None if it cannot be decoded (corrupt, or
    written by an unknown version)."""
    try:
        return _DECODER.decode(payload)
    except (msgspec.DecodeError, ValueError, TypeError):
        return None
