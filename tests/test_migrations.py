"""alembic creates the replicator's tables on every backend, idempotently,
exactly as ``replicator.tables`` defines them."""

from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import replicator
from replicator.migration import VERSION_TABLE
from replicator.tables import metadata

EXPECTED = {
    "replicator_log": {"id", "log_id", "pruned_position", "pruned_at", "role"},
    "replicator_key_blocks": {"table_name", "first_key", "last_key", "next_key"},
    "replicator_key_leases": {"table_name", "first_key", "last_key", "holder", "leased_at"},
    "replicator_sequences": {"table_name", "sequence_name"},
    "replicator_revoked_tokens": {"token_id", "device", "revoked_at", "reason"},
    "replicator_key_ranges": {"table_name", "next_key"},
    "replicator_runners": {"name", "holder", "connection_id", "since"},
    "replicator_settlements": {"table_name", "row_key", "version", "kept"},
    "replicator_outbox": {
        "position",
        "origin",
        "table_name",
        "row_key",
        "hlc",
        "payload",
    },
    "replicator_row_versions": {
        "table_name",
        "row_key",
        "version",
        "hlc",
        "origin",
        "deleted",
    },
    "replicator_checkpoints": {"source", "channel", "position", "updated_at", "log_id"},
    "replicator_outbox_writers": {"id"},
    "replicator_review_items": {
        "id",
        "table_name",
        "row_key",
        "reason",
        "detail",
        "policy",
        "status",
        "base",
        "local",
        "remote",
        "events",
        "detected_at",
        "resolved_at",
        "resolved_by",
        "resolution",
        "event_count",
    },
    "replicator_review_events": {"item_id", "position", "row_key", "payload"},
    "replicator_sync_runs": {
        "id",
        "source",
        "target",
        "channel",
        "started_at",
        "finished_at",
        "status",
        "events_read",
        "events_applied",
        "events_skipped",
        "conflicts",
        "conflict_policies",
        "parked",
        "failed",
        "seconds",
        "error",
    },
}


def test_migrate_twice_creates_the_tables_once(database_url):
    assert replicator.migrate(database_url) == "created"
    assert replicator.migrate(database_url) == "up to date"  # at head already: changes nothing

    engine = sa.create_engine(database_url)
    try:
        names = set(sa.inspect(engine).get_table_names())
        assert names == set(EXPECTED) | {VERSION_TABLE}
        for table, columns in EXPECTED.items():
            assert set(columns_of(engine, table)) == columns, table
        assert primary_key_of(engine, "replicator_row_versions") == ["table_name", "row_key"]
        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [
                ("0008",)
            ]
    finally:
        engine.dispose()


def columns_of(engine: sa.Engine, table: str) -> list[str]:
    if engine.dialect.name == "duckdb":
        # duckdb-engine's column reflection queries pg_catalog tables DuckDB lacks.
        with engine.connect() as conn:
            return (
                conn.exec_driver_sql(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ?",
                    (table,),
                )
                .scalars()
                .all()
            )
    return [c["name"] for c in sa.inspect(engine).get_columns(table)]


def primary_key_of(engine: sa.Engine, table: str) -> list[str]:
    if engine.dialect.name == "duckdb":
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                "SELECT constraint_column_names FROM duckdb_constraints() "
                "WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'",
                (table,),
            ).scalar_one()
    return sa.inspect(engine).get_pk_constraint(table)["constrained_columns"]


def test_serial_columns_number_rows(engine):
    replicator.migrate(engine)
    from replicator.tables import sync_runs

    with engine.begin() as conn:
        row = {
            "source": "a",
            "target": "b",
            "channel": "",
            "status": "ok",
            "started_at": sa.func.current_timestamp(),
            "events_read": 0,
            "events_applied": 0,
            "events_skipped": 0,
            "conflicts": 0,
            "parked": 0,
            "failed": 0,
            "seconds": 0.0,
        }
        conn.execute(sync_runs.insert().values(**row))
        conn.execute(sync_runs.insert().values(**row))
        assert conn.execute(sa.select(sync_runs.c.id).order_by("id")).scalars().all() == [1, 2]


def test_migrations_match_the_table_definitions(engine):
    """The migration and replicator.tables never drift apart (autogenerate finds nothing)."""
    if engine.dialect.name == "duckdb":
        import pytest

        pytest.skip("duckdb-engine's reflection cannot drive alembic autogenerate")
    replicator.migrate(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "include_name": lambda name, type_, parent: (
                    type_ != "table" or (name.startswith("replicator_") and name != VERSION_TABLE)
                ),
                "compare_type": True,
            },
        )
        assert compare_metadata(context, metadata) == []


def test_migrate_says_it_upgraded_an_older_revision(database_url):
    replicator.migrate(database_url, revision="0004")
    assert replicator.migrate(database_url) == "upgraded"
    assert replicator.migrate(database_url) == "up to date"
