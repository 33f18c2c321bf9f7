"""``replicator token``: the signed tokens devices replicate through the
gateway with (:mod:`replicator.gateway.tokens`)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from replicator.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    PlainCommand,
    fail,
    open_replicator,
    print_json,
    usage,
)

app = typer.Typer(
    help="Device tokens for the sync gateway: issued here, checked by the gateway.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@app.command("issue", cls=PlainCommand, short_help="Print a signed token for a device.")
def token_issue(
    device: Annotated[
        str, typer.Option("--device", help="The device's name (its node name).", metavar="NAME")
    ],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="A column the device's rows must have, as COLUMN=VALUE (repeat for more).",
            metavar="COLUMN=VALUE",
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", help="Lifetime, e.g. 30d or 12h (default: none).", metavar="PERIOD"
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Print a token that lets DEVICE replicate the rows of its scope through
    the gateway. It is signed with the secret in REPLICATOR_GATEWAY_SECRET
    (never in a configuration file); the gateway trusts its claims, not what
    the device sends. Give it to the device as its node's `token`."""
    import datetime as dt

    from replicator.config import duration
    from replicator.errors import ReplicatorError
    from replicator.gateway import tokens

    columns: dict[str, str] = {}
    for given in scope or []:
        column, equals, value = given.partition("=")
        if not equals or not column.strip():
            usage(f"--scope {given!r}: give COLUMN=VALUE, e.g. --scope user_id=u-42")
        if column.strip() in columns:
            usage(f"--scope names {column.strip()!r} twice")
        columns[column.strip()] = value
    lifetime = None
    if expires is not None:
        try:
            lifetime = duration(expires)
        except ValueError as e:
            usage(f"--expires: {e}")
    try:
        token = tokens.issue(
            os.environ.get(tokens.SECRET_ENV),
            device,
            columns,
            now=dt.datetime.now(dt.UTC),
            expires=lifetime,
        )
    except ReplicatorError as e:
        raise fail(e) from None
    if as_json:
        claims = tokens.verify(
            token, os.environ.get(tokens.SECRET_ENV), now=dt.datetime.now(dt.UTC)
        )
        print_json(
            {
                "device": device,
                "scope": columns,
                "expires": expires,
                "token_id": claims.token_id,
                "token": token,
            }
        )
    else:
        print(token)


@app.command("revoke", cls=PlainCommand, short_help="Refuse a token from now on.")
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="The token's id (its jti).", metavar="TOKEN_ID")],
    device: Annotated[
        str, typer.Option("--device", help="The device it was issued to.", metavar="NAME")
    ],
    reason: Annotated[
        str, typer.Option("--reason", help="Why, for the record.", metavar="TEXT")
    ] = "revoked",
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Add a token to the server's revocation list: every gateway process
    refuses it (HTTP 401) within its `gateway.revocation_seconds`. The
    token's id is printed by `replicator token issue --json`."""
    import datetime as dt

    from replicator.devices import revoke
    from replicator.errors import ReplicatorError

    with open_replicator(config) as replicator:
        try:
            added = revoke(replicator.server, token_id, device, reason, dt.datetime.now(dt.UTC))
        except ReplicatorError as e:
            raise fail(e) from None
    print(f"revoked {token_id}" if added else f"{token_id} was already revoked")
