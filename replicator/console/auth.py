"""Who may use the console: the token, the session cookie, CSRF tokens.

One secret, the token the console was started with
(``REPLICATOR_CONSOLE_TOKEN``), admits a person: posted once to
``/login`` (which sets a signed session cookie) or sent with every request
as ``Authorization: Bearer <token>``. Nothing is stored on the server:
the cookie and every other value the console hands out (a session's CSRF
token, a bulk preview's ticket) are signed with an HMAC key derived from
the token, so a new token ends every session, and a restart ends none.

Every form a session posts carries its CSRF token (:meth:`Guard.form`
checks it). A request authenticated by its ``Authorization`` header needs
none: a page of another site can make a browser send a cookie, never that
header. Secrets are compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection, Request

from replicator.errors import ConfigurationError

#: The session cookie's name.
COOKIE = "replicator_console"
#: How long a session lasts after login.
SESSION_SECONDS = 12 * 3600
#: The form field carrying a session's CSRF token.
CSRF_FIELD = "csrf"


@dataclass(frozen=True)
class User:
    """Who a request comes from: ``name`` decides (``by``); ``session``
    is the cookie session's id ("" for a bearer request); ``csrf`` is what
    the session's forms must carry."""

    name: str
    session: str
    csrf: str

    @property
    def bearer(self) -> bool:
        return not self.session


class Guard:
    """Checks the token, issues and reads session cookies, checks CSRF
    tokens. ``default_by`` names who decides for bearer requests (a session
    gives its own name at login); ``clock`` gives the time in seconds."""

    def __init__(
        self,
        token: str,
        *,
        default_by: str,
        session_seconds: int = SESSION_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not token or not token.strip():
            raise ConfigurationError("the console needs a token (REPLICATOR_CONSOLE_TOKEN)")
        self._token = token.encode()
        self._key = hmac.new(self._token, b"replicator console: signed values", "sha256").digest()
        self.default_by = default_by
        self.session_seconds = session_seconds
        self.clock = clock

    # --- the token -----------------------------------------------------------

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    # --- signed values -------------------------------------------------------

    def seal(self, purpose: str, data: dict[str, Any]) -> str:
        """``data`` as text a client can hold and give back unchanged: JSON,
        its signature bound to ``purpose`` (a cookie is no ticket)."""
        payload = _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
        return f"{payload}.{self._sign(purpose, payload)}"

    def unseal(self, purpose: str, text: str) -> dict[str, Any] | None:
        """What :meth:`seal` sealed for ``purpose``; None when ``text`` is
        not such a value (forged, altered, or sealed for another purpose)."""
        payload, _, signature = text.partition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(purpose, payload).encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _sign(self, purpose: str, text: str) -> str:
        digest = hmac.new(self._key, f"{purpose}\n{text}".encode(), hashlib.sha256).digest()
        return _b64(digest)

    # --- sessions ------------------------------------------------------------

    def session_cookie(self, name: str) -> str:
        """A new session's cookie value, for the person ``name``."""
        session = secrets.token_urlsafe(18)
        return self.seal("session", {"name": name, "session": session, "at": int(self.clock())})

    def user(self, conn: HTTPConnection) -> User | None:
        """Who sent the request: by its ``Authorization`` header when it has
        one (a wrong one admits nobody, whatever the cookie), else by its
        session cookie; None when neither admits it."""
        header = conn.headers.get("authorization")
        if header is not None:
            scheme, _, given = header.partition(" ")
            if scheme.lower() == "bearer" and self.token_matches(given.strip()):
                return User(name=self.default_by, session="", csrf="")
            return None
        cookie = conn.cookies.get(COOKIE)
        data = self.unseal("session", cookie) if cookie else None
        if data is None:
            return None
        name, session, at = data.get("name"), data.get("session"), data.get("at")
        if not (isinstance(name, str) and isinstance(session, str) and isinstance(at, int)):
            return None
        if not 0 <= self.clock() - at < self.session_seconds:
            return None
        return User(name=name, session=session, csrf=self._sign("csrf", session))

    # --- CSRF ----------------------------------------------------------------

    async def form(self, request: Request) -> FormData:
        """The posted form, once its CSRF token is checked: 403 when a
        session's form lacks its token or carries another."""
        form = await request.form()
        user: User = request.state.user
        if not user.bearer:
            given = form.get(CSRF_FIELD) or ""
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode(), user.csrf.encode()
            ):
                raise HTTPException(
                    403, "This form is missing its security token or it is stale; reload the page."
                )
        return form


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
