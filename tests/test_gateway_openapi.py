"""The gateway's OpenAPI document (docs/gateway-openapi.json) describes the
gateway as it is.

The committed file is what :mod:`replicator.gateway.openapi` writes today,
byte for byte; its paths are the routes :func:`create_app` serves, and each
route decodes the body the document names (the gateway's 400 names the
struct). The document is checked as OpenAPI 3.1 by hand (its required
keys, every ``$ref`` resolving inside it); the ``openapi-spec-validator``
package is not a dependency. Its schemas are checked as JSON Schema, and
messages of every struct validate against them.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

import replicator
from replicator import protocol
from replicator.apply import Counts
from replicator.config import GatewayConfig
from replicator.devices import Rules
from replicator.gateway import openapi, tokens
from replicator.gateway.app import create_app
from replicator.node import Node

SECRET = "openapi-test-secret-" + "s" * 40
RUN = "run `python -m replicator.gateway.openapi`"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return openapi.document()


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Starlette]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'server.sqlite'}")
    replicator.migrate(engine)  # the revocation list a token is checked against
    yield create_app(Node("server", role="server", engine=engine), Rules(), GatewayConfig(), SECRET)
    engine.dispose()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


# --- the committed file ----------------------------------------------------


def test_committed_document_is_current():
    path = openapi.DEFAULT_PATH
    assert path.exists(), f"{path} is missing: {RUN}"
    assert path.read_text() == openapi.render(), (
        f"{path} is stale: the protocol or the gateway's endpoints changed; {RUN}"
    )


def test_check_fails_on_a_missing_or_stale_file_and_passes_once_written(tmp_path, capsys):
    path = tmp_path / "gateway-openapi.json"
    assert openapi.main(["--check", str(path)]) == 1
    assert not path.exists(), "--check wrote the file"
    assert "missing" in capsys.readouterr().err

    assert openapi.main([str(path)]) == 0
    assert openapi.main(["--check", str(path)]) == 0
    assert path.read_text().endswith("}\n")

    path.write_text(path.read_text().replace('"v1"', '"v0"', 1))
    assert openapi.main(["--check", str(path)]) == 1
    assert RUN in capsys.readouterr().err


# --- the document against the app ------------------------------------------


def test_every_route_the_app_serves_is_documented_and_nothing_else(app, doc):
    served = set()
    for route in app.routes:
        assert isinstance(route, Route), f"{route!r}: not a plain route, the test cannot read it"
        # Starlette answers HEAD wherever it answers GET; it is not a route of its own.
        served |= {(m, route.path) for m in route.methods or () if m != "HEAD"}
    documented = {(method, path) for method, path, _ in _operations(doc)}
    table = "replicator/gateway/openapi.py's ENDPOINTS"
    assert served - documented == set(), f"served but not in the document: add to {table}, {RUN}"
    assert documented - served == set(), f"in the document but not served: remove from {table}"


def test_each_route_decodes_the_body_the_document_names(app, doc):
    # An empty map is no endpoint's body (each has a required field), so
    # the 400 names the struct the route really decodes to.
    token = tokens.issue(SECRET, "phone", {}, now=dt.datetime.now(dt.UTC))
    client = TestClient(app)
    for method, path, operation in _operations(doc):
        if method == "GET":
            response = client.get(path)
            assert response.status_code == 200, (path, response.text)
            schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
            answer = getattr(protocol, schema["$ref"].rsplit("/", 1)[-1])
            msgspec.json.decode(response.content, type=answer)
            continue
        body = operation["requestBody"]["content"][protocol.MEDIA_TYPE]["schema"]["$ref"]
        expected = body.rsplit("/", 1)[-1]
        response = client.post(
            path,
            content=msgspec.msgpack.encode({}),
            headers={"Authorization": f"Bearer {token}", "Content-Type": protocol.MEDIA_TYPE},
        )
        assert response.status_code == 400, (path, response.status_code, response.text)
        problem = msgspec.json.decode(response.content, type=protocol.Problem)
        assert problem.detail.startswith(f"{expected}:"), (path, expected, problem.detail)

        refused = client.post(path, content=msgspec.msgpack.encode({}))
        assert refused.status_code == 401, (path, refused.status_code)
        assert "401" in operation["responses"], f"{path} answers 401 but does not say so"
        assert refused.headers["WWW-Authenticate"] == "Bearer"


# --- the document as OpenAPI 3.1 ---------------------------------------------


def test_document_has_what_openapi_3_1_requires(doc):
    assert doc["openapi"].startswith("3.1."), doc["openapi"]
    assert {"title", "version"} <= set(doc["info"]), doc["info"]
    assert doc["info"]["version"] == protocol.VERSION
    known = {"openapi", "info", "jsonSchemaDialect", "servers", "paths", "webhooks"}
    known |= {"components", "security", "tags", "externalDocs"}
    assert set(doc) - known == set(), "top-level keys OpenAPI 3.1 does not define"

    schemes = doc["components"]["securitySchemes"]
    for scheme in schemes.values():
        assert scheme["type"] == "http" and scheme["scheme"] == "bearer", scheme
    ids = []
    for method, path, operation in _operations(doc):
        assert path.startswith(f"/{protocol.VERSION}/"), path
        assert method in {"GET", "POST"}, (method, path)
        ids.append(operation["operationId"])
        for requirement in operation.get("security", doc["security"]):
            assert set(requirement) <= set(schemes), (path, requirement)
        assert "200" in operation["responses"], path
        for status, response in operation["responses"].items():
            assert status.isdigit() and len(status) == 3, (path, status)
            if "$ref" in response:
                response = _resolve(doc, response["$ref"])
            assert response.get("description"), (path, status, "a response needs a description")
    assert len(ids) == len(set(ids)), f"operationIds repeat: {ids}"


def test_every_ref_resolves_inside_the_document(doc):
    refs = set(_refs(doc))
    assert refs, "no $ref at all: the paths do not use the components"
    for ref in refs:
        _resolve(doc, ref)
    # Nothing described is left unused: every schema is reached from a path.
    used = {ref.rsplit("/", 1)[-1] for ref in refs if ref.startswith("#/components/schemas/")}
    assert used == set(doc["components"]["schemas"])


def test_security_errors_and_headers_are_described(doc):
    health = doc["paths"][f"/{protocol.VERSION}/health"]["get"]
    assert health["security"] == [], "health takes no token"
    push = doc["paths"][f"/{protocol.VERSION}/push"]["post"]
    conflict = _resolve(doc, push["responses"]["409"]["$ref"])
    assert conflict["content"][protocol.MEDIA_TYPE]["schema"]["$ref"].endswith("/Checkpoint")
    for status in ("400", "413", "429"):
        response = _resolve(doc, push["responses"][status]["$ref"])
        assert response["content"]["application/json"]["schema"]["$ref"].endswith("/Problem")
    assert "Retry-After" in _resolve(doc, push["responses"]["429"]["$ref"])["headers"]
    bootstrap = doc["paths"][f"/{protocol.VERSION}/bootstrap"]["post"]
    stream = bootstrap["responses"]["200"]["content"][openapi.STREAM_TYPE]
    assert stream["x-item-schema"]["$ref"].endswith("/Frame")


# --- the schemas -------------------------------------------------------------

EVENT = (7, "items", '{"id": 1}', msgspec.msgpack.encode({"id": 1}))
EXAMPLES: dict[type, list[Any]] = {
    protocol.Health: [protocol.Health(status="ok", server="server")],
    protocol.Problem: [protocol.Problem(error="too large", detail="send smaller batches")],
    protocol.Where: [protocol.Where(channel="default"), protocol.Where(channel="c", log_id="l")],
    protocol.Checkpoint: [protocol.Checkpoint(channel="default", position=3)],
    protocol.Push: [protocol.Push(channel="default", after=0, reached=7, events=[EVENT])],
    protocol.Pushed: [
        protocol.Pushed(channel="default", checkpoint=7, counts=Counts(read=1, applied=1))
    ],
    protocol.Bounds: [
        protocol.Bounds(horizon=None, pruned_through=0, log_id=None),
        protocol.Bounds(horizon=9, pruned_through=2, log_id="l"),
    ],
    protocol.Head: [protocol.Head(position=0), protocol.Head(position=42)],
    protocol.Tables: [protocol.Tables(database="mariadb", types={"items": {"id": "int(11)"}})],
    protocol.Pull: [protocol.Pull(channel="default", after=0, upto=9, tables=["items"])],
    protocol.Pulled: [protocol.Pulled(events=[EVENT], reached=7)],
    protocol.Wait: [protocol.Wait(after=7)],
    protocol.Lease: [protocol.Lease(table="items", above=10)],
    protocol.Leased: [protocol.Leased(table="items"), protocol.Leased(table="t", first=1, last=9)],
    protocol.Frame: [
        protocol.Frame(position=7, log_id="l", tables=["items"]),
        protocol.Frame(table="items", columns=["id", "blob"], rows=[[1, b"\x00"]]),
        protocol.Frame(done=True),
    ],
    Counts: [Counts(read=2, applied=1, skipped=1)],
}


def _validator(doc: dict[str, Any], name: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    # The pointers are "#/components/schemas/...": a root holding the
    # components resolves them as the document does.
    schema = {"$ref": f"#/components/schemas/{name}", "components": doc["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_schemas_are_json_schema(doc):
    jsonschema = pytest.importorskip("jsonschema")
    for name, schema in doc["components"]["schemas"].items():
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            pytest.fail(f"components/schemas/{name} is not a JSON Schema: {e.message}")


def test_messages_of_every_struct_match_their_schema(doc):
    described = set(doc["components"]["schemas"])
    assert {t.__name__ for t in EXAMPLES} == described, "a struct without an example here"
    for kind, messages in EXAMPLES.items():
        validator = _validator(doc, kind.__name__)
        for message in messages:
            # As JSON: the document's note says bytes (msgpack bin) are
            # written as base64 strings, which is what msgspec's JSON does.
            errors = [
                e.message for e in validator.iter_errors(json.loads(msgspec.json.encode(message)))
            ]
            assert not errors, (kind.__name__, message, errors)


def test_a_message_the_gateway_refuses_does_not_match_its_schema(doc):
    # The validation above is not vacuous: what msgspec refuses, the schema refuses.
    validator = _validator(doc, "Push")
    for wrong in (
        {"after": 0, "reached": 1},  # no channel
        {"channel": "c", "after": "0", "reached": 1},  # a string for an int
        {"channel": "c", "after": 0, "reached": 1, "extra": 1},  # an unknown field
        {"channel": "c", "after": 0, "reached": 1, "events": [[1, "t", "k"]]},  # short event
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(json.dumps(wrong), type=protocol.Push)
        assert not validator.is_valid(wrong), wrong
