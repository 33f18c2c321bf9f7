"""The replicator's own tables, defined once.

Every node (server or local) holds the same tables, created and upgraded
by the alembic migrations in ``migrations/`` (a test checks that the
migrations produce exactly these definitions). All names start with
``replicator_``; capture never records changes to them.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

PREFIX = "replicator_"

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


def _exact(length: int) -> sa.types.TypeEngine:
    """A VARCHAR compared byte for byte on MariaDB.

    MariaDB's default collation is case- and accent-insensitive: row keys
    'abc' and 'ABC' would be one row of version state. Binary collation keeps
    keys exact (as SQLite and DuckDB compare them) and compares faster.
    """
    return sa.String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


# InnoDB limits an index to 3072 bytes (768 utf8mb4 characters); the row
# versions' primary key (table name + row key) stays below that.
NODE = _exact(64)
TABLE_NAME = _exact(128)
ROW_KEY = _exact(512)
# BLOB is 64 KiB on MariaDB; a document with its embedding can be larger.
BLOB = sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")
TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
# SQLite only auto-increments an INTEGER PRIMARY KEY.
SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def serial_column(name: str, table: str) -> sa.Column:
    """An auto-incrementing BIGINT primary key.

    MariaDB and SQLite number rows themselves; DuckDB has no auto-increment,
    so its dialect module gives the column a sequence default, named in
    ``info`` (see :mod:`replicator.dialects.duckdb`).
    """
    return sa.Column(
        name,
        SERIAL,
        primary_key=True,
        autoincrement=True,
        info={"sequence": f"{table}_{name}_seq"},
    )


outbox = sa.Table(
    "replicator_outbox",
    metadata,
    # The position orders the log; readers stream events after a checkpoint.
    serial_column("position", "replicator_outbox"),
    # Copied out of the payload: what readers filter on (whose events, which
    # tables, which row, since when). Event id, transaction and operation
    # stay in the payload only; each column costs on every captured write.
    sa.Column("origin", NODE, nullable=False),
    sa.Column("table_name", TABLE_NAME, nullable=False),
    sa.Column("row_key", ROW_KEY, nullable=False),
    sa.Column("hlc", sa.BigInteger, nullable=False),
    sa.Column("payload", BLOB, nullable=False),
    # Deliberately no secondary index: every event would pay for a random
    # B-tree insert on the app's write path (the capture benchmark measured
    # it). Appends by position are sequential; a row's history is a scan.
)

outbox_writers = sa.Table(
    "replicator_outbox_writers",
    metadata,
    # One row (id = 1). On databases with concurrent writers (MariaDB), every
    # transaction that appends to the outbox holds a shared lock on it until
    # it ends, and a reader takes it exclusively for an instant to learn a
    # position below which every event has committed (see outbox.horizon).
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
)

log = sa.Table(
    "replicator_log",
    metadata,
    # One row (id = 1). `log_id` names this database's outbox: a replica
    # made anew numbers its outbox from 1 again under a new id, and a
    # checkpoint of the old one no longer counts. Every event at or below
    # `pruned_position` may have been deleted by retention: a reader whose
    # checkpoint is below it has lost events and must be bootstrapped.
    # `pruned_at` is set once the log no longer tells the tables' whole
    # story (pruned, or rows copied in by a bootstrap).
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("log_id", sa.String(32), nullable=False),
    sa.Column("pruned_position", sa.BigInteger, nullable=False),
    sa.Column("pruned_at", sa.DateTime),
    # The role this database last replicated as ("server" or "local"; None
    # until its first pass). A local takes the keys of new rows from the
    # blocks the server leased it (see replicator.keys).
    sa.Column("role", sa.String(16)),
)

row_versions = sa.Table(
    "replicator_row_versions",
    metadata,
    # The causal version of every row this node holds (or held: a deleted row
    # keeps its entry as a tombstone, so a late update to it is recognised).
    sa.Column("table_name", TABLE_NAME, primary_key=True),
    sa.Column("row_key", ROW_KEY, primary_key=True),
    sa.Column("version", sa.Text, nullable=False),  # JSON object: node -> counter
    sa.Column("hlc", sa.BigInteger, nullable=False),
    sa.Column("origin", NODE, nullable=False),  # who made the current version
    sa.Column("deleted", sa.Boolean, nullable=False),
    # SQLite: store rows in the primary-key B-tree itself (InnoDB always
    # does), one B-tree write per upsert instead of a rowid table plus index.
    sqlite_with_rowid=False,
)

settlements = sa.Table(
    "replicator_settlements",
    metadata,
    # On the server: for a row whose current version is a settlement that
    # kept one side's row, the version of the change that made that row.
    # A later change that descends from it saw the row as it stands and
    # only missed the losing side, so it is applied, not a new conflict.
    sa.Column("table_name", TABLE_NAME, primary_key=True),
    sa.Column("row_key", ROW_KEY, primary_key=True),
    sa.Column("version", sa.Text, nullable=False),  # the settlement's version (JSON)
    sa.Column("kept", sa.Text, nullable=False),  # the version of the row it kept (JSON)
)

checkpoints = sa.Table(
    "replicator_checkpoints",
    metadata,
    # Stored on the target: the last source position whose effects committed
    # here, advanced in the same transaction as those effects.
    sa.Column("source", NODE, primary_key=True),
    sa.Column("channel", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    # The source's log_id the position counts in (None: recorded before ids).
    sa.Column("log_id", sa.String(32)),
)

review_items = sa.Table(
    "replicator_review_items",
    metadata,
    # The manual-review queue: every version of a conflict no policy settled,
    # or an event that could not be applied, with the reason (see parking.py;
    # people decide them through review.py).
    # `local` is the version the node that parked it holds, `remote` the
    # incoming one; `events` the encoded events involved, whole.
    serial_column("id", "replicator_review_items"),
    sa.Column("table_name", TABLE_NAME, nullable=False),
    sa.Column("row_key", ROW_KEY, nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("detail", TEXT, nullable=False, default=""),
    sa.Column("policy", sa.String(128), nullable=False, default=""),
    sa.Column("status", sa.String(16), nullable=False, default="open"),
    sa.Column("base", BLOB),
    sa.Column("local", BLOB),
    sa.Column("remote", BLOB),
    sa.Column("events", BLOB),
    sa.Column("detected_at", sa.DateTime, nullable=False),
    sa.Column("resolved_at", sa.DateTime),
    sa.Column("resolved_by", sa.String(128)),
    sa.Column("resolution", TEXT),
    # How many events it holds (NULL: parked before this was counted; read
    # from `events`). A held item's events are in review_events instead.
    sa.Column("event_count", sa.BigInteger),
    sa.Index(None, "status", "table_name"),
    sa.Index(None, "table_name", "row_key"),
    sa.Index(None, "status", "detected_at"),  # pages of open items, oldest first
)

review_events = sa.Table(
    "replicator_review_events",
    metadata,
    # The events a held item keeps (every event of a table refused for one
    # structural reason: see parking.py), one row each, in the order they
    # came: a flood of them grows the item by inserts, not by rewriting it.
    sa.Column("item_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
    # The row's key as the outbox gave it (an undecodable event's is known
    # only from there).
    sa.Column("row_key", ROW_KEY, nullable=False),
    sa.Column("payload", BLOB, nullable=False),
)

sync_runs = sa.Table(
    "replicator_sync_runs",
    metadata,
    # One row per replication pass over one link and channel.
    serial_column("id", "replicator_sync_runs"),
    sa.Column("source", NODE, nullable=False),
    sa.Column("target", NODE, nullable=False),
    sa.Column("channel", sa.String(64), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("events_read", sa.Integer, nullable=False, default=0),
    sa.Column("events_applied", sa.Integer, nullable=False, default=0),
    sa.Column("events_skipped", sa.Integer, nullable=False, default=0),
    sa.Column("conflicts", sa.Integer, nullable=False, default=0),
    sa.Column("parked", sa.Integer, nullable=False, default=0),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("seconds", sa.Float, nullable=False, default=0.0),
    sa.Column("error", TEXT),
    # JSON object: policy name -> conflicts it settled or parked.
    sa.Column("conflict_policies", sa.Text),
    sa.Index(None, "started_at"),
)

runners = sa.Table(
    "replicator_runners",
    metadata,
    # Who holds each of this database's advisory locks (MariaDB: one runner
    # per link, see replicator.locks): written by the holder when it takes
    # the lock, so a runner that finds it taken can name the holder. The
    # lock itself is the database's (GET_LOCK) and ends with its connection;
    # a row whose connection no longer holds the lock means nothing.
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(255), nullable=False),
    sa.Column("connection_id", sa.BigInteger, nullable=False),
    sa.Column("since", sa.DateTime, nullable=False),
)

key_blocks = sa.Table(
    "replicator_key_blocks",
    metadata,
    # The integer keys this node may give new rows of a table whose key the
    # database would otherwise generate: blocks leased from the server (the
    # server's own, where it assigns keys itself). Capture takes keys from
    # the lowest block first; `next_key` is the next unused one.
    sa.Column("table_name", TABLE_NAME, primary_key=True),
    sa.Column("first_key", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("last_key", sa.BigInteger, nullable=False),
    sa.Column("next_key", sa.BigInteger, nullable=False),
)

key_leases = sa.Table(
    "replicator_key_leases",
    metadata,
    # On the server: every block of keys it has leased, and to whom. A key
    # is leased once, ever; the server's own AUTO_INCREMENT is kept above
    # every block.
    sa.Column("table_name", TABLE_NAME, primary_key=True),
    sa.Column("first_key", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("last_key", sa.BigInteger, nullable=False),
    sa.Column("holder", NODE, nullable=False),
    sa.Column("leased_at", sa.DateTime, nullable=False),
)

key_ranges = sa.Table(
    "replicator_key_ranges",
    metadata,
    # On the server: per table, the first key no block has been leased from
    # yet. Every lease moves it under a row lock (or, on DuckDB, a write
    # conflict), so two leases racing never get overlapping blocks.
    sa.Column("table_name", TABLE_NAME, primary_key=True),
    sa.Column("next_key", sa.BigInteger, nullable=False),
)

sequences = sa.Table(
    "replicator_sequences",
    metadata,
    # The sequence the app's models number a table's key with (a
    # `Sequence` SQLAlchemy fires itself, so the database cannot tell),
    # recorded by capture: rows applied with explicit keys move it ahead.
    sa.Column("table_name", TABLE_NAME, primary_key=True),
    sa.Column("sequence_name", sa.String(255), nullable=False),
)

revoked_tokens = sa.Table(
    "replicator_revoked_tokens",
    metadata,
    # On the server: device tokens the sync gateway refuses from now on
    # (`replicator token revoke`), by the token's id (its `jti`). Every
    # gateway process reads it, so a revocation holds behind any balancer.
    sa.Column("token_id", sa.String(64), primary_key=True),
    sa.Column("device", NODE, nullable=False),
    sa.Column("revoked_at", sa.DateTime, nullable=False),
    sa.Column("reason", sa.String(255), nullable=False),
)

REQUIRED_FOR_CAPTURE = (outbox.name, row_versions.name, key_blocks.name)


def is_replicator_table(name: str) -> bool:
    return name.startswith(PREFIX)


def app_table_names(conn: sa.engine.Connection) -> list[str]:
    """The app's tables on a node (every table but the replicator's), sorted."""
    return sorted(t for t in sa.inspect(conn).get_table_names() if not is_replicator_table(t))
