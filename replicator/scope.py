"""What a scoped local holds: the events it may receive or send.

A local with a ``scope`` (``{"user_id": "u-42"}``) holds only the rows
whose columns have those values. A pass to it drops the events of other
rows and turns a row leaving the scope into its delete; a pass from it
takes its events as they are (capture refused writes outside its scope).
A table without the scope's columns goes to the local whole or not at all,
as its ``unscoped`` setting says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from replicator.dialects.base import TableShape
from replicator.events import Operation, encode_event
from replicator.node import Node
from replicator.outbox import Entry


def in_scope(
    source: Node, target: Node, unscoped: Mapping[str, str], tconn: Any, entries: list[Entry]
) -> list[Entry]:
    """The entries a scoped local may receive or send, rows that leave its
    scope turned into deletes."""
    if target.scope:
        return for_scope(entries, target.scope, unscoped, lambda table: target.shape(tconn, table))
    if source.scope:
        return for_scope(entries, source.scope, unscoped, None)
    return entries


def for_scope(
    entries: list[Entry],
    scope: Mapping[str, Any],
    unscoped: Mapping[str, str],
    shape_of: Callable[[str], TableShape | None] | None,
) -> list[Entry]:
    """The entries a local with ``scope`` may receive, rows that leave it
    turned into deletes; ``shape_of`` looks up a table whose event does not
    carry the scope's columns (a delete of a partly loaded row). Without
    ``shape_of`` the entries come from the scoped local itself: they are
    taken as they are, except for the ``unscoped`` tables it must not send."""
    kept = []
    for entry in entries:
        event = entry.event
        if event is None:  # undecodable: parked by the target
            kept.append(entry)
            continue
        has_scope = _has_columns(event, scope)
        if shape_of is not None and not has_scope:
            shape = shape_of(event.table)
            has_scope = shape is not None and all(c in shape.columns for c in scope)
        if not has_scope:
            if unscoped.get(event.table, "all") == "all":
                kept.append(entry)
            continue
        if shape_of is None:
            kept.append(entry)  # capture refused writes outside the source's scope
            continue
        scoped = _scoped(entry, scope)
        if scoped is not None:
            kept.append(scoped)
    return kept


def _has_columns(event: Any, scope: Mapping[str, Any]) -> bool:
    row = event.row if event.row is not None else event.changed
    return all(c in row for c in scope)


def _scoped(entry: Entry, scope: Mapping[str, Any]) -> Entry | None:
    """``entry`` as a local with ``scope`` should see it, or None to skip it."""
    event = entry.event
    after = event.row is not None and all(event.row.get(c) == v for c, v in scope.items())
    if event.op is Operation.INSERT:
        return entry if after else None
    if event.op is Operation.DELETE:
        # A deleted row's scope columns may not have been loaded: a delete
        # of a row the local never had is harmless, so unknown counts as in.
        old = event.changed
        before = all(old.get(c, v) == v for c, v in scope.items())
        return entry if before else None
    before = all(event.changed.get(c, event.row.get(c)) == v for c, v in scope.items())
    if after and before:
        return entry  # stays in scope
    if after:
        # It enters the scope: an insert to this local, without the values
        # it had outside it.
        came = msgspec.structs.replace(event, op=Operation.INSERT, changed={})
        return entry._replace(event=came, payload=encode_event(came))
    if before:
        # It left the scope: gone from this local, which learns nothing of
        # its new values (the row as it was, it had).
        gone = msgspec.structs.replace(
            event, op=Operation.DELETE, row=None, changed={**event.row, **event.changed}
        )
        return entry._replace(event=gone, payload=encode_event(gone))
    return None
