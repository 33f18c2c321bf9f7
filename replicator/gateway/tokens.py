"""Device tokens: who a device is and what it may replicate, signed by the
server.

A token is a JWT (HS256, PyJWT) whose claims are the device's name
(``sub``), its scope (``scope``: column -> value, as a local's ``scope`` in
a configuration), when it was issued and when it expires, and an id
(``jti``) a revocation list can name. The gateway trusts only these claims:
a device's identity and scope come from its token, never from what it
sends. The secret comes from the environment (:data:`SECRET_ENV`), never
from a configuration file.

A token that fails any check (signature, expiry, issuer, audience, shape,
revocation) raises :class:`TokenError` with a reason for the server's log;
what a device is told must not say more than "401".
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Collection, Mapping

import jwt
import msgspec

from replicator.errors import ConfigurationError, ReplicatorError
from replicator.events import NODE_NAME

#: Where the gateway and ``replicator token issue`` find the signing secret.
SECRET_ENV = "REPLICATOR_GATEWAY_SECRET"
#: A shorter secret is refused: HS256 wants at least 256 bits of key.
SECRET_BYTES = 32
ISSUER = "replicator"
AUDIENCE = "replicator-gateway"
ALGORITHM = "HS256"


class TokenError(ReplicatorError):
    """A token that must not be trusted; the message is for the server's log."""


class Claims(msgspec.Struct, frozen=True, kw_only=True):
    """What a valid token says: the device, its scope, and its lifetime
    (``expires_at`` None: it does not expire; times are Unix seconds)."""

    device: str
    scope: dict[str, str]
    token_id: str
    issued_at: int
    expires_at: int | None = None


def check_secret(secret: str | None) -> bytes:
    """The signing key from ``secret`` (the environment's value); raises
    :class:`ConfigurationError` when it is missing or too short."""
    if not secret:
        raise ConfigurationError(
            f"{SECRET_ENV} is not set: tokens are signed with it; set it to a random secret, "
            "e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
        )
    key = secret.encode()
    if len(key) < SECRET_BYTES:
        raise ConfigurationError(
            f"{SECRET_ENV} is too short to sign tokens: give at least {SECRET_BYTES} bytes"
        )
    return key


def issue(
    secret: str | None,
    device: str,
    scope: Mapping[str, str],
    *,
    now: dt.datetime,
    expires: dt.timedelta | None = None,
) -> str:
    """A signed token for ``device`` with ``scope``, valid from ``now`` for
    ``expires`` (None: until revoked). Raises :class:`ConfigurationError`
    for a bad secret, device name, scope or lifetime."""
    key = check_secret(secret)
    if not NODE_NAME.match(device):
        raise ConfigurationError(
            f"a device's name is its node name: letters, digits and _.:- (at most 64), "
            f"not {device!r}"
        )
    for column, value in scope.items():
        if not column or not isinstance(value, str):
            raise ConfigurationError(f"scope {column!r} = {value!r}: give COLUMN=VALUE")
    if expires is not None and expires <= dt.timedelta(0):
        raise ConfigurationError(f"a token must expire after it is issued, not in {expires}")
    issued = int(now.timestamp())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": device,
        "scope": dict(scope),
        "iat": issued,
        "jti": secrets.token_hex(16),
    }
    if expires is not None:
        claims["exp"] = issued + int(expires.total_seconds())
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify(
    token: str,
    secret: str | None,
    *,
    now: dt.datetime,
    revoked: Collection[str] = (),
) -> Claims:
    """The claims of ``token`` when it is genuine, unexpired at ``now`` and
    not ``revoked`` (token ids); else :class:`TokenError`."""
    key = check_secret(secret)
    try:
        found = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],  # never what the token's header asks for
            audience=AUDIENCE,
            issuer=ISSUER,
            # Expiry is checked below, against `now` (a clock tests can set).
            options={
                "require": ["iss", "aud", "sub", "iat", "jti"],
                "verify_exp": False,
                "verify_iat": False,
            },
            leeway=0,
        )
    except jwt.PyJWTError as e:
        raise TokenError(f"token refused: {e}") from None
    expires_at = found.get("exp")
    if expires_at is not None and now.timestamp() >= expires_at:
        raise TokenError("token refused: it has expired")
    try:
        claims = msgspec.convert(
            {
                "device": found["sub"],
                "scope": found.get("scope", {}),
                "token_id": found["jti"],
                "issued_at": found["iat"],
                "expires_at": expires_at,
            },
            Claims,
        )
    except msgspec.ValidationError as e:
        raise TokenError(f"token refused: its claims are malformed ({e})") from None
    if claims.token_id in revoked:
        raise TokenError(f"token refused: {claims.token_id} is revoked")
    return claims
