"""The ChromaDB sink: a local's documents followed into a real
``chromadb.PersistentClient`` collection in a temporary directory, with the
offline embedding function (no network). The server runs on every backend
(MariaDB on CI); the phone is a scoped SQLite local."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest

from replicator import checkpoints, parking, retention
from replicator.application import Replicator
from replicator.embeddings import DIMENSIONS, hashing
from replicator.errors import ConfigurationError, ReviewError
from replicator.sink import metadata_value

from . import embedders
from .cluster import app, config, member

ROOT = Path(__file__).parent.parent  # where `tests.embedders` imports from
SINK = """
[sinks.documents]
kind = "chroma"
node = "phone"
path = "{path}"
collection = "documents"
table = "documents"
id_column = "document_id"
text_column = "content"
metadata_columns = ["user_id", "language", "filename"]
embedding_function = "tests.embedders:counting"
"""


@pytest.fixture
def cluster(database_url, tmp_path):
    """A server, a phone scoped to u-42 with a documents sink, and their Replicator."""
    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}", scope={"user_id": "u-42"})
    settings = config(server, phone, extra=SINK.format(path=tmp_path / "chroma"))
    settings.nodes["phone"] = msgspec.structs.replace(
        settings.nodes["phone"], scope={"user_id": "u-42"}
    )
    embedders.calls.clear()
    replicator = Replicator(settings, engines={"server": server.engine, "phone": phone.engine})
    yield server, phone, replicator
    replicator.close()
    phone.close()
    server.close()


def write(m, **documents):
    """Insert, update (values) or delete (None) documents by id."""
    with m.sessions.begin() as session:
        for document_id, values in documents.items():
            found = session.get(app.Document, document_id)
            if values is None:
                session.delete(found)
            elif found is None:
                session.add(app.Document(document_id=document_id, **values))
            else:
                for column, value in values.items():
                    setattr(found, column, value)


def doc(content, user_id="u-42", language="es", filename="notes.txt"):
    return {"content": content, "user_id": user_id, "language": language, "filename": filename}


def indexed(replicator):
    """The collection: id -> (document, metadata, embedding)."""
    found = (
        replicator.sinks["documents"]
        .collection()
        .get(include=["documents", "metadatas", "embeddings"])
    )
    return {
        i: (d, m, [round(float(x), 5) for x in e])
        for i, d, m, e in zip(
            found["ids"], found["documents"], found["metadatas"], found["embeddings"], strict=True
        )
    }


def vector(text):
    return [round(x, 5) for x in hashing([text])[0]]


def synced(replicator):
    result = replicator.sync()
    assert result.ok, (result.passes, result.sinks)
    return result.sinks[0]


def test_server_changes_reach_the_collection_and_a_metadata_edit_embeds_nothing(cluster):
    server, _, replicator = cluster
    write(
        server,
        d1=doc("Café con leche, por favor."),
        d2=doc("Pan con tomate."),
        d3=doc("Otro usuario.", user_id="u-7"),  # not the phone's
    )

    first = synced(replicator)
    assert indexed(replicator) == {
        "d1": (
            "Café con leche, por favor.",
            {"user_id": "u-42", "language": "es", "filename": "notes.txt"},
            vector("Café con leche, por favor."),
        ),
        "d2": (
            "Pan con tomate.",
            {"user_id": "u-42", "language": "es", "filename": "notes.txt"},
            vector("Pan con tomate."),
        ),
    }
    # The phone was empty: the sync bootstrapped it, so its log does not
    # tell the table's whole story and the sink started from a snapshot.
    assert (first.upserted, first.rebuilt) == (2, True)
    embedded = sorted(text for call in embedders.calls for text in call)
    assert embedded == ["Café con leche, por favor.", "Pan con tomate."]

    write(server, d1={"content": "Café solo."})  # the text
    text_edit = synced(replicator)
    assert indexed(replicator)["d1"][0::2] == ("Café solo.", vector("Café solo."))
    assert embedders.calls[-1] == ["Café solo."]
    assert (text_edit.upserted, text_edit.metadata_only) == (1, 0)

    calls = len(embedders.calls)
    write(server, d2={"filename": "menu.txt", "language": "ca"})  # metadata only
    metadata_edit = synced(replicator)
    assert indexed(replicator)["d2"] == (
        "Pan con tomate.",
        {"user_id": "u-42", "language": "ca", "filename": "menu.txt"},
        vector("Pan con tomate."),
    )
    assert len(embedders.calls) == calls  # nothing re-embedded
    assert (metadata_edit.upserted, metadata_edit.metadata_only) == (0, 1)

    write(server, d1=None)
    deleted = synced(replicator)
    assert list(indexed(replicator)) == ["d2"]
    assert deleted.deleted == 1

    write(server, d2={"user_id": "u-7"})  # leaves the phone's scope
    synced(replicator)
    assert indexed(replicator) == {}
    assert replicator.sinks["documents"].lag() == 0


def test_the_phones_own_writes_are_indexed_offline(cluster):
    _, phone, replicator = cluster
    write(phone, p1=doc("Mis apuntes de gramática."))

    result = replicator.sinks["documents"].run()  # no sync: the server is not needed

    assert result.ok and list(indexed(replicator)) == ["p1"]
    [(found, _, distance)] = replicator.sinks["documents"].query("apuntes de gramática", n=1)
    assert found == "p1" and distance < 0.5


def test_a_lost_collection_is_rebuilt_from_the_log_to_the_same_content(cluster, tmp_path):
    server, phone, replicator = cluster
    sink = replicator.sinks["documents"]
    write(phone, p1=doc("Del teléfono."))
    write(server, d1=doc("Uno."), d2=doc("Dos."), d3=doc("Tres."))
    assert synced(replicator).rebuilt  # new: from a snapshot
    write(server, d2={"content": "Dos, otra vez."}, d3=None)
    assert not synced(replicator).rebuilt  # then along the log
    before = indexed(replicator)
    assert sorted(before) == ["d1", "d2", "p1"]

    sink.close()
    shutil.rmtree(tmp_path / "chroma")
    # Looking does not hide the loss: nothing is created until a run.
    assert (sink.count(), sink.query("uno")) == (None, [])
    again = synced(replicator)

    assert again.rebuilt
    assert indexed(replicator) == before


def test_after_a_bootstrap_the_collection_starts_from_a_snapshot(cluster):
    server, _, replicator = cluster
    sink = replicator.sinks["documents"]
    assert sink.run().rebuilt  # on the empty phone: it registers on the phone's log
    write(server, d1=doc("Uno."), d2=doc("Dos."))
    replicator.bootstrap("phone")  # still empty: the sink's checkpoint does not count

    first = synced(replicator)  # the copied rows came without events: start over
    write(server, d2={"content": "Dos, otra vez."})
    then = synced(replicator)

    assert first.rebuilt and not then.rebuilt
    assert {i: d for i, (d, _, _) in indexed(replicator).items()} == {
        "d1": "Uno.",
        "d2": "Dos, otra vez.",
    }


def test_a_sink_killed_between_the_chroma_write_and_the_checkpoint_repeats_harmlessly(
    cluster, tmp_path
):
    """A real kill (os._exit in another process) right after Chroma took the
    batch: the checkpoint did not move, the next run writes the same batch
    again, and the collection ends with every document once."""
    server, phone, replicator = cluster
    write(server, d1=doc("Uno."), d2=doc("Dos."))
    synced(replicator)
    write(server, d1={"content": "Uno, cambiado."}, d2=None)
    write(server, d3=doc("Tres."))
    for sync_pass in replicator.passes():
        assert sync_pass.run().ok
    replicator.sinks["documents"].close()
    with phone.engine.connect() as conn:
        identity = retention.log_id(conn)
        before = checkpoints.position(conn, "phone", "sink:documents", identity)
    (tmp_path / "replicator.toml").write_text(
        f'[nodes.server]\nurl = "{server.node.url}"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{phone.node.url}"\nrole = "local"\n'
        'scope = { user_id = "u-42" }\n' + SINK.format(path=tmp_path / "chroma")
    )
    script = tmp_path / "killed.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os
            from replicator import config, sink
            from replicator.application import Replicator

            def killed(*args, **kwargs):
                os._exit(9)  # after Chroma's write, before the checkpoint's commit

            sink.checkpoints.advance = killed
            with Replicator(config.load({str(tmp_path / "replicator.toml")!r})) as r:
                r.sinks["documents"].run()
            """
        )
    )
    killed = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert killed.returncode == 9, killed.stderr
    with phone.engine.connect() as conn:
        assert checkpoints.position(conn, "phone", "sink:documents", identity) == before
    written = indexed(replicator)
    assert written["d1"][0] == "Uno, cambiado." and "d2" not in written  # Chroma had it

    again = replicator.sinks["documents"].run()

    assert again.ok and not again.rebuilt and again.read == 3
    assert {i: d for i, (d, _, _) in indexed(replicator).items()} == {
        "d1": "Uno, cambiado.",
        "d3": "Tres.",
    }
    assert replicator.sinks["documents"].collection().count() == 2
    assert replicator.sinks["documents"].lag() == 0


def test_a_document_chroma_refuses_is_parked_and_the_rest_indexed(cluster):
    server, phone, replicator = cluster
    sink = replicator.sinks["documents"]
    sink.embed = lambda texts: [[1.0] * (3 if "oto" in t else DIMENSIONS) for t in texts]
    write(server, d1=doc("Bien."), d2=doc("Está roto."), d3=doc("También bien."))
    synced(replicator)

    write(server, d4=doc("Roto también."), d5=doc("Bien otra vez."))
    synced(replicator)  # the first sync started from a snapshot, this one from the log

    assert sorted(indexed(replicator)) == ["d1", "d3", "d5"]
    with phone.engine.connect() as conn:
        items = parking.items(conn, status="open")
    assert [(i.reason, i.policy, i.key) for i in items] == [
        ("sink_error", "sink:documents", '["d2"]'),
        ("sink_error", "sink:documents", '["d4"]'),
    ]
    item = items[1]
    # Chroma's refusal (its own words follow): the 3-number vectors, d2 and d4 above.
    assert item.detail.startswith("sink documents: Chroma refused the document: "), item.detail
    assert item.events  # the event, whole
    with pytest.raises(ReviewError, match="could not write"):  # not the row's disagreement
        replicator.review().resolve(f"phone:{item.id}", take="server")
    assert replicator.review().discard(f"phone:{item.id}").event_id is None


@pytest.mark.parametrize(
    "value, stored",
    [
        (None, None),
        ("text", "text"),
        (3, 3),
        (2.5, 2.5),
        (True, True),
        (__import__("datetime").datetime(2026, 11, 24, 9, 30), "2026-11-24T09:30:00"),
        (__import__("datetime").date(2026, 11, 24), "2026-11-24"),
        (__import__("decimal").Decimal("1.25"), 1.25),
        (__import__("uuid").UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        ({"a": [1, 2]}, '{"a": [1, 2]}'),
        ([1, "x"], '[1, "x"]'),
        (b"\x00\x01", "AAE="),
    ],
)
def test_metadata_values_become_what_chroma_takes(value, stored):
    assert metadata_value(value) == stored


def test_the_default_embedding_is_offline_deterministic_and_normalised():
    [a, b, empty] = hashing(["Café con leche", "café con leche", "!!"])
    assert a == b and len(a) == DIMENSIONS
    assert abs(sum(x * x for x in a) - 1) < 1e-9
    assert empty == [0.0] * DIMENSIONS
    code = "from replicator.embeddings import hashing; print(hashing(['hola'])[0][:8])"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.stdout.strip() == str(hashing(["hola"])[0][:8])  # not Python's salted hash


def test_sink_configuration_mistakes_name_the_key(tmp_path):
    from replicator.config import loads

    base = '[nodes.server]\nurl = "sqlite:///s.sqlite"\nrole = "server"\n'
    for extra, message in [
        (SINK.replace('"documents"\ntable', '"x"\ntable'), "sinks.documents.collection"),
        (SINK.replace("tests.embedders:counting", "nowhere:embed"), "embedding_function"),
    ]:
        settings = loads(
            base
            + '[nodes.phone]\nurl = "sqlite:///p.sqlite"\nrole = "local"\n'
            + extra.format(path=tmp_path)
        )
        with pytest.raises(ConfigurationError, match=message):
            Replicator(settings)


def test_a_start_that_fails_half_way_is_started_again(cluster):
    """The checkpoint says "starting" (-1) until the snapshot is in: a start
    that dies half-way (here Chroma's storage) never leaves an emptied
    collection behind the old checkpoint."""
    server, _, replicator = cluster
    sink = replicator.sinks["documents"]
    write(server, d1=doc("Uno."), d2=doc("Dos."))
    synced(replicator)
    working = sink._upsert

    def dying(rows, result):
        raise RuntimeError("disk full")

    sink._upsert = dying
    failed = sink.rebuild()
    sink._upsert = working
    again = sink.run()

    assert failed.status == "failed" and "disk full" in failed.error
    assert again.ok and again.rebuilt
    assert sorted(indexed(replicator)) == ["d1", "d2"]


def test_a_text_the_embedding_function_fails_on_is_parked_and_the_rest_indexed(cluster):
    server, phone, replicator = cluster
    sink = replicator.sinks["documents"]
    synced(replicator)
    working = sink.embed

    def picky(texts):
        if any("¡" in t for t in texts):
            raise ValueError("cannot embed that")
        return working(texts)

    sink.embed = picky
    write(server, d1=doc("Bien."), d2=doc("¡Mal!"), d3=doc("Bien también."))
    result = synced(replicator)

    assert sorted(indexed(replicator)) == ["d1", "d3"] and result.parked == 1
    with phone.engine.connect() as conn:
        [item] = parking.items(conn, status="open")
    assert item.key == '["d2"]' and "cannot embed that" in item.detail


def test_passes_outside_the_configuration_still_log_for_the_sink(cluster):
    """The node logs what it applies because a sink's checkpoint is on it,
    not because of the configuration that runs the pass."""
    from replicator.sync import replicate

    server, phone, replicator = cluster
    sink = replicator.sinks["documents"]
    synced(replicator)
    write(server, d1=doc("Uno."))

    replicate(server.node, phone.node)  # a bare pass
    result = sink.run()

    assert (result.rebuilt, list(indexed(replicator))) == (False, ["d1"])


def test_writes_are_split_to_what_chroma_takes_per_call(cluster):
    server, _, replicator = cluster
    sink = replicator.sinks["documents"]
    synced(replicator)
    sink._chunk = 2  # Chroma's own limit is in the thousands
    write(server, **{f"d{i}": doc(f"Documento {i}.") for i in range(5)})
    synced(replicator)
    write(server, **{f"d{i}": {"filename": "x.txt"} for i in range(5)})
    synced(replicator)
    write(server, **{f"d{i}": None for i in range(4)})
    synced(replicator)

    assert list(indexed(replicator)) == ["d4"]
    assert indexed(replicator)["d4"][1]["filename"] == "x.txt"


def test_the_id_column_must_be_the_tables_key(cluster):
    _, _, replicator = cluster
    sink = replicator.sinks["documents"]
    sink.settings = msgspec.structs.replace(sink.settings, id_column="filename")

    result = sink.run()

    assert result.status == "failed"
    assert "sinks.documents.id_column: 'filename' is not the primary key" in result.error


def test_a_replay_onto_the_node_reaches_the_collection_through_its_log(cluster):
    from replicator.replay import replay

    server, phone, replicator = cluster
    write(server, d1=doc("Uno."))
    synced(replicator)
    with phone.engine.begin() as conn:  # changed behind capture's back
        conn.exec_driver_sql("UPDATE documents SET content = 'roto' WHERE document_id = 'd1'")

    replay(server.node, phone.node, start=1)  # restores the row, and logs it
    result = replicator.sinks["documents"].run()

    assert not result.rebuilt and result.read == 1
    assert indexed(replicator)["d1"][0] == "Uno."


def test_a_sink_on_the_server_follows_its_log_and_waits_out_long_writers(database_url, tmp_path):
    """A sink fed by the server (MariaDB on CI). While an app transaction
    holds the server's outbox, a MariaDB run is deferred (nothing read,
    nothing skipped) and a runner tries again at its next round."""
    from replicator.service import Runner, Timing

    server = member("server", database_url, role="server")
    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    sink = SINK.format(path=tmp_path / "chroma").replace('node = "phone"', 'node = "server"')
    settings = config(server, phone, extra=sink)
    clock = [1000.0]
    with Replicator(settings, engines={"server": server.engine}) as r:
        runner = Runner(r, timing=Timing(interval=300), now=lambda: clock[0])
        runner.step()
        assert [s.status for s in runner.last.sinks] == ["ok"]
        if server.node.dialect.concurrent_writers:
            long = server.sessions()  # an app transaction, flushed, not committed
            long.add(app.VocabularyItem(item_id="w", user_id="u-42", word="w", translation="?"))
            long.flush()
            try:
                write(server, d1=doc("Pan con tomate."))
                clock[0] += 1
                runner.step()
                assert [s.status for s in runner.last.sinks] == ["deferred"]
            finally:
                long.commit()
                long.close()
        else:  # one writer at a time: nothing to wait out
            write(server, d1=doc("Pan con tomate."))
        clock[0] += 1
        runner.step()
        assert set(indexed(r)) == {"d1"}, "picked up at the next round, not the next interval"
        assert r.sinks["documents"].lag() == 0
        runner.close()
    phone.close()
    server.close()


@pytest.mark.backends("sqlite", "mariadb")
def test_one_runner_per_sink(cluster):
    """A sink's collection and checkpoint are written by one runner at a
    time: a sync elsewhere leaves it (and the link) to the runner."""
    from replicator.service import Runner

    server, _, r = cluster
    write(server, d1=doc("Pan con tomate."))
    runner = Runner(r, holder="runner A")
    try:
        runner.step()
        assert [s.sink for s in runner.last.sinks] == ["documents"]
        with Replicator(r.config) as other:
            result = other.sync()
        assert result.held == {"phone": "runner A", "sink:documents": "runner A"}
        assert result.passes == [] and result.sinks == []
    finally:
        runner.close()


def test_a_runner_feeds_a_phones_sink_while_the_server_is_away(tmp_path):
    """The sink's lock lives with its collection, so the phone's documents
    follow into it without the server; the links wait, backing off."""
    from replicator.config import loads
    from replicator.service import Runner, Timing

    phone = member("phone", f"sqlite:///{tmp_path / 'phone.sqlite'}")
    settings = loads(
        f'[nodes.server]\nurl = "sqlite:///{tmp_path}/away/server.sqlite"\nrole = "server"\n'
        f'[nodes.phone]\nurl = "{phone.node.url}"\nrole = "local"\n'
        + SINK.format(path=tmp_path / "chroma")
    )
    clock = [1000.0]
    with Replicator(settings, engines={"phone": phone.engine}) as r:
        runner = Runner(r, timing=Timing(interval=5), now=lambda: clock[0])
        write(phone, p1=doc("Mis apuntes de gramática."))
        delays = []
        for _ in range(6):
            delays.append(runner.step())
            clock[0] += delays[-1]
            if len(delays) == 3:
                write(phone, p2=doc("Más apuntes."))
        assert "server" in runner.last.unreachable
        assert set(indexed(r)) == {"p1", "p2"}
        assert r.lock("documents", "sink").holder() == runner.holder
        assert min(delays) > 0, "a runner with work it cannot do does not spin"
        runner.close()
    phone.close()
