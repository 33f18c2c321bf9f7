"""Vector sinks: one table of a node, followed into a ChromaDB collection.

A sink follows its node's log, the node's outbox, which holds every change
made to the node's tables in the order it was made there: the node's own
changes and those it applied from elsewhere (see :mod:`replicator.apply`).
So the collection follows the table as the node holds it, the node's scope
included, and keeps up offline with what the node's app writes. Its
checkpoint is kept on the node like a pass's (source: the node itself,
channel ``sink:NAME``).

Per batch of the table's events after the checkpoint, each document's last
event decides:

* a delete (or a row outside the node's scope) deletes the document;
* otherwise the row is upserted: the text column as the document, the
  metadata columns as its metadata (see :func:`metadata_value`), the
  embedding column's vector or the embedding function's;
* an update that changed neither the text nor the embedding column, of a
  document the collection holds with the same text, updates only its
  metadata: the embedding function is not called.

Chroma has no transactions. Every write is idempotent (upsert by id, delete
by id, each document with its whole metadata) and the checkpoint advances
only after the write succeeded, so a crash between the two repeats the
write harmlessly: no document is lost or duplicated.

A sink starts over, with an emptied collection, when it has no checkpoint
on its node's log (it is new, or the node's log was made anew), when its
collection is missing (its directory was lost), or on
:meth:`ChromaSink.rebuild`. It rebuilds from the node's whole log when the
log tells the table's whole story (never pruned, no bootstrap); otherwise
from a snapshot of the table, then follows the log from the snapshot's
position. A replay onto the node reaches the collection through its log.

An event that cannot be decoded, or a document Chroma refuses (a vector of
the wrong length, say), is parked in the node's review queue with the
reason (``corrupt_payload`` or ``sink_error``, policy ``sink:NAME``) and the
rest goes on. Any other error (Chroma's storage failing) ends the run with
the checkpoint where it was; the next run repeats the batch.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from replicator import checkpoints, embeddings, outbox, parking, retention
from replicator.clock import utcnow
from replicator.config import SinkConfig
from replicator.conflicts import Side
from replicator.errors import ConfigurationError, ReplicatorError, describe
from replicator.events import ChangeEvent, Operation, row_key
from replicator.node import Node
from replicator.outbox import Entry
from replicator.parking import Parking, Reason
from replicator.tables import outbox as outbox_table

#: Texts per call of the embedding function.
EMBED_BATCH = 64
_COLLECTION_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]")


class SinkResult(msgspec.Struct, kw_only=True):
    """What one run of a sink did.

    ``read`` counts the table's events read; ``upserted`` the documents
    written whole, ``metadata_only`` those whose metadata alone changed,
    ``deleted`` those removed, ``embedded`` the texts given to the
    embedding function, ``parked`` the events parked. ``rebuilt`` says
    whether it started over, and from what: ``"log"`` (the node's whole
    log) or ``"snapshot"`` (the table as of one position of it); None when
    it went on from its checkpoint. ``position`` is its checkpoint
    afterwards and ``lag`` the table's events after it.
    """

    sink: str
    node: str
    read: int = 0
    upserted: int = 0
    metadata_only: int = 0
    deleted: int = 0
    embedded: int = 0
    parked: int = 0
    rebuilt: str | None = None
    position: int = 0
    lag: int = 0
    seconds: float = 0.0
    status: str = "ok"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def metadata_value(value: Any) -> str | int | float | bool | None:
    """A column's value as Chroma metadata takes it: text, numbers and
    booleans as they are; None removes the key; dates and times as ISO 8601
    text; decimals as floats; UUIDs as text; JSON documents (dicts, lists)
    as JSON text; bytes as base64 text."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def check(name: str, settings: SinkConfig) -> None:
    """Configuration problems a sink can tell before it runs, naming the key."""
    if not _COLLECTION_NAME.fullmatch(settings.collection):
        raise ConfigurationError(
            f"sinks.{name}.collection: {settings.collection!r} is not a Chroma collection name "
            "(3-512 letters, digits, '.', '_' or '-', starting and ending with a letter or digit)"
        )
    embeddings.load(settings.embedding_function, f"sinks.{name}.embedding_function")


class ChromaSink:
    """One configured sink: its node's ``table`` followed into a collection.

    ``path`` is the collection's directory (default: the configuration's,
    as given); ``embed`` an embedding function to use instead of the
    configured one. The Chroma client is made when first used.
    """

    def __init__(
        self,
        name: str,
        settings: SinkConfig,
        node: Node,
        *,
        path: Path | None = None,
        embed: embeddings.EmbeddingFunction | None = None,
        batch_size: int = 500,
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.name, self.settings, self.node = name, settings, node
        self.path = path or Path(settings.path)
        self.embed = embed or embeddings.load(
            settings.embedding_function, f"sinks.{name}.embedding_function"
        )
        self.batch_size, self.now = batch_size, now
        self._client: Any = None
        self._collection: Any = None
        self._refused: tuple[type[Exception], ...] = (ValueError,)

    @property
    def channel(self) -> str:
        """The checkpoint's channel on the node."""
        return f"sink:{self.name}"

    def collection(self) -> Any:
        """The Chroma collection (created when missing; no embedding function
        of Chroma's own, which would download a model)."""
        self._open()
        return self._collection

    def _open(self) -> bool:
        """Open the collection; whether it had to be created (new, or lost)."""
        if self._collection is not None:
            return False
        import chromadb
        from chromadb.errors import InvalidArgumentError, NotFoundError

        # What Chroma raises for a document it will not take (the others
        # are about its storage, and end the run instead).
        self._refused = (ValueError, InvalidArgumentError)

        if self._client is None:
            self._client = chromadb.PersistentClient(
                path=str(self.path), settings=chromadb.Settings(anonymized_telemetry=False)
            )
        try:
            self._collection = self._client.get_collection(
                self.settings.collection, embedding_function=None
            )
            return False
        except NotFoundError:
            self._collection = self._client.create_collection(
                self.settings.collection,
                embedding_function=None,
                metadata={"hnsw:space": "cosine"},
            )
            return True

    def query(self, text: str, n: int = 3) -> list[tuple[str, str, float]]:
        """The ``n`` documents nearest ``text``: ``(id, document, distance)``."""
        n = min(n, self.collection().count())
        if n <= 0:
            return []
        found = self.collection().query(query_embeddings=self._vectors([text]), n_results=n)
        return list(zip(found["ids"][0], found["documents"][0], found["distances"][0], strict=True))

    def close(self) -> None:
        """Let go of the collection's files (Chroma caches one client per path)."""
        if self._client is not None:
            self._client.clear_system_cache()
        self._client = self._collection = None

    # --- running -----------------------------------------------------------

    def run(self) -> SinkResult:
        """Apply the table's events after the checkpoint, batch by batch;
        a new sink starts from a snapshot. Never raises for a failure: the
        result says ``failed`` and why."""
        return self._timed(self._follow)

    def rebuild(self) -> SinkResult:
        """Empty the collection, fill it from a snapshot of the table, then
        follow the log from the snapshot's position."""
        return self._timed(lambda result: self._follow(result, anew=True))

    def lag(self) -> int:
        """The table's events in the node's log after the checkpoint (all of
        them for a sink that has not run)."""
        with self.node.connect() as conn:
            identity = retention.log_id(conn)
            after = checkpoints.position(conn, self.node.name, self.channel, identity) or 0
            return self._lag(conn, after)

    def _timed(self, work: Callable[[SinkResult], None]) -> SinkResult:
        started = time.perf_counter()
        result = SinkResult(sink=self.name, node=self.node.name)
        try:
            work(result)
        except (ReplicatorError, SQLAlchemyError, ValueError, RuntimeError) as e:
            # Chroma's own errors derive from Exception through ChromaError;
            # ValueError and RuntimeError cover its validation and storage.
            result.status, result.error = "failed", describe(e)
        except Exception as e:
            if type(e).__module__.split(".")[0] != "chromadb":
                raise
            result.status, result.error = "failed", describe(e)
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def _follow(self, result: SinkResult, anew: bool = False) -> None:
        with self.node.connect() as conn:
            identity = retention.log_id(conn)
            after = checkpoints.position(conn, self.node.name, self.channel, identity)
        lost = self._open() and after is not None  # its directory was deleted, say
        if anew or lost or after is None:
            after = self._start(result, identity)
        while True:
            with self.node.connect() as conn:
                horizon = self.node.dialect.horizon(conn)
            if horizon is None:  # the node's writers held its log: next run
                break
            with self.node.connect() as conn:
                entries, reached = outbox.read_batch(
                    conn,
                    after=after,
                    upto=horizon,
                    limit=self.batch_size,
                    tables={self.settings.table},
                )
            if reached <= after:
                break
            self._advance(reached, identity, self._apply(entries, result))
            after = reached
        result.position = after
        with self.node.connect() as conn:
            result.lag = self._lag(conn, after)

    def _lag(self, conn: Any, after: int) -> int:
        c = outbox_table.c
        return conn.execute(
            sa.select(sa.func.count()).where(
                c.position > after, c.table_name == self.settings.table
            )
        ).scalar_one()

    def _start(self, result: SinkResult, identity: str | None) -> int:
        """Empty the collection and start over: from the beginning of the
        node's log when it tells the table's whole story, else from a
        snapshot of the table. Returns the position to follow the log from."""
        settings = self.settings
        with self.node.connect() as conn:
            shape = self.node.shape(conn, settings.table)
            if shape is None:
                raise ConfigurationError(
                    f"sinks.{self.name}.table: node {self.node.name} has no table "
                    f"{settings.table!r}"
                )
            whole = outbox.complete(conn)
        self._empty()
        if not whole:
            return self._from_snapshot(result, identity, shape.key)
        self._advance(0, identity)
        result.rebuilt = "log"
        return 0

    def _advance(self, position: int, identity: str | None, parkings: list[Parking] = ()) -> None:
        """Record the checkpoint (and park ``parkings``): only ever after
        Chroma took everything up to ``position``."""
        with self.node.begin() as conn:
            if parkings:
                parking.write(conn, list(parkings), {}, {}, self.now())
            checkpoints.advance(
                conn, self.node.dialect, self.node.name, self.channel, position, self.now(),
                identity,
            )  # fmt: skip

    def _empty(self) -> None:
        self._open()
        self._client.delete_collection(self.settings.collection)
        self._collection = None
        self._open()

    def _from_snapshot(self, result: SinkResult, identity: str | None, key: tuple) -> int:
        """Fill the collection from the table as of one log position; set
        the checkpoint there (parking the rows Chroma refused, by ``key``,
        the table's primary key). Returns the position."""
        settings = self.settings
        # Read into memory first: the snapshot's read transaction would
        # keep SQLite writers waiting while the texts are embedded.
        with self.node.dialect.snapshot(self.node.get_engine()) as (conn, position):
            select = sa.select(sa.text("*")).select_from(sa.table(settings.table))
            rows = [dict(row) for row in conn.execute(select).mappings()]
        parkings = []
        for start in range(0, len(rows), self.batch_size):
            upserts = {}
            for row in rows[start : start + self.batch_size]:
                if self._in_scope(row) and row.get(settings.id_column) is not None:
                    upserts[str(row[settings.id_column])] = row
            for doc_id, error in self._upsert(upserts, result).items():
                row = upserts[doc_id]
                parkings.append(
                    Parking(
                        table=settings.table,
                        key=row_key([row[c] for c in key]),
                        reason=Reason.SINK_ERROR,
                        detail=f"sink {self.name}: {error}",
                        policy=self.channel,
                    )
                )
        result.parked += len(parkings)
        self._advance(position, identity, parkings)
        result.rebuilt = "snapshot"
        return position

    # --- one batch -------------------------------------------------------------

    def _apply(self, entries: list[Entry], result: SinkResult) -> list[Parking]:
        """Write a batch's effect to the collection; the events to park."""
        settings = self.settings
        last: dict[str, tuple[Entry, ChangeEvent]] = {}
        touched: dict[str, set[str]] = {}
        parkings: list[Parking] = []
        for entry in entries:
            result.read += 1
            event = entry.event
            if event is None:
                parkings.append(self._parking(entry, Reason.CORRUPT_PAYLOAD, "cannot be decoded"))
                continue
            values = {**(event.changed or {}), **(event.row or {}), **event.key}
            if values.get(settings.id_column) is None:
                detail = f"the row has no value for the id column {settings.id_column!r}"
                parkings.append(self._parking(entry, Reason.SINK_ERROR, detail))
                continue
            doc_id = str(values[settings.id_column])
            last[doc_id] = (entry, event)
            everything = event.op is not Operation.UPDATE
            touched.setdefault(doc_id, set()).update({"*"} if everything else event.changed)
        deletes, upserts, metadata = [], {}, {}
        for doc_id, (_, event) in last.items():
            if event.op is Operation.DELETE or not self._in_scope(event.row):
                deletes.append(doc_id)
            elif touched[doc_id] & {"*", settings.text_column, settings.embedding_column}:
                upserts[doc_id] = event.row
            else:
                metadata[doc_id] = event.row
        self._same_text(metadata, upserts)
        failed = self._write(deletes, upserts, metadata, result)
        for doc_id, error in failed.items():
            parkings.append(self._parking(last[doc_id][0], Reason.SINK_ERROR, error))
        result.parked += len(parkings)
        return parkings

    def _same_text(self, metadata: dict[str, dict], upserts: dict[str, dict]) -> None:
        """Move to ``upserts`` the metadata-only candidates the collection
        does not hold with the same text (absent, or an earlier run died)."""
        if not metadata:
            return
        held = self.collection().get(ids=list(metadata), include=["documents"])
        stored = dict(zip(held["ids"], held["documents"], strict=True))
        for doc_id in list(metadata):
            if stored.get(doc_id) != self._text(metadata[doc_id]):
                upserts[doc_id] = metadata.pop(doc_id)

    def _write(
        self,
        deletes: list[str],
        upserts: dict[str, dict],
        metadata: dict[str, dict],
        result: SinkResult,
    ) -> dict[str, str]:
        """Deletes, upserts and metadata updates; documents Chroma refused
        (by id, with its message). A refused batch is written again one
        document at a time, to find which."""
        collection = self.collection()
        if deletes:
            collection.delete(ids=deletes)
            result.deleted += len(deletes)
        failed = self._upsert(upserts, result)
        if metadata:
            try:
                collection.update(ids=list(metadata), metadatas=self._metadatas(metadata.values()))
                result.metadata_only += len(metadata)
            except self._refused:
                for doc_id, row in metadata.items():
                    try:
                        collection.update(ids=[doc_id], metadatas=self._metadatas([row]))
                        result.metadata_only += 1
                    except self._refused as e:
                        failed[doc_id] = f"Chroma refused the metadata: {e}"
        return failed

    def _upsert(self, rows: dict[str, dict], result: SinkResult) -> dict[str, str]:
        if not rows:
            return {}
        ids, texts = list(rows), [self._text(row) for row in rows.values()]
        vectors, failed = self._embeddings(ids, list(rows.values()), texts, result)
        kept = [i for i, doc_id in enumerate(ids) if doc_id not in failed]
        try:
            self._upsert_some(ids, texts, vectors, list(rows.values()), kept)
            result.upserted += len(kept)
        except self._refused:  # which one?
            for i in kept:
                try:
                    self._upsert_some(ids, texts, vectors, list(rows.values()), [i])
                    result.upserted += 1
                except self._refused as e:
                    failed[ids[i]] = f"Chroma refused the document: {e}"
        return failed

    def _upsert_some(self, ids, texts, vectors, rows, at: list[int]) -> None:
        if at:
            self.collection().upsert(
                ids=[ids[i] for i in at],
                documents=[texts[i] for i in at],
                embeddings=[vectors[i] for i in at],
                metadatas=self._metadatas(rows[i] for i in at),
            )

    def _embeddings(
        self, ids: list[str], rows: list[dict], texts: list[str], result: SinkResult
    ) -> tuple[list[list[float] | None], dict[str, str]]:
        """Each row's vector: its embedding column's, or the embedding
        function's (batched); rows without a usable one, by id, with why."""
        column = self.settings.embedding_column
        failed: dict[str, str] = {}
        if column:
            vectors: list[list[float] | None] = []
            for doc_id, row in zip(ids, rows, strict=True):
                try:
                    vectors.append(_vector(row.get(column)))
                except (TypeError, ValueError) as e:
                    vectors.append(None)
                    failed[doc_id] = f"column {column!r} holds no vector: {e}"
            return vectors, failed
        result.embedded += len(texts)
        return self._vectors(texts), failed

    def _vectors(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):
            vectors += [list(map(float, v)) for v in self.embed(texts[start : start + EMBED_BATCH])]
        return vectors

    # --- rows ------------------------------------------------------------------

    def _text(self, row: Mapping[str, Any]) -> str:
        text = row.get(self.settings.text_column)
        return "" if text is None else str(text)

    def _metadatas(self, rows: Iterable[Mapping[str, Any]]) -> list[dict] | None:
        """Every metadata column of each row (None values remove stale keys:
        Chroma merges metadata); None without metadata columns."""
        columns = self.settings.metadata_columns
        if not columns:
            return None
        return [{c: metadata_value(row.get(c)) for c in columns} for row in rows]

    def _in_scope(self, row: Mapping[str, Any] | None) -> bool:
        if row is None:
            return False
        scope = self.node.scope
        return not all(c in row for c in scope) or all(row[c] == v for c, v in scope.items())

    def _parking(self, entry: Entry, reason: Reason, detail: str) -> Parking:
        event = entry.event
        remote = None
        if event is not None:
            remote = Side(row=event.row, version=event.version, hlc=event.hlc, origin=event.origin)
        return Parking(
            table=entry.table,
            key=entry.row_key,
            reason=reason,
            detail=f"sink {self.name}: the event at position {entry.position} {detail}"
            if reason is Reason.CORRUPT_PAYLOAD
            else f"sink {self.name}: {detail}",
            policy=self.channel,
            remote=remote,
            events=[entry.payload],
        )


def _vector(value: Any) -> list[float]:
    """An embedding column's value as a vector: a list of numbers, JSON
    text of one, or packed 32-bit floats."""
    if isinstance(value, str):
        value = json.loads(value)
    elif isinstance(value, bytes | bytearray | memoryview):
        import numpy

        value = numpy.frombuffer(bytes(value), dtype=numpy.float32).tolist()
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"expected a list of numbers, got {type(value).__name__}")
    return [float(v) for v in value]
