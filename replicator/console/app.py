"""The console as a Starlette application: the routes, the login check
in front of them, the templates and the static files.

``replicator console`` serves it with uvicorn; a test can serve it too
(see :func:`create_app`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from replicator.clock import age
from replicator.console import forms
from replicator.console.auth import Guard
from replicator.console.pages import Pages
from replicator.review import ReviewQueue, default_user

HERE = Path(__file__).parent
#: Items a list or history page shows.
PAGE_SIZE = 50
#: Paths anyone may ask for: the login form and the static files.
OPEN_PATHS = ("/login", "/static/")
#: Sent with every response: the console's pages load scripts, styles and
#: forms from the console alone, and are never framed by another site.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def create_app(
    queue_factory: Callable[[], ReviewQueue],
    token: str,
    *,
    by: str | None = None,
    page_size: int = PAGE_SIZE,
) -> Starlette:
    """The console over the review queue ``queue_factory()`` returns (asked
    once per request; :meth:`Replicator.review` of an open Replicator),
    admitting whoever gives ``token``.

    ``by`` names who decides for requests that authenticate with the
    ``Authorization`` header (default: the operating-system user); a
    person who logs in gives a name of their own. Raises
    :class:`~replicator.errors.ConfigurationError` for an empty token.
    """
    guard = Guard(token, default_by=by or default_user())
    pages = Pages(queue_factory, guard, _templates(), page_size)
    ref = "/items/{ref:str}"
    routes = [
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/", pages.summary, methods=["GET"]),
        Route("/items", pages.items, methods=["GET"]),
        Route(ref, pages.item, methods=["GET"]),
        Route(ref + "/take", pages.take, methods=["POST"]),
        Route(ref + "/merge", pages.merge, methods=["POST"]),
        Route(ref + "/discard", pages.discard, methods=["POST"]),
        Route("/bulk/preview", pages.bulk_preview, methods=["POST"]),
        Route("/bulk/decide", pages.bulk_decide, methods=["POST"]),
        Route("/history", pages.history, methods=["GET"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return pages.render(request, "error.html", exc.status_code, error=exc.detail)

    return Starlette(
        routes=routes,
        middleware=[Middleware(RequireLogin, guard=guard)],
        exception_handlers={HTTPException: http_error},
    )


class RequireLogin:
    """Lets a request through only when the token admits it (see
    :class:`Guard`), and puts its :class:`~replicator.console.auth.User`
    in ``request.state.user``; the login form and the static files are
    open. A page asked for without it redirects to the login form; a
    wrong ``Authorization`` header, or a post, gets 401. Every response
    carries :data:`SECURITY_HEADERS`."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        path = scope["path"]
        static = path.startswith("/static/")

        async def send_secured(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS.items():
                    if static and name == "cache-control":
                        continue  # the script and the style may be cached; pages not
                    if name.encode() not in present:
                        headers.append((name.encode(), value.encode()))
            await send(message)

        if path == OPEN_PATHS[0] or path.startswith(OPEN_PATHS[1:]):
            await self.app(scope, receive, send_secured)
            return
        conn = HTTPConnection(scope)
        user = self.guard.user(conn)
        if user is None:
            await _refused(conn)(scope, receive, send_secured)
            return
        scope.setdefault("state", {})["user"] = user
        await self.app(scope, receive, send_secured)


def _refused(conn: HTTPConnection) -> Response:
    if "authorization" in conn.headers:
        return Response(
            "401: that token does not open the console\n",
            status_code=401,
            headers={"www-authenticate": 'Bearer realm="replicator console"'},
            media_type="text/plain",
        )
    if conn.scope["method"] in ("GET", "HEAD"):
        here = conn.url.path + (f"?{conn.url.query}" if conn.url.query else "")
        return RedirectResponse("/login" + forms.query({"next": here}), status_code=303)
    return HTMLResponse(
        '<p>401: your session has ended. <a href="/login">Log in again</a>.</p>', status_code=401
    )


def _templates() -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(json=forms.text, age=age, when=when, ref=lambda r: quote(str(r), safe=":"))
    env.globals.update(query=forms.query)
    return Jinja2Templates(env=env)


def when(moment: Any, precise: bool = False) -> str:
    """A UTC time as ``2026-11-24 08:19:58`` (with milliseconds when ``precise``)."""
    if moment is None:
        return ""
    if precise:
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return moment.strftime("%Y-%m-%d %H:%M:%S")
