"""The README's examples run, so they cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from replicator import outbox

README = Path(__file__).parent.parent / "README.md"


def test_capture_example_runs_and_captures(tmp_path):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    (tmp_path / "example.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(f"duckdb:///{tmp_path / 'local.duckdb'}")
    with engine.connect() as conn:
        events = [(e.table, e.key, e.op.value) for _, e in outbox.read(conn)]
    engine.dispose()
    assert events == [("notes", {"note_id": "n-1"}, "insert")]
