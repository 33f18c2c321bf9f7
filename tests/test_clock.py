"""The hybrid logical clock: monotonic whatever the wall clock does."""

from __future__ import annotations

import datetime as dt

from freezegun import freeze_time

from replicator.clock import COUNTER_BITS, HybridLogicalClock, from_datetime, to_datetime


def test_same_millisecond_still_increases():
    clock = HybridLogicalClock(wall=lambda: 1_000)
    stamps = [clock.now() for _ in range(5)]
    assert stamps == sorted(set(stamps))
    assert all(s >> COUNTER_BITS == 1_000 for s in stamps), "the counter orders them"


def test_wall_clock_stepping_back_an_hour_does_not_go_back():
    clock = HybridLogicalClock()
    with freeze_time("2026-11-24 12:00:00") as frozen:
        first = clock.now()
        frozen.move_to("2026-11-24 11:00:00")
        second = clock.now()
        assert second > first
        frozen.move_to("2026-11-24 13:00:00")
        third = clock.now()
    assert third > second
    assert to_datetime(third) == dt.datetime(2026, 11, 24, 13, tzinfo=dt.UTC), (
        "once the wall clock is ahead again, it leads"
    )


def test_counter_overflow_carries_into_the_millisecond():
    clock = HybridLogicalClock(wall=lambda: 5, last=(5 << COUNTER_BITS) | (2**COUNTER_BITS - 1))
    assert clock.now() == 6 << COUNTER_BITS


def test_observing_a_later_remote_timestamp_orders_the_next_event_after_it():
    clock = HybridLogicalClock(wall=lambda: 1_000)
    remote = 9_000 << COUNTER_BITS
    clock.observe(remote)
    assert clock.now() > remote
    clock.observe(1)  # an older one changes nothing
    assert clock.now() > remote


def test_restored_last_value_is_respected():
    restored = HybridLogicalClock(wall=lambda: 10, last=50_000 << COUNTER_BITS)
    assert restored.now() > 50_000 << COUNTER_BITS


def test_datetime_conversions():
    moment = dt.datetime(2026, 11, 24, 1, 2, 3, 456000, tzinfo=dt.UTC)
    assert to_datetime(from_datetime(moment)) == moment
    assert from_datetime(moment.replace(tzinfo=None)) == from_datetime(moment)


def test_reserving_a_block_is_the_same_as_calling_now_that_often():
    one, block = HybridLogicalClock(wall=lambda: 7), HybridLogicalClock(wall=lambda: 7)
    singles = [one.now() for _ in range(5)]
    first = block.reserve(5)
    assert [first + i for i in range(5)] == singles
    assert block.now() == one.now()
