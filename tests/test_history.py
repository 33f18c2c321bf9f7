"""A row's history from a node's log, and the row as it was at a moment."""

from __future__ import annotations

import datetime as dt

from freezegun import freeze_time

from replicator import history

from .cluster import add_vocabulary, delete_vocabulary, edit_vocabulary, member


def test_key_text_takes_a_value_or_a_json_array():
    assert history.key_text("v-1") == '["v-1"]'
    assert history.key_text("5") == "[5]"
    assert history.key_text('["u-42", "listening"]') == '["u-42","listening"]'


def test_the_row_at_each_moment_of_its_history(tmp_path):
    m = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    try:
        with freeze_time("2026-11-24 09:00:00") as clock:
            add_vocabulary(m, "v-1", "mesa")
            clock.tick(60)
            edit_vocabulary(m, "v-1", translation="table")
            clock.tick(60)
            delete_vocabulary(m, "v-1")
        key = history.key_text("v-1")
        with m.engine.connect() as conn:
            ops = [(c.op, c.at.strftime("%H:%M")) for c in history.changes(conn, key=key)]
            at = {
                t: history.row_at(conn, "vocabulary_items", key, dt.datetime(2026, 11, 24, *t))
                for t in [(8, 59), (9, 0), (9, 0, 30), (9, 1), (9, 2)]
            }
    finally:
        m.close()

    assert ops == [("insert", "09:00"), ("update", "09:01"), ("delete", "09:02")]
    assert at[(8, 59)] is None
    assert at[(9, 0)]["translation"] == at[(9, 0, 30)]["translation"] == "?"
    assert at[(9, 1)]["translation"] == "table"
    assert at[(9, 2)] is None
