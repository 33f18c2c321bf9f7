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

A sink starts over when it has no checkpoint on its node's log (it is new,
the node's log was made anew or bootstrapped, a start failed half-way),
when retention pruned events it had not read, when its collection is
missing (its directory was lost), or on :meth:`ChromaSink.rebuild`: it
empties the collection, fills it from a snapshot of the table, and follows
the log from the snapshot's position. A replay onto the node reaches the
collection through the node's log. While a sink follows a node, the node
logs what it applies (:func:`replicator.checkpoints.followed`), whichever
process or configuration runs the pass.

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from replicator import checkpoints, embeddings, outbox, parking, retention
from replicator.clock import utcnow
from replicator.config import SinkConfig
from replicator.conflicts import Side
from replicator.errors import ConfigurationError, DatabaseError, ReplicatorError, describe
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
    embedding function, ``parked`` the events parked. ``rebuilt``: it
    started over, from a snapshot of the table. ``position`` is its
    checkpoint afterwards and ``lag`` the table's events after it.
    ``status`` is ``ok``, ``deferred`` (the node's writers held its outbox
    too long to establish what has committed: nothing was read, the next
    run catches up) or ``failed`` (``error`` says why).
    """

    sink: str
    node: str
    read: int = 0
    upserted: int = 0
    metadata_only: int = 0
    deleted: int = 0
    embedded: int = 0
    parked: int = 0
    rebuilt: bool = False
    position: int = 0
    lag: int = 0
    seconds: float = 0.0
    status: str = "ok"
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"


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
        self._chunk = 5000  # Chroma's limit per call, read from the client

    @property
    def channel(self) -> str:
        """The checkpoint's channel on the node."""
        return f"{checkpoints.SINK_PREFIX}{self.name}"

    def collection(self) -> Any:
        """The Chroma collection, or None while it is missing (the next run
        builds it; only a run creates it, so that a lost one is noticed)."""
        self._open(create=False)
        return self._collection

    def _open(self, create: bool = True) -> bool:
        """Open the collection (with no embedding function of Chroma's own,
        which would download a model); whether it had to be created."""
        if self._collection is not None:
            return False
        # Imported here: ChromaDB is heavy, and only a sink run needs it.
        import chromadb
        from chromadb.errors import InvalidArgumentError, NotFoundError

        # What Chroma raises for a document it will not take (the others
        # are about its storage, and end the run instead).
        self._refused = (ValueError, InvalidArgumentError)
        if self._client is None:
            self._client = chromadb.PersistentClient(
                path=str(self.path), settings=chromadb.Settings(anonymized_telemetry=False)
            )
            self._chunk = self._client.get_max_batch_size()
        try:
            self._collection = self._client.get_collection(
                self.settings.collection, embedding_function=None
            )
            return False
        except NotFoundError:
            if not create:
                return False
            self._collection = self._client.create_collection(
                self.settings.collection,
                embedding_function=None,
                metadata={"hnsw:space": "cosine"},
            )
            return True

    def query(self, text: str, n: int = 3) -> list[tuple[str, str, float]]:
        """The ``n`` documents nearest ``text``: ``(id, document, distance)``;
        ``[]`` when the collection is empty or missing."""
        with _chroma(f"querying sink {self.name}"):
            collection = self.collection()
            n = min(n, collection.count() if collection is not None else 0)
            if n <= 0:
                return []
            vectors = self._vectors([text])
            found = collection.query(query_embeddings=vectors, n_results=n)
        return list(zip(found["ids"][0], found["documents"][0], found["distances"][0], strict=True))

    def count(self) -> int | None:
        """How many documents the collection holds (None: it is missing)."""
        with _chroma(f"reading sink {self.name}"):
            collection = self.collection()
            return None if collection is None else collection.count()

    def close(self) -> None:
        """Let go of the collection's files. (Chroma caches one client per
        path for the whole process; this clears that cache.)"""
        if self._client is not None:
            self._client.clear_system_cache()
        self._client = self._collection = None

    # --- running -----------------------------------------------------------

    def away(self, error: str) -> SinkResult:
        """The result of a run that was not tried: the node cannot be
        reached (``error`` says why), and asking it again would only wait
        once more. Nothing was read or written."""
        return SinkResult(sink=self.name, node=self.node.name, status="failed", error=error)

    def run(self) -> SinkResult:
        """Apply the table's events after the checkpoint, batch by batch,
        up to what had committed when it started; start over when needed
        (see the module doc). Never raises for a failure: the result says
        ``failed`` and why, and the checkpoint stays where it was."""
        return self._timed(self._follow)

    def rebuild(self) -> SinkResult:
        """Start over: empty the collection, fill it from a snapshot of the
        table, then follow the log from the snapshot's position."""
        return self._timed(lambda result: self._follow(result, anew=True))

    def lag(self) -> int:
        """The table's events in the node's log after the checkpoint (all of
        them for a sink that has not run)."""
        try:
            with self.node.connect() as conn:
                identity = retention.log_id(conn)
                after = checkpoints.position(conn, self.node.name, self.channel, identity)
                return self._lag(conn, max(after or 0, 0))
        except DatabaseError as e:
            raise ReplicatorError(f"reading sink {self.name}'s lag failed: {e}") from e

    def _timed(self, work: Callable[[SinkResult], None]) -> SinkResult:
        started = time.perf_counter()
        result = SinkResult(sink=self.name, node=self.node.name)
        try:
            work(result)
        except Exception as e:
            # SQLAlchemy's own too: a rebuild reads its snapshot on a
            # connection the dialect opens, outside the node's boundary.
            expected = ReplicatorError | SQLAlchemyError | RuntimeError | ValueError
            if not (isinstance(e, expected) or _from_chroma(e)):
                raise
            result.status, result.error = "failed", describe(e)
        result.seconds = round(time.perf_counter() - started, 3)
        return result

    def _follow(self, result: SinkResult, anew: bool = False) -> None:
        with self.node.connect() as conn:
            self._check(conn)
            identity = retention.log_id(conn)
            after = checkpoints.position(conn, self.node.name, self.channel, identity)
            pruned = retention.pruned_through(conn)
        # Up to what has committed now, so that a run ends under writes (on
        # a connection of its own: MariaDB reads it in a transaction of its
        # own isolation level).
        with self.node.connect() as conn:
            horizon = self.node.dialect.horizon(conn)
        if horizon is None:
            result.status = "deferred"  # long writers: the next run catches up
        lost = self._open() and after is not None  # its directory was deleted, say
        if anew or lost or after is None or after < 0 or after < pruned:
            after = self._start(result, identity)
        while horizon is not None and after < horizon:
            with self.node.connect() as conn:
                entries, reached = outbox.read_batch(
                    conn,
                    after=after,
                    upto=horizon,
                    limit=self.batch_size,
                    tables={self.settings.table},
                )
            # Only after Chroma took the batch does the checkpoint move.
            self._advance(reached, identity, self._apply(entries, result))
            after = reached
        result.position = after
        with self.node.connect() as conn:
            result.lag = self._lag(conn, after)

    def _check(self, conn: Any) -> None:
        """The table exists on the node and ``id_column`` is its primary key
        (one document per row, found again by its id)."""
        settings = self.settings
        shape = self.node.shape(conn, settings.table)
        if shape is None:
            raise ConfigurationError(
                f"sinks.{self.name}.table: node {self.node.name} has no table {settings.table!r}"
            )
        if shape.key != (settings.id_column,):
            raise ConfigurationError(
                f"sinks.{self.name}.id_column: {settings.id_column!r} is not the primary key of "
                f"{settings.table!r} ({', '.join(shape.key)}); a sink needs a one-column key"
            )

    def _advance(self, position: int, identity: str | None, parkings: list[Parking] = ()) -> None:
        """Record the checkpoint (and park ``parkings``)."""
        with self.node.begin() as conn:
            if parkings:
                parking.write(conn, list(parkings), {}, {}, self.now())
            checkpoints.advance(
                conn, self.node.dialect, self.node.name, self.channel, position, self.now(),
                identity,
            )  # fmt: skip

    def _lag(self, conn: Any, after: int) -> int:
        c = outbox_table.c
        return conn.execute(
            sa.select(sa.func.count()).where(
                c.position > after, c.table_name == self.settings.table
            )
        ).scalar_one()

    def _start(self, result: SinkResult, identity: str | None) -> int:
        """Start over: empty the collection and fill it from a snapshot of
        the table as of one position of the node's log. Returns it.

        The checkpoint is first set to -1 ("starting"), committed: from
        then on the node logs what it applies (see
        :func:`replicator.checkpoints.followed`), and a start that fails
        half-way is started again by the next run."""
        settings = self.settings
        self._advance(-1, identity)
        self._open()
        self._client.delete_collection(settings.collection)
        self._collection = None
        self._open()
        with self.node.connect() as conn:
            shape = self.node.shape(conn, settings.table)
        # Read into memory first: the snapshot's read transaction would
        # keep SQLite writers waiting while the texts are embedded. Values
        # are typed by the columns' types, as the log carries them.
        with self.node.dialect.snapshot(self.node.get_engine()) as (conn, position):
            select = sa.select(sa.text("*")).select_from(sa.table(settings.table))
            rows = [shape.typed(row) for row in conn.execute(select).mappings()]
        parkings = []
        for start in range(0, len(rows), self.batch_size):
            upserts = {
                str(row[settings.id_column]): row
                for row in rows[start : start + self.batch_size]
                if self._in_scope(row)
            }
            for doc_id, error in self._upsert(upserts, result).items():
                parkings.append(
                    Parking(
                        table=settings.table,
                        key=row_key([upserts[doc_id][settings.id_column]]),
                        reason=Reason.SINK_ERROR,
                        detail=f"sink {self.name}: {error}",
                        policy=self.channel,
                    )
                )
        result.parked += len(parkings)
        self._advance(position, identity, parkings)
        result.rebuilt = True
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
                detail = f"the event at position {entry.position} cannot be decoded"
                parkings.append(self._parking(entry, Reason.CORRUPT_PAYLOAD, detail))
                continue
            doc_id = str(event.key[settings.id_column])
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
        stored: dict[str, str] = {}
        for ids in self._chunks(list(metadata)):
            held = self._collection.get(ids=ids, include=["documents"])
            stored.update(zip(held["ids"], held["documents"], strict=True))
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
        document at a time, to find which; a refused document is removed,
        so the collection holds no stale version of it."""
        for ids in self._chunks(deletes):
            self._collection.delete(ids=ids)
        result.deleted += len(deletes)
        failed = self._upsert(upserts, result)
        rows = list(metadata.items())
        for part in self._chunks(rows):
            try:
                self._collection.update(
                    ids=[i for i, _ in part], metadatas=self._metadatas(r for _, r in part)
                )
                result.metadata_only += len(part)
            except self._refused:
                for doc_id, row in part:
                    try:
                        self._collection.update(ids=[doc_id], metadatas=self._metadatas([row]))
                        result.metadata_only += 1
                    except self._refused as e:
                        failed[doc_id] = f"Chroma refused the metadata: {e}"
        stale = [doc_id for doc_id in failed if doc_id not in deletes]
        for ids in self._chunks(stale):
            self._collection.delete(ids=ids)
        return failed

    def _upsert(self, rows: dict[str, dict], result: SinkResult) -> dict[str, str]:
        """Upsert whole documents (embedding their texts); refused ones by id."""
        ids, texts = list(rows), [self._text(row) for row in rows.values()]
        vectors, failed = self._embeddings(ids, list(rows.values()), texts, result)
        kept = [i for i, doc_id in enumerate(ids) if doc_id not in failed]
        for part in self._chunks(kept):
            try:
                self._upsert_some(ids, texts, vectors, rows, part)
                result.upserted += len(part)
            except self._refused:  # which one?
                for i in part:
                    try:
                        self._upsert_some(ids, texts, vectors, rows, [i])
                        result.upserted += 1
                    except self._refused as e:
                        failed[ids[i]] = f"Chroma refused the document: {e}"
        return failed

    def _upsert_some(self, ids, texts, vectors, rows, at: list[int]) -> None:
        self._collection.upsert(
            ids=[ids[i] for i in at],
            documents=[texts[i] for i in at],
            embeddings=[vectors[i] for i in at],
            metadatas=self._metadatas(rows[ids[i]] for i in at),
        )

    def _chunks(self, items: list) -> list[list]:
        """``items`` in parts Chroma takes in one call."""
        return [items[i : i + self._chunk] for i in range(0, len(items), self._chunk)]

    def _embeddings(
        self, ids: list[str], rows: list[dict], texts: list[str], result: SinkResult
    ) -> tuple[list[list[float] | None], dict[str, str]]:
        """Each row's vector: its embedding column's, or the embedding
        function's (batched); rows without a usable one, by id, with why."""
        column = self.settings.embedding_column
        failed: dict[str, str] = {}
        vectors: list[list[float] | None] = []
        if column:
            for doc_id, row in zip(ids, rows, strict=True):
                try:
                    vectors.append(_vector(row.get(column)))
                except (TypeError, ValueError) as e:
                    vectors.append(None)
                    failed[doc_id] = f"column {column!r} holds no vector: {e}"
            return vectors, failed
        result.embedded += len(texts)
        for start in range(0, len(texts), EMBED_BATCH):
            part = texts[start : start + EMBED_BATCH]
            try:
                vectors += self._vectors(part)
            except ReplicatorError:  # which text? one at a time
                for doc_id, text in zip(ids[start : start + EMBED_BATCH], part, strict=True):
                    try:
                        vectors += self._vectors([text])
                    except ReplicatorError as e:
                        vectors.append(None)
                        failed[doc_id] = str(e)
        return vectors, failed

    def _vectors(self, texts: list[str]) -> list[list[float]]:
        """The embedding function's vectors for ``texts`` (one call)."""
        try:
            found = [list(map(float, v)) for v in self.embed(texts)]
        except Exception as e:  # the app's model: whatever it raises
            raise ReplicatorError(
                f"the embedding function of sink {self.name} failed: {describe(e)}"
            ) from e
        if len(found) != len(texts):
            raise ReplicatorError(
                f"the embedding function of sink {self.name} returned {len(found)} vectors "
                f"for {len(texts)} texts"
            )
        return found

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
            detail=f"sink {self.name}: {detail}",
            policy=self.channel,
            remote=remote,
            events=[entry.payload],
        )


@contextmanager
def _chroma(doing: str) -> Iterator[None]:
    """Chroma's own errors while ``doing`` as a :class:`ReplicatorError`."""
    try:
        yield
    except ReplicatorError:
        raise
    except Exception as e:
        if not (_from_chroma(e) or isinstance(e, ValueError)):
            raise
        raise ReplicatorError(f"{doing} failed: {describe(e)}") from e


def _from_chroma(error: Exception) -> bool:
    """Whether Chroma raised ``error`` (its errors share no base class)."""
    return type(error).__module__.split(".")[0] == "chromadb"


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
