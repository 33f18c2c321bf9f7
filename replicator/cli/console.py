"""``replicator console``: the review queue as a web app (:mod:`replicator.console`)."""

from __future__ import annotations

import ipaddress
import os
from typing import Annotated

import typer

from replicator.cli.common import DEFAULT_CONFIG, ConfigOption, open_replicator, usage, warn

#: The environment variable holding the token that admits people.
TOKEN_ENV = "REPLICATOR_CONSOLE_TOKEN"
#: A shorter token is too easy to guess.
TOKEN_LENGTH = 16


def console(
    config: ConfigOption = DEFAULT_CONFIG,
    host: Annotated[
        str,
        typer.Option(
            "--host", help="The address to listen on (loopback unless told).", metavar="ADDRESS"
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port.", metavar="PORT")] = 8470,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            help="Who decides for requests with an Authorization header (default: the "
            "operating-system user); people who log in give their own name.",
            metavar="NAME",
        ),
    ] = None,
) -> None:
    """Serve the review queue as a web app for the people who decide it.

    Summary, a filtered and paged list, each item's sides next to each
    other with take / merge / discard, bulk decisions after a dry-run
    preview, and the history: the same calls as `replicator review`.
    People log in with the token in REPLICATOR_CONSOLE_TOKEN (scripts send
    `Authorization: Bearer TOKEN`); it refuses to start without one. It
    serves plain HTTP on loopback: put a TLS proxy in front to open it
    to a network. Stops on Ctrl-C.
    """
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        usage(
            f"{TOKEN_ENV} is not set: the console admits whoever gives that token. Set it, "
            'e.g. export REPLICATOR_CONSOLE_TOKEN="$(python3 -c '
            "'import secrets; print(secrets.token_urlsafe())')\""
        )
    if len(token) < TOKEN_LENGTH:
        usage(f"{TOKEN_ENV} is too short to be a secret: give at least {TOKEN_LENGTH} characters")
    if not 0 < port < 65536:
        usage(f"--port must be from 1 to 65535, not {port}")
    if not _loopback(host):
        warn(
            f"[yellow]warning:[/] listening on {host}: anyone who can reach it sees the login "
            "page, over plain HTTP; put a TLS proxy in front"
        )
    import uvicorn  # here, not above: `replicator --help` starts without it

    from replicator.console import create_app

    with open_replicator(config) as replicator:
        app = create_app(replicator.review, token, by=by)
        warn(f"replicator console on http://{_url_host(host)}:{port}/ (Ctrl-C stops it)")
        uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
