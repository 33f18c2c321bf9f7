"""``replicator serve``: the sync gateway devices replicate through
(:mod:`replicator.gateway`)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from replicator.cli.common import DEFAULT_CONFIG, ConfigOption, fail, load, usage, warn


def serve(
    config: ConfigOption = DEFAULT_CONFIG,
    host: Annotated[
        str, typer.Option("--host", help="The address to listen on.", metavar="ADDRESS")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port.", metavar="PORT")] = 8471,
    workers: Annotated[
        int, typer.Option("--workers", help="Worker processes (default 1).", metavar="N")
    ] = 1,
) -> None:
    """Serve the sync gateway: devices push and pull their events over HTTP
    with a token (`replicator token issue`) instead of the server's
    database URL. The configuration is the server's (its `[gateway]` table
    sets limits and read-only tables); tokens are checked with the secret
    in REPLICATOR_GATEWAY_SECRET. It serves plain HTTP: put a TLS proxy in
    front of it (see the README's "Deploying for devices"). Every worker
    keeps its state in the server database, so several processes, on one
    machine or many, serve the same devices. Stops on Ctrl-C.
    """
    from replicator.errors import ReplicatorError
    from replicator.gateway import tokens

    if not 0 < port < 65536:
        usage(f"--port must be from 1 to 65535, not {port}")
    if workers < 1:
        usage(f"--workers must be at least 1, not {workers}")
    settings = load(config)
    if settings.nodes[settings.server].url.startswith(("http://", "https://")):
        usage(f"{config}: the server node's url is a gateway's; serve needs the server database")
    try:
        tokens.check_secret(os.environ.get(tokens.SECRET_ENV))
    except ReplicatorError as e:
        raise fail(e) from None
    import uvicorn  # here, not above: `replicator --help` starts without it

    from replicator.gateway.app import CONFIG_ENV

    os.environ[CONFIG_ENV] = str(config.resolve())
    warn(f"replicator gateway on http://{host}:{port}/v1 ({workers} worker(s); Ctrl-C stops it)")
    uvicorn.run(
        "replicator.gateway.app:from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        server_header=False,
        timeout_graceful_shutdown=5,
    )
