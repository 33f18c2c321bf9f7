"""Hybrid logical clock (Kulkarni et al., 2014), packed into one integer.

A timestamp is ``physical_ms << 16 | counter``: the wall-clock milliseconds
the clock has seen, and a counter that orders events within one millisecond
or while the wall clock lags behind. Packed this way, timestamps compare as
plain integers, fit a BIGINT column, and a counter overflow simply carries
into the millisecond part. They stay close to wall-clock time, so
``latest_timestamp`` resolution means "the later edit wins", and they never
go backwards on a node, whatever the wall clock does.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable

COUNTER_BITS = 16


def _wall_ms() -> int:
    # Looked up on every call (not bound at import) so freezegun can step it.
    return int(time.time() * 1000)


class HybridLogicalClock:
    """A thread-safe HLC for one node.

    ``wall`` returns the physical time in milliseconds; tests replace it or
    step ``time.time`` with freezegun. ``last`` is the largest timestamp the
    node has issued or seen before (restored from its tables after a restart,
    see :func:`replicator.capture.capture`), so the clock resumes above it.
    """

    def __init__(self, wall: Callable[[], int] = _wall_ms, last: int = 0) -> None:
        self._wall = wall
        self._last = last
        self._lock = threading.Lock()

    @property
    def last(self) -> int:
        """The largest timestamp issued or observed so far (0 when none)."""
        return self._last

    def now(self) -> int:
        """A timestamp for a local event: greater than every earlier one."""
        with self._lock:
            self._last = max(self._wall() << COUNTER_BITS, self._last + 1)
            return self._last

    def reserve(self, count: int) -> int:
        """The first of ``count`` consecutive timestamps for local events.

        Equivalent to ``count`` calls of :meth:`now` (the results are
        ``first, first + 1, ...``), taking the lock once.
        """
        with self._lock:
            first = max(self._wall() << COUNTER_BITS, self._last + 1)
            self._last = first + count - 1
            return first

    def observe(self, remote: int) -> None:
        """Take a timestamp seen elsewhere into account.

        Afterwards :meth:`now` returns something greater than ``remote``:
        a change made after seeing another node's change is ordered after it.
        """
        with self._lock:
            self._last = max(self._last, remote)


def utcnow() -> dt.datetime:
    """The current time, aware, in UTC (what stamps runs and decisions)."""
    return dt.datetime.now(dt.UTC)


def to_datetime(hlc: int) -> dt.datetime:
    """The physical (UTC) time part of a timestamp."""
    return dt.datetime.fromtimestamp((hlc >> COUNTER_BITS) / 1000, tz=dt.UTC)


def from_datetime(moment: dt.datetime) -> int:
    """The smallest timestamp at or after ``moment`` (naive means UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return int(moment.timestamp() * 1000) << COUNTER_BITS


def age(seconds: float) -> str:
    """A duration as people say it: ``45s``, ``12m``, ``3h 5m``, ``2d 4h``."""
    minutes, hours, days = int(seconds // 60), int(seconds // 3600), int(seconds // 86400)
    if days:
        return f"{days}d {hours % 24}h"
    if hours:
        return f"{hours}h {minutes % 60}m"
    if minutes:
        return f"{minutes}m"
    return f"{int(seconds)}s"
