"""Embedding functions the sink tests name in their configuration."""

from __future__ import annotations

from replicator.embeddings import hashing

#: Every batch of texts :func:`counting` was given, in order.
calls: list[list[str]] = []


def counting(texts: list[str]) -> list[list[float]]:
    """:func:`replicator.embeddings.hashing`, recording what it was asked."""
    calls.append(list(texts))
    return hashing(texts)
