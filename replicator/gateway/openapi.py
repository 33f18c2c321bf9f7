"""The sync gateway's protocol as an OpenAPI 3.1 document, generated from
the code.

:func:`document` builds it from :data:`ENDPOINTS` (one row per route the
gateway serves) and the msgspec structs of :mod:`replicator.protocol`
(their JSON Schemas, under ``components/schemas``). It needs no database
and no secret: it reads only those tables and structs.

``python -m replicator.gateway.openapi [PATH]`` writes it to
``docs/gateway-openapi.json`` (or PATH); with ``--check`` it writes
nothing and exits 1 when the file is missing or differs from what it
would write. ``tests/test_gateway_openapi.py`` fails when the committed
file is stale, and when :data:`ENDPOINTS` and the routes of
:func:`replicator.gateway.app.create_app` disagree.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from replicator.config import GatewayConfig
from replicator.gateway import tokens
from replicator.gateway.app import COMPRESS_ABOVE
from replicator.protocol import (
    MEDIA_TYPE,
    VERSION,
    Bounds,
    Checkpoint,
    Frame,
    Head,
    Health,
    Lease,
    Leased,
    Problem,
    Pull,
    Pulled,
    Push,
    Pushed,
    Tables,
    Wait,
    Where,
)

OPENAPI = "3.1.0"
#: Where ``python -m replicator.gateway.openapi`` writes by default.
DEFAULT_PATH = Path(__file__).resolve().parents[2] / "docs" / "gateway-openapi.json"
#: The media type of a bootstrap's stream of length-prefixed frames.
STREAM_TYPE = "application/octet-stream"
_SCHEMAS = "#/components/schemas/{name}"


@dataclass(frozen=True)
class Endpoint:
    """One route: ``method`` and ``path``; the struct its body decodes to
    (None: no body); the struct it answers with (``stream``: a stream of
    them, see :mod:`replicator.protocol`) and what that answer means; the
    statuses it answers with a :class:`Problem` (or, for 409, a
    :class:`Checkpoint`); and whether it takes a device's token."""

    method: str
    path: str
    body: type | None
    answer: type
    summary: str
    answered: str
    errors: tuple[int, ...]
    stream: bool = False
    token: bool = True

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# What every route behind a token may answer before its own work: the
# token (401), the revocation list it is checked against (503 when the
# server database cannot be read), the device's rate (429), and the body's
# size (413) and shape (400). Gateway.endpoint and the wait add 500 (a library error),
# and push alone can be out of step (409): only accept_push raises it.
_CHECKED = (400, 401, 413, 429, 503)
_CALLED = (*_CHECKED, 500)

#: The gateway's routes, in the order of the protocol's table.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "get",
        f"/{VERSION}/health",
        None,
        Health,
        "Whether the gateway is up, and the protocol it speaks",
        "The gateway is up (answered as JSON, without a token; it does not "
        "read the server database).",
        (),
        token=False,
    ),
    Endpoint(
        "post",
        f"/{VERSION}/checkpoint",
        Where,
        Checkpoint,
        "How far the server has applied the device's log in a channel",
        "The server's checkpoint for the device's log in the channel.",
        _CALLED,
    ),
    Endpoint(
        "post",
        f"/{VERSION}/push",
        Push,
        Pushed,
        "Apply a batch of the device's own events",
        "What the push did; events already applied are not applied again.",
        (*_CALLED, 409),
    ),
    Endpoint(
        "post",
        f"/{VERSION}/bounds",
        Where,
        Bounds,
        "The server log's bounds as the device reads it",
        "The server log's horizon, what retention pruned, and its id.",
        _CALLED,
    ),
    Endpoint(
        "post",
        f"/{VERSION}/pull",
        Pull,
        Pulled,
        "The server's events for the device, cut to its scope",
        "A batch of events and the position the device has seen everything up to.",
        _CALLED,
    ),
    Endpoint(
        "post",
        f"/{VERSION}/wait",
        Wait,
        Head,
        "Wait until the server's log grows (a long poll)",
        "The log's head once it is past `after`, or once `seconds` have passed "
        f"(at most gateway.wait_seconds, {GatewayConfig().wait_seconds:g} by default).",
        _CALLED,
    ),
    Endpoint(
        "post",
        f"/{VERSION}/keys",
        Lease,
        Leased,
        "Lease a block of keys of a table",
        "The block leased (`first` and `last` null: none for this table).",
        _CALLED,
    ),
    Endpoint(
        "post",
        f"/{VERSION}/tables",
        Where,
        Tables,
        "The server's app tables' declared column types",
        "Each table's columns and their declared types, and the server's database: "
        "what a device compares with its own before it replicates (precision).",
        _CALLED,
    ),
    Endpoint(
        "post",
        f"/{VERSION}/bootstrap",
        Where,
        Frame,
        "A snapshot of the device's scope, to fill a new replica",
        "A stream of frames, each a 4-byte big-endian length and that many bytes "
        "of a msgpack Frame (the `x-item-schema`), ending with a frame whose "
        "`done` is true. A stream that ends before it is incomplete (it was cut, "
        "or the snapshot failed after the status was sent): the device starts "
        "the bootstrap again.",
        _CHECKED,
        stream=True,
    ),
)

# The structs a document describes beyond those of the endpoints' bodies
# and answers: the error body.
_ALSO = (Problem,)

_DESCRIPTION = f"""\
The wire protocol between a device and the replicator's sync gateway
(`replicator serve`), version {VERSION}; see `replicator/protocol.py`.

Every endpoint but `/{VERSION}/health` takes the device's token
(`Authorization: Bearer ...`); who the device is and what it may read and
write come from the token alone. Requests and answers are msgpack
(`{MEDIA_TYPE}`): the schemas describe the msgpack document's shape, written
as JSON Schema; a string with `contentEncoding: base64` is a msgpack `bin`
(raw bytes) on the wire, never base64 text. An event travels as an array of
its position, table, row key and payload (the outbox's msgpack bytes).

A request body may be gzip-compressed (`Content-Encoding: gzip`); its size
limit applies also once decompressed. An answer larger than
{COMPRESS_ABOVE} bytes is gzip-compressed when the request accepts it
(`Accept-Encoding: gzip`).

An error is answered with a `Problem` as JSON, except 409, whose answer is
a msgpack `Checkpoint` the device reads on from.
"""

_TOKEN = (
    f"The device's token: a JWT signed by the server ({tokens.ALGORITHM}, issuer "
    f"`{tokens.ISSUER}`, audience `{tokens.AUDIENCE}`), issued by `replicator token "
    "issue`. Its claims name the device and its scope; a token that is missing, "
    "forged, expired or revoked gets 401 and nothing else."
)

_LIMITS = GatewayConfig()
# One response per error status, shared by the paths through $ref. 409 is
# the one that is not a Problem: the device needs the checkpoint, not prose.
_ERRORS: dict[int, tuple[str, str, str]] = {
    400: (
        "Malformed",
        "malformed body",
        "The body is not what the endpoint takes (or its gzip cannot be read); "
        "`detail` names the struct and what is wrong.",
    ),
    401: (
        "Unauthorized",
        "unauthorized",
        "The token is missing, forged, expired or revoked; there is no detail.",
    ),
    409: (
        "OutOfStep",
        "",
        "The push starts past the server's checkpoint for the device (the server "
        "lacks what lies between, e.g. after a restore). The answer is a msgpack "
        "Checkpoint whose `position` is where the device pushes from again.",
    ),
    413: (
        "TooLarge",
        "too large",
        "The body (or what it decompresses to) is larger than the gateway takes "
        f"(gateway.max_body_bytes, {_LIMITS.max_body_bytes} by default); send "
        "smaller batches.",
    ),
    429: (
        "TooManyRequests",
        "too many requests",
        "Too many requests from this device (gateway.requests_per_second, "
        f"{_LIMITS.requests_per_second:g} by default, in bursts of gateway.burst, "
        f"{_LIMITS.burst}); `Retry-After` says when to try again.",
    ),
    500: (
        "InternalError",
        "internal error",
        "The server failed; the gateway's log says why.",
    ),
    503: (
        "Unavailable",
        "unavailable",
        "The server database cannot be reached; try again later.",
    ),
}


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway: a path per row of
    :data:`ENDPOINTS`, the schemas of every struct they name."""
    structs: list[type] = []
    for endpoint in ENDPOINTS:
        structs += [t for t in (endpoint.body, endpoint.answer) if t is not None]
    structs += _ALSO
    # One call for all of them: a struct used by several (Counts inside
    # Pushed) becomes one component the others refer to.
    _, schemas = msgspec.json.schema_components(list(dict.fromkeys(structs)), ref_template=_SCHEMAS)
    paths: dict[str, Any] = {}
    for endpoint in ENDPOINTS:
        paths.setdefault(endpoint.path, {})[endpoint.method] = _operation(endpoint)
    return {
        "openapi": OPENAPI,
        "info": {
            "title": "replicator sync gateway",
            "version": VERSION,
            "description": _DESCRIPTION,
        },
        "security": [{"deviceToken": []}],
        "paths": paths,
        "components": {
            "schemas": _clean(schemas),
            "securitySchemes": {
                "deviceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": _TOKEN,
                }
            },
            "responses": {name: _error(status) for status, (name, _, _) in _ERRORS.items()},
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait before the next request.",
                    "schema": {"type": "integer", "minimum": 1},
                },
                "WWW-Authenticate": {
                    "description": "The scheme the gateway takes: `Bearer`.",
                    "schema": {"type": "string", "const": "Bearer"},
                },
            },
            "parameters": {
                "Content-Encoding": {
                    "name": "Content-Encoding",
                    "in": "header",
                    "required": False,
                    "description": "`gzip`: the body is gzip-compressed (its size limit "
                    "applies also once decompressed); anything else: the body is read as is.",
                    "schema": {"type": "string"},
                }
            },
        },
    }


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    answer = _ref("schemas", endpoint.answer.__name__)
    if endpoint.stream:
        # OpenAPI 3.1 cannot say "a sequence of these" (3.2's itemSchema
        # can), and a binary body has no schema of its own (3.1 omits it):
        # the frame's schema rides in an extension.
        content = {STREAM_TYPE: {"x-item-schema": answer}}
    elif endpoint.token:
        content = {MEDIA_TYPE: {"schema": answer}}
    else:
        content = {"application/json": {"schema": answer}}
    operation: dict[str, Any] = {
        "operationId": endpoint.name,
        "summary": endpoint.summary,
        "responses": {
            "200": {"description": endpoint.answered, "content": content},
            **{str(status): _ref("responses", _ERRORS[status][0]) for status in endpoint.errors},
        },
    }
    if not endpoint.token:
        operation["security"] = []  # overrides the document's: no token
    if endpoint.body is not None:
        operation["parameters"] = [_ref("parameters", "Content-Encoding")]
        operation["requestBody"] = {
            "required": True,
            "content": {MEDIA_TYPE: {"schema": _ref("schemas", endpoint.body.__name__)}},
        }
    return operation


def _error(status: int) -> dict[str, Any]:
    _, error, description = _ERRORS[status]
    if status == 409:
        return {
            "description": description,
            "content": {MEDIA_TYPE: {"schema": _ref("schemas", Checkpoint.__name__)}},
        }
    response: dict[str, Any] = {
        "description": description,
        "content": {
            "application/json": {
                "schema": _ref("schemas", Problem.__name__),
                "example": {"error": error},
            }
        },
    }
    if status == 401:
        response["headers"] = {"WWW-Authenticate": _ref("headers", "WWW-Authenticate")}
    if status == 429:
        response["headers"] = {"Retry-After": _ref("headers", "Retry-After")}
    return response


def _clean(schema: Any) -> Any:
    # Descriptions cleaned here (as replicator.schemas does) rather than as
    # msgspec happens to format docstrings, so the committed text does not
    # change with msgspec's release.
    if isinstance(schema, dict):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _clean(v)
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_clean(v) for v in schema]
    return schema


def render() -> str:
    """The document as committed: sorted keys, indented, a final newline."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the document (0), or with ``--check`` compare it with the file
    (0: current, 1: missing or stale, nothing written)."""
    parser = argparse.ArgumentParser(
        prog="python -m replicator.gateway.openapi",
        description="Write the sync gateway's OpenAPI document.",
    )
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the file differs; write nothing"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text() if args.path.exists() else None
        if current != text:
            state = "missing" if current is None else "stale"
            print(
                f"{args.path} is {state}: run `python -m replicator.gateway.openapi`",
                file=sys.stderr,
            )
            return 1
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text)
    print(args.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
