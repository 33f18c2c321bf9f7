"""MariaDB (10.5 or later, for ``INSERT ... RETURNING``) through pymysql.

pymysql escapes every bound value in Python, so batches go as multi-row
statements with batch-wide values written in once (see the base dialect).
InnoDB reads a snapshot unless asked to lock, hence ``FOR UPDATE`` where a
read decides a write; version state instead advances inside the upsert,
where a duplicate primary key locks only its own index record (a locking
read of absent keys would take gap locks and deadlock concurrent inserts).
"""

from __future__ import annotations

import sqlalchemy as sa

from replicator.dialects.base import Dialect


class MariaDBDialect(Dialect):
    name = "mariadb"
    on_conflict = "ON DUPLICATE KEY UPDATE"
    incoming = "VALUES({})"
    json_set, json_get, greatest = "JSON_SET", "JSON_VALUE", "GREATEST"

    def json_member(self, name_sql: str) -> str:
        return f"""CONCAT('$."', {name_sql}, '"')"""

    def lock_rows(self, select: sa.Select) -> sa.Select:
        # A locking read sees the latest committed row, not the transaction's
        # snapshot.
        return select.with_for_update()
