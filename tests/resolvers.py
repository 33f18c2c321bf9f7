"""Custom conflict resolvers that the tests name as "tests.resolvers:NAME"."""

from __future__ import annotations

from replicator.conflicts import Conflict


def both_translations(conflict: Conflict) -> dict:
    """The local's row, with both translations kept."""
    server, local = conflict.server.row, conflict.local.row
    if server is None or local is None:
        return "server"
    return {**local, "translation": f"{server['translation']} / {local['translation']}"}


def ask_a_person(conflict: Conflict) -> str:
    return "review"


def broken(conflict: Conflict) -> str:
    raise RuntimeError("the resolver has a bug")


def unknown_column(conflict: Conflict) -> dict:
    return {"colour": "red"}
