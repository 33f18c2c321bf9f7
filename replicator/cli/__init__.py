"""The ``replicator`` command: a thin layer over the library.

One module per command group, as Litestream's ``cmd/``: ``sync`` (init,
sync, run), ``status`` (status, stats), ``recovery`` (replay, bootstrap,
prune, verify, log), ``review``, ``sink`` and ``demo``; what they share
(options, consoles, configuration loading, errors to exit codes) is in
``common``, the tables several print in ``render``. Options are parsed and
the configuration read here; everything else is a library call. The
library never imports this package.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from replicator.cli import console, demo, recovery, review, serve, sink, status, sync, token
from replicator.cli.common import PlainCommand

app = typer.Typer(
    name="replicator",
    help="Event-sourced change-log replication between local and server databases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Plain help: flags without type labels, and no rich import to show it.
    rich_markup_mode=None,
)


def _version(shown: bool) -> None:
    if shown:
        from importlib.metadata import version

        print(f"replicator {version('replicator')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Event-sourced change-log replication between local and server databases."""


# Command -> its line in ``replicator --help`` (whole sentences, short
# enough that the list never cuts one); ``replicator COMMAND --help`` shows
# the command's docstring in full.
COMMANDS = {
    demo.demo: "Run the reference app on two embedded nodes.",
    sync.init: "Create or upgrade the replicator's tables.",
    sync.sync: "Replicate once: one pass per link and channel.",
    sync.run: "Replicate continuously, until SIGINT or SIGTERM.",
    status.status: "Where replication stands: lag, last sync, reachability.",
    status.stats: "How the recorded passes went over the last days.",
    recovery.replay: "Apply the server's log to a node again.",
    recovery.bootstrap: "Fill an empty local with the server's rows.",
    recovery.prune: "Delete outbox events every replica has applied.",
    recovery.verify: "Check that a local holds the server's rows.",
    recovery.log: "The change history of a node, a table or a row.",
    console.console: "Serve the review queue as a web app on loopback.",
    serve.serve: "Serve the sync gateway devices replicate through.",
}
for command, line in COMMANDS.items():
    app.command(short_help=line, cls=PlainCommand)(command)
app.add_typer(review.app, name="review", short_help="The manual-review queue: list, show, decide.")
app.add_typer(sink.app, name="sink", short_help="Vector sinks: status, rebuild, query.")
app.add_typer(token.app, name="token", short_help="Device tokens for the sync gateway.")


def main() -> None:
    """Console-script entry point (also ``python -m replicator``)."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


__all__ = ["app", "main"]
