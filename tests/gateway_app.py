"""An app written the usual way, for the sync gateway's tests: integer keys
the database numbers, a unique business column, a foreign key with an ORM
cascade, Enum and JSON columns, a server default, a per-user scope column
(``owner``), and a table every device reads but none may write
(``plans``)."""

from __future__ import annotations

import enum
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Kind(enum.StrEnum):
    PRIVATE = "private"
    SHARED = "shared"


def new_code() -> str:
    return uuid.uuid4().hex


class Notebook(Base):
    __tablename__ = "notebooks"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    code: Mapped[str] = mapped_column(sa.String(32), unique=True, default=new_code)
    owner: Mapped[str] = mapped_column(sa.String(36), index=True)
    title: Mapped[str] = mapped_column(sa.String(200))
    kind: Mapped[Kind] = mapped_column(sa.Enum(Kind), default=Kind.PRIVATE)
    meta: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    # Microseconds on MariaDB too: a server keeping whole seconds would round
    # the devices' values, and the gateway refuses to replicate then.
    created_at: Mapped[Any] = mapped_column(
        sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mariadb", "mysql"),
        server_default=sa.func.now(),
    )
    notes: Mapped[list[Note]] = relationship(
        back_populates="notebook", cascade="all, delete-orphan"
    )


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    notebook_id: Mapped[int] = mapped_column(sa.ForeignKey("notebooks.id"), index=True)
    owner: Mapped[str] = mapped_column(sa.String(36), index=True)
    body: Mapped[str] = mapped_column(sa.Text)
    notebook: Mapped[Notebook] = relationship(back_populates="notes")


class Plan(Base):
    __tablename__ = "plans"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)
    price: Mapped[int] = mapped_column(sa.Integer)


class TeamNote(Base):
    """A table with only part of a two-column scope (``team`` of ``owner``
    and ``team``): cut by that part."""

    __tablename__ = "team_notes"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    team: Mapped[str] = mapped_column(sa.String(36), index=True)
    body: Mapped[str] = mapped_column(sa.Text)
