"""A TCP proxy for tests that cuts connections where a test says: the
network between a device and the gateway, made flaky on purpose."""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Cut:
    """Cut the connection carrying the first request that starts with
    ``request`` (e.g. ``b"POST /v1/push"``), once: in the request after
    ``at`` bytes of it (``direction="request"``), or in its answer after
    ``at`` bytes of that (``"response"``)."""

    request: bytes
    at: int
    direction: str = "request"


@dataclass
class Proxy:
    """Forwards 127.0.0.1:``port`` to ``upstream`` (host, port), cutting as
    :attr:`cuts` say, each once; :attr:`done` lists the cuts made."""

    upstream: tuple[str, int]
    cuts: list[Cut] = field(default_factory=list)
    done: list[Cut] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _take(self, data: bytes) -> Cut | None:
        with self.lock:
            for cut in self.cuts:
                if cut not in self.done and data.startswith(cut.request):
                    self.done.append(cut)
                    return cut
        return None

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            state: dict[str, object] = {"cut": None}
            threading.Thread(
                target=self._pipe, args=(client, server, state, "request"), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(server, client, state, "response"), daemon=True
            ).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, state: dict, way: str) -> None:
        sent = 0
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if way == "request":
                    cut = self._take(data)
                    if cut is not None:
                        state["cut"], state["sent"] = cut, 0
                        sent = 0
                armed: Cut | None = state["cut"]  # type: ignore[assignment]
                if armed is not None and armed.direction == way:
                    left = armed.at - sent
                    if left < len(data):
                        sink.sendall(data[: max(left, 0)])
                        break
                sent += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()
