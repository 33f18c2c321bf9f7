"""JSON Schemas of the replicator's messages, generated from the msgspec structs.

``python -m replicator.schemas [DIR]`` writes them to ``schemas/`` (or DIR);
``tests/test_schemas.py`` fails when the committed files are stale.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from replicator.conflicts import Side
from replicator.events import ChangeEvent

# Stored messages: events in the outbox, a row's versions in review items.
MESSAGES: dict[str, type] = {"change_event": ChangeEvent, "review_side": Side}


def generate() -> dict[str, str]:
    """File name -> JSON Schema text, for every message type.

    Descriptions come from the structs' docstrings, cleaned here
    (:func:`inspect.cleandoc`) rather than as msgspec happens to format them,
    so the text does not change with msgspec's release.
    """
    return {
        f"{name}.json": json.dumps(_clean(msgspec.json.schema(struct)), indent=2, sort_keys=True)
        + "\n"
        for name, struct in MESSAGES.items()
    }


def meaning(schema: Any) -> Any:
    """``schema`` without its prose (``description``, ``title``): what stays
    is what a message may hold, the fields, their types, tags and defaults."""
    if isinstance(schema, dict):
        return {k: meaning(v) for k, v in schema.items() if k not in _PROSE}
    if isinstance(schema, list):
        return [meaning(v) for v in schema]
    return schema


_PROSE = frozenset({"description", "title"})


def _clean(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {
            k: inspect.cleandoc(v) if k == "description" and isinstance(v, str) else _clean(v)
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [_clean(v) for v in schema]
    return schema


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "schemas"
    for path in write(target):
        print(path)
