"""Version vectors tell sequential edits from concurrent ones exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from replicator.versions import Order, compare, increment, merge

vectors = st.dictionaries(st.sampled_from(["server", "a", "b"]), st.integers(0, 5), max_size=3)
nodes = st.sampled_from(["server", "a", "b"])


def test_sequential_edits_on_different_nodes_are_ordered():
    on_a = increment(None, "a")  # a creates the row
    on_server = increment(on_a, "server")  # the server edits it after seeing a's version
    assert compare(on_server, on_a) is Order.AFTER
    assert compare(on_a, on_server) is Order.BEFORE


def test_edits_made_without_seeing_each_other_are_concurrent():
    base = increment(None, "server")
    assert compare(increment(base, "a"), increment(base, "b")) is Order.CONCURRENT


@given(vectors, nodes)
def test_an_increment_descends_from_what_it_saw(version, node):
    assert compare(increment(version, node), version) is Order.AFTER


@given(vectors, vectors)
def test_merge_descends_from_both_sides(a, b):
    merged = merge(a, b)
    assert compare(merged, a) in (Order.AFTER, Order.EQUAL)
    assert compare(merged, b) in (Order.AFTER, Order.EQUAL)


@given(vectors, vectors)
def test_compare_is_antisymmetric(a, b):
    mirrored = {Order.AFTER: Order.BEFORE, Order.BEFORE: Order.AFTER}
    result = compare(a, b)
    assert compare(b, a) is mirrored.get(result, result)


def test_missing_entries_count_as_zero():
    assert compare({"a": 1, "b": 0}, {"a": 1}) is Order.EQUAL
