"""``replicator demo --app relational``: an app written the usual way, on two
embedded nodes, replicated.

The app (``examples/relational_app.py``) keys every table by an integer the
database numbers, keeps its business identity in unique columns (``email``,
``conversation_id``) and points children at parents through foreign keys.
As in the learning-app demo (:mod:`replicator.demo`), a local node (DuckDB
or SQLite: the user's device) and a server node (a SQLite file standing in
for MariaDB) get the replicator's tables and capture. The story:

1. a user is made on the server, with an old conversation; the first sync
   copies both to the device and leases each node blocks of integer keys;
2. while apart, the server adds a conversation with two messages and the
   device one with three, for the same user: keys from the leased blocks,
   so no two rows take one key;
3. both add a user with the same email (other names): the server keeps
   its own and parks the device's (``unique_violation``);
4. the server deletes the old conversation while the device adds a message
   to it: the delete wins, the message is removed and parked
   (``missing_parent``);
5. the server renames the user who has conversations (an edit of a row
   others refer to);

then syncs until both sides hold the same rows. The run returns what each
step did, the passes of each sync, both sides' tables by business key, the
review queue and whether both sides are equal. The directory also gets a
``replicator.toml`` naming both nodes, to try the commands on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from replicator import keys
from replicator.application import Replicator, SyncResult
from replicator.config import loads
from replicator.demo import embedded_nodes
from replicator.resources import load_example
from replicator.review import Decided, Listed, ReviewQueue
from replicator.sync import PassResult

EMAIL = "ada@example.org"
#: The email both sides give a new user while apart.
CLASH = "grace@example.org"
#: At most this many syncs settle what was written apart.
SYNCS = 3


@dataclass(frozen=True)
class Write:
    """One thing the app did on one side (``server`` or ``device``)."""

    side: str
    text: str


@dataclass(frozen=True)
class TableState:
    """One table on both sides, by business key (never the integer ``id``):
    ``columns`` name each row's values, the first ``width`` of them its key."""

    table: str
    columns: tuple[str, ...]
    width: int  # how many of the first columns make the key
    server: dict[tuple, tuple]
    local: dict[tuple, tuple]

    @property
    def differing(self) -> list[tuple]:
        """The business keys absent on one side or holding other values there."""
        return [k for k in self.keys if self.server.get(k) != self.local.get(k)]

    @property
    def keys(self) -> list[tuple]:
        """Every business key: the server's in its order, then the device's own."""
        return [*self.server, *(k for k in self.local if k not in self.server)]

    @property
    def equal(self) -> bool:
        return not self.differing


@dataclass(frozen=True)
class RelationalRun:
    url: str
    server_url: str
    node: str  # the local's name
    setup: list[Write]  # on the server, before the first sync
    first: SyncResult  # the local's first (bootstrapped when it was empty); keys leased
    keys_left: dict[str, dict[str, int]]  # node -> table -> keys left, after the first sync
    steps: list[tuple[str, list[Write]]]  # while apart: (title, writes)
    syncs: list[list[PassResult]]  # until one reads nothing (at most SYNCS)
    before: list[TableState]  # both sides after those syncs
    parked: list[Listed]  # open review items of every node, then
    decisions: list[tuple[Decided, list[PassResult]]]  # a person's, each with the sync after it
    tables: list[TableState]  # both sides at the end
    open: list[Listed]  # review items still open at the end

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


def run(directory: Path, store: str = "duckdb", node: str = "local") -> RelationalRun:
    """Run the story in ``directory`` (its previous demo databases are replaced)."""
    app = load_example("relational_app")
    with embedded_nodes(directory, store, node, app) as (urls, engines, factories):
        text = (
            f'[nodes.server]\nurl = "{urls["server"]}"\nrole = "server"\n\n'
            f'[nodes.{node}]\nurl = "{urls[node]}"\nrole = "local"\n'
        )
        # Kept next to the databases, so the commands can be tried on them.
        (directory / "replicator.toml").write_text(text)
        config = loads(text, directory / "replicator.toml")
        server, local = factories["server"], factories[node]

        def compared() -> list[TableState]:
            return [_state(app, table, engines["server"], engines[node]) for table in TABLES]

        with Replicator(config, engines=engines) as replicator:
            setup, old = _setup(app, server)
            # The local's new rows of integer-keyed tables take their keys
            # from blocks the server leases it during a pass: sync first.
            first = replicator.sync()
            keys_left = {}
            for name, engine in engines.items():
                with engine.connect() as conn:
                    keys_left[name] = keys.remaining(conn)
            steps = [
                ("Both add a conversation for the same user", _conversations(app, server, local)),
                ("Both add a user with the same email", _same_email(app, server, local)),
                (
                    "The server deletes a conversation the device adds a message to",
                    _delete_while_adding(app, server, local, old),
                ),
                ("The server renames a user others refer to", _rename(app, server)),
            ]
            syncs = [replicator.sync().passes]
            while len(syncs) < SYNCS and any(p.read for p in syncs[-1]):
                syncs.append(replicator.sync().passes)
            before = compared()
            queue = replicator.review()
            parked = queue.list().items
            decisions = _settle_the_email(replicator, queue, parked, node)
            still_open = queue.list().items
        tables = compared()
    return RelationalRun(
        urls[node],
        urls["server"],
        node,
        setup,
        first,
        keys_left,
        steps,
        syncs,
        before,
        parked,
        decisions,
        tables,
        still_open,
    )


def _settle_the_email(
    replicator: Replicator, queue: ReviewQueue, parked: list[Listed], node: str
) -> list[tuple[Decided, list[PassResult]]]:
    """A person's decisions on the email both sides gave a new user, each
    with the sync after it: the server's user is kept. Each node parked the
    other's row, and the second decision needs the first one's sync:
    discarding the server's item (the device's row, which the server does
    not hold) replicates the row's absence, which removes it from the
    device; only then can the device take the server's row."""
    clash = {i.node: i.ref for i in parked if i.reason == "unique_violation" and i.table == "users"}
    decisions = []
    if "server" in clash:
        decided = queue.discard(clash["server"], by="demo")
        decisions.append((decided, replicator.sync().passes))
    if node in clash:
        decided = queue.resolve(clash[node], take="server", by="demo")
        decisions.append((decided, replicator.sync().passes))
    return decisions


# --- the app's writes ---------------------------------------------------------------


def _setup(app: Any, server: sessionmaker) -> tuple[list[Write], str]:
    """A user with an old conversation, on the server; the conversation's id."""
    with server.begin() as session:
        user = app.new_user(session, EMAIL, "Ada")
        old = app.start_conversation(session, user, "Old questions", ["¿Qué tal?", "Muy bien."])
        conversation_id = old.conversation_id
    return [
        Write("server", f"user {EMAIL} (Ada)"),
        Write("server", "conversation 'Old questions' with 2 messages"),
    ], conversation_id


def _conversations(app: Any, server: sessionmaker, local: sessionmaker) -> list[Write]:
    """Apart, each side starts a conversation of the same user: each side
    numbers the new rows from its own leased blocks."""
    writes = []
    for factory, name, title, texts in (
        (server, "server", "On the web", ["Hola", "¡Hola! ¿En qué te ayudo?"]),
        (
            local,
            "device",
            "On the phone",
            ["Buenos días", "¡Buenos días!", "¿Cómo se dice 'bill'?"],
        ),
    ):
        with factory.begin() as session:
            conversation = app.start_conversation(
                session, app.find_user(session, EMAIL), title, texts
            )
            ids = [m.id for m in conversation.messages]
            writes.append(
                Write(
                    name,
                    f"conversation {title!r} (id {conversation.id}) with {len(texts)} messages "
                    f"(ids {', '.join(map(str, ids))})",
                )
            )
    return writes


def _same_email(app: Any, server: sessionmaker, local: sessionmaker) -> list[Write]:
    writes = []
    for factory, name, who in ((server, "server", "Grace"), (local, "device", "Grace H.")):
        with factory.begin() as session:
            user = app.new_user(session, CLASH, who)
            writes.append(Write(name, f"user {CLASH} ({who}, id {user.id})"))
    return writes


def _delete_while_adding(
    app: Any, server: sessionmaker, local: sessionmaker, conversation_id: str
) -> list[Write]:
    with server.begin() as session:
        session.delete(app.find_conversation(session, conversation_id))  # its messages go too
    with local.begin() as session:
        app.say(app.find_conversation(session, conversation_id), "Una pregunta más")
    return [
        Write("server", "deletes 'Old questions' and, by cascade, its 2 messages"),
        Write("device", "adds a message to 'Old questions': 'Una pregunta más'"),
    ]


def _rename(app: Any, server: sessionmaker) -> list[Write]:
    with server.begin() as session:
        app.find_user(session, EMAIL).name = "Ada Lovelace"
    return [Write("server", f"renames {EMAIL} to Ada Lovelace (its conversations refer to it)")]


# --- both sides, by business key ------------------------------------------------------

TABLES = ("users", "conversations", "conversation_messages")
#: The app's tables whose keys are leased.
KEYED = ("users", "conversations", "conversation_messages", "documents")


def _state(app: Any, table: str, server: sa.Engine, local: sa.Engine) -> TableState:
    columns, width, select = _business(app, table)
    rows = []
    for engine in (server, local):
        with engine.connect() as conn:
            rows.append({tuple(r[:width]): tuple(r[width:]) for r in conn.execute(select)})
    return TableState(table, columns, width, rows[0], rows[1])


def _business(app: Any, table: str) -> tuple[tuple[str, ...], int, sa.Select]:
    """A table's rows by business key: its columns, how many of the first
    make the key, and the query. Parents are named by their business key,
    not by their integer id."""
    users, conversations = app.User.__table__, app.Conversation.__table__
    messages = app.ConversationMessage.__table__
    u, c, m = users.c, conversations.c, messages.c
    if table == "users":
        return ("email", "name", "role"), 1, sa.select(u.email, u.name, u.role).order_by(u.email)
    if table == "conversations":
        return (
            ("conversation_id", "user", "title", "status"),
            1,
            sa.select(c.conversation_id, u.email, c.title, c.status)
            .join_from(conversations, users, c.user_id == u.id)
            .order_by(c.title),
        )
    # A message has no business column of its own: its conversation and text name it.
    return (
        ("conversation_id", "content", "role"),
        2,
        sa.select(c.conversation_id, m.content, m.role)
        .join_from(messages, conversations, m.conversation_id == c.id)
        .order_by(c.title, m.id),
    )
