"""The ``replicator`` command: a thin layer over the library.

Options are parsed here and configuration is read here; everything else is a
library call. Errors map to exit codes: 2 for usage and configuration
errors, 1 for an operation that failed (the message says why).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from replicator import config as config_module
from replicator.clock import to_datetime
from replicator.errors import ConfigurationError, ReplicatorError

app = typer.Typer(
    name="replicator",
    help="Event-sourced change-log replication between local and server databases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output is not wrapped to the 80 columns rich assumes without a terminal.
console = Console() if sys.stdout.isatty() else Console(width=160)
errors = Console(stderr=True)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="The TOML configuration file.", show_default=True),
]


def _fail(error: ReplicatorError) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(2 if isinstance(error, ConfigurationError) else 1)


@app.command()
def demo(
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to put the demo database (default: a new temp dir)."),
    ] = None,
    store: Annotated[str, typer.Option(help="The embedded store: duckdb or sqlite.")] = "duckdb",
) -> None:
    """Run the reference app on two embedded nodes, sync them, and show both sides."""
    from replicator import demo as demo_module

    if store not in demo_module.STORES:
        errors.print(
            f"[bold red]error:[/] --store must be one of {', '.join(demo_module.STORES)}",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    directory = directory or Path(tempfile.mkdtemp(prefix="replicator-demo-"))
    try:
        run = demo_module.run(directory, store=store)
    except ReplicatorError as e:
        raise _fail(e) from e

    table = Table(
        title=f"Captured change events ({run.url})",
        caption="one section per source transaction",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("pos", "op", "table", "key", "changed", "version", "time"):
        table.add_column(column, no_wrap=column not in ("changed", "key"), overflow="fold")
    txids: dict[str, int] = {}
    for position, event in run.events:
        if txids and event.txid not in txids:
            table.add_section()
        txids.setdefault(event.txid, len(txids) + 1)
        changed = ", ".join(event.changed) if event.op.value == "update" else "-"
        table.add_row(
            str(position),
            event.op.value,
            event.table,
            ", ".join(_short(v) for v in event.key.values()),
            changed,
            " ".join(f"{n}:{c}" for n, c in event.version.items()),
            to_datetime(event.hlc).strftime("%H:%M:%S"),
        )
    console.print(table)
    console.print(
        f"{len(run.events)} events captured in {len(txids)} transactions, each written in the "
        "same transaction as the change it records."
    )
    console.print(
        f"\nMeanwhile the server ({run.server_url}) captured {len(run.server_events)} events "
        "of its own: a tutor's additions (one for another user)."
    )
    console.print(pass_table(run.passes))
    console.print(
        "\nThen, while apart, both sides edit the same row of every table (the device "
        "first), each table under another conflict policy, and sync again:"
    )
    console.print(pass_table(run.conflict_passes))
    console.print(_conflict_table(run.conflicts))
    for item in run.parked:
        console.print(
            f"Parked for review on the server: item {item.id}, {item.table} {item.key}: "
            f"{item.reason} ({item.detail}). Both versions are kept in its review queue.",
            highlight=False,
            soft_wrap=True,
        )
    result = Table(
        title="Both nodes after the syncs (rows of user u-42)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("table", "server rows", "local rows", "same"):
        result.add_column(column, justify="left" if column == "table" else "right")
    for state in run.tables:
        same = "[green]yes[/]" if not state.differing else "[red]no[/]"
        if state.differing and state.equal:
            same = f"[yellow]{state.differing} row parked for review[/]"
        result.add_row(state.table, str(len(state.server)), str(len(state.local)), same)
    console.print(result)
    if not all(state.equal for state in run.tables):
        raise typer.Exit(1)


def _conflict_table(conflicts) -> Table:
    """Each demo conflict: what each side wrote, and what both hold now."""
    table = Table(title="Conflicts, one per policy", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("table", "policy", "device wrote", "server wrote", "both now hold"):
        table.add_column(column, overflow="fold")

    def shown(values: dict | None, columns) -> str:
        if values is None:
            return "(deleted)"
        return ", ".join(f"{c}={values[c]!r}" for c in sorted(columns))

    for c in conflicts:
        columns = c.local.keys() | c.server.keys()
        if c.now_server == c.now_local:
            now = shown(c.now_server, columns)
        else:
            now = (
                f"[yellow]parked[/]: server keeps {shown(c.now_server, columns)}, "
                f"device keeps {shown(c.now_local, columns)}"
            )
        table.add_row(
            c.table,
            c.policy.rpartition(":")[2] + (" (custom)" if ":" in c.policy else ""),
            shown(c.local, c.local),
            shown(c.server, c.server),
            now,
        )
    return table


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= 10 else text[:8] + "…"


@app.command()
def init(config: ConfigOption = config_module.DEFAULT_PATH) -> None:
    """Create or upgrade the replicator's tables on every configured node."""
    from replicator.migration import migrate

    try:
        settings = config_module.load(config)
        for name, node in settings.nodes.items():
            migrate(node.url)
            console.print(f"{name}: replicator tables are up to date")
    except ReplicatorError as e:
        raise _fail(e) from e


Direction = Annotated[
    str | None,
    typer.Option("--direction", "-d", help="up, down or bidirectional (default: from the config)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


@app.command()
def sync(
    config: ConfigOption = config_module.DEFAULT_PATH,
    direction: Direction = None,
    as_json: JsonOption = False,
) -> None:
    """Run one replication pass per configured link and channel."""
    from replicator.sync import Replicator

    if direction is not None and direction not in ("up", "down", "bidirectional"):
        errors.print(
            f"[bold red]error:[/] --direction must be up, down or bidirectional, not {direction!r}",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    try:
        settings = config_module.load(config)
        with Replicator(settings) as replicator:
            result = replicator.sync(direction)  # type: ignore[arg-type]
    except ReplicatorError as e:
        raise _fail(e) from e
    if as_json:
        sys.stdout.write(result.to_json().decode() + "\n")
    else:
        console.print(pass_table(result.passes))
        for p in result.passes:
            if p.status == "deferred":
                errors.print(
                    f"deferred: {p.source} -> {p.target} \\[{p.channel}]: the source's writers "
                    "held its outbox; nothing was read, the next sync catches up",
                    highlight=False,
                    soft_wrap=True,
                )
            if not p.ok:
                errors.print(
                    f"[bold red]failed:[/] {p.source} -> {p.target} \\[{p.channel}]: "
                    + escape(p.error or ""),
                    highlight=False,
                    soft_wrap=True,
                )
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def replay(
    node: Annotated[str, typer.Option("--node", "-n", help="The node to replay onto.")],
    start: Annotated[
        int | None, typer.Option("--from", help="The first log position to replay.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Replay the changes made at or after this ISO time (UTC)."),
    ] = None,
    end: Annotated[
        int | None, typer.Option("--to", help="The last position (default: all committed).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what it would do; write nothing.")
    ] = False,
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """Apply the server's log to a node again, from a position or a time."""
    import datetime as dt

    from replicator.replay import first_position_since
    from replicator.replay import replay as run_replay
    from replicator.sync import Replicator

    if (start is None) == (since is None):
        errors.print("[bold red]error:[/] give exactly one of --from and --since", soft_wrap=True)
        raise typer.Exit(2)
    moment = None
    if since is not None:
        try:
            moment = dt.datetime.fromisoformat(since)
        except ValueError:
            errors.print(
                f"[bold red]error:[/] --since: not an ISO time: {since!r} "
                "(e.g. 2026-11-24T09:30:00)",
                soft_wrap=True,
            )
            raise typer.Exit(2) from None
    try:
        settings = config_module.load(config)
        with Replicator(settings) as replicator:
            target, log = replicator.node(node), replicator.server
            if moment is not None:
                with log.connect() as conn:
                    start = first_position_since(conn, moment)
            unscoped = {t: s.unscoped for t, s in settings.tables.items()}
            with _progress(f"replaying onto {node}") as advance:
                result = run_replay(
                    log,
                    target,
                    start=start,
                    end=end,
                    dry_run=dry_run,
                    batch_size=settings.replication.batch_size,
                    unscoped=unscoped,
                    progress=advance,
                )
    except ReplicatorError as e:
        raise _fail(e) from e
    if as_json:
        sys.stdout.write(result.to_json().decode() + "\n")
        return
    would = "would " if dry_run else ""
    console.print(
        f"{'Dry run: ' if dry_run else ''}positions {result.start}..{result.end} of "
        f"{result.log}'s log onto {result.node}: {result.read} events read; {would}insert "
        f"{result.inserted}, {would}update {result.updated}, {would}delete {result.deleted}; "
        f"{result.skipped} already reflected or changed since; {result.conflicts} concurrent "
        f"with unsent changes; {result.parked} parked ({result.seconds:.2f} s)",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def bootstrap(
    node: Annotated[str, typer.Option("--node", "-n", help="The empty local to fill.")],
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """Fill a new or emptied local with the server's current rows in its scope."""
    from replicator.sync import Replicator

    try:
        settings = config_module.load(config)
        with Replicator(settings) as replicator, _progress(f"bootstrapping {node}") as advance:
            result = replicator.bootstrap(node, progress=advance)
    except ReplicatorError as e:
        raise _fail(e) from e
    if as_json:
        sys.stdout.write(result.to_json().decode() + "\n")
        return
    copied = ", ".join(f"{table} {count}" for table, count in result.rows.items())
    console.print(
        f"{result.node}: {sum(result.rows.values())} rows copied from {result.server} "
        f"({copied}); it now stands at position {result.position} of the log, where the "
        f"next sync goes on ({result.seconds:.2f} s)",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def prune(
    keep: Annotated[
        str | None,
        typer.Option("--retention", help="Keep events younger than this (default: the config's)."),
    ] = None,
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """Delete outbox events every replica has applied and older than the retention."""
    from replicator.sync import Replicator

    try:
        period = config_module.duration(keep) if keep is not None else None
    except ValueError as e:
        errors.print(f"[bold red]error:[/] --retention: {e}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        settings = config_module.load(config)
        with Replicator(settings) as replicator:
            result = replicator.prune(period)
    except ReplicatorError as e:
        raise _fail(e) from e
    if as_json:
        sys.stdout.write(result.to_json().decode() + "\n")
    else:
        for p in result.outboxes:
            note = f"; unreachable readers keep everything: {', '.join(p.unreachable)}"
            console.print(
                f"{p.node}: {p.deleted} events deleted; pruned through position {p.through} "
                f"(every reader has applied up to {p.acknowledged})"
                + (note if p.unreachable else ""),
                highlight=False,
                soft_wrap=True,
            )
    for reader, source in result.behind.items():
        errors.print(
            f"[bold red]behind:[/] {reader} has not applied events {source} has pruned; "
            f"empty it and run `replicator bootstrap --node {reader}`",
            highlight=False,
            soft_wrap=True,
        )
    if result.behind:
        raise typer.Exit(1)


@app.command(name="verify")
def verify_command(
    node: Annotated[
        str | None, typer.Option("--node", "-n", help="The local to check (default: every one).")
    ] = None,
    table: Annotated[list[str] | None, typer.Option("--table", "-t", help="Only these.")] = None,
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """Check that a local holds the server's rows (within its scope), by checksums."""
    import msgspec

    from replicator.sync import Replicator
    from replicator.verify import verify

    try:
        settings = config_module.load(config)
        with Replicator(settings) as replicator:
            targets = [replicator.node(node)] if node else replicator.locals
            unscoped = {t: s.unscoped for t, s in settings.tables.items()}
            results = [
                verify(replicator.server, target, tables=table or None, unscoped=unscoped)
                for target in targets
                if target.role == "local"
            ]
    except ReplicatorError as e:
        raise _fail(e) from e
    if as_json:
        sys.stdout.write(msgspec.json.encode({"nodes": results}).decode() + "\n")
    else:
        for result in results:
            for check in result.tables:
                state = (
                    "[green]same[/]"
                    if not check.differing
                    else (
                        f"[red]{len(check.differing)} differ:[/] "
                        + escape(", ".join(check.differing[:10]))
                        + (" ..." if len(check.differing) > 10 else "")
                    )
                )
                console.print(
                    f"{result.node} vs {result.server}: {check.table}: {check.local_rows} / "
                    f"{check.server_rows} rows, {state}",
                    highlight=False,
                    soft_wrap=True,
                )
    if not all(result.equal for result in results):
        raise typer.Exit(1)


@app.command()
def log(
    node: Annotated[str, typer.Option("--node", "-n", help="Whose log to read.")],
    table: Annotated[str | None, typer.Option("--table", "-t", help="Only this table.")] = None,
    key: Annotated[
        str | None, typer.Option("--key", "-k", help="Only this row: a value or a JSON array.")
    ] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Also show the row as it was at this ISO time.")
    ] = None,
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """The change history (of a table, of one row): who changed what, when."""
    import datetime as dt

    import msgspec

    from replicator import history
    from replicator.sync import Replicator

    if (key is not None or at is not None) and table is None:
        errors.print("[bold red]error:[/] --key and --at need --table", soft_wrap=True)
        raise typer.Exit(2)
    if at is not None and key is None:
        errors.print("[bold red]error:[/] --at needs --key", soft_wrap=True)
        raise typer.Exit(2)
    moment = None
    if at is not None:
        try:
            moment = dt.datetime.fromisoformat(at)
        except ValueError:
            errors.print(f"[bold red]error:[/] --at: not an ISO time: {at!r}", soft_wrap=True)
            raise typer.Exit(2) from None
    row_key = history.key_text(key) if key is not None else None
    try:
        settings = config_module.load(config)
        with Replicator(settings) as replicator, replicator.node(node).connect() as conn:
            found = history.changes(conn, table=table, key=row_key)
            row = history.row_at(conn, table, row_key, moment) if moment is not None else None
    except ReplicatorError as e:
        raise _fail(e) from e
    if as_json:
        document: dict = {"changes": found}
        if moment is not None:
            document["at"] = moment.isoformat()
            document["row"] = row
        sys.stdout.write(msgspec.json.encode(document).decode() + "\n")
        return
    listing = Table(
        title=f"Changes in {node}'s log" + (f" of {table} {row_key or ''}" if table else ""),
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("pos", "time (UTC)", "origin", "op", "table", "key", "changed"):
        listing.add_column(column, overflow="fold", no_wrap=column in ("pos", "op"))
    for change in found:
        listing.add_row(
            str(change.position),
            change.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            change.origin,
            change.op,
            change.table,
            ", ".join(_short(v) for v in change.key.values()),
            escape(", ".join(f"{c}: {b!r} -> {a!r}" for c, (b, a) in change.changed.items())),
        )
    console.print(listing)
    if moment is not None:
        state = "did not exist" if row is None else escape(repr(row))
        console.print(f"At {moment.isoformat()} the row {state}", highlight=False, soft_wrap=True)


@contextmanager
def _progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar on a terminal (none when piped): yields ``advance(done, total)``."""
    if not console.is_terminal:
        yield lambda done, total: None
        return
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def pass_table(passes) -> Table:
    """The passes of a sync as a table: one row per link and channel."""
    table = Table(
        box=box.SIMPLE_HEAD,
        title="Replication passes",
        title_justify="left",
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("link", no_wrap=True)
    table.add_column("channel", no_wrap=True)
    for name in ("read", "applied", "skipped", "conflicts", "parked", "failed", "seconds"):
        table.add_column(name, justify="right")
    for p in passes:
        table.add_row(
            f"{p.source} -> {p.target}",
            p.channel,
            *(str(getattr(p, n)) for n in ("read", "applied", "skipped", "conflicts", "parked")),
            f"[red]{p.failed}[/]" if p.failed or not p.ok else "0",
            f"{p.seconds:.3f}",
        )
    by_policy = [
        escape(f"{p.source} -> {p.target} [{p.channel}]: {_by_policy(p.conflicts_by_policy)}")
        for p in passes
        if p.conflicts
    ]
    if by_policy:
        table.caption = "conflicts by policy: " + "; ".join(by_policy)
        table.caption_justify = "left"
    return table


def _by_policy(counts: dict[str, int]) -> str:
    """``latest_timestamp 2, manual_review 1``; a custom policy is named by
    its function."""
    named = sorted((name.rpartition(":")[2], n) for name, n in counts.items())
    return ", ".join(f"{name} {n}" for name, n in named)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
