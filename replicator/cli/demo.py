"""``replicator demo``: a reference app on two embedded nodes (``--app``:
the learning app, or the relational one)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from replicator.cli.common import escape, fail, out, say, short, usage
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
    app: Annotated[
        str,
        typer.Option(
            help="The reference app: learning (offline-first, text keys) or relational "
            "(integer keys, unique emails, foreign keys).",
            metavar="APP",
        ),
    ] = "learning",
) -> None:
    """Run a reference app on two embedded nodes, sync them, and show both sides."""
    from replicator.demo import APPS, STORES

    if app not in APPS:
        usage(f"--app must be one of {', '.join(APPS)}, not {app!r}")
    if store not in STORES:
        usage(f"--store must be one of {', '.join(STORES)}, not {store!r}")
    directory = directory or Path(tempfile.mkdtemp(prefix="replicator-demo-"))
    if app == "relational":
        _relational(directory, store)
    else:
        _learning(directory, store)


def _learning(directory: Path, store: str) -> None:
    """The learning app: capture, one conflict per policy, a resolved item, a vector sink."""
    from rich import box
    from rich.table import Table

    from replicator import demo as demo_module
    from replicator.clock import to_datetime

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


def _relational(directory: Path, store: str) -> None:
    """The relational app: leased integer keys, a unique email both sides
    took, a parent deleted under a new child, an edit of a referenced row."""
    from rich import box
    from rich.table import Table

    from replicator import demo_relational

    try:
        run = demo_relational.run(directory, store=store)
    except ReplicatorError as e:
        raise fail(e) from e

    say(
        f"The relational app (examples/relational_app.py): integer keys the database numbers, "
        f"unique emails, foreign keys with ORM cascades. Server: {run.server_url}; "
        f"device: {run.url}."
    )
    say("\n1. The server has a user with an old conversation; the device syncs for the first time:")
    _writes(run.setup)
    out().print(pass_table(run.first.passes, run.first.bootstrapped))
    keys = Table(
        title="Leased keys left for new rows",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    keys.add_column("node")
    for table in demo_relational.KEYED:
        keys.add_column(table, justify="right")
    for node, left in run.keys_left.items():
        keys.add_row(node, *(str(left.get(table, 0)) for table in demo_relational.KEYED))
    out().print(keys)
    say(
        "A local gets blocks of keys during a pass with the server, so that its new rows "
        "never take a key another node uses; the server leases its own as it inserts."
    )
    say("\nWhile apart:")
    for number, (title, writes) in enumerate(run.steps, start=2):
        say(f"{number}. {title}:")
        _writes(writes)
    say("New rows take keys from each node's own blocks: no two rows share one.")
    for number, passes in enumerate(run.syncs, start=1):
        quiet = "" if any(p.read for p in passes) else " (nothing left to carry)"
        say(f"\nSync {number}{quiet}:")
        out().print(pass_table(passes))
    for state in run.before:
        out().print(_business_table(state))
    out().print(_review_table(run.parked, "The review queues after the syncs"))
    say(
        "Each node parked the other's version: the server the device's user and message, "
        "the device the server's user, and the message the server's delete removed."
    )
    if run.decisions:
        settings = directory / "replicator.toml"
        say(
            f"\nA person keeps the server's user for {demo_relational.CLASH}, syncing after "
            "each decision:"
        )
        for decided, passes in run.decisions:
            command = (
                f"replicator review discard {decided.ref}"
                if decided.decision == "discard"
                else f"replicator review resolve {decided.ref} --take {decided.decision}"
            )
            say(f"  $ {command} --by {decided.by} --config {settings}")
            out().print(pass_table(passes))
    summary = Table(
        title="Both nodes at the end, by business key",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in ("table", "key", "server rows", "local rows", "same"):
        summary.add_column(column, justify="right" if "rows" in column else "left")
    for state in run.tables:
        same = "[green]yes[/]" if state.equal else f"[red]no[/] ({len(state.differing)} differ)"
        summary.add_row(
            state.table,
            " + ".join(state.columns[: state.width]),
            str(len(state.server)),
            str(len(state.local)),
            same,
        )
    out().print(summary)
    if run.open:
        reasons = ", ".join(sorted({f"{i.reason} ({i.node})" for i in run.open}))
        say(f"Still open for review, kept for a person to read: {reasons}.")
    if run.equal:
        out().print("[green]Both sides are equal.[/]")
    else:
        differ = ", ".join(t.table for t in run.tables if not t.equal)
        out().print(f"[red]Both sides are not equal[/]: {escape(differ)} differ.")
        raise typer.Exit(1)


def _writes(writes) -> None:
    for write in writes:
        say(f"   {write.side}: {write.text}")


def _business_table(state) -> Table:
    """One table on both sides, a row per business key."""
    from rich import box
    from rich.table import Table

    key = state.columns[: state.width]
    table = Table(
        title=f"{state.table} by {' + '.join(key)}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for column in (*key, "server", "device", "same"):
        table.add_column(column, overflow="fold")
    values = state.columns[state.width :]
    table.columns[len(key)].header = f"server ({', '.join(values)})"
    table.columns[len(key) + 1].header = f"device ({', '.join(values)})"

    def shown(row) -> str:
        return "-" if row is None else ", ".join(escape(str(v)) for v in row)

    for k in state.keys:
        server, local = state.server.get(k), state.local.get(k)
        table.add_row(
            *(
                escape(short(v)) if name.endswith("_id") else escape(str(v))
                for name, v in zip(key, k, strict=True)
            ),
            shown(server),
            shown(local),
            "[green]yes[/]" if server == local else "[red]no[/]",
        )
    return table


def _review_table(items, title: str) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("item", "table", "key", "reason", "detail"):
        table.add_column(column, overflow="fold", no_wrap=column in ("item", "reason"))
    for item in items:
        table.add_row(item.ref, item.table, item.key, item.reason, escape(item.detail))
    return table
