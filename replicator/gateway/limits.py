"""What one device may send: a request body of bounded size (also once
decompressed), and a bounded rate of requests per device (a token bucket
per device in each gateway process)."""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request


class TooLarge(Exception):
    """A body past the limit; nothing of it was used."""


class Malformed(Exception):
    """A body that is not what it says it is (broken gzip)."""


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, gunzipped when it says it is gzip; raises
    :class:`TooLarge` as soon as it, or what it unpacks to, passes
    ``limit`` bytes (a declared length past it is refused unread)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    if request.headers.get("content-encoding", "identity").lower() != "gzip":
        return bytes(body)
    unpack = zlib.decompressobj(wbits=31)
    try:
        plain = unpack.decompress(bytes(body), limit + 1)
    except zlib.error as e:
        raise Malformed(f"the gzip body cannot be read: {e}") from None
    if len(plain) > limit or unpack.unconsumed_tail:
        raise TooLarge
    if not unpack.eof:
        raise Malformed("the gzip body is cut short")
    return plain


#: Devices a rate limit remembers before it forgets those that are idle.
_KEEP = 10_000


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimit:
    """``per_second`` requests per device on average, ``burst`` at once;
    ``clock`` is replaced by tests. Kept per gateway process: behind a
    balancer a device's allowance is per process it reaches."""

    per_second: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def take(self, device: str) -> float:
        """Count a request of ``device``: 0 when it may go ahead, else the
        seconds until it may (the request is not counted then)."""
        now = self.clock()
        if len(self._buckets) > _KEEP:
            # Forget the devices whose buckets have refilled: they are as new.
            full = self.burst / self.per_second
            self._buckets = {d: b for d, b in self._buckets.items() if now - b.at < full}
        bucket = self._buckets.get(device)
        if bucket is None:
            bucket = self._buckets[device] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.per_second)
        bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.per_second
