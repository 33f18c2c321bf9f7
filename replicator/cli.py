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
from typing import Annotated, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

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
            f"Parked for review on the server: item {item.ref}, {item.table} {item.key}: "
            f"{item.reason} ({item.detail}). Both versions are kept in its review queue.",
            highlight=False,
            soft_wrap=True,
        )
    decided = run.resolution
    console.print(
        f"\nA person resolves it, writing a version that keeps both:\n"
        f"  $ replicator review resolve {decided.ref} --merge "
        f'\'{{"content": "{decided.row["content"]}"}}\' --by {decided.by}\n'
        "The decision is a new change on the server that descends from both versions, "
        "so the next sync carries it to the device without a conflict:",
        highlight=False,
        soft_wrap=True,
    )
    console.print(pass_table(run.resolution_passes))
    console.print(
        "After each sync the device's documents follow into its ChromaDB collection "
        "(this sync's part):",
        highlight=False,
    )
    console.print(sink_table(run.sinks))
    console.print(
        f"Searching the device's vector store for {demo_module.QUERY!r} (offline hashing "
        "embeddings; name a real model with embedding_function):",
        highlight=False,
        soft_wrap=True,
    )
    for doc_id, document, distance in run.search:
        console.print(f"  {distance:.3f}  {escape(document)}  ({doc_id[:8]}…)", highlight=False)
    result = Table(
        title="Both nodes after the syncs (rows of user u-42)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("table", "server rows", "local rows", "same"):
        result.add_column(column, justify="left" if column == "table" else "right")
    for state in run.tables:
        same = "[green]yes[/]" if state.equal else "[red]no[/]"
        result.add_row(state.table, str(len(state.server)), str(len(state.local)), same)
    console.print(result)
    settings = directory / "replicator.toml"
    console.print(
        f"Try the commands on these databases: replicator review history --config {settings}; "
        f"replicator sink query documents 'la cuenta' --config {settings}",
        highlight=False,
        soft_wrap=True,
    )
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
        if result.sinks:
            console.print(sink_table(result.sinks))
        for s in result.sinks:
            if not s.ok:
                errors.print(
                    f"[bold red]failed:[/] sink {s.sink}: " + escape(s.error or ""),
                    highlight=False,
                    soft_wrap=True,
                )
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
    for name, held_by in result.held.items():
        what = name.replace(":", " ", 1) if name.startswith("sink:") else f"link {name}"
        errors.print(
            f"skipped: {what} is being worked on by {held_by}",
            highlight=False,
            soft_wrap=True,
        )
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def run(
    config: ConfigOption = config_module.DEFAULT_PATH,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval",
            "-i",
            help="The longest wait between passes, in seconds (default: "
            "replication.interval_seconds). New events are picked up within a "
            "fraction of a second anyway.",
        ),
    ] = None,
    direction: Direction = None,
    log_format: Annotated[
        str, typer.Option("--log-format", help="text or json (one JSON object per line).")
    ] = "text",
) -> None:
    """Replicate continuously, until SIGINT or SIGTERM.

    A signal lets the current batch commit with its checkpoint, then the
    command exits 0. Logs one line per pass and per change of state to
    stderr; backs off while a node cannot be reached.
    """
    import signal

    from replicator import locks, logs
    from replicator.service import Runner, Timing

    if log_format not in logs.FORMATS:
        _usage(f"--log-format must be text or json, not {log_format!r}")
    if interval is not None and not interval > 0:
        _usage(f"--interval must be more than 0 seconds, got {interval:g}")
    if direction is not None and direction not in ("up", "down", "bidirectional"):
        _usage(f"--direction must be up, down or bidirectional, not {direction!r}")
    logs.configure(log_format)  # type: ignore[arg-type]
    with _replicator(config) as replicator:
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


@app.command()
def status(config: ConfigOption = config_module.DEFAULT_PATH, as_json: JsonOption = False) -> None:
    """Where replication stands: lag, last sync, syncing now, reachability.

    Per link and channel: head, checkpoint, lag in events and seconds, last
    successful sync, whether a pass runs now and who holds the link; per
    node: reachable, open review items; per sink: lag. Exits 1 when a node
    cannot be reached.
    """
    from replicator.status import status as read_status

    with _replicator(config) as replicator:
        found = read_status(replicator)
    if as_json:
        sys.stdout.write(found.to_json().decode() + "\n")
    else:
        console.print(_status_tables(found))
    if not found.reachable:
        raise typer.Exit(1)


def _status_tables(found) -> Table:
    table = Table(box=box.SIMPLE_HEAD, title="Links", title_justify="left", pad_edge=False)
    for column in ("link", "channel", "head", "checkpoint", "lag", "behind", "last sync", "now"):
        table.add_column(column, justify="left" if column in ("link", "channel") else "right")
    for link in found.links:
        now = "[green]syncing[/]" if link.syncing else ("idle" if link.runner else "")
        if not link.reachable:
            now = "[red]unreachable[/]"
        behind = "" if link.lag_seconds is None else _age(link.lag_seconds)
        table.add_row(
            f"{link.source} -> {link.target}",
            link.channel,
            *(_or_dash(getattr(link, n)) for n in ("head", "checkpoint", "lag")),
            behind if link.lag else "-",
            (link.last_sync or "never").replace("T", " "),
            now,
        )
    notes = []
    for node in found.nodes:
        state = "reachable"
        if not node.reachable:
            state = f"[red]unreachable[/]: {escape(node.error or '')}"
        items = node.open_review_items
        notes.append(
            f"{node.name} ({node.role}, {escape(node.url)}): {state}"
            + (f", {items} open review items" if items else "")
        )
    runners = {link.runner for link in found.links if link.runner}
    notes += [f"runner: {escape(r)}" for r in sorted(runners)]
    for sink in found.sinks:
        held = "missing" if sink.documents is None else f"{sink.documents} documents"
        notes.append(
            f"sink {sink.sink} ({sink.node}): {held}, "
            + (f"{sink.lag} events behind" if sink.error is None else escape(sink.error))
        )
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


def _or_dash(value: object) -> str:
    return "-" if value is None else str(value)


@app.command()
def stats(
    config: ConfigOption = config_module.DEFAULT_PATH,
    days: Annotated[float, typer.Option("--days", help="Over how many days.")] = 7,
    as_json: JsonOption = False,
) -> None:
    """Recorded passes over the last N days, in total and per link.

    How many passes succeeded and failed, events applied, conflicts by
    policy, parked, mean and p95 seconds, last success.
    """
    from replicator.stats import stats as read_stats

    if not days > 0:
        _usage(f"--days must be more than 0, got {days:g}")
    with _replicator(config) as replicator:
        found = read_stats(replicator, days)
    if as_json:
        sys.stdout.write(found.to_json().decode() + "\n")
    else:
        console.print(_stats_table(found))
    for node, error in found.unreachable.items():
        errors.print(
            f"[bold red]unreachable:[/] {node}: {escape(error)} (its runs are not counted)",
            highlight=False,
            soft_wrap=True,
        )
    if found.unreachable:
        raise typer.Exit(1)


def _stats_table(found) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        title=f"Passes since {found.since.replace('T', ' ')} ({found.days:g} days)",
        title_justify="left",
        pad_edge=False,
    )
    table.add_column("link", no_wrap=True)
    table.add_column("channel", no_wrap=True)
    names = ("passes", "succeeded", "failed", "applied", "conflicts", "parked")
    for name in (*names, "mean s", "p95 s", "last success"):
        table.add_column(name, justify="right")

    def row(label: str, channel: str, t) -> list[str]:
        seconds = ["-" if v is None else f"{v:.3f}" for v in (t.mean_seconds, t.p95_seconds)]
        return [
            label,
            channel,
            *(str(getattr(t, n)) for n in names),
            *seconds,
            (t.last_success or "never").replace("T", " "),
        ]

    for link in found.links:
        table.add_row(*row(f"{link.source} -> {link.target}", link.channel, link))
    table.add_section()
    table.add_row(*row("all", "", found))
    notes = []
    if found.conflicts_by_policy:
        notes.append("conflicts by policy: " + _by_policy(found.conflicts_by_policy))
    if found.last_error:
        notes.append(f"last failure {found.last_failure}: {escape(found.last_error)}")
    table.caption = "\n".join(notes) or None
    table.caption_justify = "left"
    return table


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


review_app = typer.Typer(
    help="The manual-review queue: list, show, resolve and discard parked items.",
    no_args_is_help=True,
)
app.add_typer(review_app, name="review")

TableFilter = Annotated[str | None, typer.Option("--table", "-t", help="Only this table.")]
NodeFilter = Annotated[str | None, typer.Option("--node", "-n", help="Only this node's queue.")]
ReasonFilter = Annotated[
    str | None, typer.Option("--reason", "-r", help="Only this reason (e.g. manual_review).")
]
OlderFilter = Annotated[
    str | None, typer.Option("--older-than", help="Only items parked longer ago (e.g. 2h, 7d).")
]
ByOption = Annotated[
    str | None, typer.Option("--by", help="Who decides (default: the operating-system user).")
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Decide and check everything, then write nothing.")
]
AllOption = Annotated[bool, typer.Option("--all", help="Every open item (no filter needed).")]
ItemArgument = Annotated[
    str | None,
    typer.Argument(help="The item: NODE:NUMBER as listed, or NUMBER when one node has it."),
]


def _filter(table, node, reason, older_than):
    from replicator.review import Filter

    try:
        period = config_module.duration(older_than) if older_than is not None else None
    except ValueError as e:
        errors.print(f"[bold red]error:[/] --older-than: {e}", soft_wrap=True)
        raise typer.Exit(2) from None
    return Filter(table=table, node=node, reason=reason, older_than=period)


@contextmanager
def _replicator(config: Path) -> Iterator:
    """The configuration's :class:`Replicator`; library errors become exit codes."""
    from replicator.sync import Replicator

    try:
        settings = config_module.load(config)
        with Replicator(settings) as replicator:
            yield replicator
    except ReplicatorError as e:
        raise _fail(e) from e


@contextmanager
def _queue(config: Path) -> Iterator:
    """The configuration's review queue; library errors become exit codes."""
    with _replicator(config) as replicator:
        yield replicator.review()


def _print_json(document: object) -> None:
    import msgspec

    sys.stdout.write(msgspec.json.encode(document).decode() + "\n")


def _unreachable(listing) -> None:
    for node, error in listing.unreachable.items():
        errors.print(
            f"[bold red]unreachable:[/] {node}: " + escape(error), highlight=False, soft_wrap=True
        )
    if listing.unreachable:
        raise typer.Exit(1)


@review_app.command("list")
def review_list(
    table: TableFilter = None,
    node: NodeFilter = None,
    reason: ReasonFilter = None,
    older_than: OlderFilter = None,
    sort: Annotated[
        str, typer.Option("--sort", help="age (oldest first), newest, table, node or reason.")
    ] = "age",
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """Open review items across every node, with counts by table and reason."""
    where = _filter(table, node, reason, older_than)
    with _queue(config) as queue:
        listing = queue.list(where, sort=sort)
    if as_json:
        _print_json(listing)
    else:
        console.print(_item_table(listing.items, "Open review items"))
        console.print(_summary(listing, "open"), highlight=False, soft_wrap=True)
    _unreachable(listing)


@review_app.command("history")
def review_history(
    table: TableFilter = None,
    node: NodeFilter = None,
    reason: ReasonFilter = None,
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """Closed items, newest first: who decided what, or what superseded them."""
    where = _filter(table, node, reason, None)
    with _queue(config) as queue:
        listing = queue.history(where)
    if as_json:
        _print_json(listing)
    else:
        console.print(_item_table(listing.items, "Review history", closed=True))
        console.print(_summary(listing, "closed"), highlight=False, soft_wrap=True)
    _unreachable(listing)


@review_app.command("show")
def review_show(
    item: Annotated[str, typer.Argument(help="The item: NODE:NUMBER, or NUMBER.")],
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """The base, the server's and the local's versions side by side, changed
    fields marked, and the events involved."""
    with _queue(config) as queue:
        shown = queue.show(item)
    if as_json:
        _print_json(shown)
        return
    for line in _show_lines(shown):
        console.print(line, highlight=False, soft_wrap=True)


@review_app.command("resolve")
def review_resolve(
    item: ItemArgument = None,
    take: Annotated[
        str | None, typer.Option("--take", help="Keep this side's row: server or local.")
    ] = None,
    merge: Annotated[
        str | None,
        typer.Option("--merge", help="The server's row with these values: '{\"col\": value}'."),
    ] = None,
    by: ByOption = None,
    table: TableFilter = None,
    node: NodeFilter = None,
    reason: ReasonFilter = None,
    older_than: OlderFilter = None,
    every: AllOption = False,
    dry_run: DryRunOption = False,
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """Settle an item (or every matching one) by taking a side or a merged row;
    the decision replicates to every node on the next sync."""
    import json

    values = None
    if merge is not None:
        try:
            values = json.loads(merge)
        except ValueError as e:
            _usage(f"--merge: not JSON: {e}")
    if item is None and values is not None:
        _usage("--merge settles one item: give its ID")
    if item is None and take is None:
        _usage("give exactly one of --take and --merge")
    _decide(
        config,
        item,
        _filter(table, node, reason, older_than),
        every,
        dry_run,
        as_json,
        take=take,
        one=lambda queue: queue.resolve(item, take=take, merge=values, by=by, dry_run=dry_run),
        by=by,
    )


@review_app.command("discard")
def review_discard(
    item: ItemArgument = None,
    by: ByOption = None,
    table: TableFilter = None,
    node: NodeFilter = None,
    reason: ReasonFilter = None,
    older_than: OlderFilter = None,
    every: AllOption = False,
    dry_run: DryRunOption = False,
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """Drop an item's incoming version and keep the row its node holds now
    (which then replicates, so every node holds it)."""
    _decide(
        config,
        item,
        _filter(table, node, reason, older_than),
        every,
        dry_run,
        as_json,
        take=None,
        one=lambda queue: queue.discard(item, by=by, dry_run=dry_run),
        by=by,
    )


def _decide(config, item, where, every, dry_run, as_json, *, take, one, by) -> None:
    """One item (``one(queue)`` decides it) or, without an item, every
    matching one: a bulk resolve (``take``) or discard (``take`` None)."""
    if item is not None:
        if where.any or every:
            _usage("give an item ID or filters (--table, --node, ...), not both")
        with _queue(config) as queue:
            decided = one(queue)
        _print_decided(decided, dry_run, as_json)
        return
    if not where.any and not every:
        _usage("give an item ID, filters (--table, --node, --reason, --older-than) or --all")
    with _queue(config) as queue:
        result = queue.resolve_matching(
            where, take=take, discard=take is None, by=by, dry_run=dry_run
        )
    if as_json:
        _print_json(result)
        return
    how = f"take {take}" if take else "discard"
    verb = "would be decided" if dry_run else "decided"
    console.print(
        f"{len(result.decided)} of {result.matched} matching items {verb} ({how})"
        + (": " + ", ".join(d.ref for d in result.decided) if result.decided else ""),
        highlight=False,
        soft_wrap=True,
    )


def _print_decided(d, dry_run: bool, as_json: bool) -> None:
    if as_json:
        _print_json(d)
        return
    row = "(deleted)" if d.row is None else escape(repr(d.row))
    if d.event_id is None:
        tail = "nothing is written or replicated"
        row = "unchanged"
    else:
        tail = f"change {d.event_id} replicates on the next sync"
    how = _DECISIONS[d.decision]
    if dry_run:
        console.print(
            f"Dry run, nothing written: {d.ref} would be resolved ({how}): {d.table} "
            f"{d.key} would be {row}",
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"{d.ref} resolved by {d.by} ({how}): {d.table} {d.key} is now {row}; {tail}",
        highlight=False,
        soft_wrap=True,
    )


_DECISIONS = {
    "server": "took the server's row",
    "local": "took the local's row",
    "merge": "merged",
    "discard": "discarded the incoming version",
}


def _usage(message: str) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _age(seconds: float) -> str:
    """``45s``, ``12m``, ``3h 5m``, ``2d 4h``."""
    minutes, hours, days = int(seconds // 60), int(seconds // 3600), int(seconds // 86400)
    if days:
        return f"{days}d {hours % 24}h"
    if hours:
        return f"{hours}h {minutes % 60}m"
    if minutes:
        return f"{minutes}m"
    return f"{int(seconds)}s"


def _item_table(items, title: str, closed: bool = False) -> Table:
    if not items:
        return Text()
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    columns = ["item", "table", "key", "reason"]
    columns += ["closed (UTC)", "status", "by", "decision"] if closed else ["age", "detail"]
    for column in columns:
        table.add_column(column, overflow="fold", no_wrap=column in ("item", "age"))
    for i in items:
        row = [i.ref, i.table, i.key, i.reason]
        if closed:
            when = f"{i.resolved_at:%Y-%m-%d %H:%M:%S}" if i.resolved_at else ""
            row += [when, i.status, i.resolved_by or "", i.resolution or ""]
        else:
            row += [_age(i.age_seconds), i.detail]
        table.add_row(*(escape(v) for v in row))
    return table


def _summary(listing, state: str) -> str:
    def counts(by: dict[str, int]) -> str:
        return ", ".join(f"{name} {n}" for name, n in sorted(by.items()))

    line = f"{len(listing.items)} {state} items"
    if listing.items:
        line += f"; by table: {counts(listing.by_table)}; by reason: {counts(listing.by_reason)}"
    if listing.obsolete:
        line += f" ({listing.obsolete} closed just now as obsolete: superseded by a later change)"
    return line


def _show_lines(shown) -> list:
    """``review show``: the header, the rows side by side, the events."""
    status = shown.status if shown.status != "open" else "[bold]open[/]"
    lines: list = [
        f"Item {shown.ref}: {escape(shown.table)} {escape(shown.key)}, {status}",
        f"{shown.reason}: " + escape(shown.detail),
        f"parked on {shown.node} at {shown.detected_at:%Y-%m-%d %H:%M:%S} UTC "
        f"({_age(shown.age_seconds)} ago)",
    ]
    if shown.resolved_at is not None:
        lines.append(
            f"{shown.status} at {shown.resolved_at:%Y-%m-%d %H:%M:%S} UTC by "
            f"{shown.resolved_by}: " + escape(shown.resolution or "")
        )
    sides = Table(box=box.SIMPLE_HEAD, caption="* changed from the base", caption_justify="left")
    sides.add_column("column", no_wrap=True)
    for heading in ("base", "server", f"local ({shown.local_node})"):
        sides.add_column(heading, overflow="fold")

    def cell(row, side: str | None, column: str) -> str:
        if row is None:
            return "[dim](deleted)[/]" if column == shown.columns[0] else ""
        text = escape(repr(row.get(column)))
        if side is not None and column in shown.changed[side]:
            return f"[bold yellow]{text} *[/]"
        return text

    for column in shown.columns:
        sides.add_row(
            column,
            cell(shown.base, None, column) if shown.base is not None else "",
            cell(shown.server, "server", column),
            cell(shown.local, "local", column),
        )
    sides.add_section()
    for label, pick in (
        ("version", lambda v: " ".join(f"{n}:{c}" for n, c in sorted(v.version.items()))),
        ("made by", lambda v: v.origin),
        ("at (UTC)", lambda v: v.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]),
    ):
        sides.add_row(
            f"[dim]{label}[/]",
            "",
            *(pick(v) if v else "?" for v in (shown.server_version, shown.local_version)),
        )
    lines.append(sides)
    events = Table(title="Events parked", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("origin", "op", "at (UTC)", "version", "changed", "event"):
        events.add_column(column, overflow="fold")
    for e in shown.events:
        if not e.decodable:
            events.add_row("?", "?", "", "", "", f"undecodable ({e.size} bytes)")
            continue
        events.add_row(
            e.origin,
            e.op,
            e.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            " ".join(f"{n}:{c}" for n, c in sorted(e.version.items())),
            ", ".join(e.changed),
            e.event_id,
        )
    lines.append(events)
    if shown.status == "open" and not all(e.decodable for e in shown.events):
        lines.append(f"Close it (nothing can be written): replicator review discard {shown.ref}")
    elif shown.status == "open":
        lines.append(
            f"Decide: replicator review resolve {shown.ref} --take server|local "
            f"| --merge '{{...}}'  or  replicator review discard {shown.ref}"
        )
    return lines


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


def sink_table(results) -> Table:
    """What each vector sink did in a sync or a rebuild."""
    table = Table(box=box.SIMPLE_HEAD, title="Vector sinks", title_justify="left", pad_edge=False)
    table.add_column("sink", no_wrap=True)
    table.add_column("node", no_wrap=True)
    names = ("read", "upserted", "metadata_only", "deleted", "embedded", "parked", "lag")
    for name in names:
        table.add_column(name.replace("_", " "), justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("started over", no_wrap=True)
    for r in results:
        table.add_row(
            r.sink,
            r.node,
            *(str(getattr(r, n)) for n in names),
            f"{r.seconds:.3f}",
            "from a snapshot" if r.rebuilt else ("[red]failed[/]" if not r.ok else ""),
        )
    return table


sink_app = typer.Typer(
    help="Vector sinks: a node's table followed into a ChromaDB collection.",
    no_args_is_help=True,
)
app.add_typer(sink_app, name="sink")


@sink_app.command("status")
def sink_status(
    config: ConfigOption = config_module.DEFAULT_PATH, as_json: JsonOption = False
) -> None:
    """Each sink's node, collection, checkpoint and lag (events not yet indexed)."""
    import msgspec

    with _replicator(config) as replicator:
        found = [
            {
                "sink": name,
                "node": sink.node.name,
                "table": sink.settings.table,
                "collection": sink.settings.collection,
                "path": str(sink.path),
                "lag": sink.lag(),
                "documents": sink.count(),
            }
            for name, sink in replicator.sinks.items()
        ]
    if as_json:
        sys.stdout.write(msgspec.json.encode({"sinks": found}).decode() + "\n")
        return
    for f in found:
        held = f"{f['documents']} documents"
        if f["documents"] is None:
            held = "missing (the next sync rebuilds it)"
        console.print(
            f"{f['sink']}: {f['node']}'s {f['table']} -> {f['collection']} in {f['path']}: "
            f"{held}, {f['lag']} events behind",
            highlight=False,
            soft_wrap=True,
        )
    if not found:
        console.print("no sinks are configured")


SinkArgument = Annotated[str, typer.Argument(help="The sink, as named in [sinks.NAME].")]


@sink_app.command("rebuild")
def sink_rebuild(
    name: SinkArgument,
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """Empty the collection and rebuild it from the node's log (or, when the
    log no longer tells the whole story, a snapshot of the table)."""
    with _replicator(config) as replicator:
        result = replicator.sink(name).rebuild()
    if as_json:
        _print_json(result)
    else:
        console.print(sink_table([result]))
    if not result.ok:
        errors.print(f"[bold red]failed:[/] {escape(result.error or '')}", soft_wrap=True)
        raise typer.Exit(1)


@sink_app.command("query")
def sink_query(
    name: SinkArgument,
    text: Annotated[str, typer.Argument(help="What to look for.")],
    count: Annotated[int, typer.Option("--count", "-n", help="How many documents.")] = 3,
    config: ConfigOption = config_module.DEFAULT_PATH,
    as_json: JsonOption = False,
) -> None:
    """The documents nearest ``text`` in the sink's collection."""
    with _replicator(config) as replicator:
        found = replicator.sink(name).query(text, count)
    if as_json:
        _print_json({"results": [{"id": i, "document": d, "distance": x} for i, d, x in found]})
        return
    for doc_id, document, distance in found:
        console.print(f"{distance:.3f}  {doc_id}  {escape(document)}", highlight=False)


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
