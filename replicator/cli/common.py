"""What every command shares: the options, the consoles, loading the
configuration, and turning the library's errors into exit codes.

Exit codes: 2 for usage and configuration errors (the message names the
option or the key), 1 for an operation that failed (the message says why),
130 when interrupted.

Nothing heavy is imported at module level (rich, SQLAlchemy, DuckDB,
ChromaDB): ``replicator --help`` must start in a fraction of a second.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.core import TyperArgument, TyperCommand

from replicator.clock import age as age  # the CLI prints ages as the console does
from replicator.errors import ArgumentError, ConfigurationError, ReplicatorError

if TYPE_CHECKING:
    from rich.console import Console

    from replicator.application import Replicator

# replicator.config.DEFAULT_PATH, without importing the config module (and
# SQLAlchemy with it) to show a default in --help.
DEFAULT_CONFIG = Path("replicator.toml")

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", help="The TOML configuration file.", metavar="PATH", show_default=True
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
Direction = Annotated[
    str | None,
    typer.Option(
        "--direction",
        "-d",
        help="up, down or bidirectional (default: from the config).",
        metavar="DIRECTION",
    ),
]
LimitOption = Annotated[
    int | None,
    typer.Option(
        "--limit",
        help="Show at most N (default: 50 on a terminal, all when piped; 0: all).",
        metavar="N",
    ),
]


class PlainCommand(TyperCommand):
    """A command whose help names its arguments as its options are named
    (``SINK``, not ``{SINK}`` nor ``SINK <str>``). Typer has no switch for
    it: an argument's type label comes from its ``display_type_rich``
    (checked on Typer 0.29), set here to show none."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [piece.strip("{}") for piece in super().collect_usage_pieces(ctx)]


# What a terminal shows without --limit.
TERMINAL_LIMIT = 50
DIRECTIONS = ("up", "down", "bidirectional")


@cache
def out() -> Console:
    """The console for results (standard output)."""
    from rich.console import Console

    # Piped output is not wrapped to the 80 columns rich assumes without a terminal.
    return Console() if sys.stdout.isatty() else Console(width=160)


@cache
def err() -> Console:
    """The console for errors, warnings and progress (standard error)."""
    from rich.console import Console

    return Console(stderr=True)


def say(text: object) -> None:
    """Print ``text`` as it is: no highlighting, long lines kept whole."""
    out().print(text, highlight=False, soft_wrap=True)


def warn(text: str) -> None:
    """Print ``text`` (rich markup) to standard error."""
    err().print(text, highlight=False, soft_wrap=True)


def fail(error: ReplicatorError) -> typer.Exit:
    """The exit for a library error, after saying it: 2 for configuration, else 1.
    An argument the library names (``take``) is said as the option (``--take``)."""
    text = error.naming(option) if isinstance(error, ArgumentError) else str(error)
    warn(f"[bold red]error:[/] {escape(text)}")
    return typer.Exit(2 if isinstance(error, ConfigurationError) else 1)


def option(argument: str) -> str:
    """The command-line option of a library call's argument: ``--dry-run``
    for ``dry_run`` (typer's spelling)."""
    return "--" + argument.replace("_", "-")


def usage(message: str) -> NoReturn:
    """Refuse the command line: say what was wrong with it, exit 2."""
    warn(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(2)


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


def check_direction(direction: str | None) -> None:
    if direction is not None and direction not in DIRECTIONS:
        usage(f"--direction must be up, down or bidirectional, not {direction!r}")


def load(config: Path) -> Any:
    """The configuration at ``config``; a bad one exits 2 naming what is wrong."""
    from replicator import config as config_module

    try:
        return config_module.load(config)
    except ReplicatorError as e:
        raise fail(e) from e


@contextmanager
def open_replicator(config: Path, **options: Any) -> Iterator[Replicator]:
    """The configuration's :class:`Replicator`; library errors become exit codes."""
    from replicator.application import Replicator

    settings = load(config)
    try:
        with Replicator(settings, **options) as found:
            yield found
    except ReplicatorError as e:
        raise fail(e) from e


def print_json(document: object) -> None:
    """``document`` as one line of JSON (msgspec: dates ISO, decimals as text)."""
    import msgspec

    sys.stdout.write(msgspec.json.encode(document).decode() + "\n")


def stream_json(name: str, items: Iterable[object], **fields: object) -> None:
    """``{"NAME": [items...], **fields}`` written item by item, so a long
    listing is never held in memory whole."""
    import msgspec

    encode = msgspec.json.encode
    write = sys.stdout.write
    write(f'{{"{name}":[')
    for n, item in enumerate(items):
        write(("," if n else "") + encode(item).decode())
    write("]")
    for key, value in fields.items():
        write(f',"{key}":' + encode(value).decode())
    write("}\n")


def shown_limit(limit: int | None) -> int | None:
    """How many to show: ``--limit`` as given (0: all), else 50 on a
    terminal and all when piped."""
    if limit is not None and limit < 0:
        usage(f"--limit must be 0 (all) or more, not {limit}")
    if limit is None:
        return TERMINAL_LIMIT if sys.stdout.isatty() else None
    return limit or None


def value(v: object) -> str:
    """A stored value as a person reads it: JSON (ISO times, decimals as
    written, text quoted), never a Python repr."""
    import msgspec

    try:
        return msgspec.json.encode(v).decode()
    except (TypeError, msgspec.EncodeError):
        return str(v)


def row_text(row: dict[str, Any] | None) -> str:
    """A row as one JSON object, or ``(deleted)``."""
    return "(deleted)" if row is None else value(row)


def short(v: object) -> str:
    text = str(v)
    return text if len(text) <= 10 else text[:8] + "…"


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``1 item``, ``2 items``, ``0 items`` (``many`` for irregular plurals)."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"


def by_policy(counts: dict[str, int]) -> str:
    """``latest_timestamp 2, manual_review 1``; a custom policy is named by
    its function."""
    named = sorted((name.rpartition(":")[2], n) for name, n in counts.items())
    return ", ".join(f"{name} {n}" for name, n in named)


@contextmanager
def progress(description: str, unit: str = "") -> Iterator[Callable[[int, int | None], None]]:
    """A progress bar on a terminal (nothing when piped): yields
    ``advance(done, total)``; ``total`` None while it is unknown."""
    if not err().is_terminal:
        yield lambda done, total: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err(), transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextmanager
def activity() -> Iterator[Callable[[str], None]]:
    """A line on a terminal's standard error saying what the command is
    doing now (nothing when piped): yields ``show(text)``. Each new database
    connection shows which node it is waiting for, so a server that does not
    answer is named while the command waits for it."""
    from replicator.node import on_connect

    if not err().is_terminal:
        with on_connect(lambda node, url: None):
            yield lambda text: None
        return
    with err().status("starting", spinner="dots") as line:

        def show(text: str) -> None:
            line.update(escape(text))

        def finished(node: str, url: str, error: BaseException | None) -> None:
            show(f"connected to {node}" if error is None else f"{node} did not answer")

        with on_connect(lambda node, url: show(f"connecting to {node} ({url})…"), finished):
            yield show
