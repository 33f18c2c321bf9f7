"""Integer keys made on any node never collide (replicator.keys): the server
leases each local blocks of keys during a pass, capture gives new rows keys
from them (unit of work and bulk inserts), a local that has used them up is
refused with a clear error, an existing database adopts leasing without a
row rewritten, and MariaDB's own AUTO_INCREMENT stays above every block.

The server runs on every backend (MariaDB when its URL is set); the locals
are DuckDB and SQLite files."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker

import replicator
from replicator import keys
from replicator.errors import CaptureError
from replicator.node import Node
from replicator.sync import replicate


class Base(DeclarativeBase):
    pass


class Thread(Base):
    """Keyed as most apps key tables: an integer the database numbers
    (a sequence where there is one: DuckDB has no other way)."""

    __tablename__ = "threads"
    id: Mapped[int] = mapped_column(sa.Sequence("threads_id_seq"), primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100))
    posts: Mapped[list[Post]] = relationship(cascade="all, delete-orphan", order_by="Post.id")


class Post(Base):
    __tablename__ = "posts"
    id: Mapped[int] = mapped_column(sa.Sequence("posts_id_seq"), primary_key=True)
    thread_id: Mapped[int] = mapped_column(sa.ForeignKey("threads.id"))
    text: Mapped[str] = mapped_column(sa.String(100))


@dataclass
class Side:
    node: Node
    sessions: sessionmaker

    def threads(self) -> dict[str, list[str]]:
        """Each thread's title -> its posts' texts."""
        with self.sessions() as session:
            return {t.title: [p.text for p in t.posts] for t in session.scalars(sa.select(Thread))}

    def ids(self, model: type) -> list[int]:
        with self.sessions() as session:
            return sorted(session.scalars(sa.select(model.id)))


def side(name: str, url: str, role: str, metadata: sa.MetaData = Base.metadata) -> Side:
    engine = sa.create_engine(url)
    replicator.migrate(engine)
    metadata.create_all(engine)
    sessions = sessionmaker(bind=engine)
    replicator.capture(sessions, node=name)
    return Side(Node(name, role=role, engine=engine), sessions)


@pytest.fixture(params=["duckdb", "sqlite"])
def nodes(request, database_url: str, tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    """A server on the backend under test, and a local of each embedded kind."""
    local_url = (
        f"duckdb:///{tmp_path / 'phone.duckdb'}"
        if request.param == "duckdb"
        else f"sqlite:///{tmp_path / 'phone.sqlite'}"
    )
    server, local = side("server", database_url, "server"), side("phone", local_url, "local")
    yield server, local
    for s in (local, server):
        replicator.capture(s.sessions, node=s.node.name).stop()
        s.node.engine.dispose()


def sync(server: Side, local: Side, **options) -> None:
    for source, target in ((local, server), (server, local)):
        result = replicate(source.node, target.node, **options)
        assert result.status == "ok" and result.parked == 0, result


def test_rows_inserted_apart_on_both_sides_get_different_keys_and_all_arrive(nodes):
    server, local = nodes
    sync(server, local)  # leases the local its first blocks
    with server.sessions.begin() as session:
        session.add(Thread(title="server's", posts=[Post(text="s1"), Post(text="s2")]))
    with local.sessions.begin() as session:
        session.add(
            Thread(title="phone's", posts=[Post(text="p1"), Post(text="p2"), Post(text="p3")])
        )
    sync(server, local)
    sync(server, local)

    expected = {"server's": ["s1", "s2"], "phone's": ["p1", "p2", "p3"]}
    assert server.threads() == local.threads() == expected
    assert server.ids(Post) == local.ids(Post) and len(set(server.ids(Post))) == 5


def test_a_local_takes_keys_from_its_leased_block_for_bulk_inserts_too(nodes):
    server, local = nodes
    sync(server, local)
    with local.node.connect() as conn:
        (block,) = [
            (b.first_key, b.last_key)
            for b in conn.execute(
                sa.select(replicator.tables.key_blocks).where(
                    replicator.tables.key_blocks.c.table_name == "threads"
                )
            )
        ]
    with local.sessions.begin() as session:
        session.execute(sa.insert(Thread), [{"title": "a"}, {"title": "b"}, {"title": "c"}])
        session.add(Thread(title="d"))
    ids = local.ids(Thread)
    assert len(ids) == 4 and all(block[0] <= i <= block[1] for i in ids), (block, ids)
    with local.node.connect() as conn:
        assert keys.remaining(conn)["threads"] == block[1] - block[0] + 1 - 4


def test_a_local_that_used_its_keys_is_refused_and_writes_nothing_until_it_syncs(nodes):
    server, local = nodes
    sync(server, local, key_block=4)  # blocks of 4 keys; a sync leases more below 2
    with local.sessions.begin() as session:
        session.add_all([Thread(title=f"t{i}") for i in range(4)])

    refused = r"no keys left for new rows of 'threads'.*[Ss]ync"
    with pytest.raises(CaptureError, match=refused), local.sessions.begin() as session:
        session.add(Thread(title="one too many"))
    assert len(local.ids(Thread)) == 4  # the refused flush rolled back whole

    sync(server, local, key_block=4)
    with local.sessions.begin() as session:
        session.add(Thread(title="after the sync"))
    sync(server, local, key_block=4)
    assert len(server.ids(Thread)) == len(set(server.ids(Thread))) == 5


def test_a_node_that_never_replicated_lets_the_database_number_rows(nodes):
    _, local = nodes
    with local.sessions.begin() as session:
        session.add(Thread(title="before any sync"))
    assert local.ids(Thread) == [1]
    with local.node.connect() as conn:
        assert keys.role_of(conn) is None and keys.remaining(conn) == {}


def test_an_existing_database_adopts_leasing_without_rewriting_its_rows(nodes):
    server, local = nodes
    # Before leasing: rows the server's app made (its database numbered
    # them), and a row only the local holds (numbered high by its database).
    with server.sessions.begin() as session:
        session.add_all([Thread(title=f"shared {i}") for i in range(3)])
    with local.node.begin() as conn:
        conn.execute(sa.insert(Thread.__table__), [{"id": 500, "title": "local only"}])

    sync(server, local)  # the first lease: above every key either side holds
    with local.sessions.begin() as session:
        session.add(Thread(title="new"))
    with local.sessions() as session:
        new = session.scalars(sa.select(Thread.id).where(Thread.title == "new")).one()
        kept = session.scalars(sa.select(Thread.id).where(Thread.title != "new")).all()
    assert sorted(kept) == [*server.ids(Thread), 500]  # nothing renumbered
    assert new > 500


def test_leases_never_overlap_whoever_asks(database_url):
    server = side("server", database_url, "server")
    try:
        blocks = []
        with server.node.begin() as conn:
            for holder in ("a", "b", "a", "c"):
                blocks.append(keys.lease(conn, server.node.dialect, "threads", holder, 10))
        # One after another (on MariaDB a gap above the table's own sequence first).
        first = blocks[0][0]
        assert blocks == [(first + 10 * i, first + 10 * i + 9) for i in range(4)], blocks
    finally:
        replicator.capture(server.sessions, node="server").stop()
        server.node.engine.dispose()


class MariaDBBase(DeclarativeBase):
    pass


class Counter(MariaDBBase):
    """Numbered by MariaDB's AUTO_INCREMENT (no sequence: DuckDB could not
    create it)."""

    __tablename__ = "counters"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(40))


@pytest.mark.backends("mariadb")
def test_the_servers_own_auto_increment_stays_above_every_leased_block(database_url, tmp_path):
    server = side("server", database_url, "server", MariaDBBase.metadata)
    local = side("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}", "local", MariaDBBase.metadata)
    try:
        with server.node.begin() as conn:  # rows the server's app made before
            conn.execute(sa.insert(Counter.__table__), [{"label": "old"}] * 3)
        sync(server, local)
        with local.node.connect() as conn:
            first, last = conn.execute(
                sa.select(keys.key_blocks.c.first_key, keys.key_blocks.c.last_key).where(
                    keys.key_blocks.c.table_name == "counters"
                )
            ).one()
        assert first > 3
        # A row inserted on the server without capture (a script, another app).
        with server.node.begin() as conn:
            raw = conn.execute(
                sa.insert(Counter.__table__).values(label="raw")
            ).inserted_primary_key[0]
        assert raw > last, (raw, first, last)
        # The server's app inserts, captured and not, in turns: MariaDB numbers
        # them all, above the block, and never twice.
        for label in ("orm 1", "raw", "orm 2"):
            if label == "raw":
                with server.node.begin() as conn:
                    conn.execute(sa.insert(Counter.__table__).values(label=label))
            else:
                with server.sessions.begin() as session:
                    session.add(Counter(label=label))
        with server.node.connect() as conn:
            numbered = conn.execute(sa.select(Counter.id).where(Counter.id > 3)).scalars().all()
        assert len(numbered) == len(set(numbered)) == 4 and min(numbered) > last, numbered
    finally:
        for s in (local, server):
            replicator.capture(s.sessions, node=s.node.name).stop()
            s.node.engine.dispose()


def test_status_shows_each_nodes_keys_left(nodes, tmp_path):
    from replicator.config import loads
    from replicator.status import status

    server, local = nodes
    sync(server, local)
    config = loads(
        f'[nodes.server]\nurl = "{server.node.url}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{local.node.url}"\nrole = "local"\n'
    )
    engines = {"server": server.node.engine, "phone": local.node.engine}
    with replicator.Replicator(config, engines=engines) as rep:
        found = {n.name: n for n in status(rep).nodes}
    assert found["phone"].keys == {"threads": keys.BLOCK, "posts": keys.BLOCK}


def test_a_downloaded_key_is_never_handed_out_again_by_the_locals_own_sequence(nodes):
    """A row inserted on a local without capture (Core, or before it ever
    replicated) draws from the sequence the models number the table with:
    it must be past every key the replicator wrote there."""
    server, local = nodes
    sync(server, local)
    with server.sessions.begin() as session:
        session.add_all([Thread(title=f"server {i}") for i in range(3)])
    sync(server, local)
    with local.node.begin() as conn:  # not captured: the database numbers it
        conn.execute(sa.insert(Thread.__table__).values(title="core"))
    ids = local.ids(Thread)
    assert len(ids) == len(set(ids)) == 4 and max(ids) == ids[-1], ids


@pytest.mark.backends("mariadb")
def test_the_servers_own_sequence_stays_above_every_leased_block(database_url, tmp_path):
    server = side("server", database_url, "server")  # Thread: a MariaDB SEQUENCE
    local = side("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}", "local")
    try:
        sync(server, local)
        with local.node.connect() as conn:
            last = conn.execute(
                sa.select(keys.key_blocks.c.last_key).where(
                    keys.key_blocks.c.table_name == "threads"
                )
            ).scalar_one()
        with server.node.begin() as conn:  # not captured: SQLAlchemy draws nextval
            result = conn.execute(sa.insert(Thread.__table__).values(title="script"))
        assert result.inserted_primary_key[0] > last
    finally:
        for s in (local, server):
            replicator.capture(s.sessions, node=s.node.name).stop()
            s.node.engine.dispose()


def test_init_records_roles_and_leases_first_blocks_so_no_write_is_numbered_by_the_database(
    tmp_path,
):
    from typer.testing import CliRunner

    from replicator.cli import app as cli

    server_url = f"sqlite:///{tmp_path / 'server.sqlite'}"
    local_url = f"duckdb:///{tmp_path / 'phone.duckdb'}"
    for url in (server_url, local_url):  # the app's tables exist, the replicator's not yet
        engine = sa.create_engine(url)
        Thread.__table__.create(engine)
        engine.dispose()
    config = tmp_path / "replicator.toml"
    config.write_text(
        f'[nodes.server]\nurl = "{server_url}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{local_url}"\nrole = "local"\n'
    )
    result = CliRunner().invoke(cli, ["init", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "phone: keys leased for new rows of threads" in result.output

    phone = side("phone", local_url, "local")  # creates posts too; no sync yet
    try:
        with phone.sessions.begin() as session:
            session.add(Thread(title="first write"))
        assert phone.ids(Thread) == [1]  # from the leased block 1..10000, not by chance:
        with phone.node.connect() as conn:
            assert keys.role_of(conn) == "local"
            assert keys.remaining(conn) == {"threads": keys.BLOCK - 1}
        # A table made after init has no block until a sync: refused, not numbered.
        with pytest.raises(CaptureError, match="'posts'"), phone.sessions.begin() as session:
            session.add(Post(thread_id=phone.ids(Thread)[0], text="no key yet"))
    finally:
        replicator.capture(phone.sessions, node="phone").stop()
        phone.node.engine.dispose()


def test_rows_numbered_before_leasing_that_share_a_key_are_parked_not_settled(nodes):
    """Two nodes that wrote before they ever replicated numbered rows
    themselves: the same key for two different rows. No conflict policy
    may keep one and drop the other; the server keeps its row and parks
    the local's as a key collision."""
    server, local = nodes
    for s, title in ((server, "the server's own"), (local, "the phone's own")):
        with s.sessions.begin() as session:
            session.add(Thread(title=title))
    assert server.ids(Thread) == local.ids(Thread) == [1]

    up = replicate(local.node, server.node)
    assert up.parked == 1 and up.conflicts_by_policy == {"key_collision": 1}, up
    assert server.threads() == {"the server's own": []}
    assert local.threads() == {"the phone's own": []}
    with server.node.connect() as conn:
        item = conn.execute(
            sa.select(replicator.tables.review_items).where(
                replicator.tables.review_items.c.status == "open"
            )
        ).one()
    assert item.reason == "key_collision" and "each inserted a row of threads" in item.detail

    # The phone edits its row: still not the server's row, whatever the
    # table's policy would say; the edit joins the item.
    with local.sessions.begin() as session:
        session.get(Thread, 1).title = "the phone's own, edited"
    again = replicate(local.node, server.node)
    assert again.parked == 1, again
    assert server.threads() == {"the server's own": []}
    with server.node.connect() as conn:
        (still,) = conn.execute(
            sa.select(replicator.tables.review_items).where(
                replicator.tables.review_items.c.status == "open"
            )
        ).all()
    assert still.id == item.id and still.reason == "key_collision"


@pytest.mark.backends("mariadb")
def test_leases_racing_from_many_connections_never_overlap(database_url):
    import threading

    server = side("server", database_url, "server")
    blocks: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def lease_some(holder: str) -> None:
        try:
            for _ in range(5):
                for attempt in range(5):
                    try:
                        with server.node.begin() as conn:
                            blocks.append(
                                keys.lease(conn, server.node.dialect, "threads", holder, 7)
                            )
                        break
                    except sa.exc.DBAPIError:
                        if attempt == 4:
                            raise
        except BaseException as e:
            errors.append(e)

    try:
        threads = [threading.Thread(target=lease_some, args=(f"n{i}",)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        taken = sorted(k for first, last in blocks for k in range(first, last + 1))
        assert len(blocks) == 30 and len(taken) == len(set(taken)) == 30 * 7
    finally:
        replicator.capture(server.sessions, node="server").stop()
        server.node.engine.dispose()
