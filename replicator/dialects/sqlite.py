"""SQLite: ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING``.

SQLite has one writer at a time (the database file is locked from the first
write until commit), so reads that decide a write need no row lock; its JSON
functions and ``RETURNING`` let version state advance in one upsert. The
statements themselves are the base dialect's.
"""

from __future__ import annotations

from replicator.dialects.base import Dialect


class SQLiteDialect(Dialect):
    name = "sqlite"
