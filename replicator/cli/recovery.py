"""``replicator replay``, ``bootstrap``, ``prune``, ``verify`` and ``log``:
rebuilding, trimming, checking and reading replicas."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from replicator.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    LimitOption,
    escape,
    open_replicator,
    out,
    plural,
    print_json,
    progress,
    say,
    short,
    shown_limit,
    stream_json,
    usage,
    value,
    warn,
)
from replicator.errors import ConfigurationError

NodeOption = Annotated[
    str, typer.Option("--node", "-n", help="The node to work on.", metavar="NODE")
]


def replay(
    node: Annotated[
        str, typer.Option("--node", "-n", help="The node to replay onto.", metavar="NODE")
    ],
    start: Annotated[
        int | None,
        typer.Option(
            "--from",
            help="The log position to start at (0 or 1: the whole log).",
            metavar="POSITION",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since",
            help="Replay the changes made at or after this ISO time (UTC).",
            metavar="TIME",
        ),
    ] = None,
    end: Annotated[
        int | None,
        typer.Option(
            "--to", help="The last position (default: all committed).", metavar="POSITION"
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what it would do; write nothing.")
    ] = False,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Apply the server's log to a node again, from a position or a time."""
    import datetime as dt

    from replicator.replay import first_position_since
    from replicator.replay import replay as run_replay

    if (start is None) == (since is None):
        usage("give exactly one of --from and --since")
    if start is not None and start < 0:
        usage(f"--from must be a log position, 0 or more, not {start}")
    if end is not None and end < 0:
        usage(f"--to must be a log position, 0 or more, not {end}")
    moment = None
    if since is not None:
        try:
            moment = dt.datetime.fromisoformat(since)
        except ValueError:
            usage(f"--since: not an ISO time: {since!r} (e.g. 2026-11-24T09:30:00)")
    with open_replicator(config) as replicator:
        settings = replicator.config
        target, log = replicator.node(node), replicator.server
        if moment is not None:
            if replicator.gateway is not None:
                usage("--since needs the server's database; through a sync gateway give --from")
            with log.connect() as conn:
                start = first_position_since(conn, moment)
        unscoped = {t: s.unscoped for t, s in settings.tables.items()}
        with progress(f"replaying onto {node}", "events") as advance:
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
    if as_json:
        sys.stdout.write(result.to_json().decode() + "\n")
        return
    would = "would " if dry_run else ""
    say(
        f"{'Dry run: ' if dry_run else ''}positions {result.start}..{result.end} of "
        f"{result.log}'s log onto {result.node}: {plural(result.read, 'event')} read; "
        f"{would}insert {result.inserted}, {would}update {result.updated}, {would}delete "
        f"{result.deleted}; {result.skipped} already reflected or changed since; "
        f"{result.conflicts} concurrent with unsent changes; {result.parked} parked "
        f"({result.seconds:.2f} s)"
    )


def bootstrap(
    node: Annotated[
        str, typer.Option("--node", "-n", help="The empty local to fill.", metavar="NODE")
    ],
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Fill a new or emptied local with the server's current rows in its scope."""
    with (
        open_replicator(config) as replicator,
        progress(f"bootstrapping {node}", "rows") as advance,
    ):
        result = replicator.bootstrap(node, progress=advance)
    if as_json:
        sys.stdout.write(result.to_json().decode() + "\n")
        return
    copied = ", ".join(f"{table} {count}" for table, count in result.rows.items())
    say(
        f"{result.node}: {plural(sum(result.rows.values()), 'row')} copied from "
        f"{result.server} ({copied}); it now stands at position {result.position} of the "
        f"log, where the next sync goes on ({result.seconds:.2f} s)"
    )


def prune(
    keep: Annotated[
        str | None,
        typer.Option(
            "--retention",
            help="Keep events younger than this, e.g. 7d (default: the config's).",
            metavar="PERIOD",
        ),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Delete outbox events every replica has applied and older than the retention."""
    from replicator.config import duration

    try:
        period = duration(keep) if keep is not None else None
    except ValueError as e:
        usage(f"--retention: {e}")
    with open_replicator(config) as replicator:
        result = replicator.prune(period)
    if as_json:
        sys.stdout.write(result.to_json().decode() + "\n")
    else:
        for p in result.outboxes:
            note = f"; unreachable readers keep everything: {', '.join(p.unreachable)}"
            say(
                f"{p.node}: {plural(p.deleted, 'event')} deleted; pruned through position "
                f"{p.through} (every reader has applied up to {p.acknowledged})"
                + (note if p.unreachable else "")
            )
    for reader, source in result.behind.items():
        warn(
            f"[bold red]behind:[/] {reader} has not applied events {source} has pruned; "
            f"empty it and run `replicator bootstrap --node {reader}`"
        )
    if result.behind:
        raise typer.Exit(1)


def verify(
    node: Annotated[
        str | None,
        typer.Option(
            "--node", "-n", help="The local to check (default: every one).", metavar="NODE"
        ),
    ] = None,
    table: Annotated[
        list[str] | None,
        typer.Option("--table", "-t", help="Only this table (repeat for more).", metavar="TABLE"),
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Check that a local holds the server's rows (within its scope), by checksums."""
    from replicator.verify import verify as run_verify

    with open_replicator(config) as replicator:
        targets = [replicator.node(node)] if node else replicator.locals
        unscoped = {t: s.unscoped for t, s in replicator.config.tables.items()}
        results = [
            run_verify(replicator.server, target, tables=table or None, unscoped=unscoped)
            for target in targets
            if target.role == "local"
        ]
    if as_json:
        print_json({"nodes": results})
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
                out().print(
                    f"{result.node} vs {result.server}: {check.table}: {check.local_rows} / "
                    f"{check.server_rows} rows, {state}",
                    highlight=False,
                    soft_wrap=True,
                )
    if not all(result.equal for result in results):
        raise typer.Exit(1)


def log(
    node: Annotated[str, typer.Option("--node", "-n", help="Whose log to read.", metavar="NODE")],
    table: Annotated[
        str | None, typer.Option("--table", "-t", help="Only this table.", metavar="TABLE")
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", "-k", help="Only this row: a value or a JSON array.", metavar="KEY"),
    ] = None,
    at: Annotated[
        str | None,
        typer.Option("--at", help="Also show the row as it was at this ISO time.", metavar="TIME"),
    ] = None,
    limit: LimitOption = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """The change history (of a table, of one row): who changed what, when.

    Lists the newest changes, oldest first; --limit says how many.
    """
    import datetime as dt

    from replicator import history

    if (key is not None or at is not None) and table is None:
        usage("--key and --at need --table")
    if at is not None and key is None:
        usage("--at needs --key")
    moment = None
    if at is not None:
        try:
            moment = dt.datetime.fromisoformat(at)
        except ValueError:
            usage(f"--at: not an ISO time: {at!r} (e.g. 2026-11-24T09:30:00)")
    last = shown_limit(limit)
    row_key = history.key_text(key) if key is not None else None
    with open_replicator(config) as replicator, replicator.node(node).connect() as conn:
        try:
            found = history.changes(conn, table=table, key=row_key, last=last)
        except ConfigurationError as e:
            usage(f"--table on node {node}: {e}")
        row = history.row_at(conn, table, row_key, moment) if moment is not None else None
        if as_json:
            fields = {"at": moment.isoformat(), "row": row} if moment is not None else {}
            stream_json("changes", found, **fields)
            return
        listing = _log_table(node, table, row_key, found)
        total = history.count(conn, table=table, key=row_key)
    out().print(listing)
    hidden = total - listing.row_count
    if hidden > 0:
        say(f"{plural(hidden, 'earlier change')} not shown (--limit 0 shows all)")
    if moment is not None:
        state = "did not exist" if row is None else escape(value(row))
        say(f"At {moment.isoformat()} the row {state}")


def _log_table(node: str, table: str | None, row_key: str | None, found):
    from rich import box
    from rich.table import Table

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
            change.at.replace(tzinfo=None).isoformat(sep=" ", timespec="milliseconds"),
            change.origin,
            change.op,
            change.table,
            ", ".join(short(v) for v in change.key.values()),
            escape(
                ", ".join(f"{c}: {value(b)} -> {value(a)}" for c, (b, a) in change.changed.items())
            ),
        )
    return listing
