"""``replicator demo``: the reference app on two embedded nodes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from replicator.cli.common import escape, fail, out, short, usage
from replicator.cli.render import pass_table, sink_table
from replicator.errors import ReplicatorError

if TYPE_CHECKING:
    from rich.table import Table


def demo(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Where to put the demo databases (default: a new temporary directory).",
            metavar="DIR",
        ),
    ] = None,
    store: Annotated[
        str, typer.Option(help="The embedded store: duckdb or sqlite.", metavar="STORE")
    ] = "duckdb",
) -> None:
    """Run the reference app on two embedded nodes, sync them, and show both sides."""
    from rich import box
    from rich.table import Table

    from replicator import demo as demo_module
    from replicator.clock import to_datetime
    from replicator.demo import STORES

    if store not in STORES:
        usage(f"--store must be one of {', '.join(STORES)}, not {store!r}")
    directory = directory or Path(tempfile.mkdtemp(prefix="replicator-demo-"))
    try:
        run = demo_module.run(directory, store=store)
    except ReplicatorError as e:
        raise fail(e) from e

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
            ", ".join(short(v) for v in event.key.values()),
            changed,
            " ".join(f"{n}:{c}" for n, c in event.version.items()),
            to_datetime(event.hlc).strftime("%H:%M:%S"),
        )
    out().print(table)
    out().print(
        f"{len(run.events)} events captured in {len(txids)} transactions, each written in the "
        "same transaction as the change it records."
    )
    out().print(
        f"\nMeanwhile the server ({run.server_url}) captured {len(run.server_events)} events "
        "of its own: a tutor's additions (one for another user)."
    )
    out().print(pass_table(run.passes))
    out().print(
        "\nThen, while apart, both sides edit the same row of every table (the device "
        "first), each table under another conflict policy, and sync again:"
    )
    out().print(pass_table(run.conflict_passes))
    out().print(_conflict_table(run.conflicts))
    for item in run.parked:
        out().print(
            f"Parked for review on the server: item {item.ref}, {item.table} {item.key}: "
            f"{item.reason} ({item.detail}). Both versions are kept in its review queue.",
            highlight=False,
            soft_wrap=True,
        )
    decided = run.resolution
    out().print(
        f"\nA person resolves it, writing a version that keeps both:\n"
        f"  $ replicator review resolve {decided.ref} --merge "
        f'\'{{"content": "{decided.row["content"]}"}}\' --by {decided.by}\n'
        "The decision is a new change on the server that descends from both versions, "
        "so the next sync carries it to the device without a conflict:",
        highlight=False,
        soft_wrap=True,
    )
    out().print(pass_table(run.resolution_passes))
    out().print(
        "After each sync the device's documents follow into its ChromaDB collection "
        "(this sync's part):",
        highlight=False,
    )
    out().print(sink_table(run.sinks))
    out().print(
        f"Searching the device's vector store for {demo_module.QUERY!r} (offline hashing "
        "embeddings; name a real model with embedding_function):",
        highlight=False,
        soft_wrap=True,
    )
    for doc_id, document, distance in run.search:
        out().print(f"  {distance:.3f}  {escape(document)}  ({doc_id[:8]}…)", highlight=False)
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
    out().print(result)
    settings = directory / "replicator.toml"
    out().print(
        f"Try the commands on these databases: replicator review history --config {settings}; "
        f"replicator sink query documents 'la cuenta' --config {settings}",
        highlight=False,
        soft_wrap=True,
    )
    if not all(state.equal for state in run.tables):
        raise typer.Exit(1)


def _conflict_table(conflicts) -> Table:
    """Each demo conflict: what each side wrote, and what both hold now."""
    from rich import box
    from rich.table import Table

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
