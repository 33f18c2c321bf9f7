"""``replicator status`` and ``stats``: where replication stands now, and
how its recorded passes went."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from replicator.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    activity,
    age,
    by_policy,
    escape,
    open_replicator,
    out,
    plural,
    usage,
    warn,
)
from replicator.errors import NOT_INITIALIZED

if TYPE_CHECKING:
    from rich.table import Table


def status(config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False) -> None:
    """Where replication stands: lag, last sync, syncing now, reachability.

    Per link and channel: head, checkpoint, lag in events and seconds, last
    successful sync, whether a pass runs now and who holds the link; per
    node: reachable, open review items; per sink: lag. Exits 1 when a node
    cannot be reached or is not initialized.
    """
    from replicator.status import status as read_status

    with open_replicator(config) as replicator, activity():
        found = read_status(replicator)
    if as_json:
        sys.stdout.write(found.to_json().decode() + "\n")
    else:
        out().print(_status_tables(found))
    if not found.ok:
        raise typer.Exit(1)


def _status_tables(found) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, title="Links", title_justify="left", pad_edge=False)
    for column in ("link", "channel", "head", "checkpoint", "lag", "behind", "last sync", "now"):
        table.add_column(column, justify="left" if column in ("link", "channel") else "right")
    for link in found.links:
        now = "[green]syncing[/]" if link.syncing else ("idle" if link.runner else "")
        if not link.reachable:
            now = "[red]unreachable[/]"
            if link.error and link.error.endswith(NOT_INITIALIZED):
                now = "[yellow]not initialized[/]"
        behind = "" if link.lag_seconds is None else age(link.lag_seconds)
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
        elif not node.initialized:
            state = f"[yellow]{escape(NOT_INITIALIZED)}[/]"
        items = node.open_review_items
        left = ", ".join(f"{escape(t)} {n}" for t, n in sorted(node.keys.items()))
        notes.append(
            f"{node.name} ({node.role}, {escape(node.url)}): {state}"
            + (f", {plural(items, 'open review item')}" if items else "")
            + (f", keys left: {left}" if left else "")
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


def stats(
    config: ConfigOption = DEFAULT_CONFIG,
    days: Annotated[float, typer.Option("--days", help="Over how many days.", metavar="DAYS")] = 7,
    as_json: JsonOption = False,
) -> None:
    """Recorded passes over the last N days, in total and per link.

    How many passes succeeded and failed, events applied, conflicts by
    policy, parked, mean and p95 seconds, last success.
    """
    from replicator.stats import stats as read_stats

    if not days > 0:
        usage(f"--days must be more than 0, got {days:g}")
    with open_replicator(config) as replicator:
        found = read_stats(replicator, days)
    if as_json:
        sys.stdout.write(found.to_json().decode() + "\n")
    else:
        out().print(_stats_table(found))
    for node, error in found.unreachable.items():
        warn(f"[bold red]unreachable:[/] {node}: {escape(error)} (its runs are not counted)")
    if found.unreachable:
        raise typer.Exit(1)


def _stats_table(found) -> Table:
    from rich import box
    from rich.table import Table

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
        notes.append("conflicts by policy: " + by_policy(found.conflicts_by_policy))
    if found.last_error:
        notes.append(f"last failure {found.last_failure}: {escape(found.last_error)}")
    table.caption = "\n".join(notes) or None
    table.caption_justify = "left"
    return table
