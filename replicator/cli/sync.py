"""``replicator init``, ``sync`` and ``run``: set nodes up, replicate once,
replicate continuously."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from replicator.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    Direction,
    JsonOption,
    activity,
    check_direction,
    escape,
    fail,
    load,
    open_replicator,
    out,
    say,
    usage,
    warn,
)
from replicator.cli.render import pass_table, sink_table
from replicator.errors import ReplicatorError


def init(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Create or upgrade the replicator's tables on every configured node.

    Refused first (exit 2, no node changed) when the server keeps a column
    of the app's tables less precisely than a local (see
    :mod:`replicator.precision`)."""
    from replicator import keys
    from replicator.migration import migrate
    from replicator.node import Node
    from replicator.precision import losses

    settings = load(config)
    # Through Nodes, so that a server that does not answer is given up after
    # its connect_timeout, as in every other command.
    nodes = {name: Node.from_config(name, s) for name, s in settings.nodes.items()}
    try:
        with activity():
            try:
                lossy = [
                    loss
                    for local in settings.locals
                    for loss in losses(nodes[settings.server], nodes[local])
                ]
            except ReplicatorError as e:
                raise fail(e) from e
            if lossy:
                usage(
                    "\n".join(str(loss) for loss in lossy)
                    + "\nNo node was changed: declare these columns as precisely on the "
                    "server, then run replicator init again"
                )
            for name, node in nodes.items():
                try:
                    with node.begin() as conn:
                        done = migrate(conn)
                except ReplicatorError as e:
                    raise fail(e) from e
                say(f"{name}: replicator tables {_INIT_SAYS.get(str(done), 'are up to date')}")
            # Roles recorded now: a local takes new rows' integer keys from
            # leased blocks from its first write on (see replicator.keys).
            for local in settings.locals:
                try:
                    leased = keys.refill(
                        nodes[local], nodes[settings.server], settings.replication.key_block
                    )
                except ReplicatorError as e:
                    raise fail(e) from e
                if leased:
                    say(f"{local}: keys leased for new rows of {', '.join(sorted(leased))}")
    finally:
        for node in nodes.values():
            node.dispose()


# What migrate() did -> what init says of it.
_INIT_SAYS = {
    "created": "created",
    "upgraded": "upgraded to the current revision",
    "up to date": "are up to date",
}


def sync(
    config: ConfigOption = DEFAULT_CONFIG,
    direction: Direction = None,
    as_json: JsonOption = False,
) -> None:
    """Run one replication pass per configured link and channel."""
    check_direction(direction)
    with open_replicator(config) as replicator, activity() as show:

        def progress(p) -> None:
            done = f" ({p.position * 100 // p.horizon}%)" if p.horizon else ""
            show(
                f"{p.source} -> {p.target} [{p.channel}]: {p.read:,} events read, "
                f"{p.applied:,} rows applied{done}"
            )

        result = replicator.sync(direction, progress=progress)  # type: ignore[arg-type]
    if as_json:
        sys.stdout.write(result.to_json().decode() + "\n")
    else:
        out().print(pass_table(result.passes, result.bootstrapped))
        if result.sinks:
            out().print(sink_table(result.sinks))
        for s in result.sinks:
            if not s.ok:
                warn(f"[bold red]failed:[/] sink {s.sink}: " + escape(s.error or ""))
        for p in result.passes:
            if p.status == "deferred":
                warn(
                    f"deferred: {p.source} -> {p.target} \\[{p.channel}]: the source's writers "
                    "held its outbox; nothing was read, the next sync catches up"
                )
            if not p.ok:
                warn(
                    f"[bold red]failed:[/] {p.source} -> {p.target} \\[{p.channel}]: "
                    + escape(p.error or "")
                )
    for name, held_by in result.held.items():
        what = name.replace(":", " ", 1) if name.startswith("sink:") else f"link {name}"
        warn(f"skipped: {what} is being worked on by {escape(held_by)}")
    if not result.ok:
        raise typer.Exit(1)


def run(
    config: ConfigOption = DEFAULT_CONFIG,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval",
            "-i",
            help="The longest wait between passes, in seconds (default: "
            "replication.interval_seconds). New events are picked up within a "
            "fraction of a second anyway.",
            metavar="SECONDS",
        ),
    ] = None,
    direction: Direction = None,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format", help="text or json (one JSON object per line).", metavar="FORMAT"
        ),
    ] = "text",
) -> None:
    """Replicate continuously, until SIGINT or SIGTERM.

    A signal lets the current batch commit with its checkpoint, then the
    command exits 0. Logs one line per pass and per change of state to
    standard error; backs off while a node cannot be reached.
    """
    import signal

    from replicator import locks, logs
    from replicator.service import Runner, Timing

    if log_format not in logs.FORMATS:
        usage(f"--log-format must be text or json, not {log_format!r}")
    if interval is not None and not interval > 0:
        usage(f"--interval must be more than 0 seconds, got {interval:g}")
    check_direction(direction)
    logs.configure(log_format)  # type: ignore[arg-type]
    with open_replicator(config) as replicator:
        timing = Timing(interval=interval or replicator.config.replication.interval_seconds)
        runner = Runner(
            replicator,
            timing=timing,
            direction=direction,  # type: ignore[arg-type]
            holder=locks.holder_name("replicator run"),
        )
        signal.signal(signal.SIGINT, runner.on_signal)
        signal.signal(signal.SIGTERM, runner.on_signal)
        runner.run()
