"""Tables that several commands print: a sync's passes, its sinks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from replicator.cli.common import by_policy, escape, plural

if TYPE_CHECKING:
    from rich.table import Table


def pass_table(passes, bootstrapped=None) -> Table:
    """The passes of a sync as a table: one row per link and channel; the
    caption names the locals that were bootstrapped first, and how many
    rows they got."""
    from rich import box
    from rich.table import Table

    table = Table(
        box=box.SIMPLE_HEAD,
        title="Replication passes",
        title_justify="left",
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("link", no_wrap=True)
    table.add_column("channel", no_wrap=True)
    for name in ("read", "applied", "skipped", "conflicts", "parked", "failed", "seconds"):
        table.add_column(name, justify="right")
    for p in passes:
        table.add_row(
            f"{p.source} -> {p.target}",
            p.channel,
            *(str(getattr(p, n)) for n in ("read", "applied", "skipped", "conflicts", "parked")),
            f"[red]{p.failed}[/]" if p.failed or not p.ok else "0",
            f"{p.seconds:.3f}",
        )
    notes = [
        f"{name} was empty and was bootstrapped first: {_bootstrap_text(b)}"
        for name, b in (bootstrapped or {}).items()
    ]
    by = [
        escape(f"{p.source} -> {p.target} [{p.channel}]: {by_policy(p.conflicts_by_policy)}")
        for p in passes
        if p.conflicts
    ]
    if by:
        notes.append("conflicts by policy: " + "; ".join(by))
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table


def _bootstrap_text(b) -> str:
    """``3 rows copied (notes 2, tags 1), at log position 12``."""
    filled = ", ".join(f"{t} {n}" for t, n in b.rows.items() if n)
    detail = f" ({filled})" if filled else ""
    return f"{plural(sum(b.rows.values()), 'row')} copied{detail}, at log position {b.position}"


def sink_table(results) -> Table:
    """What each vector sink did in a sync or a rebuild."""
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, title="Vector sinks", title_justify="left", pad_edge=False)
    table.add_column("sink", no_wrap=True)
    table.add_column("node", no_wrap=True)
    names = ("read", "upserted", "metadata_only", "deleted", "embedded", "parked", "lag")
    for name in names:
        table.add_column(name.replace("_", " "), justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("started over", no_wrap=True)
    for r in results:
        table.add_row(
            r.sink,
            r.node,
            *(str(getattr(r, n)) for n in names),
            f"{r.seconds:.3f}",
            "from a snapshot" if r.rebuilt else ("[red]failed[/]" if not r.ok else ""),
        )
    return table
