"""``replicator review``: the manual-review queue, listed, shown and decided."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from replicator.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    LimitOption,
    PlainCommand,
    age,
    escape,
    open_replicator,
    out,
    plural,
    print_json,
    progress,
    row_text,
    say,
    shown_limit,
    stream_json,
    usage,
    value,
    warn,
)

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

    from replicator.review import ReviewQueue

app = typer.Typer(
    help="The manual-review queue: list, show, resolve and discard parked items.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

TableFilter = Annotated[
    str | None, typer.Option("--table", "-t", help="Only this table.", metavar="TABLE")
]
NodeFilter = Annotated[
    str | None, typer.Option("--node", "-n", help="Only this node's queue.", metavar="NODE")
]
ReasonFilter = Annotated[
    str | None,
    typer.Option("--reason", "-r", help="Only this reason (e.g. manual_review).", metavar="REASON"),
]
OlderFilter = Annotated[
    str | None,
    typer.Option(
        "--older-than", help="Only items parked longer ago (e.g. 2h, 7d).", metavar="PERIOD"
    ),
]
ByOption = Annotated[
    str | None,
    typer.Option("--by", help="Who decides (default: the operating-system user).", metavar="NAME"),
]
# How many decided items a bulk decision names on a terminal.
SAMPLE = 5
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Decide and check everything, then write nothing.")
]
OffsetOption = Annotated[
    int,
    typer.Option("--offset", help="Skip the first N matches (with --limit: a page).", metavar="N"),
]
AllOption = Annotated[bool, typer.Option("--all", help="Every open item (no filter needed).")]
ItemArgument = Annotated[
    str | None,
    typer.Argument(
        help="The item: NODE:NUMBER as listed, or NUMBER when one node has it.", metavar="ITEM"
    ),
]


def _filter(table, node, reason, older_than):
    from replicator.config import duration
    from replicator.review import Filter

    try:
        period = duration(older_than) if older_than is not None else None
    except ValueError as e:
        usage(f"--older-than: {e}")
    return Filter(table=table, node=node, reason=reason, older_than=period)


@contextmanager
def _queue(config: Path) -> Iterator[ReviewQueue]:
    """The configuration's review queue; library errors become exit codes."""
    with open_replicator(config) as replicator:
        yield replicator.review()


def _unreachable(listing) -> None:
    for node, error in listing.unreachable.items():
        warn(f"[bold red]unreachable:[/] {node}: " + escape(error))
    if listing.unreachable:
        raise typer.Exit(1)


@app.command(
    "list", cls=PlainCommand, short_help="List open items, with counts by table and reason."
)
def review_list(
    table: TableFilter = None,
    node: NodeFilter = None,
    reason: ReasonFilter = None,
    older_than: OlderFilter = None,
    sort: Annotated[
        str,
        typer.Option(
            "--sort", help="age (oldest first), newest, table, node or reason.", metavar="ORDER"
        ),
    ] = "age",
    limit: LimitOption = None,
    offset: OffsetOption = 0,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """List open items across every node, with counts by table and reason.
    A page costs what it shows, however long the queue: --limit and
    --offset page through it."""
    where = _filter(table, node, reason, older_than)
    shown = _paged(limit, offset)
    with _queue(config) as queue:
        listing = queue.list(where, sort=sort, limit=shown, offset=offset)
    _print_listing(listing, "Open review items", "open", as_json)


@app.command("summary", cls=PlainCommand, short_help="Count open items by node, table and reason.")
def review_summary(
    node: NodeFilter = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Count open items by node, table and reason, with the oldest's age:
    the shape of a queue of any length, in one grouped query per node."""
    with _queue(config) as queue:
        summary = queue.summary(node)
    if as_json:
        print_json(summary)
    else:
        from rich import box
        from rich.table import Table

        if summary.groups:
            table = Table(title="Open review items", title_justify="left", box=box.SIMPLE_HEAD)
            for column in ("node", "table", "reason", "open", "oldest"):
                table.add_column(column, justify="right" if column == "open" else "left")
            for g in summary.groups:
                cells = (g.node, g.table, g.reason, f"{g.count:,}", age(g.oldest_age_seconds))
                table.add_row(*map(escape, cells))
            out().print(table)
        say(plural(summary.open, "open item"))
    _unreachable(summary)


@app.command("history", cls=PlainCommand, short_help="List closed items, newest first.")
def review_history(
    table: TableFilter = None,
    node: NodeFilter = None,
    reason: ReasonFilter = None,
    limit: LimitOption = None,
    offset: OffsetOption = 0,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """List closed items, newest first: who decided what, or what superseded them."""
    where = _filter(table, node, reason, None)
    shown = _paged(limit, offset)
    with _queue(config) as queue:
        listing = queue.history(where, limit=shown, offset=offset)
    _print_listing(listing, "Review history", "closed", as_json)


def _paged(limit: int | None, offset: int) -> int | None:
    if offset < 0:
        usage(f"--offset must be 0 or more, not {offset}")
    return shown_limit(limit)


def _print_listing(listing, title: str, state: str, as_json: bool) -> None:
    """A page of items as a table or streamed JSON, then the counts over
    every match, and how many come after the page."""
    more = max(listing.total - listing.offset - len(listing.items), 0)
    if as_json:
        stream_json(
            "items",
            listing.items,
            total=listing.total,
            offset=listing.offset,
            by_table=listing.by_table,
            by_reason=listing.by_reason,
            obsolete=listing.obsolete,
            unreachable=listing.unreachable,
            more=more,
        )
    else:
        out().print(_item_table(listing.items, title, closed=state == "closed"))
        say(_summary(listing, state))
        if more:
            after = listing.offset + len(listing.items)
            say(f"{more} more not shown (--offset {after} shows the next page, --limit 0 all)")
    _unreachable(listing)


@app.command("show", cls=PlainCommand, short_help="Show an item's versions side by side.")
def review_show(
    item: Annotated[str, typer.Argument(help="The item: NODE:NUMBER, or NUMBER.", metavar="ITEM")],
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Show an item: base, server and local versions side by side.

    Changed fields are marked; the events involved are listed below.
    """
    with _queue(config) as queue:
        shown = queue.show(item)
    if as_json:
        print_json(shown)
        return
    for line in _show_lines(shown):
        out().print(line, highlight=False, soft_wrap=True)


@app.command(
    "resolve", cls=PlainCommand, short_help="Settle items by taking a side or a merged row."
)
def review_resolve(
    item: ItemArgument = None,
    take: Annotated[
        str | None,
        typer.Option("--take", help="Keep this side's row: server or local.", metavar="SIDE"),
    ] = None,
    merge: Annotated[
        str | None,
        typer.Option(
            "--merge",
            help="The server's row with these values: '{\"col\": value}'.",
            metavar="JSON",
        ),
    ] = None,
    by: ByOption = None,
    table: TableFilter = None,
    node: NodeFilter = None,
    reason: ReasonFilter = None,
    older_than: OlderFilter = None,
    every: AllOption = False,
    dry_run: DryRunOption = False,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Settle an item, or every matching one, by taking a side or a merged row.

    The decision replicates to every node on the next sync.
    """
    import json

    values = None
    if merge is not None:
        try:
            values = json.loads(merge)
        except ValueError as e:
            usage(f"--merge: not JSON: {e}")
    if item is None and values is not None:
        usage("--merge settles one item: give its ID")
    if item is None and take is None:
        usage("give exactly one of --take and --merge")
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


@app.command(
    "discard", cls=PlainCommand, short_help="Drop items' incoming versions, keeping the rows held."
)
def review_discard(
    item: ItemArgument = None,
    by: ByOption = None,
    table: TableFilter = None,
    node: NodeFilter = None,
    reason: ReasonFilter = None,
    older_than: OlderFilter = None,
    every: AllOption = False,
    dry_run: DryRunOption = False,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Drop an item's incoming version, keeping the row its node holds now.

    That row then replicates, so every node holds it.
    """
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
            usage("give an item ID or filters (--table, --node, ...), not both")
        with _queue(config) as queue:
            decided = one(queue)
        _print_decided(decided, dry_run, as_json)
        return
    if not where.any and not every:
        usage("give an item ID, filters (--table, --node, --reason, --older-than) or --all")
    doing = "checking" if dry_run else "deciding"
    with _queue(config) as queue, progress(f"{doing} items", "items") as advance:
        result = queue.resolve_matching(
            where, take=take, discard=take is None, by=by, dry_run=dry_run, progress=advance
        )
    if as_json:
        print_json(result)
        return
    _say_bulk(result, take=take, dry_run=dry_run)


def _say_bulk(result, *, take: str | None, dry_run: bool, say=say) -> None:
    """One line for a bulk decision: how many, and the first few."""
    how = f"take {take}" if take else "discard"
    verb = "would be decided" if dry_run else "decided"
    count = result.decided_count
    sample = ", ".join(d.ref for d in result.decided[:SAMPLE])
    if count > SAMPLE:
        sample += f" and {count - SAMPLE:,} more"
    say(
        f"{count:,} of {plural(result.matched, 'matching item')} {verb} ({how})"
        + (f": {sample}" if sample else "")
    )


def _print_decided(d, dry_run: bool, as_json: bool) -> None:
    if as_json:
        print_json(d)
        return
    row = escape(row_text(d.row))
    if d.event_id is None:
        tail = "nothing is written or replicated"
        row = "unchanged"
    else:
        tail = f"change {d.event_id} replicates on the next sync"
    how = _DECISIONS[d.decision]
    if dry_run:
        out().print(
            f"Dry run, nothing written: {d.ref} would be resolved ({how}): {d.table} "
            f"{d.key} would be {row}",
            highlight=False,
            soft_wrap=True,
        )
        return
    out().print(
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


def _item_table(items, title: str, closed: bool = False) -> Table | Text:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    if not items:
        return Text()
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    columns = ["item", "table", "key", "reason", "events"]
    columns += ["closed (UTC)", "status", "by", "decision"] if closed else ["age", "detail"]
    for column in columns:
        table.add_column(
            column,
            overflow="fold",
            no_wrap=column in ("item", "age", "events"),
            justify="right" if column == "events" else "left",
        )
    for i in items:
        row = [i.ref, i.table, i.key, i.reason, f"{i.event_count:,}"]
        if closed:
            when = f"{i.resolved_at:%Y-%m-%d %H:%M:%S}" if i.resolved_at else ""
            row += [when, i.status, i.resolved_by or "", i.resolution or ""]
        else:
            row += [age(i.age_seconds), i.detail]
        table.add_row(*(escape(v) for v in row))
    return table


def _summary(listing, state: str) -> str:
    def counts(by: dict[str, int]) -> str:
        return ", ".join(f"{name} {n}" for name, n in sorted(by.items()))

    line = plural(listing.total, f"{state} item")
    if listing.total:
        line += f"; by table: {counts(listing.by_table)}; by reason: {counts(listing.by_reason)}"
    if listing.obsolete:
        line += f" ({listing.obsolete} closed just now as obsolete: superseded by a later change)"
    return line


def _show_lines(shown) -> list:
    """``review show``: the header, the rows side by side, the events."""
    from rich import box
    from rich.table import Table

    status = shown.status if shown.status != "open" else "[bold]open[/]"
    lines: list = [
        f"Item {shown.ref}: {escape(shown.table)} {escape(shown.key)}, {status}",
        f"{shown.reason}: " + escape(shown.detail),
        f"parked on {shown.node} at {shown.detected_at:%Y-%m-%d %H:%M:%S} UTC "
        f"({age(shown.age_seconds)} ago)",
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
        text = escape(value(row.get(column)))
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
