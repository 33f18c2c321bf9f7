"""Nodes of the reference app for replication tests: a migrated database
with the example tables, captured under the node's name."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import replicator
from replicator import outbox
from replicator.capture import Capture
from replicator.config import Config, loads
from replicator.events import ChangeEvent
from replicator.node import Node
from replicator.resources import load_example
from replicator.sync import replicate

app = load_example("learning_app")
NOW = dt.datetime(2026, 11, 24, 9, 30)


@dataclass
class Member:
    node: Node
    engine: Engine
    sessions: sessionmaker[Session]
    capture: Capture

    @property
    def name(self) -> str:
        return self.node.name

    def events(self) -> list[ChangeEvent]:
        """The node's log: its own changes and those it applied."""
        with self.engine.connect() as conn:
            return [event for _, event in outbox.read(conn)]

    def own_events(self) -> list[ChangeEvent]:
        """The changes captured on this node."""
        return [event for event in self.events() if event.origin == self.name]

    def rows(self, table: str) -> list[tuple[Any, ...]]:
        """A table's rows in key order, as typed values."""
        model = app.Base.metadata.tables[table]
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.select(model).order_by(*model.primary_key))]

    def state(self) -> dict[str, list[tuple[Any, ...]]]:
        return {t: self.rows(t) for t in app.Base.metadata.tables}

    def close(self) -> None:
        self.capture.stop()
        self.engine.dispose()


def member(name: str, url: str, role: str = "local", scope: dict | None = None) -> Member:
    engine = sa.create_engine(url)
    replicator.migrate(engine)
    app.Base.metadata.create_all(engine)
    sessions = sessionmaker(bind=engine)
    handle = replicator.capture(sessions, node=name, scope=scope)
    node = Node(name, role=role, engine=engine, scope=scope or {})
    return Member(node, engine, sessions, handle)


def add_vocabulary(m: Member, item_id: str, word: str, user_id: str = "u-42") -> None:
    with m.sessions.begin() as session:
        session.add(
            app.VocabularyItem(item_id=item_id, user_id=user_id, word=word, translation="?")
        )


def edit_vocabulary(m: Member, item_id: str, **values: Any) -> None:
    with m.sessions.begin() as session:
        item = session.get(app.VocabularyItem, item_id)
        for column, value in values.items():
            setattr(item, column, value)


def delete_vocabulary(m: Member, item_id: str) -> None:
    with m.sessions.begin() as session:
        session.delete(session.get(app.VocabularyItem, item_id))


def vocabulary(m: Member, item_id: str) -> tuple[str, float] | None:
    """(translation, strength) of one vocabulary item, None when absent."""
    with m.sessions() as session:
        item = session.get(app.VocabularyItem, item_id)
        return None if item is None else (item.translation, item.strength)


def config(server: Member, *local_members: Member, extra: str = "") -> Config:
    """A configuration of these nodes (by their names and URLs), plus ``extra`` TOML."""
    nodes = "".join(
        f'[nodes.{m.name}]\nurl = "{m.node.url}"\nrole = "{m.node.role}"\n'
        for m in (server, *local_members)
    )
    return loads(nodes + extra)


# Conflicts left to a person: vocabulary under manual_review.
REVIEW = {"policies": {"vocabulary_items": "manual_review"}}


def sync(server, *local_members):
    """Every local's changes up, then the server's down to each."""
    for m in local_members:
        replicate(m.node, server.node, **REVIEW)
    for m in local_members:
        replicate(server.node, m.node)


def apart(server, phone, count=1):
    """``count`` rows (v-0, v-1, ...) both sides edited between two syncs,
    parked on the server under manual_review."""
    for i in range(count):
        add_vocabulary(phone, f"v-{i}", f"word {i}")
    sync(server, phone)
    for i in range(count):
        edit_vocabulary(phone, f"v-{i}", translation=f"phone {i}")
        edit_vocabulary(server, f"v-{i}", translation=f"server {i}", strength=0.5)
    sync(server, phone)
