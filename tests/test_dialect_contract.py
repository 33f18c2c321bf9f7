"""The contract of :class:`replicator.dialects.base.Dialect`, written once and
run on every backend (SQLite, DuckDB, MariaDB when its URL is set).

Every public method of ``Dialect`` and of ``TableShape`` is called here
directly. Where databases legitimately differ, a test states the contract per
capability (``keeps_generated_keys_out``, ``advances_versions_in_sql``, ...).
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import json
import threading
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.exc import DBAPIError

import replicator
from replicator import locks, outbox, precision
from replicator.dialects import for_connection
from replicator.dialects.base import TableShape, placeholders, quote
from replicator.errors import SchemaError
from replicator.tables import outbox as outbox_table
from replicator.tables import row_versions


def _key(name: str, type_: sa.types.TypeEngine, **kw) -> sa.Column:
    """A primary-key column the database does not number itself (DuckDB
    has no SERIAL; on MariaDB an integer key would be AUTO_INCREMENT)."""
    return sa.Column(name, type_, primary_key=True, autoincrement=False, **kw)


def _items(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "items",
        metadata,
        _key("id", sa.String(16)),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("price", sa.Integer),
        sa.Column("note", sa.String(64)),
    )


def _pairs(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "pairs",
        metadata,
        _key("a", sa.String(16)),
        _key("b", sa.Integer),
        sa.Column("v", sa.String(64)),
    )


def _numbers(metadata: sa.MetaData) -> sa.Table:
    return sa.Table("numbers", metadata, _key("n", sa.Integer))


def _items_holding_k1(engine, note: str) -> sa.Table:
    """The ``items`` table, created, holding ``("k1", "old", 1, note)``."""
    items = _items(metadata := sa.MetaData())
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(items.insert().values(id="k1", name="old", price=1, note=note))
    return items


def _all(conn, table: sa.Table) -> list[tuple]:
    key = table.primary_key.columns
    return [tuple(r) for r in conn.execute(sa.select(table).order_by(*key))]


# --- insert_rows ----------------------------------------------------------------

_OUTBOX_COLUMNS = ("origin", "table_name", "row_key", "hlc", "payload")


def _outbox_rows(conn) -> list[tuple]:
    c = outbox_table.c
    select = sa.select(*(c[name] for name in _OUTBOX_COLUMNS)).order_by(c.position)
    return [tuple(r) for r in conn.execute(select)]


def test_insert_rows_writes_constants_into_the_statement_quoted_safely(engine):
    replicator.migrate(engine)
    awkward = "it's a \\ back'slash"
    with engine.begin() as conn:
        for_connection(conn).insert_rows(
            conn,
            outbox_table,
            ("row_key", "hlc", "payload"),
            [("[1]", 1, b"\x00'\\"), ("[2]", 2, b"")],
            {"origin": awkward, "table_name": "t"},
        )
        rows = _outbox_rows(conn)
    assert rows == [(awkward, "t", "[1]", 1, b"\x00'\\"), (awkward, "t", "[2]", 2, b"")], (
        f"expected the constants in every row and the bytes as given, got {rows}"
    )


def test_insert_rows_hoists_a_column_only_when_every_row_has_the_same_value(engine):
    replicator.migrate(engine)
    rows = [("a", "t", "[1]", 1, b"1"), ("a", "u", "[2]", 2, b"2"), ("a", "t", "[3]", 3, b"3")]
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.insert_rows(
            conn, outbox_table, _OUTBOX_COLUMNS, rows, hoist=("origin", "table_name")
        )
        dialect.insert_rows(conn, outbox_table, _OUTBOX_COLUMNS, [], hoist=("origin",))
        dialect.insert_rows(conn, outbox_table, _OUTBOX_COLUMNS[2:], [], {"origin": "a"})
        stored = _outbox_rows(conn)
    assert stored == rows, f"expected each row as given (and nothing for none), got {stored}"


def test_insert_of_more_rows_than_one_statement_holds(engine):
    replicator.migrate(engine)
    rows = [(f"[{i}]", i, b"x") for i in range(2500)]
    with engine.begin() as conn:
        for_connection(conn).insert_rows(
            conn,
            outbox_table,
            ("row_key", "hlc", "payload"),
            rows,
            {"origin": "a", "table_name": "t"},
        )
        count = conn.execute(sa.select(sa.func.count()).select_from(outbox_table)).scalar()
        keys = {r[2] for r in _outbox_rows(conn)}
    assert count == 2500 and keys == {r[0] for r in rows}, f"expected 2500 rows, got {count}"


# --- upsert_rows with update= ---------------------------------------------


def test_upsert_with_update_changes_only_those_columns_of_an_existing_row(engine):
    items = _items_holding_k1(engine, note="kept")
    columns = ("id", "name", "price", "note")
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.upsert_rows(
            conn, items, columns, [("k1", "new", 2, "lost"), ("k2", "b", 3, "n2")], update={"name"}
        )
        rows = _all(conn, items)
    assert rows == [("k1", "new", 1, "kept"), ("k2", "b", 3, "n2")], (
        "expected the existing row to take only `name` and the new row every column"
    )


def test_upsert_with_update_keeps_the_last_row_of_a_repeated_key(engine):
    items = _items_holding_k1(engine, note="kept")
    columns = ("id", "name", "price", "note")
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.upsert_rows(
            conn,
            items,
            columns,
            [
                ("k1", "first", 9, "x"),
                ("k2", "first", 8, "x"),
                ("k1", "last", 7, "y"),
                ("k2", "last", 6, "y"),
            ],
            update={"name", "price"},
        )
        rows = _all(conn, items)
    assert rows == [("k1", "last", 7, "kept"), ("k2", "last", 6, "y")], (
        "expected the last row given for each key to win, existing or new"
    )


def test_upsert_with_an_empty_update_writes_every_column(engine):
    items = _items_holding_k1(engine, note="old")
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.upsert_rows(
            conn, items, ("id", "name", "price", "note"), [("k1", "new", 2, "new")], update=()
        )
        rows = _all(conn, items)
    assert rows == [("k1", "new", 2, "new")], "expected an empty `update` to be taken as None"


def test_upsert_of_no_rows_changes_nothing(engine):
    items = _items_holding_k1(engine, note="old")
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.upsert_rows(conn, items, ("id", "name", "price", "note"), [])
        dialect.upsert_rows(conn, items, ("id", "name"), [], update={"name"})
        rows = _all(conn, items)
    assert rows == [("k1", "old", 1, "old")], "expected an empty upsert to change nothing"


def test_upsert_keeps_the_last_row_of_a_repeated_key(engine):
    replicator.migrate(engine)
    columns = ("table_name", "row_key", "version", "hlc", "origin", "deleted")
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.upsert_rows(conn, row_versions, columns, [("t", "[1]", "{}", 1, "a", False)])
        dialect.upsert_rows(
            conn,
            row_versions,
            columns,
            [("t", "[1]", "{}", 2, "b", False), ("t", "[1]", "{}", 3, "c", True)],
        )
        rows = conn.execute(sa.select(row_versions.c.hlc, row_versions.c.origin)).all()
    assert [tuple(r) for r in rows] == [(3, "c")], f"expected the last row given to win: {rows}"


def _links(engine) -> sa.Table:
    """A table of key columns only, as a many-to-many link table is."""
    links = sa.Table(
        "links", metadata := sa.MetaData(), _key("a", sa.String(16)), _key("b", sa.Integer)
    )
    metadata.create_all(engine)
    return links


def test_upsert_of_a_table_of_key_columns_only_inserts_new_keys_and_keeps_existing_ones(engine):
    links = _links(engine)
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.upsert_rows(conn, links, ("a", "b"), [("x", 1)])
        dialect.upsert_rows(conn, links, ("a", "b"), [("x", 1), ("y", 2)])
        rows = _all(conn, links)
    assert rows == [("x", 1), ("y", 2)], f"expected each key once, got {rows}"


def test_upsert_with_an_update_naming_no_given_column_only_inserts_new_rows(engine):
    items = _items_holding_k1(engine, note="kept")
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.upsert_rows(
            conn, items, ("id", "name"), [("k1", "new"), ("k2", "b")], update={"price"}
        )
        rows = _all(conn, items)
    assert rows == [("k1", "old", 1, "kept"), ("k2", "b", None, None)], (
        f"expected the existing row unchanged and the new row inserted, got {rows}"
    )


# --- the key guard: an upsert never changes another row --------------------------

# The table `people`, with a unique constraint (email) and a unique index
# (badge), its key numbered by the database as each database spells it. On
# MariaDB that is AUTO_INCREMENT, where the key guard once failed: it set the
# key to NULL, which AUTO_INCREMENT takes as 0, renumbering the other row.
PEOPLE_NUMBERED = {
    "sqlite": [
        "CREATE TABLE people (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "email VARCHAR(64) UNIQUE, badge VARCHAR(16), name VARCHAR(64))"
    ],
    "mariadb": [
        "CREATE TABLE people (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
        "email VARCHAR(64) UNIQUE, badge VARCHAR(16), name VARCHAR(64))"
    ],
    "duckdb": [
        "CREATE SEQUENCE people_id_seq",
        "CREATE TABLE people (id BIGINT PRIMARY KEY DEFAULT nextval('people_id_seq'), "
        "email VARCHAR(64) UNIQUE, badge VARCHAR(16), name VARCHAR(64))",
    ],
}


def _people(engine, key: str) -> tuple[sa.Table, list[tuple], tuple]:
    """``people`` with a ``key`` of that kind ("numbered", "text" or
    "composite") holding two rows, as the engine sees it (its description's
    bare table); the rows, and a key no row has (a composite one shares its
    first column with the rows)."""
    dialect = for_connection(engine)
    if key == "numbered":
        with engine.begin() as conn:
            for statement in PEOPLE_NUMBERED[dialect.name]:
                conn.exec_driver_sql(statement)
        keys = [(1,), (2,), (3,)]
    else:
        columns = (
            [_key("id", sa.String(16))]
            if key == "text"
            else [_key("shop", sa.String(16)), _key("number", sa.Integer)]
        )
        sa.Table(
            "people",
            metadata := sa.MetaData(),
            *columns,
            sa.Column("email", sa.String(64), unique=True),
            sa.Column("badge", sa.String(16)),
            sa.Column("name", sa.String(64)),
        )
        metadata.create_all(engine)
        keys = [("k-1",), ("k-2",), ("k-3",)] if key == "text" else [("s", 1), ("s", 2), ("s", 3)]
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE UNIQUE INDEX people_badge ON people (badge)")
    with engine.begin() as conn:
        table = dialect.describe(conn, "people").table()
        rows = [(*keys[0], "a@x", "A", "first"), (*keys[1], "b@x", "B", "second")]
        dialect.insert_rows(conn, table, [c.name for c in table.columns], rows)
    return table, rows, keys[2]


def test_key_guard_is_empty_exactly_where_the_conflict_clause_names_the_key(engine):
    table, _, _ = _people(engine, "composite")
    dialect = for_connection(engine)
    with engine.connect() as conn:
        guard = dialect.key_guard(conn, table)
        key = [quote(conn, c) for c in ("shop", "number")]
    if "{key}" in dialect.on_conflict:
        assert guard == "", f"expected no guard where the conflict is on the key, got {guard!r}"
    else:
        assert all(k in guard for k in key) and guard.rstrip().endswith(","), (
            f"expected assignments to every key column opening the update part, got {guard!r}"
        )


@pytest.mark.parametrize("key", ["numbered", "text", "composite"])
def test_an_upsert_is_refused_rather_than_change_another_row_through_a_unique_value(engine, key):
    table, (first, second), free = _people(engine, key)
    dialect = for_connection(engine)
    columns = [c.name for c in table.columns]
    own = len(free)
    clashes = {
        "a new key with another row's unique value": [(*free, "a@x", "N", "new")],
        "a new key with another row's uniquely indexed value": [(*free, "n@x", "A", "new")],
        "a row taking another row's unique value": [(*second[:own], "a@x", "B", "second")],
        "a batch with one row clashing": [
            (*free, "n@x", "N", "new"),
            (*second[:own], "b@x", "A", "second"),
        ],
    }
    for what, rows in clashes.items():
        with pytest.raises(DBAPIError) as refused, engine.begin() as conn:
            dialect.upsert_rows(conn, table, columns, rows)
        assert dialect.refusal(refused.value) == "constraint_violation", (
            f"expected {what} refused as a constraint violation, got {refused.value!r}"
        )
        with engine.connect() as conn:
            left = _all(conn, table)
        assert left == [first, second], f"expected {what} to change nothing, got {left}"
    renamed = [(*first[:own], "a@x", "A", "renamed"), (*second[:own], "c@x", "B", "moved")]
    with engine.begin() as conn:
        dialect.upsert_rows(conn, table, columns, renamed)
        rows = _all(conn, table)
    assert rows == renamed, f"expected rows upserted by their own keys, got {rows}"


# --- upsert_advancing_version ---------------------------------------------

_VERSION_COLUMNS = ("row_key", "version", "hlc", "origin", "deleted")


def test_upsert_advancing_version_inserts_new_keys_and_advances_existing_ones(engine):
    replicator.migrate(engine)
    dialect = for_connection(engine)
    with engine.begin() as conn:
        conn.execute(
            row_versions.insert(),
            [
                dict(
                    table_name="t",
                    row_key="[1]",
                    version='{"phone.1": 3, "srv": 1}',
                    hlc=100,
                    origin="srv",
                    deleted=False,
                ),
                dict(
                    table_name="t",
                    row_key="[3]",
                    version='{"srv": 2}',
                    hlc=10,
                    origin="srv",
                    deleted=False,
                ),
            ],
        )
    rows = [
        ("[1]", '{"ignored": 1}', 50, "phone.1", True),  # stored hlc + 1 wins
        ("[2]", '{"phone.1": 1}', 7, "phone.1", False),  # new: as given
        ("[3]", "{}", 500, "new", False),  # the given hlc wins; a new origin entry
    ]
    if not dialect.advances_versions_in_sql:
        with pytest.raises(TypeError), engine.begin() as conn:
            dialect.upsert_advancing_version(conn, row_versions, _VERSION_COLUMNS, rows)
        return
    with engine.begin() as conn:
        returned = dialect.upsert_advancing_version(
            conn, row_versions, _VERSION_COLUMNS, rows, constants={"table_name": "t"}
        )
        c = row_versions.c
        stored = conn.execute(
            sa.select(c.table_name, c.row_key, c.version, c.hlc, c.origin, c.deleted).order_by(
                c.row_key
            )
        ).all()
    expected = {
        "[1]": ({"phone.1": 4, "srv": 1}, 101),
        "[2]": ({"phone.1": 1}, 7),
        "[3]": ({"srv": 2, "new": 1}, 500),
    }
    got = {key: (json.loads(version), hlc) for key, version, hlc in returned}
    assert len(returned) == 3 and got == expected, (
        f"expected (row_key, version, hlc) as stored for every row, got {returned}"
    )
    assert [
        (t, key, json.loads(version), hlc, origin, bool(deleted))
        for t, key, version, hlc, origin, deleted in stored
    ] == [
        ("t", "[1]", {"phone.1": 4, "srv": 1}, 101, "phone.1", True),
        ("t", "[2]", {"phone.1": 1}, 7, "phone.1", False),
        ("t", "[3]", {"srv": 2, "new": 1}, 500, "new", False),
    ], "expected the other columns to take the given values and the returned state stored"


def test_upsert_advancing_version_of_no_rows_returns_none(engine):
    replicator.migrate(engine)
    dialect = for_connection(engine)
    if not dialect.advances_versions_in_sql:
        pytest.skip(f"{dialect.name} does not advance versions in SQL")
    with engine.begin() as conn:
        returned = dialect.upsert_advancing_version(
            conn, row_versions, ("table_name", *_VERSION_COLUMNS), []
        )
        count = conn.execute(sa.select(sa.func.count()).select_from(row_versions)).scalar()
    assert (returned, count) == ([], 0), "expected no rows returned and none written"


# --- the SQL functions of the version upsert -------------------------------------


def test_json_member_reads_and_sets_the_member_named_by_any_node_name(engine):
    dialect = for_connection(engine)
    if not dialect.advances_versions_in_sql:
        pytest.skip(f"{dialect.name} reads and sets version members in Python, not in SQL")
    document = '{"phone.1": 3, "phone": 1, "srv:a-b_c": 7}'
    names = ("phone.1", "phone", "srv:a-b_c", "absent")  # node names: [A-Za-z0-9_.:-]
    with engine.connect() as conn:
        p = placeholders(conn, 1)
        member = dialect.json_member(p)

        def one(sql: str, *params):
            return conn.exec_driver_sql(f"SELECT {sql}", params).scalar()

        read = {n: one(f"{dialect.json_get}({p}, {member})", document, n) for n in names}
        set_ = {n: one(f"{dialect.json_set}({p}, {member}, 9)", document, n) for n in names}
        larger = one(f"{dialect.greatest}(3, 7)")
    got = {n: None if v is None else int(v) for n, v in read.items()}
    assert got == {"phone.1": 3, "phone": 1, "srv:a-b_c": 7, "absent": None}, (
        f"expected each member read by its whole name, got {read}"
    )
    before = json.loads(document)
    for name, after in set_.items():
        assert json.loads(after) == {**before, name: 9}, f"expected only {name} set: {after}"
    assert larger == 7, f"expected {dialect.greatest} to give the larger value, got {larger}"


# --- delete_rows and where_in ---------------------------------------------


def test_delete_rows_deletes_composite_keys_and_ignores_keys_that_match_nothing(engine):
    pairs = _pairs(metadata := sa.MetaData())
    metadata.create_all(engine)
    with engine.begin() as conn:
        dialect = for_connection(conn)
        conn.execute(
            pairs.insert(),
            [dict(a="x", b=1, v="x1"), dict(a="x", b=2, v="x2"), dict(a="y", b=1, v="y1")],
        )
        dialect.delete_rows(conn, pairs, ("a", "b"), [("x", 1), ("y", 1), ("z", 9), ("y", 2)])
        after = _all(conn, pairs)
        dialect.delete_rows(conn, pairs, ("a", "b"), [])
        after_none = _all(conn, pairs)
    assert after == [("x", 2, "x2")], "expected exactly the rows of the given keys deleted"
    assert after_none == after, "expected deleting no keys to delete nothing"


def test_delete_rows_deletes_more_keys_than_one_statement_holds(engine):
    numbers = _numbers(metadata := sa.MetaData())
    metadata.create_all(engine)
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.insert_rows(conn, numbers, ("n",), [(i,) for i in range(1500)])
        dialect.delete_rows(conn, numbers, ("n",), [(i,) for i in range(1, 1201)] + [(99999,)])
        left = conn.execute(sa.select(numbers.c.n).order_by(numbers.c.n)).scalars().all()
    assert left == [0, *range(1201, 1500)], "expected keys 1..1200 deleted, the others kept"


def test_where_in_selects_exactly_the_rows_of_the_given_values(engine):
    pairs = _pairs(metadata := sa.MetaData())
    metadata.create_all(engine)
    with engine.begin() as conn:
        dialect = for_connection(conn)
        conn.execute(
            pairs.insert(),
            [
                dict(a="x", b=1, v="it's"),
                dict(a="x", b=2, v="x2"),
                dict(a="y", b=1, v="y1"),
                dict(a="y", b=2, v="it's"),
            ],
        )
        name = quote(conn, "pairs")

        def select(columns, values):
            clause, params = dialect.where_in(conn, columns, values)
            rows = conn.exec_driver_sql(
                f"SELECT a, b FROM {name} WHERE {clause} ORDER BY a, b", params
            )
            return [tuple(r) for r in rows]

        by_one = select(("v",), [("it's",), ("absent",)])
        by_two = select(("a", "b"), [("x", 2), ("y", 1), ("x", 9), ("z", 1)])
    assert by_one == [("x", 1), ("y", 2)], "expected the rows whose single column is listed"
    assert by_two == [("x", 2), ("y", 1)], "expected the rows whose column pair is listed"


def test_where_in_takes_as_many_values_as_in_chunk(engine):
    numbers = _numbers(metadata := sa.MetaData())
    metadata.create_all(engine)
    with engine.begin() as conn:
        dialect = for_connection(conn)
        count = min(dialect.in_chunk, 1500)
        dialect.insert_rows(conn, numbers, ("n",), [(i,) for i in range(count + 10)])
        clause, params = dialect.where_in(conn, ("n",), [(i,) for i in range(count)])
        found = conn.exec_driver_sql(
            f"SELECT count(*) FROM {quote(conn, 'numbers')} WHERE {clause}", params
        ).scalar()
    assert found == count, f"expected {count} rows matched by {count} values, got {found}"


# --- write_row ----------------------------------------------------------------


def test_write_row_inserts_when_absent_and_updates_when_present(engine):
    pairs = _pairs(metadata := sa.MetaData())
    metadata.create_all(engine)
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.write_row(conn, pairs, {"a": "x", "b": 1, "v": "one"})
        dialect.write_row(conn, pairs, {"a": "x", "b": 2, "v": "two"})
        inserted = _all(conn, pairs)
        dialect.write_row(conn, pairs, {"a": "x", "b": 1, "v": "uno"})
        updated = _all(conn, pairs)
    assert inserted == [("x", 1, "one"), ("x", 2, "two")], "expected absent rows inserted"
    assert updated == [("x", 1, "uno"), ("x", 2, "two")], (
        "expected only the row with the whole composite key updated"
    )


def test_write_row_with_update_writes_only_those_columns_of_an_existing_row(engine):
    items = _items_holding_k1(engine, note="kept")
    with engine.begin() as conn:
        dialect = for_connection(conn)
        dialect.write_row(
            conn, items, {"id": "k1", "name": "new", "price": 2, "note": "lost"}, update={"name"}
        )
        dialect.write_row(
            conn, items, {"id": "k2", "name": "b", "price": 3, "note": "n"}, update={"name"}
        )
        rows = _all(conn, items)
    assert rows == [("k1", "new", 1, "kept"), ("k2", "b", 3, "n")], (
        "expected the existing row to take only `name` and the new row every column"
    )


def test_write_row_fails_with_the_databases_own_error_for_a_refused_row(engine):
    items = _items_holding_k1(engine, note="kept")
    dialect = for_connection(engine)
    for row, what in (
        ({"id": "k2", "name": None, "price": 1, "note": ""}, "an insert"),
        ({"id": "k1", "name": None, "price": 1, "note": ""}, "an update"),
    ):
        with pytest.raises(DBAPIError) as refused, engine.begin() as conn:
            dialect.write_row(conn, items, row)
        assert dialect.refusal(refused.value) == "constraint_violation", (
            f"expected {what} of NULL into a NOT NULL column refused as a constraint "
            f"violation, got {refused.value!r}"
        )
    with engine.connect() as conn:
        assert _all(conn, items) == [("k1", "old", 1, "kept")], "expected nothing written"


# --- lock_rows ------------------------------------------------------------------


def test_lock_rows_gives_a_select_that_reads_the_same_rows(engine):
    items = _items(metadata := sa.MetaData())
    metadata.create_all(engine)
    dialect = for_connection(engine)
    select = sa.select(items.c.id, items.c.name).where(items.c.price > 1).order_by(items.c.id)
    locked = dialect.lock_rows(select)
    assert isinstance(locked, sa.Select), f"expected a Select, got {type(locked)}"
    with engine.begin() as conn:
        conn.execute(
            items.insert(),
            [dict(id=k, name=f"n{k}", price=p) for k, p in (("a", 1), ("b", 2), ("c", 3))],
        )
    with engine.begin() as conn:
        rows = conn.execute(locked).all()
    assert rows == [("b", "nb"), ("c", "nc")], "expected the locking select to read the rows"


# --- describe -------------------------------------------------------------------


def test_describe_gives_columns_key_unique_sets_parents_and_delete_actions(engine):
    dialect = for_connection(engine)
    actions = dialect.name != "duckdb"  # DuckDB has no ON DELETE actions
    metadata = sa.MetaData()
    sa.Table("customers", metadata, _key("id", sa.String(36)))
    sa.Table("regions", metadata, _key("code", sa.String(8)))
    sa.Table(
        "orders",
        metadata,
        _key("shop", sa.String(16)),
        _key("number", sa.Integer),
        sa.Column(
            "customer",
            sa.ForeignKey("customers.id", ondelete="CASCADE" if actions else None),
        ),
        sa.Column(
            "region", sa.ForeignKey("regions.code", ondelete="SET NULL" if actions else None)
        ),
        sa.Column("referrer", sa.ForeignKey("customers.id")),
        sa.Column("code", sa.String(20), unique=True),
        sa.Column("label", sa.String(20)),
        sa.Column("note", sa.String(20)),
        sa.Index("ix_orders_label_region", "label", "region", unique=True),
        sa.Index("ix_orders_note", "note"),
    )
    metadata.create_all(engine)
    with engine.connect() as conn:
        shape = dialect.describe(conn, "orders")
        missing = dialect.describe(conn, "no_such_table")
    assert missing is None, "expected None for a table that does not exist"
    assert shape.name == "orders"
    assert shape.columns == (
        "shop",
        "number",
        "customer",
        "region",
        "referrer",
        "code",
        "label",
        "note",
    ), f"expected the columns in table order, got {shape.columns}"
    assert shape.key == ("shop", "number"), f"expected the composite key, got {shape.key}"
    assert len(shape.types) == len(shape.columns), "expected one declared type per column"
    assert "int" in shape.declared("number") and "varchar" in shape.declared("code"), (
        f"expected the declared types, got {shape.types}"
    )
    assert set(shape.unique) == {("code",), ("label", "region")}, (
        "expected the unique constraint and the unique index (not the plain index nor "
        f"the key), got {shape.unique}"
    )
    assert len(shape.on_delete) == len(shape.parents), "expected one action per foreign key"
    expected = {
        (("customer",), "customers", ("id",)): "CASCADE" if actions else None,
        (("region",), "regions", ("code",)): "SET NULL" if actions else None,
        (("referrer",), "customers", ("id",)): None,
    }
    got = dict(zip(shape.parents, shape.on_delete, strict=True))
    assert len(shape.parents) == 3 and got == expected, (
        f"expected every foreign key with its ON DELETE action, got {got}"
    )


# --- declared types and the table's shape ---------------------------------------------


def test_declared_types_spell_each_column_so_that_its_precision_is_known(engine):
    dialect = for_connection(engine)
    mariadb = dialect.name == "mariadb"
    columns = [
        _key("id", sa.String(16)),
        sa.Column("amount", sa.Numeric(10, 2)),
        sa.Column("moment", sa.DateTime),
        sa.Column("ratio", sa.Double),
        sa.Column("note", sa.Text),
    ]
    if mariadb:
        columns.append(sa.Column("moment6", mysql.DATETIME(fsp=6)))
    sa.Table("declared", metadata := sa.MetaData(), *columns)
    metadata.create_all(engine)
    with engine.connect() as conn:
        types = dialect.declared_types(conn, "declared")
        missing = dialect.declared_types(conn, "no_such_table")
        shape = dialect.describe(conn, "declared")
    assert missing is None, "expected None for a table that does not exist"
    assert list(types) == list(shape.columns), f"expected every column in order: {types}"
    assert all(t and t == t.lower() for t in types.values()), f"expected lower case: {types}"
    kept = {c: precision.kept(dialect.name, t) for c, t in types.items()}
    assert kept["amount"] == precision.Kept(precision.DECIMAL, 2), kept
    assert kept["ratio"] == precision.Kept(precision.FLOAT, 53), kept
    assert kept["moment"] is not None and kept["moment"].family == precision.MOMENT, kept
    if mariadb:  # the fractional digits a generic spelling loses
        assert (types["moment6"], shape.declared("moment6")) == ("datetime(6)", "datetime"), types
        assert kept["moment6"] == precision.Kept(precision.MOMENT, 6), kept


def test_integer_key_is_a_single_integer_key_column_only(engine):
    _numbered(engine)  # items: numbered by the database; pairs: composite; labels: text
    sa.Table("bigs", metadata := sa.MetaData(), _key("id", sa.BigInteger))
    metadata.create_all(engine)
    dialect = for_connection(engine)
    with engine.connect() as conn:
        found = {
            t: dialect.describe(conn, t).integer_key
            for t in ("items", "plain", "bigs", "labels", "pairs")
        }
    assert found == {"items": "id", "plain": "id", "bigs": "id", "labels": None, "pairs": None}, (
        f"expected the key column of the single integer keys only, got {found}"
    )
    unknown = TableShape("t", ("id", "v"), ("id",))
    assert (unknown.declared("id"), unknown.integer_key) == ("", None), (
        "expected a shape without declared types to declare '' and no integer key"
    )


def test_table_is_a_bare_table_of_the_shape_that_the_bulk_paths_take(engine):
    _pairs(metadata := sa.MetaData())
    metadata.create_all(engine)
    dialect = for_connection(engine)
    with engine.begin() as conn:
        shape = dialect.describe(conn, "pairs")
        table = shape.table()
        dialect.insert_rows(conn, table, shape.columns, [("x", 1, "one"), ("x", 2, "two")])
        dialect.upsert_rows(conn, table, shape.columns, [("x", 1, "uno")])
        dialect.delete_rows(conn, table, shape.key, [("x", 2)])
        rows = _all(conn, table)
    assert (table.name, [c.name for c in table.columns]) == ("pairs", ["a", "b", "v"])
    assert [c.name for c in table.primary_key.columns] == ["a", "b"], "expected the key"
    assert rows == [("x", 1, "uno")], f"expected the bulk paths to work on it, got {rows}"


def test_table_is_built_once_per_shape(engine):
    _pairs(metadata := sa.MetaData())
    metadata.create_all(engine)
    with engine.connect() as conn:
        shape = for_connection(conn).describe(conn, "pairs")
        again = for_connection(conn).describe(conn, "pairs")
    assert shape.table() is again.table(), "expected one Table for equal shapes"


# --- stored ---------------------------------------------------------------------


class Color(enum.Enum):
    RED = "r"
    GREEN = "g"


def _reads_back(engine, columns: list[sa.Column], values: dict) -> dict:
    """``values`` written to a one-row table of ``columns`` through
    SQLAlchemy (as an app writes them), as they read back."""
    table = sa.Table("stored", metadata := sa.MetaData(), _key("id", sa.Integer), *columns)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert().values(id=1, **values))
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(*columns)).one()._mapping)


@pytest.mark.parametrize(
    "value",
    [
        decimal.Decimal("1.005"),
        decimal.Decimal("-1.005"),
        decimal.Decimal("2.675"),
        decimal.Decimal("7.1"),
        1.125,
        3,
        None,
    ],
    ids=repr,
)
def test_stored_gives_a_decimal_as_the_database_rounds_it_to_its_scale(engine, value):
    column = sa.Column("amount", sa.Numeric(10, 2))
    stored = for_connection(engine).stored(column)
    assert stored is not None, "expected a DECIMAL column to read back rounded to its scale"
    read = _reads_back(engine, [column], {"amount": value})["amount"]
    assert stored(value) == read, (
        f"expected stored({value!r}) to be what the database reads back: {read!r}, "
        f"got {stored(value)!r}"
    )


def test_stored_leaves_columns_that_read_back_as_written(engine):
    dialect = for_connection(engine)
    for type_ in (sa.String(10), sa.Integer(), sa.Float(), sa.Numeric(10, 2, asdecimal=False)):
        assert dialect.stored(sa.Column("c", type_)) is None, f"expected None for {type_!r}"


def test_stored_gives_an_enum_member_as_its_name_or_its_value(engine):
    dialect = for_connection(engine)
    by_name = sa.Column("by_name", sa.Enum(Color, name="color_by_name"))
    by_value = sa.Column(
        "by_value",
        sa.Enum(Color, name="color_by_value", values_callable=lambda e: [m.value for m in e]),
    )
    as_name, as_value = dialect.stored(by_name), dialect.stored(by_value)
    assert as_name is not None and as_value is not None, "expected Enum columns converted"
    assert (as_name(Color.RED), as_value(Color.GREEN)) == ("RED", "g"), (
        "expected a member stored by name, or by value with values_callable"
    )
    assert (as_name("RED"), as_value("g"), as_name(None)) == ("RED", "g", None), (
        "expected anything but a member passed through"
    )
    _reads_back(engine, [by_name, by_value], {"by_name": Color.RED, "by_value": Color.GREEN})
    with engine.connect() as conn:
        raw = tuple(conn.exec_driver_sql("SELECT by_name, by_value FROM stored").one())
    assert raw == ("RED", "g"), f"expected the database to hold what stored() says, got {raw}"


def test_stored_truncates_fractional_seconds_only_where_the_database_does(engine):
    dialect = for_connection(engine)
    mariadb = dialect.name == "mariadb"
    columns = [sa.Column("moment", sa.DateTime), sa.Column("time", sa.Time)]
    if mariadb:
        columns.append(sa.Column("at3", mysql.DATETIME(fsp=3)))
    at = dt.datetime(2024, 5, 6, 7, 8, 9, 999999)
    values = {"moment": at, "time": at.time(), **({"at3": at} if mariadb else {})}
    read = _reads_back(engine, columns, values)
    for column in columns:
        stored = dialect.stored(column)
        if not mariadb:
            assert stored is None, f"expected {column.name} to read back as written"
        expected = values[column.name] if stored is None else stored(values[column.name])
        assert read[column.name] == expected, (
            f"expected stored() to give {column.name} as it reads back: "
            f"{read[column.name]!r}, got {expected!r}"
        )
    if mariadb:
        assert dialect.stored(columns[2])(at) == at.replace(microsecond=999000), (
            "expected DATETIME(3) to keep 3 fractional digits"
        )


@pytest.mark.parametrize("scale", [0, 4])
def test_rounded_gives_a_decimal_as_the_database_stores_it_at_its_scale(engine, scale):
    values = [
        decimal.Decimal("2.5"),
        decimal.Decimal("-2.5"),
        decimal.Decimal("1.00005"),
        decimal.Decimal("-1.00005"),
        decimal.Decimal("3.14159"),
        2.675,
        7,
        None,
    ]
    table = sa.Table(
        "rounded",
        metadata := sa.MetaData(),
        _key("id", sa.Integer),
        sa.Column("v", sa.Numeric(14, scale)),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "v": v} for i, v in enumerate(values)])
    with engine.connect() as conn:
        read = conn.execute(sa.select(table.c.v).order_by(table.c.id)).scalars().all()
    rounded = for_connection(engine).rounded(scale)
    got = [rounded(v) for v in values]
    assert got == read, (
        f"expected rounded() to give what NUMERIC(14, {scale}) holds: {read}, got {got}"
    )


# --- refusal ----------------------------------------------------------------------


def test_refusal_tells_row_refusals_from_other_errors(engine):
    dialect = for_connection(engine)
    dialect.enforce_foreign_keys(engine)
    metadata = sa.MetaData()
    parents = sa.Table("parents", metadata, _key("id", sa.Integer))
    children = sa.Table(
        "children",
        metadata,
        _key("id", sa.Integer),
        sa.Column("parent", sa.ForeignKey("parents.id")),
        sa.Column("name", sa.String(8), nullable=False),
        sa.Column("qty", sa.Integer),
        sa.CheckConstraint("qty >= 0", name="qty_not_negative"),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(parents.insert().values(id=1))
        conn.execute(children.insert().values(id=1, parent=1, name="a", qty=1))

    def refusal(statement) -> str | None:
        with pytest.raises(DBAPIError) as failed, engine.begin() as conn:
            conn.execute(statement)
        return dialect.refusal(failed.value)

    row = dict(id=2, parent=1, name="b", qty=1)
    cases = {
        "a duplicate key": (children.insert().values(**{**row, "id": 1}), "constraint_violation"),
        "a NULL in a NOT NULL column": (
            children.insert().values(**{**row, "name": None}),
            "constraint_violation",
        ),
        "an orphan": (children.insert().values(**{**row, "parent": 9}), "constraint_violation"),
        "a CHECK": (children.insert().values(**{**row, "qty": -1}), "constraint_violation"),
        "a missing table": (sa.text("SELECT * FROM no_such_table"), None),
    }
    if dialect.name != "sqlite":  # SQLite stores any value in any column
        cases["a value not of the type"] = (
            children.insert().values(**{**row, "qty": "many"}),
            "invalid_value",
        )
    if dialect.name == "mariadb":  # the others store a too-long string
        cases["a too-long value"] = (
            children.insert().values(**{**row, "name": "x" * 20}),
            "invalid_value",
        )
    got = {what: refusal(statement) for what, (statement, _) in cases.items()}
    assert got == {what: expected for what, (_, expected) in cases.items()}, (
        f"expected each error classified as shown, got {got}"
    )


# --- keys the database generates --------------------------------------------------

# A table whose key the database numbers itself, as each database spells it.
NUMBERED = {
    "sqlite": ["CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT)"],
    "mariadb": ["CREATE TABLE items (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(64))"],
    "duckdb": [
        "CREATE SEQUENCE items_id_seq",
        "CREATE TABLE items (id BIGINT PRIMARY KEY DEFAULT nextval('items_id_seq'), name VARCHAR)",
    ],
}


def _numbered(engine) -> None:
    dialect = for_connection(engine)
    metadata = sa.MetaData()
    _pairs(metadata)
    sa.Table("labels", metadata, _key("code", sa.String(8)))
    sa.Table("plain", metadata, _key("id", sa.Integer))
    metadata.create_all(engine)
    with engine.begin() as conn:
        for statement in NUMBERED[dialect.name]:
            conn.exec_driver_sql(statement)


def test_generated_key_is_found_only_where_it_can_be_kept_out(engine):
    _numbered(engine)
    dialect = for_connection(engine)
    with engine.connect() as conn:
        found = {t: dialect.generated_key(conn, t) for t in ("items", "labels", "pairs", "plain")}
        missing = dialect.generated_key(conn, "no_such_table")
    expected = "id" if dialect.keeps_generated_keys_out else None
    assert found == {"items": expected, "labels": None, "pairs": None, "plain": None}, (
        f"expected only {dialect.name}'s own numbered key ({expected}) found, got {found}"
    )
    assert missing is None, "expected None for a table that does not exist"


def test_next_generated_key_follows_the_databases_numbering_where_kept_out(engine):
    _numbered(engine)
    dialect = for_connection(engine)
    assert dialect.keeps_generated_keys_out == (dialect.name == "mariadb"), (
        "expected only MariaDB's AUTO_INCREMENT to be kept out of leased blocks"
    )
    with engine.begin() as conn:
        empty = dialect.next_generated_key(conn, "items")
        for name in "abc":
            conn.exec_driver_sql(f"INSERT INTO items (name) VALUES ('{name}')")
    with engine.connect() as conn:
        after = dialect.next_generated_key(conn, "items")
    if not dialect.keeps_generated_keys_out:
        assert (empty, after) == (1, 1), "expected 1 (unknown) where keys are not kept out"
        with pytest.raises(NotImplementedError), engine.connect() as conn:
            dialect.skip_generated_keys(conn, "items", 10)
        return
    assert (empty, after) == (1, 4), f"expected 1 on an empty table, 4 after 3 rows: {after}"
    with engine.connect() as conn:
        dialect.skip_generated_keys(conn, "items", 10)
        skipped = dialect.next_generated_key(conn, "items")
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO items (name) VALUES ('d')")
        given = conn.exec_driver_sql("SELECT id FROM items WHERE name = 'd'").scalar_one()
    assert (skipped, given) == (11, 11), "expected the numbering moved above the skipped keys"


def test_next_sequence_value_reads_a_sequence_where_keys_are_kept_out(engine):
    dialect = for_connection(engine)
    if not dialect.keeps_generated_keys_out:
        with engine.connect() as conn:
            assert dialect.next_sequence_value(conn, "any_seq") == 1, "expected 1 (unknown)"
        return
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SEQUENCE items_seq START WITH 100 NOCACHE")
    with engine.connect() as conn:
        first = dialect.next_sequence_value(conn, "items_seq")
        taken = conn.exec_driver_sql("SELECT NEXTVAL(items_seq)").scalar()
        then = dialect.next_sequence_value(conn, "items_seq")
    assert (first, taken, then) == (100, 100, 101), "expected the number the sequence gives next"


def test_default_sequence_finds_a_nextval_default_where_declared(engine):
    dialect = for_connection(engine)
    with engine.begin() as conn:
        for statement in NUMBERED[dialect.name]:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("ALTER TABLE items ADD COLUMN qty INTEGER DEFAULT 0")
    with engine.connect() as conn:
        found = {c: dialect.default_sequence(conn, "items", c) for c in ("id", "qty", "name")}
    expected = "items_id_seq" if dialect.name == "duckdb" else None
    assert found == {"id": expected, "qty": None, "name": None}, (
        f"expected only DuckDB's nextval default found, got {found}"
    )


def _plain_insert(engine: sa.Engine, name: str) -> int:
    """Insert a row of ``items`` without a key; the key the database gave it."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO items (name) VALUES ('{name}')")
        return conn.exec_driver_sql(f"SELECT id FROM items WHERE name = '{name}'").scalar_one()


def test_the_databases_own_keys_stay_ahead_of_written_keys(engine):
    """After rows with explicit keys are written (and the key's sequence, if
    it has one, kept ahead of them), a row the database numbers itself gets
    a larger key: AUTO_INCREMENT and AUTOINCREMENT move by themselves."""
    dialect = for_connection(engine)
    with engine.begin() as conn:
        for statement in NUMBERED[dialect.name]:
            conn.exec_driver_sql(statement)
    with engine.begin() as conn:
        table = dialect.describe(conn, "items").table()
        dialect.insert_rows(conn, table, ("id", "name"), [(1, "a"), (2, "b")])
        dialect.upsert_rows(conn, table, ("id", "name"), [(2, "B"), (7, "c")])
        sequence = dialect.default_sequence(conn, "items", "id")
        assert (sequence is not None) == (dialect.name == "duckdb"), sequence
        if sequence is not None:
            dialect.keep_ahead(conn, sequence, 7)
    assert _plain_insert(engine, "plain") == 8, "expected the next key above the written ones"


# CREATE SEQUENCE and the next number, as each database with sequences spells them.
SEQUENCES = {
    "mariadb": ("CREATE SEQUENCE {} START WITH {} NOCACHE", "SELECT NEXTVAL({})"),
    "duckdb": ("CREATE SEQUENCE {} START {}", "SELECT nextval('{}')"),
}


def test_keep_ahead_moves_a_sequence_above_a_key_and_never_back(engine):
    dialect = for_connection(engine)
    if dialect.name not in SEQUENCES:  # SQLite has no sequences: nothing to do
        with engine.begin() as conn:
            dialect.keep_ahead(conn, "no_such_sequence", 5)
        return
    create, nextval = SEQUENCES[dialect.name]
    with engine.begin() as conn:
        conn.exec_driver_sql(create.format("ahead_seq", 1))
        conn.exec_driver_sql(create.format("unused_seq", 1000))
    with engine.begin() as conn:
        first = conn.exec_driver_sql(nextval.format("ahead_seq")).scalar()
        dialect.keep_ahead(conn, "ahead_seq", 7)
        ahead = conn.exec_driver_sql(nextval.format("ahead_seq")).scalar()
        dialect.keep_ahead(conn, "ahead_seq", 3)  # below its next number: stays
        dialect.keep_ahead(conn, "unused_seq", 5)  # below its start: stays
        then = conn.exec_driver_sql(nextval.format("ahead_seq")).scalar()
        unused = conn.exec_driver_sql(nextval.format("unused_seq")).scalar()
    assert (first, ahead, then, unused) == (1, 8, 9, 1000), (
        f"expected the sequence moved above 7 and never back, got {(first, ahead, then, unused)}"
    )


@pytest.mark.backends("duckdb")
def test_keep_ahead_never_moves_a_sequence_back(engine):
    with engine.begin() as conn:
        for statement in NUMBERED["duckdb"]:
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql("CREATE SEQUENCE unused_seq START 1000")
    assert [_plain_insert(engine, n) for n in "abc"] == [1, 2, 3]
    dialect = for_connection(engine)
    with engine.begin() as conn:
        dialect.keep_ahead(conn, "items_id_seq", 2)  # below the next number (4)
        dialect.keep_ahead(conn, "unused_seq", 5)  # below its start
        assert conn.exec_driver_sql("SELECT nextval('unused_seq')").scalar_one() == 1000
    assert _plain_insert(engine, "d") == 4


@pytest.mark.backends("duckdb")
def test_keep_ahead_finds_a_sequence_spelled_with_schema_and_quotes(engine):
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA app")
        conn.exec_driver_sql('CREATE SEQUENCE app."Item Ids" START 100')
        conn.exec_driver_sql(
            "CREATE TABLE items (id BIGINT PRIMARY KEY "
            "DEFAULT nextval('app.\"Item Ids\"'), name VARCHAR)"
        )
    assert _plain_insert(engine, "a") == 100
    dialect = for_connection(engine)
    with engine.begin() as conn:
        sequence = dialect.default_sequence(conn, "items", "id")
        assert sequence == 'app."Item Ids"'
        dialect.keep_ahead(conn, sequence, 50)  # taken long ago: stays at 101
    assert _plain_insert(engine, "b") == 101
    with engine.begin() as conn:
        table = dialect.describe(conn, "items").table()
        dialect.insert_rows(conn, table, ("id", "name"), [(300, "c")])
        dialect.keep_ahead(conn, sequence, 300)
    assert _plain_insert(engine, "d") == 301


# --- foreign keys -------------------------------------------------------------------


def _family(engine) -> sa.Table:
    metadata = sa.MetaData()
    sa.Table("parents", metadata, _key("id", sa.Integer))
    children = sa.Table(
        "children",
        metadata,
        _key("id", sa.Integer),
        sa.Column("parent", sa.ForeignKey("parents.id")),
    )
    metadata.create_all(engine)
    return children


def test_after_enforce_foreign_keys_a_new_connection_refuses_an_orphan(engine):
    children = _family(engine)  # pooled connections opened before the call
    dialect = for_connection(engine)
    dialect.enforce_foreign_keys(engine)
    dialect.enforce_foreign_keys(engine)  # twice: harmless
    engine.dispose()
    with pytest.raises(DBAPIError) as refused, engine.begin() as conn:
        conn.execute(children.insert().values(id=1, parent=9))
    assert dialect.refusal(refused.value) == "constraint_violation", (
        f"expected an orphan refused as a constraint violation, got {refused.value!r}"
    )


def test_a_pass_connection_checks_foreign_keys_after_exclude_writers(engine):
    replicator.migrate(engine)
    children = _family(engine)
    dialect = for_connection(engine)
    with pytest.raises(DBAPIError), engine.connect() as conn:
        dialect.exclude_writers(conn)
        conn.execute(children.insert().values(id=1, parent=9))
        conn.commit()
    with engine.connect() as conn:
        assert conn.execute(sa.select(children)).all() == [], "expected the orphan refused"


def test_children_and_their_parent_are_deleted_in_one_transaction_unless_the_dialect_says(
    engine,
):
    children = _family(engine)
    dialect = for_connection(engine)
    dialect.enforce_foreign_keys(engine)
    engine.dispose()
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO parents (id) VALUES (1)")
        conn.execute(children.insert().values(id=1, parent=1))

    def delete_children(conn) -> None:
        conn.execute(children.delete())

    def delete_parent(conn) -> None:
        conn.exec_driver_sql("DELETE FROM parents")

    if dialect.deletes_children_first_in_own_transaction:
        with pytest.raises(DBAPIError) as refused, engine.begin() as conn:
            delete_children(conn)
            delete_parent(conn)
        assert dialect.refusal(refused.value) == "constraint_violation", refused.value
        for delete in (delete_children, delete_parent):  # two transactions
            with engine.begin() as conn:
                delete(conn)
    else:
        with engine.begin() as conn:
            delete_children(conn)
            delete_parent(conn)
    with engine.connect() as conn:
        left = [
            conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar()
            for t in ("children", "parents")
        ]
    assert left == [0, 0], f"expected both deleted, got {left} rows left"


# --- reading the outbox in commit order ----------------------------------------------


def _append(engine, dialect, count: int) -> None:
    with engine.begin() as conn:
        outbox.append_encoded(
            conn, dialect, [("a", "t", f"[{i}]", i, b"event") for i in range(count)]
        )


def test_horizon_and_snapshot_give_0_for_an_empty_outbox(engine):
    replicator.migrate(engine)
    dialect = for_connection(engine)
    with engine.connect() as conn:
        horizon = dialect.horizon(conn)
    with dialect.snapshot(engine) as (conn, position):
        pass
    assert (horizon, position) == (0, 0), "expected 0 for an empty outbox"


def test_horizon_and_snapshot_give_the_largest_position_after_appends(engine):
    replicator.migrate(engine)
    dialect = for_connection(engine)
    _append(engine, dialect, 3)
    _append(engine, dialect, 2)
    with engine.connect() as conn:
        head = outbox.head(conn)
        conn.rollback()
        horizon = dialect.horizon(conn)
    assert head > 0 and horizon == head, f"expected the horizon at {head}, got {horizon}"
    with dialect.snapshot(engine) as (conn, position):
        seen = outbox.head(conn)
        count = conn.exec_driver_sql("SELECT count(*) FROM replicator_outbox").scalar()
        if dialect.name != "sqlite":  # SQLite's writers wait for the snapshot to end
            _append(engine, dialect, 1)
            after = (
                outbox.head(conn),
                conn.exec_driver_sql("SELECT count(*) FROM replicator_outbox").scalar(),
            )
            assert after == (seen, count), "expected a later commit invisible to the snapshot"
    assert (position, seen, count) == (head, head, 5), (
        f"expected the snapshot at {head} reading its 5 events, got {(position, seen, count)}"
    )


def test_a_transaction_guarded_for_appending_appends_after_a_pass_excluded_writers(engine):
    replicator.migrate(engine)
    dialect = for_connection(engine)
    with engine.begin() as conn:
        dialect.exclude_writers(conn)
    with engine.begin() as conn:
        dialect.guard_append(conn)
        dialect.guard_append(conn)  # twice in one transaction: harmless
        outbox.append_encoded(conn, dialect, [("a", "t", "[1]", 1, b"event")])
    with engine.connect() as conn:
        assert dialect.horizon(conn) == 1, "expected the guarded append committed at 1"


@pytest.mark.backends("mariadb")
def test_mariadb_refuses_to_guard_without_strict_mode_or_the_writers_row(engine):
    replicator.migrate(engine)
    dialect = for_connection(engine)
    fresh = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    try:
        with pytest.raises(SchemaError, match="strict mode"), fresh.begin() as conn:
            conn.exec_driver_sql("SET SESSION sql_mode = ''")
            dialect.exclude_writers(conn)
        with engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM replicator_outbox_writers")
        with pytest.raises(SchemaError, match="replicator init"), fresh.begin() as conn:
            dialect.guard_append(conn)
    finally:
        fresh.dispose()


def test_a_horizon_never_passes_a_guarded_append_still_in_flight(engine):
    replicator.migrate(engine)
    dialect = for_connection(engine)
    _append(engine, dialect, 1)
    seen: list[int | None] = []

    def read_horizon() -> None:  # a reader runs apart from the writers
        with engine.connect() as conn:
            seen.append(dialect.horizon(conn))

    with engine.connect() as writer, writer.begin():
        dialect.guard_append(writer)
        dialect.insert_rows(writer, outbox_table, _OUTBOX_COLUMNS, [("a", "t", "[a]", 1, b"e")])
        in_flight = outbox.head(writer)
        if dialect.name != "sqlite":  # SQLite's other writers wait for this one
            _append(engine, dialect, 1)  # a larger position, committed first
        reader = threading.Thread(target=read_horizon)
        reader.start()
        reader.join(60)
        assert not reader.is_alive() and len(seen) == 1, "expected the horizon read"
    with engine.connect() as conn:
        head = outbox.head(conn)
        conn.rollback()
        after = dialect.horizon(conn)
    assert seen[0] is None or seen[0] < in_flight, (
        f"expected no horizon at or above position {in_flight} while it was in flight, "
        f"got {seen[0]}"
    )
    assert after == head == (2 if dialect.name == "sqlite" else 3), (
        f"expected the horizon at the head once committed, got {after} (head {head})"
    )


# --- connecting ------------------------------------------------------------------------


def test_with_connect_timeout_bounds_a_server_connection_and_after_connect_lifts_it(engine):
    dialect = for_connection(engine)
    given = engine.url
    bounded = dialect.with_connect_timeout(given, 0.4)
    if dialect.name != "mariadb":
        assert bounded == given, "expected a file database's URL returned as it is"
    else:
        assert (bounded.query["connect_timeout"], bounded.query["read_timeout"]) == ("1", "1"), (
            f"expected both timeouts set to whole seconds, at least 1: {bounded.query}"
        )
        own = dialect.with_connect_timeout(given.update_query_dict({"connect_timeout": "7"}), 1)
        assert own.query["connect_timeout"] == "7", "expected a URL's own timeout kept"
    connected = sa.create_engine(bounded)
    try:
        dialect.after_connect_timeout(connected, given)
        with connected.connect() as conn:
            # Longer than the handshake's bound: reads wait as long as `given` says.
            query = "SELECT SLEEP(1.5)" if dialect.name == "mariadb" else "SELECT 1"
            conn.exec_driver_sql(query).scalar()
    finally:
        connected.dispose()


# --- locks ---------------------------------------------------------------------------


def test_a_lock_has_one_holder_at_a_time(engine):
    replicator.migrate(engine)
    dialect = for_connection(engine)
    first, second = dialect.lock(engine, "link-x"), dialect.lock(engine, "link-x")
    other = dialect.lock(engine, "link-y")
    ana, bob = locks.holder_name("ana"), locks.holder_name("bob")
    try:
        assert first.holder() is None and not first.held(), "expected a free lock at first"
        assert first.acquire(ana) and first.held(), "expected a free lock acquired"
        assert first.acquire(ana), "expected acquire to say True again to its holder"
        assert first.holder() == ana, f"expected {ana!r} named, got {first.holder()!r}"
        assert not second.acquire(bob) and not second.held(), "expected a held lock refused"
        assert second.holder() == ana, "expected another object to name the holder"
        assert other.acquire(bob), "expected a lock of another name independent"
        first.release()
        assert not first.held(), "expected a released lock not held"
        assert second.holder() is None, f"expected nobody named, got {second.holder()!r}"
        with second:
            assert second.acquire(bob) and first.holder() == bob, "expected bob to take it"
        assert not second.held() and first.holder() is None, "expected `with` to release"
    finally:
        for lock in (first, second, other):
            lock.release()


_SAMPLES = [
    "text",
    "",
    0,
    2**70,
    1.5,
    True,
    None,
    b"\x00\xff",
    decimal.Decimal("1.10"),
    dt.datetime(2024, 5, 6, 7, 8, 9, 123456),
    dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC),
    dt.date(2024, 5, 6),
    dt.time(7, 8, 9, 5),
    dt.timedelta(seconds=3),
    uuid.UUID(int=5),
]


def test_written_returns_values_of_the_types_as_given_as_they_are(engine):
    """A batch writes a row without calling ``written`` per value when all its
    values' types are in ``as_given`` and no column is a JSON column: that
    holds only if ``written`` returns such values unchanged for any other
    column kind. A type left out of ``as_given`` is one it converts."""
    with engine.connect() as conn:
        dialect = for_connection(conn)
    for value in _SAMPLES:
        for kind in (None, str, int, float, type(value)):
            out = dialect.written(value, kind)
            if type(value) in dialect.as_given:
                assert out is value, (dialect.name, value, kind)
    converted = [v for v in _SAMPLES if dialect.written(v, None) is not v]
    assert converted == [v for v in converted if type(v) not in dialect.as_given]
    assert {str, int, float, bool, type(None)} <= dialect.as_given


_AWKWARD_TEXTS = [
    "50% off %s %% %(name)s %d",
    "it's a \\ back'slash \" \\' ''",
    "nul \x00 newline \n return \r ctrl-z \x1a tab \t",
    "'); DROP TABLE items; --",
    "é ü 😀 ∑",
    "",
]


def _awkward_rows() -> list[tuple]:
    return [(f"k{i}", text, i - 3, text[::-1]) for i, text in enumerate(_AWKWARD_TEXTS)]


@pytest.mark.parametrize("options", [{}, {"no_parameters": True}], ids=["default", "no_params"])
def test_values_that_look_like_sql_or_formatting_are_written_as_given(engine, options):
    """Every bulk statement binds its values into one multi-row statement (on
    pymysql, rendered by the replicator: see ``base.renderers``): quotes,
    backslashes, percent signs and control characters arrive unchanged, also
    on an app's engine that sends statements without parameters as they are."""
    items = _items(metadata := sa.MetaData())
    metadata.create_all(engine)
    rows = _awkward_rows()
    with engine.execution_options(**options).begin() as conn:
        dialect = for_connection(conn)
        dialect.insert_rows(conn, items, ("id", "name", "price", "note"), rows[:3])
        dialect.upsert_rows(conn, items, ("id", "name", "price", "note"), rows[2:])
        stored = _all(conn, items)
    assert stored == rows, f"expected the rows as given, got {stored}"


@pytest.mark.backends("mariadb")
def test_texts_are_written_as_given_when_the_session_takes_no_backslash_escapes(engine):
    """NO_BACKSLASH_ESCAPES changes how a text must be quoted; the driver's
    own binding is used then."""
    items = _items(metadata := sa.MetaData())
    metadata.create_all(engine)
    rows = _awkward_rows()
    with engine.begin() as conn:
        conn.exec_driver_sql("SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')")
        for_connection(conn).upsert_rows(conn, items, ("id", "name", "price", "note"), rows)
        stored = _all(conn, items)
        conn.exec_driver_sql(
            "SET SESSION sql_mode = REPLACE(@@sql_mode, 'NO_BACKSLASH_ESCAPES', '')"
        )
    assert stored == rows, f"expected the rows as given, got {stored}"


@pytest.mark.backends("mariadb")
def test_a_value_the_driver_refuses_fails_as_the_databases_refusal(engine):
    """A value pymysql refuses to bind (NaN) fails through SQLAlchemy, as a
    DBAPIError naming the statement, although the replicator renders the
    other values itself: its callers tell a refused row by that error."""
    items = _items(metadata := sa.MetaData())
    metadata.create_all(engine)
    with pytest.raises(DBAPIError), engine.begin() as conn:
        for_connection(conn).upsert_rows(
            conn, items, ("id", "name", "price"), [("k1", "n", float("nan"))], unique=True
        )


def test_an_upsert_of_rows_given_as_one_per_key_still_keeps_the_last_of_equal_keys(engine):
    """``unique``: the caller holds one row per row key; two row keys can
    still hold keys the database (or Python) takes as one (1 and 1.0): the
    last row given wins, as for any upsert."""
    numbers = sa.Table(
        "numbered", metadata := sa.MetaData(), _key("n", sa.Integer), sa.Column("v", sa.String(8))
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        for_connection(conn).upsert_rows(
            conn, numbers, ("n", "v"), [(1, "first"), (1.0, "last")], unique=True
        )
        stored = _all(conn, numbers)
    assert stored == [(1, "last")], f"expected the last row of the key, got {stored}"
