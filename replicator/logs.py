"""Log lines of the long-running replicator (``replicator run``): one per
pass and one per change of state, as text or as JSON lines.

The library logs to the ``replicator`` logger with two extras: ``event``
(``pass``, ``sink``, ``node_unreachable``, ``node_reachable``, ``started``,
``stopped``, ``bootstrapped``, and for a link or a sink ``link_taken``,
``link_held``, ``link_lost``, ``link_released``, ``link_error``,
``sink_taken``, ...) and ``fields`` (what happened, as plain values). An app
routes them like any other log; :func:`configure` is what the command uses.

Whatever a line holds, a password in a database URL never appears in it:
both formats mask them (``mysql+pymysql://repl:***@db/app``).
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any, Literal, TextIO

import msgspec

from replicator.config import mask_password

Format = Literal["text", "json"]
FORMATS = ("text", "json")


def _time(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    """``2026-11-24T11:00:00.123Z INFO pass phone -> server [default] read=3 ...``"""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = _fields(record)
        if getattr(record, "event", None) == "pass" or getattr(record, "event", None) == "sink":
            shown = {k: v for k, v in fields.items() if k not in ("source", "target", "channel")}
            shown.pop("sink", None)
            shown.pop("node", None)
            message += " " + " ".join(f"{k}={_text(v)}" for k, v in shown.items())
        line = f"{_time(record)} {record.levelname} {message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return mask_password(line)


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    text = str(value)
    return repr(text) if " " in text else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``event``,
    ``message`` and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        document = {
            "time": _time(record),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", "log"),
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            document["traceback"] = self.formatException(record.exc_info)
        return mask_password(msgspec.json.encode(document).decode())


def configure(fmt: Format = "text", stream: TextIO | None = None, level: int = logging.INFO):
    """Send the ``replicator`` logger's lines to ``stream`` (stderr) in
    ``fmt``; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("replicator")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return handler


def reset() -> None:
    """Undo :func:`configure`: the ``replicator`` logger's lines go wherever
    the app's logging sends them again."""
    logger = logging.getLogger("replicator")
    logger.handlers[:] = []
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
