"""``replicator sink``: vector sinks, a node's table followed into a ChromaDB
collection."""

from __future__ import annotations

from typing import Annotated

import typer

from replicator.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    PlainCommand,
    escape,
    open_replicator,
    out,
    print_json,
    say,
    usage,
    warn,
)
from replicator.cli.render import sink_table

app = typer.Typer(
    help="Vector sinks: a node's table followed into a ChromaDB collection.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

SinkArgument = Annotated[
    str, typer.Argument(help="The sink, as named in [sinks.NAME].", metavar="SINK")
]


@app.command("status", cls=PlainCommand, short_help="Each sink's collection, checkpoint and lag.")
def sink_status(config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False) -> None:
    """Show each sink's node, collection, checkpoint and lag (events not yet indexed)."""
    with open_replicator(config) as replicator:
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
        print_json({"sinks": found})
        return
    for f in found:
        held = f"{f['documents']} documents"
        if f["documents"] is None:
            held = "missing (the next sync rebuilds it)"
        say(
            f"{f['sink']}: {f['node']}'s {f['table']} -> {f['collection']} in {f['path']}: "
            f"{held}, {f['lag']} events behind"
        )
    if not found:
        say("no sinks are configured")


@app.command("rebuild", cls=PlainCommand, short_help="Rebuild a sink's collection from its node.")
def sink_rebuild(
    name: SinkArgument,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Empty the collection and rebuild it from the node's log.

    When the log no longer tells the whole story, from a snapshot of the table.
    """
    with open_replicator(config) as replicator:
        result = replicator.sink(name).rebuild()
    if as_json:
        print_json(result)
    else:
        out().print(sink_table([result]))
    if not result.ok:
        warn(f"[bold red]failed:[/] {escape(result.error or '')}")
        raise typer.Exit(1)


@app.command("query", cls=PlainCommand, short_help="The documents nearest a text.")
def sink_query(
    name: SinkArgument,
    text: Annotated[str, typer.Argument(help="What to look for.", metavar="TEXT")],
    count: Annotated[
        int, typer.Option("--count", "-n", help="How many documents.", metavar="N")
    ] = 3,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Find the documents nearest TEXT in the sink's collection."""
    from rich import box
    from rich.table import Table

    if count < 1:
        usage(f"--count must be 1 or more, not {count}")
    with open_replicator(config) as replicator:
        found = replicator.sink(name).query(text, count)
    if as_json:
        print_json({"results": [{"id": i, "document": d, "distance": x} for i, d, x in found]})
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("distance", justify="right", no_wrap=True)
    table.add_column("id", no_wrap=True)
    table.add_column("document", overflow="fold")
    for doc_id, document, distance in found:
        table.add_row(f"{distance:.3f}", escape(doc_id), escape(document))
    out().print(table)
    if not found:
        say("no documents in the collection")
