"""Property test: whatever the server and the phone write to documents, and
however syncs and sink runs interleave (with writes to another user's
documents, rows moving out of the phone's scope and back, conflicts settled
by timestamp), after a final sync the phone's collection holds exactly the
phone's documents: same ids, texts and metadata, each embedded from its
text. SQLite nodes, a real ChromaDB collection, offline embeddings."""

from __future__ import annotations

import os
import shutil
import uuid

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replicator.application import Replicator
from replicator.embeddings import hashing

from .cluster import app, config, member
from .test_sink import SINK, indexed, write

KEYS = ["d0", "d1", "d2"]
write_step = st.tuples(
    st.just("write"),
    st.sampled_from(["server", "phone"]),
    st.sampled_from(KEYS),
    st.sampled_from(["text", "filename", "move", "delete"]),
    st.integers(0, 9),
)
run_step = st.tuples(st.sampled_from(["sync", "sink", "up", "down"]))
histories = st.lists(st.one_of(write_step, write_step, run_step), min_size=3, max_size=20)
SCALE = int(os.environ.get("REPLICATOR_PROPERTY_SCALE", "1"))


def documents(m, user="u-42"):
    """The node's documents of ``user``: id -> (content, filename)."""
    with m.sessions() as session:
        found = session.query(app.Document).filter_by(user_id=user).all()
        return {d.document_id: (d.content, d.filename) for d in found}


def step_write(m, key, what, n, user):
    with m.sessions() as session:
        exists = session.get(app.Document, key) is not None
    if what == "delete":
        if exists:
            write(m, **{key: None})
        return
    if not exists:
        if m.name == "phone" and user != "u-42":
            return  # capture refuses rows outside the phone's scope
        values = {"content": f"texto {n}", "user_id": user, "language": "es", "filename": "a"}
        write(m, **{key: values})
    elif what == "text":
        write(m, **{key: {"content": f"texto {key} {n}"}})
    elif what == "filename":
        write(m, **{key: {"filename": f"f{n}.txt"}})
    elif m.name == "server":  # move: the server gives the row to the other user or back
        with m.sessions() as session:
            owner = session.get(app.Document, key).user_id
        write(m, **{key: {"user_id": "u-7" if owner == "u-42" else "u-42"}})


@settings(
    max_examples=8 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("CI") == "true",
)
@given(history=histories)
def test_the_collection_always_ends_as_the_phones_documents(tmp_path, history):
    where = tmp_path / uuid.uuid4().hex
    where.mkdir()
    server = member("server", f"sqlite:///{where / 'server.sqlite'}", role="server")
    phone = member("phone", f"sqlite:///{where / 'phone.sqlite'}", scope={"user_id": "u-42"})
    settings_ = config(server, phone, extra=SINK.format(path=where / "chroma"))
    settings_.nodes["phone"] = msgspec.structs.replace(
        settings_.nodes["phone"], scope={"user_id": "u-42"}
    )
    nodes = {"server": server, "phone": phone}
    r = Replicator(settings_, engines={"server": server.engine, "phone": phone.engine})
    sink = r.sinks["documents"]
    sink.embed = hashing
    try:
        write(phone, seed={"content": "semilla", "user_id": "u-42", "language": "es",
                           "filename": "s"})  # fmt: skip
        for step in history:
            if step[0] == "write":
                _, on, key, what, n = step
                step_write(nodes[on], key, what, n, "u-42" if n % 3 else "u-7")
            elif step[0] == "sync":
                r.sync()
            elif step[0] == "sink":
                assert sink.run().ok
            else:
                passes = [p for p in r.passes(step[0])]
                for p in passes:
                    p.run()
        r.sync()
        result = r.sync()  # settlements made in the first reach the phone

        assert all(s.ok for s in result.sinks), result.sinks
        held = indexed(r)
        expected = documents(phone)
        assert {i: (d, m["filename"]) for i, (d, m, _) in held.items()} == expected
        for doc_id, (text, metadata, vector) in held.items():
            assert metadata["user_id"] == "u-42"
            assert vector == [round(x, 5) for x in hashing([text])[0]], doc_id
    finally:
        r.close()
        phone.close()
        server.close()
        shutil.rmtree(where, ignore_errors=True)
