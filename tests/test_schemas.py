"""The JSON Schemas in schemas/ match the msgspec structs they describe.

They are compared by meaning (fields, types, tags, defaults), not by the
prose msgspec copies from docstrings: a msgspec release that formats a
description differently must not make them stale, a changed field must.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from replicator import schemas
from replicator.events import ChangeEvent

SCHEMAS = Path(__file__).parent.parent / "schemas"


def _committed(name: str) -> dict:
    path = SCHEMAS / name
    assert path.exists(), f"{path} is missing: run `python -m replicator.schemas`"
    return json.loads(path.read_text())


def _stale(generated: dict[str, str]) -> list[str]:
    return [
        name
        for name, text in generated.items()
        if schemas.meaning(json.loads(text)) != schemas.meaning(_committed(name))
    ]


def test_committed_schemas_are_current():
    stale = _stale(schemas.generate())
    assert not stale, (
        f"stale in schemas/: {', '.join(stale)}: the structs changed; "
        "run `python -m replicator.schemas`"
    )


def test_a_new_field_makes_the_schema_stale(monkeypatch):
    class Extended(ChangeEvent, frozen=True, kw_only=True):
        extra: int = 0

    monkeypatch.setitem(schemas.MESSAGES, "change_event", Extended)
    assert _stale(schemas.generate()) == ["change_event.json"]


def test_a_changed_field_type_makes_the_schema_stale(monkeypatch):
    class Retyped(msgspec.Struct, frozen=True, kw_only=True):
        """Like ChangeEvent, but its clock reading is a string."""

        event_id: str
        hlc: str

    fields = {f.name: f for f in msgspec.structs.fields(ChangeEvent)}
    assert fields["hlc"].type is int
    monkeypatch.setitem(schemas.MESSAGES, "change_event", Retyped)
    assert _stale(schemas.generate()) == ["change_event.json"]


@pytest.mark.parametrize("indent", ["    ", "\t", ""])
def test_how_a_library_formats_docstrings_changes_nothing(monkeypatch, indent):
    """Raw, indented docstrings (msgspec before 0.23) and dedented ones (0.23)
    give the same committed text, byte for byte."""
    real = msgspec.json.schema

    def reformatted(struct):
        def redo(node):
            if isinstance(node, dict):
                return {
                    k: ("\n" + indent).join(v.splitlines()) + "\n" + indent
                    if k == "description" and isinstance(v, str)
                    else redo(v)
                    for k, v in node.items()
                }
            if isinstance(node, list):
                return [redo(v) for v in node]
            return node

        return redo(real(struct))

    expected = schemas.generate()
    monkeypatch.setattr(msgspec.json, "schema", reformatted)
    assert schemas.generate() == expected
    assert not _stale(expected)


def test_events_round_trip_through_msgpack():
    from replicator.events import Operation, decode_event, encode_event

    event = ChangeEvent(
        event_id="e",
        origin="local",
        table="t",
        key={"id": 1},
        op=Operation.UPDATE,
        row={"id": 1, "blob": b"\x00\xff", "n": None},
        changed={"n": 2},
        version={"local": 2, "server": 1},
        hlc=123,
        txid="tx",
    )
    assert decode_event(encode_event(event)) == event
