"""Deciding between two concurrent versions of a row.

Two versions conflict when neither version vector descends from the other
(:func:`replicator.versions.compare` says ``CONCURRENT``). Every replica must
pick the same winner for the same pair, whichever version it holds and
whichever arrives, so the rule looks only at the two versions themselves.
"""

from __future__ import annotations


def latest_timestamp(incoming: tuple[int, str], current: tuple[int, str]) -> bool:
    """Whether the incoming version wins under last-writer-wins.

    Each side is ``(hlc, origin)``: the later hybrid-logical-clock time wins,
    and on a tie the larger node name, so both sides agree.
    """
    return incoming > current
