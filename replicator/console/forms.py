"""What the console's pages and forms submit, read into the library's terms:
a :class:`~replicator.review.Filter`, a page, a merge mapping.

Bad input raises :class:`~replicator.errors.ArgumentError` naming the
field, as the library names its arguments; the pages show the message
with HTTP 400.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import msgspec

from replicator.config import duration
from replicator.errors import ArgumentError
from replicator.review import SORTS, Filter

#: The filter fields of the list page (history has no ``older_than``).
FILTER_FIELDS = ("table", "node", "reason", "older_than")
#: Decisions a bulk form can take: a side, or discard.
BULK_ACTIONS = {
    "server": "take server",
    "local": "take local",
    "discard": "discard",
}
#: The merge form's inputs: ``field.COLUMN`` holds the value, as text;
#: ``shown.COLUMN`` the text the form was given, so unchanged columns are
#: left out of the merge (the library then keeps the server's value).
FIELD, SHOWN = "field.", "shown."


def filter_params(params: Mapping[str, Any], fields=FILTER_FIELDS) -> dict[str, str]:
    """The filter fields given (non-empty), as text: what links and hidden
    inputs carry along."""
    found = {}
    for name in fields:
        value = params.get(name)
        if isinstance(value, str) and value.strip():
            found[name] = value.strip()
    return found


def filter_from(params: Mapping[str, str]) -> Filter:
    """The :class:`Filter` of :func:`filter_params`' fields."""
    older_than = None
    if "older_than" in params:
        try:
            older_than = duration(params["older_than"])
        except ValueError as e:
            raise ArgumentError(f"`older_than`: {e}", "older_than") from None
    return Filter(
        table=params.get("table"),
        node=params.get("node"),
        reason=params.get("reason"),
        older_than=older_than,
    )


def sort_from(params: Mapping[str, Any]) -> str:
    sort = params.get("sort") or "age"
    if sort not in SORTS:
        raise ArgumentError(f"`sort` must be one of {', '.join(SORTS)}, not {sort!r}", "sort")
    return sort


def page_from(params: Mapping[str, Any]) -> int:
    """The 1-based page number asked for (1 when none is)."""
    text = params.get("page") or "1"
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ArgumentError(f"`page` must be a number from 1 on, not {text!r}", "page")
    return int(text)


@dataclass(frozen=True)
class Pager:
    """Where a page sits among ``total`` items shown ``size`` at a time."""

    page: int
    size: int
    total: int
    shown: int  # items on this page

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    @property
    def pages(self) -> int:
        return max(math.ceil(self.total / self.size), 1)

    @property
    def first(self) -> int:
        return self.offset + 1 if self.shown else 0

    @property
    def last(self) -> int:
        return self.offset + self.shown if self.shown else 0

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.offset + self.shown < self.total


def query(params: Mapping[str, str], **more: Any) -> str:
    """``?table=...&page=2``: ``params`` and ``more`` (None: left out)."""
    values = {**params, **{k: v for k, v in more.items() if v is not None}}
    return "?" + urlencode(values) if values else ""


def text(value: Any) -> str:
    """A stored value as the console shows it and the merge form takes it
    back: JSON (text quoted, ISO times, decimals as written)."""
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return str(value)


def typed(entered: str) -> Any:
    """A merge field's text as a value: JSON when it parses as JSON
    (``2``, ``"2"``, ``null``, ``true``, ``{"a": 1}``), else the text as it
    is (``both`` is the string ``"both"``). The library then checks the
    value against the column (``values.parsed``): a text column refuses
    ``2``, so the text 2 is typed ``"2"``."""
    try:
        return json.loads(entered)
    except ValueError:
        return entered


def merge_from(form: Mapping[str, Any]) -> dict[str, Any]:
    """The merge mapping of a submitted merge form: each column whose text
    was changed from the one shown, typed by :func:`typed`.

    Raises :class:`ArgumentError` when no column was changed."""
    merge = {}
    for name, entered in form.items():
        if not name.startswith(FIELD) or not isinstance(entered, str):
            continue
        column = name.removeprefix(FIELD)
        if entered != form.get(SHOWN + column):
            merge[column] = typed(entered)
    if not merge:
        raise ArgumentError("`merge`: change at least one field to merge", "merge")
    return merge
