"""The reference app: an offline-first language-learning app.

Its models are ordinary SQLAlchemy declarative classes; nothing in them knows
about replication. Keys are client-generated UUID strings, so rows created on
different devices while offline never collide.

``replicator demo`` uses :func:`run_session` to make the app's typical writes
with capture on.
"""

from __future__ import annotations

import datetime as dt
import uuid

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# MariaDB's DATETIME keeps whole seconds unless told otherwise; the
# replicator refuses a server column that would round what a device stores.
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb", "mysql")


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    pass


class UserProfile(Base):
    __tablename__ = "user_profiles"
    user_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    display_name: Mapped[str] = mapped_column(sa.String(100))
    native_language: Mapped[str] = mapped_column(sa.String(8))
    target_language: Mapped[str] = mapped_column(sa.String(8))
    daily_goal_minutes: Mapped[int] = mapped_column(default=10)


class Conversation(Base):
    __tablename__ = "conversations"
    conversation_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    started_at: Mapped[dt.datetime] = mapped_column(Timestamp)


class Message(Base):
    __tablename__ = "messages"
    message_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    conversation_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    user_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    role: Mapped[str] = mapped_column(sa.String(16))
    content: Mapped[str] = mapped_column(sa.Text)
    sent_at: Mapped[dt.datetime] = mapped_column(Timestamp)


class LearningProgress(Base):
    """One row per user and skill: a composite key."""

    __tablename__ = "learning_progress"
    user_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    skill: Mapped[str] = mapped_column(sa.String(32), primary_key=True)
    level: Mapped[int] = mapped_column(default=1)
    xp: Mapped[int] = mapped_column(default=0)


class VocabularyItem(Base):
    __tablename__ = "vocabulary_items"
    item_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    word: Mapped[str] = mapped_column(sa.String(100))
    translation: Mapped[str] = mapped_column(sa.String(200))
    strength: Mapped[float] = mapped_column(default=0.0)


class Document(Base):
    __tablename__ = "documents"
    document_id: Mapped[str] = mapped_column(sa.String(36), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(sa.String(36), index=True)
    language: Mapped[str] = mapped_column(sa.String(8))
    filename: Mapped[str] = mapped_column(sa.String(200))
    content: Mapped[str] = mapped_column(sa.Text)


def run_session(session_factory, user_id: str, now: dt.datetime) -> None:
    """A short study session: the writes an app makes, in three transactions."""
    with session_factory.begin() as session:
        session.add(
            UserProfile(
                user_id=user_id, display_name="Ada", native_language="en", target_language="es"
            )
        )
        conversation = Conversation(user_id=user_id, title="Ordering food", started_at=now)
        session.add(conversation)
        session.flush()
        session.add_all(
            [
                Message(
                    conversation_id=conversation.conversation_id,
                    user_id=user_id,
                    role=role,
                    content=text,
                    sent_at=now,
                )
                for role, text in [("user", "Quisiera un café"), ("tutor", "¡Muy bien!")]
            ]
        )
        # An ORM bulk insert: one event per row all the same.
        session.execute(
            sa.insert(VocabularyItem),
            [
                {"item_id": new_id(), "user_id": user_id, "word": w, "translation": t}
                for w, t in [("café", "coffee"), ("cuenta", "bill"), ("mesa", "table")]
            ],
        )
        session.add(LearningProgress(user_id=user_id, skill="listening"))
        session.add(
            Document(
                user_id=user_id,
                language="es",
                filename="menu.txt",
                content="Café con leche, tostadas, zumo de naranja.",
            )
        )

    with session_factory.begin() as session:
        progress = session.get(LearningProgress, (user_id, "listening"))
        progress.xp += 40
        progress.level = 2
        session.get(UserProfile, user_id).daily_goal_minutes = 15
        # An ORM-enabled UPDATE statement: every matched row gets an event.
        session.execute(
            sa.update(VocabularyItem)
            .where(VocabularyItem.user_id == user_id)
            .values(strength=VocabularyItem.strength + 0.25)
        )

    with session_factory.begin() as session:
        item = session.scalars(sa.select(VocabularyItem).where(VocabularyItem.word == "mesa")).one()
        session.delete(item)


def keep_longer_message(conflict):
    """A custom conflict policy (``"module:function"``): of two concurrent
    edits of a message, keep the longer text; a deleted message stays
    deleted only if nobody rewrote it."""
    server, local = conflict.server.row, conflict.local.row
    if server is None or local is None:
        return "local" if server is None else "server"
    return "local" if len(local["content"]) > len(server["content"]) else "server"
