"""The console's pages: each reads its request, makes the library call the
``replicator review`` command makes, and renders a template.

The library's calls block (they talk to databases), so they run in
Starlette's thread pool. A library error becomes the page's message with
its status: 400 for a bad argument or configuration
(:class:`ConfigurationError`, :class:`ArgumentError`), 409 when the item
cannot be decided as asked (:class:`ReviewError`: not open, refused by the
database), 503 for anything else the replicator raises (a node that
cannot be reached). Nothing changes when a decision raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from replicator.console import forms
from replicator.console.auth import COOKIE, Guard, User
from replicator.errors import ArgumentError, ConfigurationError, ReplicatorError, ReviewError
from replicator.review import Filter, ReviewQueue

#: How many decided items a bulk preview shows.
SAMPLE = 10
#: How long a bulk preview can be confirmed.
PREVIEW_SECONDS = 15 * 60
#: The longest name a person can decide under (``resolved_by`` holds 128).
NAME_LENGTH = 64


def status_of(error: ReplicatorError) -> int:
    if isinstance(error, ConfigurationError):
        return 400
    if isinstance(error, ReviewError):
        return 409
    return 503


def message(error: ReplicatorError) -> str:
    """The library's message; an argument it names in backquotes is named
    as the form's field."""
    if isinstance(error, ArgumentError):
        return error.naming(lambda name: name.replace("_", " "))
    return str(error)


def safe_next(target: Any) -> str:
    """Where to go after login: a path of this site, else the summary."""
    if isinstance(target, str) and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


class Pages:
    """The endpoints, over the review queue ``queue()`` returns (one per
    request, so each has its own ``now``), with ``page_size`` items a page."""

    def __init__(
        self,
        queue: Callable[[], ReviewQueue],
        guard: Guard,
        templates: Jinja2Templates,
        page_size: int,
    ) -> None:
        self.queue = queue
        self.guard = guard
        self.templates = templates
        self.page_size = page_size

    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> Response:
        user: User | None = getattr(request.state, "user", None)
        response = self.templates.TemplateResponse(
            request, template, {"user": user, "error": None, **context}, status_code=status
        )
        if request.method == "POST":
            # A boosted form's response is not a page to come back to: the
            # address stays the page the form was on.
            response.headers["HX-Push-Url"] = "false"
        return response

    def failed(self, request: Request, error: ReplicatorError, **context: Any) -> Response:
        return self.render(request, "error.html", status_of(error), error=message(error), **context)

    # --- login ---------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        return self.render(
            request,
            "login.html",
            next=safe_next(request.query_params.get("next")),
            name=self.guard.default_by,
        )

    async def login(self, request: Request) -> Response:
        form = await request.form()
        token, name = form.get("token"), form.get("name")
        name = name.strip() if isinstance(name, str) else ""
        problem, status = None, 200
        if not isinstance(token, str) or not self.guard.token_matches(token):
            problem, status = "That is not the console's token.", 401
        elif not name or len(name) > NAME_LENGTH or not name.isprintable():
            problem, status = (
                f"Give your name (up to {NAME_LENGTH} characters): decisions are signed with it.",
                400,
            )
        if problem is not None:
            return self.render(
                request,
                "login.html",
                status,
                error=problem,
                next=safe_next(form.get("next")),
                name=name or self.guard.default_by,
            )
        response = RedirectResponse(safe_next(form.get("next")), status_code=303)
        response.set_cookie(
            COOKIE,
            self.guard.session_cookie(name),
            max_age=self.guard.session_seconds,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    async def logout(self, request: Request) -> Response:
        await self.guard.form(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # --- reading -------------------------------------------------------------

    async def summary(self, request: Request) -> Response:
        summary = await run_in_threadpool(self.queue().summary)
        return self.render(request, "summary.html", summary=summary)

    async def items(self, request: Request) -> Response:
        """The open items, filtered and paged, with the bulk form."""
        params = forms.filter_params(request.query_params)
        queue = self.queue()
        context: dict[str, Any] = {
            "params": params,
            "sort": request.query_params.get("sort") or "age",
            "nodes": list(queue.nodes),
            "decided": request.query_params.get("decided"),
            "how": forms.BULK_ACTIONS.get(request.query_params.get("how") or ""),
            "actions": forms.BULK_ACTIONS,
            "tables": [],
            "reasons": [],
        }
        try:
            where = forms.filter_from(params)
            sort = forms.sort_from(request.query_params)
            page = forms.page_from(request.query_params)
            offset = (page - 1) * self.page_size
            listing = await run_in_threadpool(
                queue.list, where, sort=sort, limit=self.page_size, offset=offset
            )
            summary = await run_in_threadpool(queue.summary)
        except ReplicatorError as e:
            return self.render(
                request, "items.html", status_of(e), error=message(e), listing=None, **context
            )
        return self.render(
            request,
            "items.html",
            listing=listing,
            pager=forms.Pager(page, self.page_size, listing.total, len(listing.items)),
            **{
                **context,
                "tables": sorted({g.table for g in summary.groups}),
                "reasons": sorted({g.reason for g in summary.groups}),
            },
        )

    async def history(self, request: Request) -> Response:
        """Closed items, newest decision first, filtered and paged."""
        params = forms.filter_params(request.query_params, ("table", "node", "reason"))
        queue = self.queue()
        context: dict[str, Any] = {"params": params, "nodes": list(queue.nodes)}
        try:
            page = forms.page_from(request.query_params)
            listing = await run_in_threadpool(
                queue.history,
                forms.filter_from(params),
                limit=self.page_size,
                offset=(page - 1) * self.page_size,
            )
        except ReplicatorError as e:
            return self.render(
                request, "history.html", status_of(e), error=message(e), listing=None, **context
            )
        return self.render(
            request,
            "history.html",
            listing=listing,
            pager=forms.Pager(page, self.page_size, listing.total, len(listing.items)),
            **context,
        )

    async def item(self, request: Request) -> Response:
        return await self._item(request, request.path_params["ref"])

    async def _item(
        self,
        request: Request,
        ref: str,
        *,
        status: int = 200,
        error: str | None = None,
        entered: dict[str, str] | None = None,
    ) -> Response:
        """The item page; after a refused decision, with the library's
        message and the merge fields as they were entered."""
        try:
            shown = await run_in_threadpool(self.queue().show, ref)
        except ReviewError as e:  # no such item, or no node can say
            return self.render(request, "error.html", 404, error=message(e))
        except ReplicatorError as e:
            return self.failed(request, e)
        start = shown.server or shown.local or {}
        fields = {c: forms.text(start[c]) if c in start else "" for c in shown.columns}
        return self.render(
            request,
            "item.html",
            status,
            shown=shown,
            fields=fields,
            entered=entered or fields,
            error=error,
            decided=request.query_params.get("decided") and shown.status != "open",
            decodable=all(e.decodable for e in shown.events),
            FIELD=forms.FIELD,
            SHOWN=forms.SHOWN,
        )

    # --- deciding one item ---------------------------------------------------

    async def take(self, request: Request) -> Response:
        form = await self.guard.form(request)
        side = form.get("side")
        return await self._decide(
            request, lambda queue, ref, by: queue.resolve(ref, take=side, by=by)
        )

    async def merge(self, request: Request) -> Response:
        form = await self.guard.form(request)
        entered = {
            name.removeprefix(forms.FIELD): value
            for name, value in form.items()
            if name.startswith(forms.FIELD) and isinstance(value, str)
        }
        try:
            merge = forms.merge_from(form)
        except ArgumentError as e:
            return await self._item(
                request, request.path_params["ref"], status=400, error=message(e), entered=entered
            )
        return await self._decide(
            request, lambda queue, ref, by: queue.resolve(ref, merge=merge, by=by), entered
        )

    async def discard(self, request: Request) -> Response:
        await self.guard.form(request)
        return await self._decide(request, lambda queue, ref, by: queue.discard(ref, by=by))

    async def _decide(
        self,
        request: Request,
        decide: Callable[[ReviewQueue, str, str], Any],
        entered: dict[str, str] | None = None,
    ) -> Response:
        """Decide the item as ``decide`` does, then show it; a refusal is
        shown on the item's page, nothing changed."""
        ref = request.path_params["ref"]
        user: User = request.state.user
        try:
            decided = await run_in_threadpool(decide, self.queue(), ref, user.name)
        except ReplicatorError as e:
            return await self._item(
                request, ref, status=status_of(e), error=message(e), entered=entered
            )
        return RedirectResponse(f"/items/{decided.ref}?decided=1", status_code=303)

    # --- deciding in bulk ----------------------------------------------------

    async def bulk_preview(self, request: Request) -> Response:
        """Decide every item of the list's filter as a dry run, and show
        how many would be decided, a sample, and the confirm form (its
        ticket binds the confirmation to this filter, decision and count)."""
        form = await self.guard.form(request)
        params = forms.filter_params(form)
        action = form.get("action")
        user: User = request.state.user
        try:
            if action not in forms.BULK_ACTIONS:
                raise ArgumentError(
                    f"`action` must be one of {', '.join(forms.BULK_ACTIONS)}, not {action!r}",
                    "action",
                )
            where = forms.filter_from(params)
            result = await run_in_threadpool(
                _bulk, self.queue(), where, action, user.name, dry_run=True
            )
        except ReplicatorError as e:
            return self._preview(request, status_of(e), error=message(e), params=params)
        ticket = self.guard.seal(
            "bulk",
            {
                "session": user.session,
                "params": params,
                "action": action,
                "matched": result.matched,
                "at": int(time.time()),
            },
        )
        return self._preview(
            request,
            result=result,
            sample=result.decided[:SAMPLE],
            action=action,
            how=forms.BULK_ACTIONS[action],
            params=params,
            ticket=ticket,
        )

    def _preview(self, request: Request, status: int = 200, **context: Any) -> Response:
        # htmx asks for the preview alone, to put under the form; a plain
        # form post gets it as a page.
        fragment = request.headers.get("hx-request") and not request.headers.get("hx-boosted")
        template = "_preview.html" if fragment else "bulk.html"
        return self.render(request, template, status, actions=forms.BULK_ACTIONS, **context)

    async def bulk_decide(self, request: Request) -> Response:
        """Decide what a preview showed, when the same number of items
        still matches (else 409: preview again)."""
        form = await self.guard.form(request)
        user: User = request.state.user
        ticket = form.get("ticket")
        data = self.guard.unseal("bulk", ticket) if isinstance(ticket, str) else None
        if data is None or data.get("session") != user.session:
            return self.render(
                request,
                "error.html",
                400,
                error="Preview the bulk decision first, then confirm it.",
            )
        params, action = data["params"], data["action"]
        if time.time() - data["at"] > PREVIEW_SECONDS:
            return self._preview(
                request, 409, error="That preview is too old; preview again.", params=params
            )
        queue = self.queue()
        where = forms.filter_from(params)
        try:
            now = await run_in_threadpool(queue.list, where, sweep=False, limit=0)
            if now.total != data["matched"]:
                return self._preview(
                    request,
                    409,
                    error=(
                        f"The queue changed since the preview: {data['matched']} items matched "
                        f"then, {now.total} match now. Nothing was decided; preview again."
                    ),
                    params=params,
                )
            result = await run_in_threadpool(_bulk, queue, where, action, user.name, dry_run=False)
        except ReplicatorError as e:
            return self._preview(request, status_of(e), error=message(e), params=params)
        target = "/items" + forms.query(params, decided=result.decided_count, how=action)
        return RedirectResponse(target, status_code=303)


def _bulk(queue: ReviewQueue, where: Filter, action: str, by: str, *, dry_run: bool):
    if action == "discard":
        return queue.resolve_matching(where, discard=True, by=by, dry_run=dry_run)
    return queue.resolve_matching(where, take=action, by=by, dry_run=dry_run)
