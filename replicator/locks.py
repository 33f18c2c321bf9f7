"""Locks that one holder at a time may hold, across processes: one runner
per link.

Whatever works on a link (``replicator run``, an app's background sync, a
one-off ``sync``) first takes the link's lock and keeps it while it works.
The lock lives with the database every runner of the link talks to, the
server: a MariaDB advisory lock on a MariaDB server (see
:mod:`replicator.dialects.mariadb`), a lock file beside an embedded store's
database file, and a lock inside this process for an in-memory database.
Each kind names its holder, so a runner that finds a link taken can say by
whom.

A lock only saves work: two passes over one link at once would still be
correct (each batch re-reads its checkpoint inside the target transaction
that advances it), but they would read everything twice and one would fail
on the other's writes.
"""

from __future__ import annotations

import abc
import datetime as dt
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import IO

from replicator.errors import ConnectivityError, ReplicatorError

try:
    import fcntl
except ImportError:  # not POSIX (Windows): locks hold within one process only
    fcntl = None  # type: ignore[assignment]

# Tries to take a lock file (5 ms apart): a look at its holder shares it
# for an instant, which must not make a taker give up.
_ATTEMPTS = 3


def holder_name(what: str = "") -> str:
    """A new holder's name: ``pid 4242 on host (replicator run) since
    2026-11-24T11:00:00Z [3f9a1c]``. The tag at the end makes it unique: two
    holders in one process (two threads syncing) are told apart."""
    command = what or Path(sys.argv[0]).name or "python"
    since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    tag = uuid.uuid4().hex[:6]
    return f"pid {os.getpid()} on {socket.gethostname()} ({command}) since {since} [{tag}]"


class Lock(abc.ABC):
    """A named lock that one holder at a time holds, across processes.

    :meth:`acquire` never waits: it returns whether the lock is now held
    (True again when this object already holds it). :meth:`held` says
    whether it still is (a MariaDB lock goes with its connection).
    :meth:`holder` names whoever holds it now (None when nobody does).
    """

    name: str

    @abc.abstractmethod
    def acquire(self, holder: str) -> bool:
        """See the class doc."""

    @abc.abstractmethod
    def held(self) -> bool:
        """See the class doc."""

    @abc.abstractmethod
    def release(self) -> None:
        """See the class doc."""

    @abc.abstractmethod
    def holder(self) -> str | None:
        """See the class doc."""

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FileLock(Lock):
    """An exclusive ``flock`` on a file, which holds its holder's name.

    The kernel drops the lock when the holder's process ends, however it
    ends, so a crashed runner never leaves a link locked. The file stays
    (deleting it would let two processes lock two different files).
    Locks are per open file, so two objects in one process exclude each
    other too.
    """

    def __init__(self, path: str | Path, name: str = "") -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self._file = None

    def acquire(self, holder: str) -> bool:
        if self.held():
            return True
        file = self._open("a+")
        for attempt in range(_ATTEMPTS):
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # Someone holds it, or :meth:`holder` is looking for an instant.
                if attempt == _ATTEMPTS - 1:
                    file.close()
                    return False
                time.sleep(0.005)
        file.seek(0)
        file.truncate()
        file.write(holder + "\n")
        file.flush()
        self._file = file
        return True

    def _open(self, mode: str) -> IO[str]:
        try:
            return open(self.path, mode)  # kept open while held
        except FileNotFoundError as e:  # as unreachable as the database beside it
            raise ConnectivityError(
                f"cannot open the lock file {self.path}: its directory is missing"
            ) from e
        except OSError as e:
            raise ReplicatorError(f"cannot open the lock file {self.path}: {e.strerror}") from e

    def held(self) -> bool:
        if self._file is None:
            return False
        try:  # someone deleted the file: another process may lock a new one
            return os.fstat(self._file.fileno()).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def release(self) -> None:
        if self._file is None:
            return
        try:
            self._file.truncate(0)
            fcntl.flock(self._file, fcntl.LOCK_UN)
        finally:
            self._file.close()
            self._file = None

    def holder(self) -> str | None:
        if not self.path.exists():
            return None
        with self._open("r") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return file.read().strip() or "another process"
            fcntl.flock(file, fcntl.LOCK_UN)
            return None


class ProcessLock(Lock):
    """A lock inside this process, for a database no other process can
    open (an in-memory one)."""

    _holders: dict[str, str] = {}
    _guard = threading.Lock()

    def __init__(self, name: str, database: object = None) -> None:
        self.name = name
        # In-memory databases are one per engine: the lock is one per database
        # (named by its path, or by its engine's identity).
        where = database if isinstance(database, str) else id(database)
        self._key = f"{where}:{name}"
        self._held = False

    def acquire(self, holder: str) -> bool:
        with self._guard:
            if self._held:
                return True
            if self._key in self._holders:
                return False
            self._holders[self._key] = holder
            self._held = True
            return True

    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        with self._guard:
            if self._held:
                del self._holders[self._key]
                self._held = False

    def holder(self) -> str | None:
        return self._holders.get(self._key)


def for_database(database: str | None, name: str, owner: object = None) -> Lock:
    """The lock called ``name`` for an embedded store whose database file
    is ``database``: a :class:`FileLock` beside the file
    (``app.sqlite.replicator-link-phone.lock``), or a :class:`ProcessLock`
    for an in-memory database (None, ``""`` or ``":memory:"``), which is
    one per ``owner`` (its engine). Without ``flock`` (Windows) it is a
    :class:`ProcessLock` too: one runner per link within the process."""
    if not database or database == ":memory:":
        return ProcessLock(name, owner)
    if fcntl is None:
        return ProcessLock(name, str(Path(database).resolve()))
    path = Path(database)
    return FileLock(path.with_name(f"{path.name}.replicator-{name}.lock"), name)


def in_directory(directory: str | Path, filename: str, name: str = "") -> Lock:
    """A :class:`FileLock` on ``directory / filename`` (the directory made
    if missing); a :class:`ProcessLock` on it without ``flock``."""
    path = Path(directory) / filename
    if fcntl is None:
        return ProcessLock(name or filename, str(path.resolve()))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReplicatorError(f"cannot make the directory {path.parent}: {e.strerror}") from e
    return FileLock(path, name or filename)
