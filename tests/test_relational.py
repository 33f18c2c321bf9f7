"""Replicating an app written the usual way (``examples/relational_app.py``):
integer keys the database numbers, unique business columns, foreign keys
with ORM cascades, Enum and JSON columns, server defaults.

Each test runs a server (SQLite always, MariaDB when its URL is set) and a
local (SQLite and DuckDB), set up as an app would: the replicator's tables,
the app's own ``create_all``, capture under the node's name, and
``replicator.Replicator(config)`` for every sync. Replicas are compared by
their business columns (``user_id``, ``email``, ``conversation_id``, a
message's text), never by the integer keys alone.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import replicator
from replicator import outbox
from replicator.capture import Capture
from replicator.config import Config, loads
from replicator.errors import CaptureError
from replicator.events import Operation, row_key
from replicator.resources import load_example
from replicator.review import Filter, Listed
from replicator.tables import metadata as replicator_tables

app = load_example("relational_app")

# `database_url` (conftest) is the server's database; the local is a file.
pytestmark = pytest.mark.backends("sqlite", "mariadb")

MESSAGES = app.ConversationMessage.__table__
CONVERSATIONS = app.Conversation.__table__
USERS = app.User.__table__
DOCUMENTS = app.Document.__table__


# --- nodes ----------------------------------------------------------------------


@dataclass
class Site:
    """One node of the app: its engine, its sessions, its capture."""

    name: str
    role: str
    engine: Engine
    sessions: sessionmaker[Session]
    capture: Capture

    @property
    def url(self) -> str:
        return self.engine.url.render_as_string(hide_password=False)

    def close(self) -> None:
        self.capture.stop()
        self.engine.dispose()


def site(name: str, url: str, role: str = "local", engine: Engine | None = None) -> Site:
    engine = engine or sa.create_engine(url)
    replicator.migrate(engine)
    app.Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine)
    return Site(name, role, engine, sessions, replicator.capture(sessions, node=name))


@dataclass
class Cluster:
    server: Site
    locals: list[Site]
    # Nodes whose engine the replicator makes itself from the URL.
    own_engines: set[str] = field(default_factory=set)

    @property
    def sites(self) -> list[Site]:
        return [self.server, *self.locals]

    @property
    def config(self) -> Config:
        return loads(
            "".join(f'[nodes.{s.name}]\nurl = "{s.url}"\nrole = "{s.role}"\n' for s in self.sites)
        )

    @contextmanager
    def replicator(self) -> Iterator[replicator.Replicator]:
        engines = {s.name: s.engine for s in self.sites if s.name not in self.own_engines}
        with replicator.Replicator(self.config, engines=engines) as r:
            yield r

    def sync(self, times: int = 1, direction: str | None = None) -> None:
        """``times`` full syncs (every local up, then down); each must succeed."""
        for _ in range(times):
            with self.replicator() as r:
                result = r.sync(direction)
            failed = [f"{p.source} -> {p.target}: {p.error}" for p in result.passes if not p.ok]
            assert not failed, f"a sync pass failed: {failed}"

    def review(self, reason: str | None = None, node: str | None = None) -> list[Listed]:
        """The open review items of every node (or ``node``), of ``reason``."""
        with self.replicator() as r:
            listing = r.review().list(Filter(reason=reason, node=node))
        assert not listing.unreachable, listing.unreachable
        return listing.items

    def close(self) -> None:
        for s in reversed(self.sites):
            s.close()


@pytest.fixture(params=["sqlite", "duckdb"])
def local_store(request: pytest.FixtureRequest) -> str:
    """The local's database: SQLite (a phone) or DuckDB (a laptop)."""
    return request.param


@pytest.fixture
def cluster(database_url: str, local_store: str, tmp_path: Path) -> Iterator[Cluster]:
    server = site("server", database_url, role="server")
    local = site("phone", f"{local_store}:///{tmp_path / f'phone.{local_store}'}")
    c = Cluster(server, [local])
    yield c
    c.close()


# --- what a replica holds, by business columns --------------------------------------


def business(s: Site) -> dict[str, Any]:
    """The app's data on ``s`` by business identity: users by ``user_id``,
    conversations by ``conversation_id`` (with their user's ``user_id``),
    messages as a multiset of (conversation_id, role, content), documents
    by ``document_id``."""
    u, c, m, d = USERS.c, CONVERSATIONS.c, MESSAGES.c, DOCUMENTS.c
    with s.engine.connect() as conn:
        users = {
            r.user_id: (r.email, r.name, str(r.role), r.settings)
            for r in conn.execute(sa.select(u.user_id, u.email, u.name, u.role, u.settings))
        }
        conversations = {
            r.conversation_id: (r.user_id, r.title, str(r.status))
            for r in conn.execute(
                sa.select(c.conversation_id, u.user_id, c.title, c.status).join_from(
                    CONVERSATIONS, USERS, c.user_id == u.id
                )
            )
        }
        messages = Counter(
            (r.conversation_id, str(r.role), r.content, repr(r.meta))
            for r in conn.execute(
                sa.select(c.conversation_id, m.role, m.content, m.meta).join_from(
                    MESSAGES, CONVERSATIONS, m.conversation_id == c.id
                )
            )
        )
        documents = {
            r.document_id: (r.user_id, r.filename, r.content)
            for r in conn.execute(
                sa.select(d.document_id, u.user_id, d.filename, d.content).join_from(
                    DOCUMENTS, USERS, d.user_id == u.id
                )
            )
        }
    return {
        "users": users,
        "conversations": conversations,
        "messages": messages,
        "documents": documents,
    }


def keys_by_business(s: Site) -> dict[str, set[tuple[Any, ...]]]:
    """(id, business key) pairs: a row has the same integer key everywhere."""
    with s.engine.connect() as conn:
        return {
            "users": set(conn.execute(sa.select(USERS.c.id, USERS.c.user_id)).all()),
            "conversations": set(
                conn.execute(sa.select(CONVERSATIONS.c.id, CONVERSATIONS.c.conversation_id)).all()
            ),
            "messages": set(conn.execute(sa.select(MESSAGES.c.id, MESSAGES.c.content)).all()),
        }


def orphans(s: Site) -> list[str]:
    """Rows of ``s`` whose parent row does not exist there (none: [])."""
    found = []
    with s.engine.connect() as conn:
        for child, column, parent in [
            (MESSAGES, MESSAGES.c.conversation_id, CONVERSATIONS),
            (CONVERSATIONS, CONVERSATIONS.c.user_id, USERS),
            (DOCUMENTS, DOCUMENTS.c.user_id, USERS),
        ]:
            missing = sa.select(child.c.id, column).where(~sa.exists().where(parent.c.id == column))
            found += [
                f"{s.name}: {child.name} {r[0]} -> {parent.name} {r[1]}"
                for r in conn.execute(missing)
            ]
    return found


def assert_converged(cluster: Cluster) -> None:
    """Every replica holds the same rows, under the same keys, and no orphan."""
    server = business(cluster.server)
    for local in cluster.locals:
        assert business(local) == server, f"{local.name} differs from the server"
        assert keys_by_business(local) == keys_by_business(cluster.server), (
            f"{local.name}: a row has another integer key than on the server"
        )
    found = [o for s in cluster.sites for o in orphans(s)]
    assert not found, f"rows whose parent is missing: {found}"


# --- the app's writes ------------------------------------------------------------


def add_user(s: Site, email: str, name: str = "Ada", **values: Any) -> tuple[int, str]:
    """A new user on ``s``: its (id, user_id)."""
    with s.sessions.begin() as session:
        user = app.new_user(session, email, name, **values)
        return user.id, user.user_id


def add_conversation(
    s: Site, email: str, title: str, messages: list[str] = (), conversation_id: str | None = None
) -> str:
    """A conversation of the user with ``email`` on ``s``: its conversation_id."""
    with s.sessions.begin() as session:
        conversation = app.start_conversation(
            session, app.find_user(session, email), title, messages
        )
        if conversation_id is not None:
            conversation.conversation_id = conversation_id
        return conversation.conversation_id


def add_message(s: Site, conversation_id: str, content: str) -> None:
    with s.sessions.begin() as session:
        app.say(app.find_conversation(session, conversation_id), content)


def delete_conversation(s: Site, conversation_id: str) -> None:
    """The ORM delete: its messages go with it (cascade)."""
    with s.sessions.begin() as session:
        session.delete(app.find_conversation(session, conversation_id))


def messages_of(s: Site, conversation_id: str) -> list[str]:
    with s.sessions() as session:
        conversation = app.find_conversation(session, conversation_id)
        return sorted(m.content for m in conversation.messages) if conversation else []


def user_row(s: Site, email: str) -> tuple[int, str] | None:
    with s.engine.connect() as conn:
        found = conn.execute(
            sa.select(USERS.c.id, USERS.c.user_id).where(USERS.c.email == email)
        ).first()
    return None if found is None else tuple(found)


# --- Enum and JSON columns ---------------------------------------------------------


def test_enum_json_and_default_columns_arrive_as_the_source_stored_them(cluster):
    server = cluster.server
    cluster.sync()  # the local is not empty: what follows arrives as events, not a copy
    add_user(server, "ada@example.org", role=app.Role.TUTOR, settings={"goal": [1, "two"]})
    with server.sessions.begin() as session:
        app.say(
            app.start_conversation(session, app.find_user(session, "ada@example.org"), "t"),
            "hi",
            tone="warm",
        )
    cluster.sync()

    for s in cluster.sites:
        with s.engine.connect() as conn:  # the values in the database, not the ORM's
            role = conn.execute(sa.text("SELECT role FROM users")).scalar()
            status = conn.execute(sa.text("SELECT status FROM conversations")).scalar()
            speaker = conn.execute(sa.text("SELECT role FROM conversation_messages")).scalar()
            created = conn.execute(sa.select(USERS.c.created_at)).scalar()
        assert (role, status, speaker) == ("tutor", "open", "user"), (
            f"{s.name} stores an Enum by another name than the app's values"
        )
        assert created is not None, f"{s.name}: created_at (a server default) is missing"
    assert_converged(cluster)


# --- a. keys ---------------------------------------------------------------------


def test_rows_made_on_both_sides_while_apart_never_collide_on_integer_keys(cluster):
    server, local = cluster.server, cluster.locals[0]
    add_user(server, "ada@example.org")
    cluster.sync()  # the local gets the user, and blocks of keys

    phone_chat = add_conversation(local, "ada@example.org", "On the phone", ["p-1", "p-2"])
    server_chat = add_conversation(server, "ada@example.org", "On the web", ["s-1", "s-2", "s-3"])
    cluster.sync(2)

    for s in cluster.sites:
        assert messages_of(s, phone_chat) == ["p-1", "p-2"], s.name
        assert messages_of(s, server_chat) == ["s-1", "s-2", "s-3"], s.name
        with s.engine.connect() as conn:
            for table in (CONVERSATIONS, MESSAGES):
                ids = list(conn.execute(sa.select(table.c.id)).scalars())
                assert len(ids) == len(set(ids)), f"{s.name}: {table.name} ids repeat: {ids}"
    assert_converged(cluster)
    assert cluster.review() == [], "nothing should be parked"


def test_a_local_out_of_leased_keys_refuses_a_new_row_naming_the_table(cluster):
    server, local = cluster.server, cluster.locals[0]
    add_user(server, "ada@example.org")
    with cluster.replicator() as r:  # blocks of 4 keys: a pass leases when fewer than 2 are left
        phone = r.nodes["phone"]
        for source, target in [(phone, r.server), (r.server, phone)]:
            passed = replicator.replicate(source, target, key_block=4)
            assert passed.ok, passed.error

    def count() -> tuple[int, int]:
        with local.engine.connect() as conn:
            return tuple(
                conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                for t in (CONVERSATIONS, MESSAGES)
            )

    before = count()
    with pytest.raises(CaptureError, match="conversation_messages") as refused:
        add_conversation(local, "ada@example.org", "Too long", [f"m-{i}" for i in range(5)])

    assert "sync" in str(refused.value).lower(), f"no way out named: {refused.value}"
    assert count() == before, "nothing may be written when keys run out"


# --- b. unique values -------------------------------------------------------------


def _unique_item(items: list[Listed], table: str, email: str) -> Listed:
    found = [i for i in items if i.table == table and email in i.detail]
    assert len(found) == 1, f"one unique_violation item naming {email!r} expected, got {items}"
    return found[0]


def _names_the_clash(detail: str, email: str, other_id: int) -> None:
    assert "email" in detail, f"the column is not named: {detail}"
    assert email in detail, f"the value is not named: {detail}"
    assert re.search(rf"\bid\b\W*{other_id}\b", detail), (
        f"the other row's key (id {other_id}) is not named: {detail}"
    )


def test_a_user_made_on_both_sides_with_one_email_is_parked_and_the_servers_kept(cluster):
    server, local = cluster.server, cluster.locals[0]
    cluster.sync()
    kept = add_user(server, "ada@example.org", "Ada on the web")
    add_user(local, "ada@example.org", "Ada on the phone")

    cluster.sync()

    assert user_row(server, "ada@example.org") == kept, "the server's user must stay as it was"
    item = _unique_item(
        cluster.review("unique_violation", node="server"), "users", "ada@example.org"
    )
    _names_the_clash(item.detail, "ada@example.org", kept[0])
    found = [o for s in cluster.sites for o in orphans(s)]
    assert not found, found


def test_an_email_changed_to_one_another_user_holds_is_parked_not_written(cluster):
    server, local = cluster.server, cluster.locals[0]
    ada, _ = add_user(server, "ada@example.org", "Ada")
    bob, _ = add_user(server, "bob@example.org", "Bob")
    cluster.sync()
    with local.sessions.begin() as session:  # apart, both take the same new address
        session.get(app.User, ada).email = "team@example.org"
    with server.sessions.begin() as session:
        session.get(app.User, bob).email = "team@example.org"

    cluster.sync()

    with server.sessions() as session:
        assert session.get(app.User, ada).email == "ada@example.org"
        assert session.get(app.User, bob).email == "team@example.org"
    item = _unique_item(
        cluster.review("unique_violation", node="server"), "users", "team@example.org"
    )
    _names_the_clash(item.detail, "team@example.org", bob)
    assert item.key == row_key([ada]), f"the parked row is Ada's: {item.key}"


# --- c. referenced rows on DuckDB --------------------------------------------------


def test_a_server_edit_of_a_referenced_row_arrives_on_the_local(cluster):
    server = cluster.server
    user_id, _ = add_user(server, "ada@example.org", settings={"theme": "dark"})
    chat = add_conversation(server, "ada@example.org", "Ordering food", ["Hola", "¡Hola!"])
    cluster.sync()
    with server.sessions.begin() as session:
        user = session.get(app.User, user_id)  # has a conversation
        user.name, user.settings, user.role = "Ada L.", {"theme": "light"}, app.Role.TUTOR
        conversation = app.find_conversation(session, chat)  # has messages
        conversation.title, conversation.status = "Ordering coffee", app.Status.ARCHIVED

    cluster.sync()

    assert_converged(cluster)
    local = business(cluster.locals[0])
    assert local["users"][user_row(server, "ada@example.org")[1]][1:] == (
        "Ada L.",
        "tutor",
        {"theme": "light"},
    )
    assert local["conversations"][chat][1:] == ("Ordering coffee", "archived")
    assert cluster.review() == []


def test_a_servers_cascade_delete_arrives_on_the_local(cluster):
    server = cluster.server
    add_user(server, "ada@example.org")
    chat = add_conversation(server, "ada@example.org", "Short", ["one", "two"])
    cluster.sync()

    delete_conversation(server, chat)  # the conversation and its two messages
    cluster.sync()

    assert_converged(cluster)
    assert business(cluster.locals[0])["conversations"] == {}
    assert cluster.review() == []


def test_a_replay_deletes_children_then_their_parent_from_later_transactions(cluster):
    """A replay applies several batches per transaction, but DuckDB refuses to
    delete a parent in the transaction that deleted its children: the
    children's delete and the parent's, from two source transactions in two
    batches, both arrive (one batch per transaction there)."""
    from replicator.replay import replay

    server, local = cluster.server, cluster.locals[0]
    add_user(server, "ada@example.org")
    chat = add_conversation(server, "ada@example.org", "Short", ["one", "two"])
    cluster.sync()
    with server.engine.connect() as conn:
        start = outbox.head(conn) + 1
    with server.sessions.begin() as session:  # the messages first, on their own
        for message in list(app.find_conversation(session, chat).messages):
            session.delete(message)
    with server.sessions.begin() as session:  # then the conversation
        session.delete(app.find_conversation(session, chat))

    with cluster.replicator() as r:
        nodes = {n.name: n for n in (r.node("server"), r.node("phone"))}
        result = replay(nodes["server"], nodes["phone"], start=start, batch_size=1)

    assert (result.read, result.deleted) == (3, 3), result
    assert business(local)["conversations"] == {}
    assert orphans(local) == []


# --- d. DuckDB sequences -------------------------------------------------------


@pytest.mark.parametrize("local_store", ["duckdb"])
def test_a_core_insert_on_a_duckdb_local_after_a_download_draws_a_free_key(cluster):
    server, local = cluster.server, cluster.locals[0]
    for i in range(3):  # keys 1, 2, 3: the server numbers them before any sync
        add_user(server, f"user{i}@example.org")
    cluster.sync()
    add_user(server, "later@example.org")
    cluster.sync()  # downloaded by a pass as well as by the bootstrap
    downloaded = {i for i, _ in keys_by_business(local)["users"]}
    assert len(downloaded) == 4

    with local.engine.begin() as conn:  # the app's own Core insert: the sequence numbers it
        conn.execute(
            USERS.insert().values(
                user_id=str(uuid.uuid4()), email="core@example.org", name="Core", settings={}
            )
        )
    add_user(local, "orm@example.org")  # and a captured one after it

    ids = [i for i, _ in keys_by_business(local)["users"]]
    assert len(ids) == len(set(ids)) == 6, ids


# --- e. parent deleted on one side, child added on the other ------------------------


@pytest.mark.parametrize("deleted_on", ["server", "local"])
def test_a_delete_of_the_parent_wins_and_the_orphaned_child_is_parked(cluster, deleted_on):
    server, local = cluster.server, cluster.locals[0]
    add_user(server, "ada@example.org")
    chat = add_conversation(server, "ada@example.org", "Soon gone")
    cluster.sync()
    deleting, adding = (server, local) if deleted_on == "server" else (local, server)

    delete_conversation(deleting, chat)
    add_message(adding, chat, "a last word")
    cluster.sync(2)

    assert_converged(cluster)
    for s in cluster.sites:
        assert chat not in business(s)["conversations"], f"{s.name} still has the conversation"
    parked = [i for i in cluster.review("missing_parent") if i.table == "conversation_messages"]
    assert parked, f"the orphaned message is in no review queue: {cluster.review()}"
    assert any("conversations" in i.detail for i in parked), [i.detail for i in parked]


# --- f. SQLite's foreign keys ---------------------------------------------------


@pytest.mark.parametrize("local_store", ["sqlite"])
def test_a_sqlite_local_checks_foreign_keys_on_the_replicators_connections(cluster):
    server, local = cluster.server, cluster.locals[0]
    cluster.own_engines.add(local.name)  # the replicator opens the local itself
    add_user(server, "ada@example.org")
    cluster.sync()
    with cluster.replicator() as r, r.nodes["phone"].connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1

    _write_an_orphan(server, "left alone")
    cluster.sync()

    assert orphans(local) == [], "the local wrote a message whose conversation it lacks"
    parked = cluster.review("missing_parent", node="phone")
    assert [i.table for i in parked] == ["conversation_messages"], parked


def _write_an_orphan(s: Site, content: str) -> None:
    """A message of a conversation that does not exist, captured on ``s``
    with foreign keys off for the one connection (then closed)."""
    sqlite = s.engine.dialect.name == "sqlite"
    with s.sessions.begin() as session:
        session.execute(
            sa.text("PRAGMA foreign_keys = OFF" if sqlite else "SET foreign_key_checks = 0")
        )
        session.add(
            app.ConversationMessage(conversation_id=987_654, role=app.Speaker.USER, content=content)
        )
    s.engine.dispose()  # nobody else gets the connection without the checks


# --- g. property: random app writes on both sides, random syncs -------------------

SITES = ["server", "phone"]
write = st.tuples(
    st.sampled_from(
        [
            "new_conversation",
            "add_message",
            "edit_message",
            "retitle",
            "delete_message",
            "delete_conversation",
        ]
    ),
    st.sampled_from(SITES),
    st.integers(0, 5),  # which conversation or message (by position)
)
syncing = st.tuples(st.just("sync"), st.sampled_from(["bidirectional", "up", "down"]), st.just(0))
histories = st.lists(st.one_of(write, write, syncing), min_size=3, max_size=16)
# Always tried: each side deletes a conversation the other adds a message to.
APART = [
    ("new_conversation", "server", 1),
    ("new_conversation", "server", 1),
    ("sync", "bidirectional", 0),
    ("delete_conversation", "phone", 0),
    ("add_message", "server", 0),
    ("delete_conversation", "server", 1),
    ("add_message", "phone", 1),
]


class Fresh:
    """A fresh server and local per example: copies of migrated SQLite
    templates, or (MariaDB) the server's tables emptied."""

    def __init__(self, tmp: Path, server_url: str | None) -> None:
        self.tmp, self.server_url = tmp, server_url
        self.template = tmp / "template.sqlite"
        engine = sa.create_engine(f"sqlite:///{self.template}")
        replicator.migrate(engine)
        app.Base.metadata.create_all(engine)
        engine.dispose()
        self.server_engine = None
        if server_url is not None:
            self.server_engine = sa.create_engine(server_url)
            replicator.migrate(self.server_engine)
            app.Base.metadata.create_all(self.server_engine)

    @contextmanager
    def cluster(self) -> Iterator[Cluster]:
        run = uuid.uuid4().hex[:8]
        if self.server_engine is not None:
            with self.server_engine.begin() as conn:
                tables = [
                    *reversed(app.Base.metadata.sorted_tables),
                    *replicator_tables.sorted_tables,
                ]
                for table in tables:
                    if table.name != "replicator_outbox_writers":
                        conn.execute(table.delete())
            server = site("server", "", "server", engine=self.server_engine)
        else:
            server = site("server", "", "server", engine=self._copy("server", run))
        local = site("phone", "", engine=self._copy("phone", run))
        c = Cluster(server, [local])
        try:
            yield c
        finally:
            local.close()
            server.capture.stop()
            if self.server_engine is None:
                server.engine.dispose()

    def _copy(self, name: str, run: str) -> Engine:
        path = self.tmp / f"{name}-{run}.sqlite"
        shutil.copy(self.template, path)
        return sa.create_engine(f"sqlite:///{path}")


def _pick(session: Session, model: Any, position: int) -> Any:
    rows = session.scalars(sa.select(model).order_by(model.id)).all()
    return rows[position % len(rows)] if rows else None


def _run(
    c: Cluster, step: tuple[str, str, int], counter: Iterator[int], deleted: set[tuple[str, str]]
) -> None:
    """One step; the rows the app deletes (cascades included) go into ``deleted``."""
    kind, where, position = step
    if kind == "sync":
        c.sync(direction=where)
        return
    s = c.server if where == "server" else c.locals[0]
    n = next(counter)
    with s.sessions.begin() as session:
        if kind == "new_conversation":
            user = app.find_user(session, "ada@example.org")
            texts = [f"{where}-{n}-{i}" for i in range(position % 3)]
            app.start_conversation(session, user, f"{where}-{n}", texts)
        elif kind == "retitle" and (conversation := _pick(session, app.Conversation, position)):
            conversation.title = f"{where}-{n}"
        elif kind == "delete_conversation" and (
            conversation := _pick(session, app.Conversation, position)
        ):
            session.delete(conversation)
        elif kind == "add_message" and (conversation := _pick(session, app.Conversation, position)):
            app.say(conversation, f"{where}-{n}")
        elif kind == "edit_message" and (
            message := _pick(session, app.ConversationMessage, position)
        ):
            message.content = f"{where}-{n}"
        elif kind == "delete_message" and (
            message := _pick(session, app.ConversationMessage, position)
        ):
            session.delete(message)
        deleted |= {(o.__tablename__, row_key([o.id])) for o in session.deleted}


def _accounted_for(c: Cluster, deleted: set[tuple[str, str]]) -> None:
    """Every conversation or message inserted anywhere is on the server,
    or was deleted by the app on some node (``deleted``: by the app itself,
    not by a replication pass), or is in a review queue; every
    message on the server holds a text some node wrote."""
    events = []
    for s in c.sites:
        with s.engine.connect() as conn:
            events += [e for _, e in outbox.read(conn) if e.origin == s.name]
    parked = {(i.table, i.key) for i in c.review()}
    written: dict[str, set[str]] = {}
    for e in events:
        if e.op is not Operation.DELETE and e.table == MESSAGES.name:
            written.setdefault(row_key(list(e.key.values())), set()).add(e.row["content"])
    with c.server.engine.connect() as conn:
        present = {
            (t.name, row_key([i]))
            for t in (CONVERSATIONS, MESSAGES)
            for i in conn.execute(sa.select(t.c.id)).scalars()
        }
        texts = {
            row_key([i]): t for i, t in conn.execute(sa.select(MESSAGES.c.id, MESSAGES.c.content))
        }
    lost = [
        key
        for e in events
        if e.op is Operation.INSERT and e.table in (CONVERSATIONS.name, MESSAGES.name)
        for key in [(e.table, row_key(list(e.key.values())))]
        if key not in present and key not in deleted and key not in parked
    ]
    assert not lost, f"inserted, never deleted, yet neither on the server nor parked: {lost}"
    invented = {k: t for k, t in texts.items() if t not in written.get(k, set())}
    assert not invented, f"messages whose text no node wrote: {invented}"


def _check_history(fresh: Fresh, history: list[tuple[str, str, int]]) -> None:
    counter, deleted = iter(range(10_000)), set()
    with fresh.cluster() as c:
        add_user(c.server, "ada@example.org")
        c.sync()
        for step in history:
            _run(c, step, counter, deleted)
        c.sync(3)
        assert_converged(c)
        _accounted_for(c, deleted)


def _check_random_histories(fresh: Fresh, examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(history=histories)
    @example(history=APART)
    def check(history):
        _check_history(fresh, history)

    check()


@pytest.mark.backends("sqlite")
def test_random_writes_and_syncs_converge_without_orphans_or_lost_writes(database_url, tmp_path):
    _check_random_histories(Fresh(tmp_path, None), examples=20)


@pytest.mark.backends("mariadb")
def test_random_writes_and_syncs_converge_with_a_mariadb_server(database_url, tmp_path):
    fresh = Fresh(tmp_path, database_url)
    try:
        _check_random_histories(fresh, examples=8)
    finally:
        fresh.server_engine.dispose()
