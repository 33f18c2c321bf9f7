"""What a device may write and read through the sync gateway, when it does
not play by the rules: events crafted by hand and pushed with a valid u1
token, each of which once got through (a review of the gateway found
them), and must now be refused as ``forbidden`` and change nothing of
anybody else's. The hub (a server database behind a served gateway) and
the app are those of ``test_gateway``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from replicator.config import loads
from replicator.devices import decode
from replicator.events import ChangeEvent, Operation, encode_event, new_id, row_key
from replicator.gateway import tokens
from replicator.gateway.app import from_config

from . import gateway_app as app
from .test_console import served
from .test_gateway import SECRET, Hub, business, server_config, serving_hub, site

pytestmark = pytest.mark.backends("sqlite", "mariadb")


@pytest.fixture
def hub(database_url: str, tmp_path: Path) -> Iterator[Hub]:
    with serving_hub(database_url, tmp_path) as found:
        yield found


def event(
    op: str,
    key: dict[str, Any],
    row: dict[str, Any] | None,
    changed: dict[str, Any],
    *,
    table: str = "notebooks",
    origin: str = "phone",
) -> bytes:
    return encode_event(
        ChangeEvent(
            event_id=new_id(),
            origin=origin,
            table=table,
            key=key,
            op=Operation(op),
            row=row,
            changed=changed,
            version={origin: 99},
            hlc=2**60,
            txid=new_id(),
        )
    )


def push(hub: Hub, wires: list[tuple[str, str, bytes]], device: str = "phone") -> dict:
    """Push ``(table, row key, payload)`` events as ``device`` (owner u1)."""
    body = {
        "channel": "default",
        "after": 0,
        "reached": len(wires),
        "events": [[i + 1, table, key, payload] for i, (table, key, payload) in enumerate(wires)],
    }
    with httpx.Client(base_url=hub.gateway) as client:
        response = client.post(
            "/v1/push",
            content=msgspec.msgpack.encode(body),
            headers={"Authorization": f"Bearer {hub.token(device, 'u1')}"},
        )
    assert response.status_code == 200, response.text
    return msgspec.msgpack.decode(response.content)


def theirs(hub: Hub) -> tuple[str, tuple]:
    """A u2 notebook with a note on the server: its code and row."""
    code = hub.server.add_notebook("u2", "u2's", ("keep me",))
    (row,) = [r for r in hub.server.rows("notebooks") if r[1] == code]
    return code, row


def notebook(id_: Any, code: str, owner: str = "u1", title: str = "TAKEN") -> dict[str, Any]:
    return {
        "id": id_,
        "code": code,
        "owner": owner,
        "title": title,
        "kind": "PRIVATE",
        "meta": {},
        "created_at": dt.datetime(2026, 1, 1),
    }


def intact(hub: Hub, code: str) -> bool:
    return (code, "u2", "u2's") in business(hub.server) and (code, "u2", "keep me") in business(
        hub.server, "notes"
    )


def test_a_forged_before_image_or_origin_cannot_take_over_another_users_row(hub: Hub) -> None:
    code, row = theirs(hub)
    key = {"id": row[0]}
    forged = [
        # "It was mine already", says the device: the server's row says not.
        event("update", key, notebook(row[0], code, title="mine now"), {"title": "u2's"}),
        event("delete", key, None, {"id": row[0], "owner": "u1"}),
        # As if another node had made it.
        event(
            "update", key, notebook(row[0], code, owner="u2", title="by u2?"), {}, origin="other"
        ),
    ]
    pushed = push(hub, [("notebooks", f"[{row[0]}]", payload) for payload in forged])
    assert pushed["forbidden"] == 3 and pushed["counts"]["applied"] == 0, pushed
    assert intact(hub, code)
    # One item for the row, holding the three events, for a person to see.
    (item,) = hub.review("forbidden")
    assert item.event_count == 3 and item.key == f"[{row[0]}]", item


@pytest.mark.parametrize(
    "forge",
    [
        # The key as text: the database finds the row, an exact look-up would not.
        lambda id_, code: ("delete", {"id": str(id_)}, None, {"id": str(id_), "owner": "u1"}),
        lambda id_, code: ("update", {"id": str(id_)}, notebook(str(id_), code), {}),
        # A key that names no row, with a row that is u2's.
        lambda id_, code: ("insert", {"id": 999_999}, notebook(id_, code), {}),
    ],
    ids=["text-key-delete", "text-key-update", "row-key-differs-from-key"],
)
def test_a_forged_key_cannot_reach_another_users_row(hub: Hub, forge) -> None:
    code, row = theirs(hub)
    op, key, values, changed = forge(row[0], code)
    pushed = push(
        hub, [("notebooks", row_key(list(key.values())), event(op, key, values, changed))]
    )
    assert pushed["forbidden"] == 1 and pushed["counts"]["applied"] == 0, pushed
    assert intact(hub, code)
    assert hub.review("forbidden")


def test_a_second_event_under_the_first_ones_row_key_is_checked_too(hub: Hub) -> None:
    code, row = theirs(hub)
    mine = notebook(999_999, "x" * 32, title="mine")
    pushed = push(
        hub,
        [
            ("notebooks", "[999999]", event("insert", {"id": 999_999}, mine, {})),
            ("notebooks", "[999999]", event("delete", {"id": row[0]}, None, {"owner": "u1"})),
        ],
    )
    assert pushed["forbidden"] == 2, pushed  # the second is malformed, the first shares its row
    assert intact(hub, code)


def test_the_replicators_own_tables_are_not_writable(hub: Hub) -> None:
    laptop = hub.device("laptop", "u2")
    laptop.synced()
    laptop.add_notebook("u2", "first", ())
    laptop.synced()
    with hub.server.engine.connect() as conn:
        position, log_id = conn.execute(
            sa.text("SELECT position, log_id FROM replicator_checkpoints WHERE source = 'laptop'")
        ).one()
    forged = {
        "source": "laptop",
        "channel": "default",
        "position": 10**12,
        "updated_at": dt.datetime(2026, 1, 1),
        "log_id": log_id,
    }
    pushed = push(
        hub,
        [
            (
                "replicator_checkpoints",
                '["laptop","default"]',
                event(
                    "update",
                    {"source": "laptop", "channel": "default"},
                    forged,
                    {"position": position},
                    table="replicator_checkpoints",
                ),
            )
        ],
    )
    assert pushed["forbidden"] == 1, pushed
    code = laptop.add_notebook("u2", "second", ())
    laptop.synced("up")
    assert (code, "u2", "second") in business(hub.server)


def test_an_event_with_an_unknown_column_is_refused_not_held_for_everyone(hub: Hub) -> None:
    other = hub.device("other", "u2")
    other.synced()
    bogus = {**notebook(999_999, "z" * 32, title="mine"), "bogus": 1}
    pushed = push(hub, [("notebooks", "[999999]", event("insert", {"id": 999_999}, bogus, {}))])
    assert pushed["forbidden"] == 1, pushed
    code = other.add_notebook("u2", "written after", ())
    other.synced("up")
    assert (code, "u2", "written after") in business(hub.server)
    assert [item.reason for item in hub.review()] == ["forbidden"]


def test_deleting_a_row_others_refer_to_is_refused(hub: Hub) -> None:
    phone = hub.device("phone", "u1")
    code = phone.add_notebook("u1", "mine, with a u2 note", ())
    phone.synced()
    with hub.server.sessions.begin() as session:
        book = session.scalars(sa.select(app.Notebook).where(app.Notebook.code == code)).one()
        session.add(app.Note(owner="u2", body="u2's comment", notebook_id=book.id))
    with phone.sessions.begin() as session:
        session.delete(session.scalars(sa.select(app.Notebook)).one())
    (up,) = phone.synced("up").passes
    assert up.parked == 1 and up.applied == 0, up
    assert (code, "u2", "u2's comment") in business(hub.server, "notes")
    (item,) = hub.review("forbidden")
    assert "rows of notes that are not the device's refer to this row" in item.detail


def test_a_lease_cannot_move_a_tables_numbering_or_touch_the_replicators(hub: Hub) -> None:
    token = hub.token("phone", "u1")
    with httpx.Client(base_url=hub.gateway, headers={"Authorization": f"Bearer {token}"}) as c:

        def lease(table: str, above: int) -> dict:
            body = msgspec.msgpack.encode({"table": table, "above": above})
            return msgspec.msgpack.decode(c.post("/v1/keys", content=body).content)

        assert lease("replicator_outbox", 10**15) == {
            "table": "replicator_outbox",
            "first": None,
            "last": None,
        }
        assert lease("plans", 0)["first"] is None  # read-only for devices
        block = lease("notebooks", 2**31 - 100)
    assert block["first"] is not None and block["last"] < 1_000_000, block
    code = hub.server.add_notebook("u2", "after", ())
    assert max(r[0] for r in hub.server.rows("notebooks")) < 2**31 - 100
    assert (code, "u2", "after") in business(hub.server)
    with hub.server.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT MAX(position) FROM replicator_outbox")).scalar() < 10**6


def pulled(hub: Hub, device: str = "phone") -> list[Any]:
    body = msgspec.msgpack.encode({"channel": "default", "after": 0, "upto": 10**9})
    with httpx.Client(base_url=hub.gateway) as client:
        response = client.post(
            "/v1/pull",
            content=body,
            headers={"Authorization": f"Bearer {hub.token(device, 'u1')}"},
        )
    return [
        e.event
        for e in decode([tuple(w) for w in msgspec.msgpack.decode(response.content)["events"]])
    ]


def test_a_row_leaving_or_entering_the_scope_brings_none_of_its_values_from_outside(
    hub: Hub,
) -> None:
    leaving = hub.server.add_notebook("u1", "u1's", ())
    entering = hub.server.add_notebook("u2", "u2's old secret", ())
    with hub.server.sessions.begin() as session:
        for book in session.scalars(sa.select(app.Notebook)):
            if book.code == leaving:
                book.owner, book.title = "u2", "u2's new secret"
            else:
                book.owner, book.title = "u1", "given to u1"
    events = pulled(hub)
    assert "u2's new secret" not in repr(events), events
    assert all("secret" not in repr(e.changed) for e in events), events
    gone = [e for e in events if e.op is Operation.DELETE]
    assert len(gone) == 1 and gone[0].changed["title"] == "u1's", gone
    came = [e for e in events if e.row and e.row["code"] == entering]
    assert len(came) == 1 and came[0].op is Operation.INSERT and came[0].changed == {}, came
    assert came[0].row["title"] == "given to u1"


@pytest.mark.backends("mariadb")
def test_mariadbs_collation_gives_no_other_users_rows(database_url: str, tmp_path: Path) -> None:
    server = site("hub", database_url)
    with server.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO notebooks (code, owner, title, kind, meta) VALUES "
            "('c1', 'U1', 'upper-case user', 'PRIVATE', '{}'), "
            "('c2', 'u1 ', 'trailing-space user', 'PRIVATE', '{}'), "
            "('c3', 'u1', 'real u1', 'PRIVATE', '{}')"
        )
        conn.exec_driver_sql(
            "CREATE TABLE docs (slug VARCHAR(40) PRIMARY KEY, owner VARCHAR(36), body TEXT)"
        )
        conn.exec_driver_sql("INSERT INTO docs VALUES ('abc', 'u2', 'u2 secret')")
    try:
        with served(from_config(loads(server_config(database_url)), SECRET)) as url:
            hub = Hub(server, url, tmp_path)
            token = hub.token("phone", "u1")
            with httpx.Client(base_url=url) as client:
                stream = client.post(
                    "/v1/bootstrap",
                    content=msgspec.msgpack.encode({"channel": "default"}),
                    headers={"Authorization": f"Bearer {token}"},
                ).content
            mine = {"slug": "ABC", "owner": "u1", "body": "mine now"}
            pushed = push(
                hub, [("docs", '["ABC"]', event("insert", {"slug": "ABC"}, mine, {}, table="docs"))]
            )
            with server.engine.connect() as conn:
                docs = conn.exec_driver_sql("SELECT slug, owner, body FROM docs").all()
    finally:
        server.close()
    assert b"real u1" in stream
    assert b"upper-case user" not in stream and b"trailing-space user" not in stream
    assert pushed["forbidden"] == 1 and docs == [("abc", "u2", "u2 secret")], (pushed, docs)


def test_a_forbidden_event_is_counted_once_when_the_batch_is_applied_again_singly(
    hub: Hub,
) -> None:
    code, row = theirs(hub)
    duplicate = notebook(999_998, code, title="same code")  # refused by the unique code
    pushed = push(
        hub,
        [
            (
                "notebooks",
                f"[{row[0]}]",
                event("update", {"id": row[0]}, notebook(row[0], code), {}),
            ),
            ("notebooks", "[999998]", event("insert", {"id": 999_998}, duplicate, {})),
        ],
    )
    assert pushed["forbidden"] == 1, pushed
    assert intact(hub, code)


def test_a_version_counting_changes_the_server_never_saw_is_refused(hub: Hub) -> None:
    phone = hub.device("phone", "u1")
    laptop = hub.device("laptop", "u1")
    code = phone.add_notebook("u1", "shared by two devices", ())
    phone.synced()
    laptop.synced()
    (row,) = [r for r in phone.rows("notebooks") if r[1] == code]
    inflated = encode_event(
        ChangeEvent(
            event_id=new_id(),
            origin="tablet",  # a third device of u1's, pushing for the first time
            table="notebooks",
            key={"id": row[0]},
            op=Operation.UPDATE,
            row=notebook(row[0], code, title="the tablet's, forever"),
            changed={"title": "shared by two devices"},
            version={"phone": 1, "tablet": 1, "laptop": 10**6},  # "a million laptop edits"
            hlc=2**60,
            txid=new_id(),
        )
    )
    pushed = push(hub, [("notebooks", f"[{row[0]}]", inflated)], device="tablet")
    assert pushed["forbidden"] == 1, pushed
    (item,) = hub.review("forbidden")
    assert "counts 1000000 changes by laptop" in item.detail
    # The laptop's next edit still reaches the server.
    with laptop.sessions.begin() as session:
        session.get(app.Notebook, row[0]).title = "the laptop's edit"
    laptop.synced()
    assert (code, "u1", "the laptop's edit") in business(hub.server)


def test_a_table_with_part_of_the_scope_is_cut_by_that_part(hub: Hub) -> None:
    with hub.server.sessions.begin() as session:
        session.add_all(
            [app.TeamNote(team="t1", body="ours"), app.TeamNote(team="t2", body="theirs")]
        )
    token = tokens.issue(
        SECRET, "phone", {"owner": "u1", "team": "t1"}, now=dt.datetime.now(dt.UTC)
    )
    phone = hub.device("phone", None, token=token)
    phone.synced()  # bootstrapped
    with hub.server.sessions.begin() as session:
        session.add_all(
            [
                app.TeamNote(team="t1", body="ours, later"),
                app.TeamNote(team="t2", body="theirs, later"),
            ]
        )
    phone.synced()  # pulled
    assert {r[1:] for r in phone.rows("team_notes")} == {("t1", "ours"), ("t1", "ours, later")}
    with phone.sessions.begin() as session:
        session.add(app.TeamNote(team="t2", body="planted"))
        session.add(app.TeamNote(team="t1", body="mine"))
    (up,) = phone.synced("up").passes
    assert up.parked == 1 and up.applied == 1, up
    bodies = {r[2] for r in hub.server.rows("team_notes")}
    assert "planted" not in bodies and "mine" in bodies


class _Later(DeclarativeBase):
    pass


class Extra(_Later):
    """A table of the app's next version, made on the server later."""

    __tablename__ = "extras"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(sa.String(36))
    body: Mapped[str] = mapped_column(sa.Text)


def test_a_table_the_server_makes_while_the_gateway_runs_is_taken(hub: Hub) -> None:
    phone = hub.device("phone", "u1")
    _Later.metadata.create_all(phone.engine)  # the app's new version, ahead of the server
    phone.synced()
    with phone.sessions.begin() as session:
        session.add(Extra(id=1, owner="u1", body="early"))
    (up,) = phone.synced("up").passes
    assert up.parked == 1 and up.applied == 0, up  # the server has no such table yet
    _Later.metadata.create_all(hub.server.engine)
    with phone.sessions.begin() as session:
        session.add(Extra(id=2, owner="u1", body="later"))
    (up,) = phone.synced("up").passes
    assert up.applied == 1 and up.parked == 0, up
    with hub.server.engine.connect() as conn:
        assert conn.execute(sa.select(Extra.body)).scalars().all() == ["later"]
