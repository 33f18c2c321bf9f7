"""A second reference app: a tutoring chat, written the way most SQLAlchemy
apps are written.

Where the learning app (``learning_app.py``) was designed for offline use,
with UUID string keys, this one was not: every table has an integer key the
database numbers (``id``, from a ``Sequence``: DuckDB has no other way; a
SEQUENCE on MariaDB, the rowid on SQLite), the business identity lives in a
separate unique column (``user_id``, ``email``, ``conversation_id``,
``document_id``), children point at their
parents' integer ids through foreign keys, and the ORM cascades deletes
down (``cascade="all, delete-orphan"``). It has Enum and JSON columns, a
timestamp the server fills in (``server_default=now()``) and one the ORM
refreshes on every update (``onupdate``). Nothing in it knows about
replication.

The helpers below are the writes such an app makes; tests and demos call
them with a session.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

# MariaDB's DATETIME keeps whole seconds unless told otherwise; the
# replicator refuses a server column that would lose what a local stores.
Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb", "mysql")


def stored_as_values(enum_class: type[enum.Enum], name: str) -> sa.Enum:
    """An Enum column that stores the members' values (``"student"``), not their names."""
    return sa.Enum(
        enum_class, name=name, values_callable=lambda members: [m.value for m in members]
    )


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    pass


class Role(enum.StrEnum):
    STUDENT = "student"
    TUTOR = "tutor"


class Status(enum.StrEnum):
    OPEN = "open"
    ARCHIVED = "archived"


class Speaker(enum.StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(sa.Sequence("users_id_seq"), primary_key=True)
    user_id: Mapped[str] = mapped_column(sa.String(36), unique=True, default=new_id)
    email: Mapped[str] = mapped_column(sa.String(200), unique=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    role: Mapped[Role] = mapped_column(stored_as_values(Role, "user_role"), default=Role.STUDENT)
    settings: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(
        Timestamp, default=sa.func.now(), onupdate=sa.func.now()
    )
    conversations: Mapped[list[Conversation]] = relationship(
        back_populates="user", cascade="all, delete-orphan"
    )
    documents: Mapped[list[Document]] = relationship(cascade="all, delete-orphan")


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[int] = mapped_column(sa.Sequence("conversations_id_seq"), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(sa.String(36), unique=True, default=new_id)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    status: Mapped[Status] = mapped_column(
        stored_as_values(Status, "conversation_status"), default=Status.OPEN
    )
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    updated_at: Mapped[dt.datetime] = mapped_column(
        Timestamp, default=sa.func.now(), onupdate=sa.func.now()
    )
    user: Mapped[User] = relationship(back_populates="conversations")
    messages: Mapped[list[ConversationMessage]] = relationship(
        back_populates="conversation",
        cascade="all, delete-orphan",
        order_by="ConversationMessage.id",
    )


class ConversationMessage(Base):
    __tablename__ = "conversation_messages"
    id: Mapped[int] = mapped_column(sa.Sequence("conversation_messages_id_seq"), primary_key=True)
    conversation_id: Mapped[int] = mapped_column(sa.ForeignKey("conversations.id"), index=True)
    role: Mapped[Speaker] = mapped_column(stored_as_values(Speaker, "message_role"))
    content: Mapped[str] = mapped_column(sa.Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, server_default=sa.func.now())
    conversation: Mapped[Conversation] = relationship(back_populates="messages")


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(sa.Sequence("documents_id_seq"), primary_key=True)
    document_id: Mapped[str] = mapped_column(sa.String(36), unique=True, default=new_id)
    user_id: Mapped[int] = mapped_column(sa.ForeignKey("users.id"), index=True)
    filename: Mapped[str] = mapped_column(sa.String(200))
    content: Mapped[str] = mapped_column(sa.Text)


def new_user(session: Session, email: str, name: str, **values: Any) -> User:
    """Add a user (flushed: its ``id`` is set)."""
    user = User(email=email, name=name, **values)
    session.add(user)
    session.flush()
    return user


def find_user(session: Session, email: str) -> User | None:
    return session.scalars(sa.select(User).where(User.email == email)).one_or_none()


def start_conversation(
    session: Session, user: User, title: str, messages: Sequence[str] = ()
) -> Conversation:
    """A conversation of ``user`` with ``messages`` taking turns (the user
    first, then the assistant), flushed."""
    conversation = Conversation(user=user, title=title)
    session.add(conversation)
    for text in messages:
        say(conversation, text)
    session.flush()
    return conversation


def say(conversation: Conversation, content: str, **meta: Any) -> ConversationMessage:
    """Append a message; speakers alternate, starting with the user."""
    role = Speaker.USER if len(conversation.messages) % 2 == 0 else Speaker.ASSISTANT
    message = ConversationMessage(role=role, content=content, meta=meta or None)
    conversation.messages.append(message)
    return message


def find_conversation(session: Session, conversation_id: str) -> Conversation | None:
    return session.scalars(
        sa.select(Conversation).where(Conversation.conversation_id == conversation_id)
    ).one_or_none()


def upload(session: Session, user: User, filename: str, content: str) -> Document:
    document = Document(filename=filename, content=content)
    user.documents.append(document)
    session.flush()
    return document
