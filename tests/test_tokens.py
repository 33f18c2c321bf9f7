"""Device tokens (``replicator token issue``, :mod:`replicator.gateway.tokens`):
signed with a secret from the environment; only a genuine, unexpired,
unrevoked token gives its claims, and the claims are all the gateway
trusts."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from replicator.errors import ConfigurationError
from replicator.gateway import tokens
from replicator.gateway.tokens import Claims, TokenError

from .test_cli import run

SECRET = "s" * 40
NOW = dt.datetime(2026, 12, 5, 9, 0, tzinfo=dt.UTC)


def test_a_token_gives_back_the_device_and_scope_it_was_issued_for():
    token = tokens.issue(SECRET, "phone-7", {"user_id": "u-42"}, now=NOW)

    claims = tokens.verify(token, SECRET, now=NOW + dt.timedelta(days=400))

    assert isinstance(claims, Claims)
    assert (claims.device, claims.scope, claims.expires_at) == (
        "phone-7",
        {"user_id": "u-42"},
        None,
    )
    assert claims.issued_at == int(NOW.timestamp()) and len(claims.token_id) == 32


def test_an_expired_token_is_refused_from_the_moment_it_expires():
    token = tokens.issue(SECRET, "phone-7", {}, now=NOW, expires=dt.timedelta(days=30))

    tokens.verify(token, SECRET, now=NOW + dt.timedelta(days=30, seconds=-1))
    with pytest.raises(TokenError, match="expired"):
        tokens.verify(token, SECRET, now=NOW + dt.timedelta(days=30))


def _forged(token: str, **changes) -> str:
    """``token`` with its claims changed and its signature kept."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    raw = json.dumps(claims).encode()
    return ".".join([header, base64.urlsafe_b64encode(raw).rstrip(b"=").decode(), signature])


def test_a_forged_or_foreign_token_is_refused():
    token = tokens.issue(SECRET, "phone-7", {"user_id": "u-42"}, now=NOW)
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
    unsigned = unsigned_header.decode() + "." + token.split(".")[1] + "."

    for bad in (
        _forged(token, scope={"user_id": "u-2"}),  # another user's rows
        _forged(token, sub="server"),
        tokens.issue("t" * 40, "phone-7", {"user_id": "u-42"}, now=NOW),  # another secret
        unsigned,
        "not a token",
    ):
        with pytest.raises(TokenError, match="token refused"):
            tokens.verify(bad, SECRET, now=NOW)


def test_a_revoked_token_is_refused_and_others_of_the_device_are_not():
    first = tokens.issue(SECRET, "phone-7", {}, now=NOW)
    second = tokens.issue(SECRET, "phone-7", {}, now=NOW)
    revoked = {tokens.verify(first, SECRET, now=NOW).token_id}

    with pytest.raises(TokenError, match="revoked"):
        tokens.verify(first, SECRET, now=NOW, revoked=revoked)
    assert tokens.verify(second, SECRET, now=NOW, revoked=revoked).device == "phone-7"


@pytest.mark.parametrize(
    "secret, device, scope, expires, message",
    [
        (None, "phone", {}, None, "REPLICATOR_GATEWAY_SECRET is not set"),
        ("short", "phone", {}, None, "too short"),
        (SECRET, "", {}, None, "a device.s name is its node name"),
        (SECRET, "phone", {"": "u"}, None, "give COLUMN=VALUE"),
        (SECRET, "phone", {}, dt.timedelta(0), "must expire after"),
    ],
)
def test_bad_input_is_refused_by_name(secret, device, scope, expires, message):
    with pytest.raises(ConfigurationError, match=message):
        tokens.issue(secret, device, scope, now=NOW, expires=expires)


def test_the_command_prints_a_token_the_gateway_accepts(monkeypatch):
    monkeypatch.setenv(tokens.SECRET_ENV, SECRET)
    printed = run(
        "token", "issue", "--device", "phone-7", "--scope", "user_id=u-42", "--expires", "30d"
    )
    assert printed.returncode == 0, printed.stderr
    claims = tokens.verify(printed.stdout.strip(), SECRET, now=dt.datetime.now(dt.UTC))
    assert (claims.device, claims.scope) == ("phone-7", {"user_id": "u-42"})
    assert claims.expires_at - claims.issued_at == 30 * 86400


def test_the_command_needs_the_secret_and_well_formed_options(monkeypatch):
    monkeypatch.delenv(tokens.SECRET_ENV, raising=False)
    missing = run("token", "issue", "--device", "phone")
    monkeypatch.setenv(tokens.SECRET_ENV, SECRET)
    scope = run("token", "issue", "--device", "phone", "--scope", "user_id")
    period = run("token", "issue", "--device", "phone", "--expires", "soon")

    assert missing.returncode == 2 and "REPLICATOR_GATEWAY_SECRET is not set" in missing.stderr
    assert scope.returncode == 2 and "--scope 'user_id': give COLUMN=VALUE" in scope.stderr
    assert period.returncode == 2 and "--expires" in period.stderr
