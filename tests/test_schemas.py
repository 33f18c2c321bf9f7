"""The JSON Schemas in schemas/ match the msgspec structs they describe."""

from __future__ import annotations

from pathlib import Path

from replicator import schemas
from replicator.events import ChangeEvent

SCHEMAS = Path(__file__).parent.parent / "schemas"


def test_committed_schemas_are_current():
    for name, text in schemas.generate().items():
        path = SCHEMAS / name
        assert path.exists(), f"{path} is missing: run `python -m replicator.schemas`"
        assert path.read_text() == text, (
            f"{path} is stale: the structs changed; run `python -m replicator.schemas`"
        )


def test_a_new_field_makes_the_schema_stale(monkeypatch):
    class Extended(ChangeEvent, frozen=True, kw_only=True):
        extra: int = 0

    committed = (SCHEMAS / "change_event.json").read_text()
    monkeypatch.setitem(schemas.MESSAGES, "change_event", Extended)
    assert schemas.generate()["change_event.json"] != committed


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
