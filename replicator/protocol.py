"""The sync gateway's wire protocol, version 1: what a device and the
gateway say to each other over HTTP.

Both ends use these structs: the gateway (:mod:`replicator.gateway`)
decodes requests and encodes answers with them, a device's client
(:mod:`replicator.remote`) the other way round. Bodies are msgpack
(:data:`MEDIA_TYPE`); a large body may be sent gzip-compressed
(``Content-Encoding: gzip``). Every request carries the device's token
(``Authorization: Bearer ...``), but for ``/v1/health``; who the device is, and what it may read
and write, come from the token alone.

Events travel as the outbox stores them (:data:`Wire`): position, table,
row key and the msgpack payload, unchanged, so neither end re-encodes an
event, and the receiving end decodes each one exactly as it decodes its
own log.

==========================  ===============  ===========================
endpoint                    body             answer
==========================  ===============  ===========================
``GET  /v1/health``         -                :class:`Health` (no token)
``POST /v1/checkpoint``     :class:`Where`   :class:`Checkpoint`
``POST /v1/push``           :class:`Push`    :class:`Pushed`
``POST /v1/bounds``         :class:`Where`   :class:`Bounds`
``POST /v1/pull``           :class:`Pull`    :class:`Pulled`
``POST /v1/wait``           :class:`Wait`    :class:`Head` (long poll)
``POST /v1/keys``           :class:`Lease`   :class:`Leased`
``POST /v1/tables``         :class:`Where`   :class:`Tables`
``POST /v1/bootstrap``      :class:`Where`   a stream of :class:`Frame`
==========================  ===============  ===========================

An error is answered with :class:`Problem` as JSON: 400 (the body is not
what the endpoint takes; ``detail`` names what is wrong), 401 (the token
is missing, forged, expired or revoked; no detail), 409 (a push that does
not start at the server's checkpoint; the answer is a :class:`Checkpoint`
so the device reads on from there), 413 (the body is larger than the
gateway takes), 429 (too many requests from this device; ``Retry-After``
says when to try again), 503 (the server database cannot be reached) and
500 (anything else; the gateway's log says what). A bootstrap that fails
once its stream has begun is cut short (no last frame).

A bootstrap's stream is a sequence of frames, each a 4-byte big-endian
length and that many bytes of a msgpack :class:`Frame`, ending with one
whose ``done`` is true; a stream cut before it is incomplete, and the
device starts the bootstrap again (its local transaction rolls back).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from replicator.apply import Counts
from replicator.events import from_ext

VERSION = "v1"
MEDIA_TYPE = "application/msgpack"
#: An event as it travels: its position in the sender's log, its table,
#: its row key and its payload (the outbox's msgpack bytes).
Wire = tuple[int, str, str, bytes]


class _Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class Health(_Message):
    status: str
    protocol: str = VERSION
    server: str = ""


class Problem(_Message):
    error: str
    detail: str = ""


class Where(_Message):
    """Which channel a request is about; ``log_id`` names the device's own
    log (a checkpoint of an older copy of it does not count)."""

    channel: str
    log_id: str | None = None
    #: A bootstrap resumed after a cut: the tables before this one (by
    #: name) came whole already; the snapshot starts with it.
    from_table: str = ""


class Checkpoint(_Message):
    """How far the server has applied the device's log in a channel."""

    channel: str
    position: int


class Push(_Message):
    """A batch of the device's own events for one channel.

    ``after`` is the checkpoint the batch starts at, ``reached`` the
    position of the device's log the server has seen everything of once
    it is applied (the device's horizon when the batch is its last). The
    server applies only the events after its own checkpoint, so a push
    sent again after a cut connection applies nothing twice.
    """

    channel: str
    after: int
    reached: int
    log_id: str | None = None
    pruned_through: int = 0
    events: list[Wire] = []


class Pushed(_Message):
    """What a push did: the server's checkpoint for the device after it,
    and the counts of the pass that applied it (``forbidden``: the events
    it refused, recorded for review, see :mod:`replicator.devices`)."""

    channel: str
    checkpoint: int
    counts: Counts
    forbidden: int = 0
    status: str = "ok"
    error: str | None = None


class Bounds(_Message):
    """The server's log as a device reads it: its commit-order horizon
    (None: deferred, try again), what retention pruned, and its id."""

    horizon: int | None
    pruned_through: int
    log_id: str | None


class Pull(_Message):
    """The server's events after ``after`` up to ``upto``, at most
    ``limit`` (a source transaction is never split), of the channel's
    tables: ``tables`` (None: all) less ``exclude_tables``."""

    channel: str
    after: int
    upto: int
    limit: int = 1000
    tables: list[str] | None = None
    exclude_tables: list[str] = []
    #: Include the device's own events (a replay onto it restores them too).
    own: bool = False


class Pulled(_Message):
    """A batch for the device (already cut to its scope) and the position
    it has seen everything up to."""

    events: list[Wire]
    reached: int


class Wait(_Message):
    """Answer once the server's log is past ``after``, or after
    ``seconds`` (at most the gateway's limit) with its head as it is."""

    after: int
    seconds: float = 25.0


class Head(_Message):
    """The largest position in the server's log as the gateway last read
    it (a few times a second while devices wait): a sign to pull, not a
    horizon to read up to (:class:`Bounds` says that)."""

    position: int


class Tables(_Message):
    """The server's app tables as the device compares them with its own:
    each column's declared type (see :mod:`replicator.precision`), and
    which database declares them."""

    database: str
    types: dict[str, dict[str, str]]


class Lease(_Message):
    """A block of keys of ``table`` for the device, above its largest key
    ``above`` (see :mod:`replicator.keys`); the server's configuration
    says how many (``replication.key_block``)."""

    table: str
    above: int


class Leased(_Message):
    table: str
    first: int | None = None
    last: int | None = None


class Frame(_Message):
    """One frame of a bootstrap stream: first the ``position`` and
    ``log_id`` the snapshot stands at and the ``tables`` it copies; then, per table, its ``columns``
    once and ``rows`` (values as events carry them, see
    :mod:`replicator.events`) in chunks, then ``versions`` of those rows;
    last a frame with ``done``."""

    table: str = ""
    columns: list[str] = []
    rows: list[list[Any]] = []
    versions: list[list[Any]] = []
    position: int | None = None
    log_id: str | None = None
    tables: list[str] = []
    done: bool = False


_LENGTH = struct.Struct(">I")
_FRAME_ENCODER = msgspec.msgpack.Encoder()
_FRAME_DECODER = msgspec.msgpack.Decoder(Frame, ext_hook=from_ext)


def framed(frame: Frame) -> bytes:
    """``frame`` as a bootstrap stream carries it: its length, then it."""
    data = _FRAME_ENCODER.encode(frame)
    return _LENGTH.pack(len(data)) + data


def unframed(chunks: Iterable[bytes]) -> Iterator[Frame]:
    """The frames in a bootstrap stream arriving as ``chunks`` (cut
    anywhere), up to and including the last one (``done``); stops early
    when the chunks end first."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while len(buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer)
            if len(buffer) < _LENGTH.size + size:
                break
            frame = _FRAME_DECODER.decode(buffer[_LENGTH.size : _LENGTH.size + size])
            buffer = buffer[_LENGTH.size + size :]
            yield frame
            if frame.done:
                return


__all__ = [
    "MEDIA_TYPE",
    "VERSION",
    "Bounds",
    "Checkpoint",
    "Frame",
    "Head",
    "Health",
    "Lease",
    "Leased",
    "Problem",
    "Pull",
    "Pulled",
    "Push",
    "Pushed",
    "Tables",
    "Wait",
    "Where",
    "Wire",
    "framed",
    "unframed",
]
