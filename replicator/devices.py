"""What the server does for a device that replicates through the sync
gateway: take its pushed events, give it the server's events, lease it
keys and bootstrap it, each within what its token allows.

The gateway (:mod:`replicator.gateway`) authenticates a request and calls
one of these functions with the :class:`Device` its token names; nothing a
device sends says who it is or what it may touch. The guarantees are the
replication engine's own, because these are its passes with the device's
end taken from a request:

* **Exactly once.** A push is applied as a pass from the device to the
  server (:class:`PushedPass`): in one server transaction that also moves
  the server's checkpoint for the device. The pass applies only the pushed
  events after that checkpoint, so a push sent again (its answer was lost
  to a cut connection, the gateway was killed) applies nothing twice, and a
  push that starts past the checkpoint is refused (:class:`OutOfStep`) so
  the device sends what the server lacks first.
* **Scope, enforced.** A pushed event that is not the device's own, is for
  a table the device may not write, or would create, change or delete a
  row outside the device's scope (by the row as the server holds it, not
  only as the device says it was) is *forbidden*: it is written nowhere
  and parked on the server with reason ``forbidden`` (``review list``
  shows it); the device's other events go on. A pull gives only the rows
  of the device's scope, a row leaving it as its delete
  (:func:`replicator.scope.for_scope`), and a bootstrap copies only them.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from replicator import bootstrap, guard, keys, outbox, precision, retention
from replicator.apply import Counts, reject
from replicator.clock import utcnow
from replicator.errors import DatabaseError, ReplicatorError
from replicator.events import decode_or_none, row_key, wire_values
from replicator.guard import Claimed, narrowed
from replicator.node import Node
from replicator.outbox import Entry
from replicator.parking import Reason
from replicator.protocol import Bounds, Frame, Pull, Pulled, Push, Pushed, Tables, Wire
from replicator.scope import for_scope
from replicator.sync import SyncPass, _naive
from replicator.tables import app_table_names, is_replicator_table, revoked_tokens


@dataclass(frozen=True)
class Device:
    """A device as its token names it: its node name and its scope (column
    -> value; empty: every row)."""

    name: str
    scope: Mapping[str, str] = field(default_factory=dict)

    @property
    def claimed(self) -> dict[str, Claimed]:
        return {column: Claimed(value) for column, value in self.scope.items()}


@dataclass(frozen=True)
class Rules:
    """What the server's configuration says about devices: the tables they
    may read but not write (``read_only``), how a table without the
    scope's columns is carried (``unscoped``: table -> ``all``/``none``),
    how conflicts are settled (``policy``, ``policies``), and how many keys
    a lease gives (``key_block``)."""

    read_only: frozenset[str] = frozenset()
    unscoped: Mapping[str, str] = field(default_factory=dict)
    policy: str = "latest_timestamp"
    policies: Mapping[str, str] = field(default_factory=dict)
    key_block: int = keys.BLOCK


class OutOfStep(ReplicatorError):
    """A push that starts past the server's checkpoint for the device: the
    server lacks what lies between. ``checkpoint`` is where to start."""

    def __init__(self, checkpoint: int) -> None:
        super().__init__(f"the server's checkpoint for this device is at {checkpoint}")
        self.checkpoint = checkpoint


@dataclass
class _Peer:
    """The device's end of a pass, as the engine sees it: a name, a role
    and a scope (its events come in the request, not from a database)."""

    name: str
    role: str = "local"
    scope: Mapping[str, Any] = field(default_factory=dict)


def decode(wire: list[Wire]) -> list[Entry]:
    """Events as they travel, as entries of a pass (undecodable payloads
    kept, with ``event`` None, for the target to park)."""
    return [Entry(p, t, k, payload, decode_or_none(payload)) for p, t, k, payload in wire]


def encode(entries: list[Entry]) -> list[Wire]:
    return [(e.position, e.table, e.row_key, e.payload) for e in entries]


class PushedPass(SyncPass):
    """A pass from ``device`` to ``server`` whose one batch is a push."""

    def __init__(
        self,
        server: Node,
        device: Device,
        push: Push,
        rules: Rules,
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        super().__init__(
            _Peer(device.name, scope=device.scope),  # type: ignore[arg-type]
            server,
            channel=push.channel,
            batch_size=max(1, len(push.events)),
            unscoped=rules.unscoped,
            policy=rules.policy,
            policies=rules.policies,
            now=now,
        )
        self.device, self.push, self.rules = device, push, rules
        self.entries = decode(push.events)
        self.forbidden: set[int] = set()  # positions refused
        self.out_of_step: int | None = None

    def checkpoint(self) -> int:
        """The server's checkpoint for the device's log in this channel."""
        with self.target.connect() as conn:
            return self._checkpoint(conn, self.push.log_id)[0]

    # --- the device's end, from the request -----------------------------

    def _bounds(self) -> tuple[int | None, int, str | None]:
        return self.push.reached, self.push.pruned_through, self.push.log_id

    def _reads_ahead(self) -> bool:
        return False  # its one batch is in the request

    def _read(self, after: int, horizon: int) -> tuple[list[Entry], int]:
        if after < self.push.after:
            self.out_of_step = after
            raise OutOfStep(after)
        return [e for e in self.entries if e.position > after], self.push.reached

    def _lease_keys(self) -> None:
        pass  # a device leases through its own request

    def _in_scope(self, tconn: Any, entries: list[Entry]) -> list[Entry]:
        return entries  # checked, and refused, in _apply

    def _recorders(self) -> tuple[Node, ...]:
        return (self.target,)

    # --- what the device may write ---------------------------------------

    def _apply(self, tconn: Any, entries: list[Entry], careful: bool = False) -> Counts:
        why = guard.forbidden(
            tconn,
            self.target,
            self.device.name,
            self.device.claimed,
            entries,
            read_only=self.rules.read_only,
            unscoped=self.rules.unscoped,
        )
        if not why:
            return super()._apply(tconn, entries, careful)
        counts = Counts()
        for entry in entries:
            if entry.position in why:
                counts.add(
                    reject(
                        tconn,
                        self.target.dialect,
                        entry,
                        Reason.FORBIDDEN,
                        f"device {self.device.name} may not write this: {why[entry.position]}",
                        shape_of=lambda table: self.target.shape(tconn, table),
                        now=self.now(),
                    )
                )
                # A set: a batch the target refused is applied again one
                # event at a time, and its entries checked again.
                self.forbidden.add(entry.position)
        allowed = [e for e in entries if e.position not in why]
        if allowed:
            counts.add(super()._apply(tconn, allowed, careful))
        return counts


log = logging.getLogger("replicator.devices")

#: How often the server tries a device's key lease before it answers 500.
LEASE_ATTEMPTS = 3
#: How often the server tries a push's pass before it answers that it failed.
PUSH_ATTEMPTS = 3


def accept_push(
    server: Node,
    device: Device,
    push: Push,
    rules: Rules,
    now: Callable[[], dt.datetime] = utcnow,
) -> Pushed:
    """Apply a device's push (see the module's doc); raises
    :class:`OutOfStep` when it starts past the server's checkpoint.

    A pass that fails is tried again, up to :data:`PUSH_ATTEMPTS` times in
    all: its transactions rolled back, and what it applied before is behind
    the checkpoint, so nothing is applied twice. What fails it is mostly
    passing (a deadlock with another device's key lease, which moves the
    table's AUTO_INCREMENT with DDL), and the device would otherwise wait
    for its next round."""
    for attempt in range(PUSH_ATTEMPTS):
        if attempt:
            time.sleep(0.05 * attempt)
        sync_pass = PushedPass(server, device, push, rules, now)
        at = sync_pass.checkpoint()
        if at < push.after:
            raise OutOfStep(at)
        result = sync_pass.run(record_empty=False)
        if sync_pass.out_of_step is not None:  # another push moved it back (a restore)
            raise OutOfStep(sync_pass.out_of_step)
        if result.ok:
            break
        log.warning("a push of %s failed (try %d): %s", device.name, attempt + 1, result.error)
    counts = Counts()  # the last try's (the checkpoint covers what earlier ones applied)
    counts.add(result)
    return Pushed(
        channel=push.channel,
        checkpoint=sync_pass.checkpoint(),
        counts=counts,
        forbidden=len(sync_pass.forbidden),
        status=result.status,
        error=result.error,
    )


def checkpoint(server: Node, device: Device, channel: str, log_id: str | None) -> int:
    """The server's checkpoint for ``device``'s log in ``channel``."""
    push = Push(channel=channel, after=0, reached=0, log_id=log_id)
    return PushedPass(server, device, push, Rules()).checkpoint()


def bounds(server: Node) -> Bounds:
    """The server's log as a device reads it (see :class:`Bounds`)."""
    with server.connect() as conn:
        return Bounds(
            horizon=server.dialect.horizon(conn),
            pruned_through=retention.pruned_through(conn),
            log_id=retention.log_id(conn),
        )


def tables(server: Node) -> Tables:
    """The server's app tables' declared column types, for a device to
    check that the server keeps its values as precisely as it does."""
    with server.connect() as conn:
        names = app_table_names(conn)
        return Tables(database=server.dialect.name, types=precision.declared(server, conn, names))


def head(server: Node) -> int:
    """The server log's largest position (0: empty): cheap, for waiting."""
    with server.connect() as conn:
        return outbox.head(conn)


#: The most events a pull reads (a device asking for more gets this many).
PULL_LIMIT = 10_000


def pull(server: Node, device: Device, request: Pull, rules: Rules) -> Pulled:
    """The server's events for ``device`` (none of its own, unless
    ``request.own``) after ``request.after``, cut to its scope; at most
    :data:`PULL_LIMIT`."""
    with server.connect() as conn:
        entries, reached = outbox.read_batch(
            conn,
            after=request.after,
            upto=request.upto,
            limit=max(1, min(request.limit, PULL_LIMIT)),
            exclude_origin=None if request.own else device.name,
            tables=request.tables,
            exclude_tables=request.exclude_tables,
        )
        if device.scope:
            scope, kept = device.claimed, []
            for entry in entries:
                # Each table by the part of the scope it has (see guard.narrowed).
                shape = server.shape(conn, entry.table)
                table_scope = narrowed(scope, shape.columns) if shape is not None else {}
                kept += for_scope(
                    [entry],
                    table_scope or scope,
                    rules.unscoped,
                    lambda table: server.shape(conn, table),
                )
            entries = kept
    return Pulled(events=encode(entries), reached=reached)


def lease_keys(
    server: Node, device: Device, table: str, above: int, rules: Rules
) -> tuple[int, int] | None:
    """A block of ``rules.key_block`` keys of ``table`` for ``device`` (see
    :mod:`replicator.keys`); None when the server has no such integer-keyed
    app table or devices may not write it. ``above`` (the largest key the
    device holds) is believed only up to :func:`replicator.keys.ceiling`."""
    if is_replicator_table(table) or table in rules.read_only:
        return None
    with server.connect() as conn:
        shape = server.shape(conn, table) if table in app_table_names(conn) else None
        if shape is None or shape.integer_key is None:
            return None
        above = min(above, keys.ceiling(conn, server.dialect, table, device.name))
    for attempt in range(LEASE_ATTEMPTS):
        try:
            keys.prepare_server(server)
            return keys.leased_block(server, table, device.name, rules.key_block, above)
        except DatabaseError:
            # Another device's lease moves the table's AUTO_INCREMENT with
            # DDL at the same moment (MariaDB 1684, a metadata lock): again.
            if attempt == LEASE_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    return None


def snapshot(server: Node, device: Device, rules: Rules, from_table: str = "") -> Iterator[Frame]:
    """A bootstrap for ``device``: the frames of :class:`Frame`, read in
    one consistent snapshot of the server, only rows of its scope; tables
    without the scope's columns as ``rules.unscoped`` says; from table
    ``from_table`` on (tables go by name)."""
    scope = device.claimed
    with server.dialect.snapshot(server.get_engine()) as (source, position):
        position = max(position, retention.pruned_through(source))
        plan = []
        for table in app_table_names(source):  # sorted by name
            shape = server.shape(source, table)
            if shape is None or table < from_table:
                continue
            table_scope = narrowed(scope, shape.columns)
            if scope and not table_scope and rules.unscoped.get(table, "all") == "none":
                continue
            plan.append((shape, table_scope))
        yield Frame(
            position=position,
            log_id=retention.log_id(source),
            tables=[shape.name for shape, _ in plan],
        )
        for shape, table_scope in plan:
            table = shape.name
            columns = list(shape.columns)
            yield Frame(table=table, columns=columns)
            at = [columns.index(c) for c in shape.key]
            # The database narrows the rows by the scope where it compares
            # as Python does at least (text, integers; a MariaDB collation
            # folds case, so it may give more); Python decides, as for pulls.
            in_sql = {c: v for c, v in table_scope.items() if shape.kind(c) in (str, int)}
            held = [(columns.index(c), v) for c, v in table_scope.items()]
            copied: set[str] = set()
            for found in bootstrap.read_rows(source, shape, columns, in_sql):
                rows = [row for row in found if all(v == row[i] for i, v in held)]
                copied.update(row_key([row[i] for i in at]) for row in rows)
                if rows:
                    yield Frame(table=table, rows=[wire_values(row) for row in rows])
            for versions in bootstrap.read_versions(source, table, copied):
                yield Frame(table=table, versions=[wire_values(list(v)) for v in versions])
    yield Frame(done=True)


def revoked(server: Node) -> set[str]:
    """The ids of the tokens revoked on ``server``."""
    with server.connect() as conn:
        return set(
            conn.execute(
                revoked_tokens.select().with_only_columns(revoked_tokens.c.token_id)
            ).scalars()
        )


def revoke(server: Node, token_id: str, device: str, reason: str, now: dt.datetime) -> bool:
    """Add a token to ``server``'s revocation list; False when it already was."""
    with server.begin() as conn:
        c = revoked_tokens.c
        if conn.execute(revoked_tokens.select().where(c.token_id == token_id)).first():
            return False
        conn.execute(
            revoked_tokens.insert().values(
                token_id=token_id, device=device, revoked_at=_naive(now), reason=reason
            )
        )
    return True


__all__ = [
    "Device",
    "OutOfStep",
    "PushedPass",
    "Rules",
    "accept_push",
    "bounds",
    "checkpoint",
    "decode",
    "encode",
    "head",
    "lease_keys",
    "pull",
    "revoke",
    "revoked",
    "snapshot",
]
