"""JSON Schemas of the replicator's messages, generated from the msgspec structs.

``python -m replicator.schemas [DIR]`` writes them to ``schemas/`` (or DIR);
``tests/test_schemas.py`` fails when the committed files are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import msgspec

from replicator.conflicts import Side
from replicator.events import ChangeEvent

# Stored messages: events in the outbox, a row's versions in review items.
MESSAGES: dict[str, type] = {"change_event": ChangeEvent, "review_side": Side}


def generate() -> dict[str, str]:
    """File name -> JSON Schema text, for every message type."""
    return {
        f"{name}.json": json.dumps(msgspec.json.schema(struct), indent=2, sort_keys=True) + "\n"
        for name, struct in MESSAGES.items()
    }


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
