"""Embedding functions for the vector sink: texts in, one vector per text out.

An embedding function is any callable ``(texts: list[str]) -> list[list[float]]``
returning vectors of one length; the sink calls it with batches of texts. The
configuration names one as ``"module:function"``. The default,
:func:`hashing`, needs no model and no network: it works on a fresh machine
offline, and finds documents that share words, not meaning. To search by
meaning, name a real model's function, e.g. with sentence-transformers
installed and its model downloaded beforehand::

    # myapp/embed.py
    from sentence_transformers import SentenceTransformer
    _model = SentenceTransformer("all-MiniLM-L6-v2")

    def embed(texts):
        return _model.encode(texts, normalize_embeddings=True).tolist()

    # replicator.toml: [sinks.documents] embedding_function = "myapp.embed:embed"
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
from collections.abc import Callable, Sequence

from replicator.errors import ConfigurationError

EmbeddingFunction = Callable[[list[str]], Sequence[Sequence[float]]]

#: The length of :func:`hashing`'s vectors.
DIMENSIONS = 256
_WORD = re.compile(r"\w+", re.UNICODE)


def hashing(texts: list[str]) -> list[list[float]]:
    """Feature hashing: each lower-cased word and each character trigram of a
    word adds +1 or -1 (by its hash) to one of :data:`DIMENSIONS` entries;
    the vector is then scaled to length 1 (all zeros for a text without
    words). Deterministic across processes and machines (BLAKE2b, not
    Python's salted ``hash``)."""
    vectors = []
    for text in texts:
        vector = [0.0] * DIMENSIONS
        for word in _WORD.findall(text.lower()):
            padded = f"#{word}#"
            features = [word] + [padded[i : i + 3] for i in range(len(padded) - 2)]
            for feature in features:
                digest = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest())
                vector[digest % DIMENSIONS] += 1.0 if digest >> 63 else -1.0
        norm = math.sqrt(sum(v * v for v in vector))
        vectors.append([v / norm for v in vector] if norm else vector)
    return vectors


def load(name: str, key: str = "embedding_function") -> EmbeddingFunction:
    """The embedding function called ``name`` (``""``: :func:`hashing`).

    Raises :class:`ConfigurationError` naming ``key`` when it cannot be imported.
    """
    if not name:
        return hashing
    module_name, _, function = name.partition(":")
    if not module_name or not function:
        raise ConfigurationError(f"{key}: {name!r} is not 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises as it loads
        raise ConfigurationError(
            f"{key}: cannot import {module_name!r}: {type(e).__name__}: {e}"
        ) from e
    found = getattr(module, function, None)
    if not callable(found):
        raise ConfigurationError(f"{key}: {module_name} has no function {function!r}")
    return found
