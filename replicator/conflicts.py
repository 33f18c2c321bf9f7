"""Conflict policies: deciding between two concurrent versions of a row.

Two versions of a row conflict when neither version vector descends from
the other (:func:`replicator.versions.compare` says ``CONCURRENT``): the
edits were made without seeing each other. Sequential edits never get here.

Only the server settles conflicts. Every local's changes pass through it,
so it sees every conflict; it writes the outcome as a new change of its own
whose version descends from both sides, and sends it to every local like
any other change. Locals never settle, so no two replicas can settle the
same conflict differently (invariant 6), whatever the policy (a custom
resolver need not even be deterministic). A local that receives a server
change concurrent with its own unsent change keeps its row until the
server's settlement of the two arrives (see :mod:`replicator.apply`).

A policy sees a :class:`Conflict`: the server's version of the row, the
local's version and their common base, and returns a :class:`Decision`
(take one side, or ask a person) or a row (a merge). The built-in policies,
and what each does when one side deleted the row:

``latest_timestamp``
    the side with the later hybrid-logical-clock timestamp wins (ties: the
    larger node name). A delete is a change like any other: a delete made
    after the edit removes the row, an edit made after the delete brings
    the row back.
``server_wins`` / ``local_wins``
    the server's (first to reach the server) or the local's (the incoming)
    version wins, delete or not.
``merge_fields``
    columns changed on one side only are taken from that side; a column
    changed on both takes the ``latest_timestamp`` side's value. When
    either side deleted the row, or both inserted it (no base), there are
    no fields to merge: the whole row follows ``latest_timestamp``.
``manual_review``
    nothing is decided: the server keeps its row and both versions go to
    the review queue.

A custom policy is ``"module:function"``: a function of one argument, the
:class:`Conflict`, returning ``"server"``, ``"local"``, ``"review"`` (or the
:class:`Decision` members) or a row (a mapping of column to value; the key
columns are the conflict's). If it raises or returns anything else, the
conflict is parked with the error as its reason.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from replicator.errors import ConfigurationError
from replicator.resources import load_example


class Side(msgspec.Struct, frozen=True, kw_only=True):
    """One version of a row: its values and who made it when.

    ``row`` is None when this side deleted the row (or never had it).
    """

    row: dict[str, Any] | None
    version: dict[str, int]
    hlc: int
    origin: str

    @property
    def deleted(self) -> bool:
        return self.row is None


class Decision(enum.StrEnum):
    SERVER = "server"
    LOCAL = "local"
    REVIEW = "review"


@dataclass(frozen=True)
class Conflict:
    """Two concurrent versions of one row, as a policy sees them.

    ``base`` is the row as the local had it before its concurrent change
    (None when the local inserted the row); columns the local's change did
    not record a previous value for hold ``None`` there. ``local_changed``
    names the columns whose value the local changed from ``base``.
    """

    table: str
    key: dict[str, Any]
    base: dict[str, Any] | None
    server: Side
    local: Side
    local_changed: frozenset[str]

    def server_changed(self, column: str) -> bool:
        """Whether the server's row differs from the base in ``column``."""
        assert self.base is not None and self.server.row is not None
        return self.server.row.get(column) != self.base.get(column)


Outcome = Decision | Mapping[str, Any]
Policy = Callable[[Conflict], Outcome]


def latest_timestamp(conflict: Conflict) -> Decision:
    """The later hybrid-logical-clock timestamp wins; on a tie, the larger
    node name (a total order, so the rule never hesitates)."""
    local, server = conflict.local, conflict.server
    return (
        Decision.LOCAL
        if (local.hlc, local.origin) > (server.hlc, server.origin)
        else Decision.SERVER
    )


def server_wins(conflict: Conflict) -> Decision:
    return Decision.SERVER


def local_wins(conflict: Conflict) -> Decision:
    return Decision.LOCAL


def merge_fields(conflict: Conflict) -> Outcome:
    """The server's row with the local's changes to columns the server left
    alone; columns both changed follow :func:`latest_timestamp`."""
    if conflict.base is None or conflict.server.row is None or conflict.local.row is None:
        return latest_timestamp(conflict)
    local_wins_overlap = latest_timestamp(conflict) is Decision.LOCAL
    merged = dict(conflict.server.row)
    for column in conflict.local_changed:
        if local_wins_overlap or not conflict.server_changed(column):
            merged[column] = conflict.local.row[column]
    return merged


def manual_review(conflict: Conflict) -> Decision:
    return Decision.REVIEW


BUILT_IN: dict[str, Policy] = {
    "latest_timestamp": latest_timestamp,
    "server_wins": server_wins,
    "local_wins": local_wins,
    "merge_fields": merge_fields,
    "manual_review": manual_review,
}


#: Modules of the reference app (``examples/``) are named under this prefix,
#: so a configuration can name its resolver wherever the package is installed.
EXAMPLES = "replicator_examples."


def load(name: str) -> Policy:
    """The policy called ``name``: a built-in one or ``"module:function"``.

    Raises :class:`ConfigurationError` when a custom one cannot be imported.
    """
    if name in BUILT_IN:
        return BUILT_IN[name]
    module_name, _, function = name.partition(":")
    if not module_name or not function:
        raise ConfigurationError(
            f"unknown policy {name!r}; use one of {', '.join(BUILT_IN)} or 'module:function'"
        )
    try:
        if module_name.startswith(EXAMPLES):  # the reference app shipped with the package
            module = load_example(module_name.removeprefix(EXAMPLES))
        else:
            module = importlib.import_module(module_name)
    except (ImportError, FileNotFoundError) as e:
        raise ConfigurationError(f"policy {name!r}: cannot import {module_name!r}: {e}") from e
    policy = getattr(module, function, None)
    if not callable(policy):
        raise ConfigurationError(f"policy {name!r}: {module_name} has no function {function!r}")
    return policy
