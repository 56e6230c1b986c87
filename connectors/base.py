"""The connector contract: what a source yields and how it is acknowledged.

A connector pulls from one source and yields :class:`SourceBatch` objects. The pipeline commits
each batch (raw records, their blobs, dead letters and the checkpoint) in ONE transaction and
only then calls :meth:`Connector.ack` so the source can flag, move, PUBACK or advance its cursor.
A crash between the commit and the ack makes the source hand the same records over again; they
are unique on (source, source_ref) and stored once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, overload, runtime_checkable

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from normalizer.case import Channel

if TYPE_CHECKING:
    from outbox.blobs import BlobStore


class BlobRef(BaseModel):
    """A pointer to content in the blob store."""

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    mime: str = "application/octet-stream"
    size: int = Field(ge=0)
    filename: str | None = None
    role: str | None = None


class RawRecord(BaseModel):
    """One record as the source gave it, before any interpretation."""

    model_config = ConfigDict(extra="forbid")

    source: str
    channel: Channel
    source_ref: str = Field(min_length=1, max_length=1000)
    received_at: AwareDatetime
    payload: dict[str, Any] = Field(default_factory=dict)
    attachments: list[BlobRef] = Field(default_factory=list)
    raw_blob: str | None = Field(
        default=None, description="sha256 of the original bytes (an RFC 822 mail, a file)."
    )


_RAW_FIELDS = frozenset(RawRecord.model_fields)
_set_attr = object.__setattr__


def trusted_raw(source: str, channel: Channel, source_ref: str, received_at: datetime,
                payload: dict[str, Any], raw_blob: str | None = None) -> RawRecord:
    """A :class:`RawRecord` without attachments from fields the caller built and checked.

    What ``RawRecord.model_construct`` does (no validation), without its generic per-field
    work: for connectors on a hot path (MQTT builds one per message, IMAP one per mail).
    """
    rec = RawRecord.__new__(RawRecord)
    _set_attr(rec, "__dict__", {"source": source, "channel": channel, "source_ref": source_ref,
                                "received_at": received_at, "payload": payload,
                                "attachments": [], "raw_blob": raw_blob})
    _set_attr(rec, "__pydantic_fields_set__", set(_RAW_FIELDS))
    _set_attr(rec, "__pydantic_extra__", None)
    _set_attr(rec, "__pydantic_private__", None)
    return rec


_JSON_OPTS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
              | orjson.OPT_PASSTHROUGH_DATACLASS)


def payload_json(payload: dict[str, Any]) -> str:
    """The text the store writes for a record's payload: compact JSON, keys in order,
    non-ASCII kept, anything else as ``str(value)`` (what ``json.dumps(ensure_ascii=False,
    separators=(",", ":"), default=str)`` writes; orjson first, :mod:`json` for what orjson
    refuses: integers over 64 bits, lone surrogates)."""
    try:
        return orjson.dumps(payload, default=str, option=_JSON_OPTS).decode()
    except (TypeError, UnicodeEncodeError):
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)


#: orjson reads an integer literal beyond 64 bits as a float, which is always this large
_BIG = float(2**63)


def maybe_lossy(value: Any) -> bool:
    """Whether parsed JSON holds a float orjson may have made of an integer beyond 64 bits.

    That is a float of at least 2**63 in magnitude, at any depth (a genuine ``1e20`` counts
    too: :mod:`json` reads it as the same float, only more slowly).
    """
    t = type(value)
    if t is float:
        return value >= _BIG or value <= -_BIG
    if t is dict:
        return any(maybe_lossy(v) for v in value.values())
    if t is list or t is tuple:
        return any(maybe_lossy(v) for v in value)
    return False


def loads_exact(text: str | bytes) -> Any:
    """Parse JSON with orjson, or with :mod:`json` when orjson may have read an integer beyond
    64 bits as a float (:func:`maybe_lossy`): integers of any size stay exact."""
    value = orjson.loads(text)
    return json.loads(text) if maybe_lossy(value) else value


class PackedRecords(Sequence[RawRecord]):
    """Raw records of one source, held in the form the store writes them.

    Each record is ``(source_ref, received_at as stored text, payload JSON text)`` with no
    attachments and no raw blob: what a connector on a hot path (MQTT: one record per message,
    tens of thousands a second) builds instead of a :class:`RawRecord`, a payload dict and its
    nested dicts and lists per message. Fewer objects alive until the commit means less work
    for Python's cyclic garbage collector, and the JSON is written on the connector's thread
    instead of the committing one.

    The store writes the three fields as they are (:meth:`outbox.store.sql.SqlStore.
    commit_ingest`); reading an item builds the :class:`RawRecord` (payload parsed back from
    its JSON, the same values), so every other reader sees what a list of records would hold.
    The fields must be what the store would write for that record: ``received_at`` from
    :func:`outbox.store.timefmt.ts`, the payload from :func:`payload_json`.
    """

    __slots__ = ("channel", "rows", "source")

    def __init__(self, source: str, channel: Channel) -> None:
        self.source = source
        self.channel = channel
        #: (source_ref, received_at text, payload JSON text) per record, in order
        self.rows: list[tuple[str, str, str]] = []

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, index: int) -> RawRecord: ...

    @overload
    def __getitem__(self, index: slice) -> list[RawRecord]: ...

    def __getitem__(self, index: int | slice) -> RawRecord | list[RawRecord]:
        if isinstance(index, slice):
            return [self._record(row) for row in self.rows[index]]
        return self._record(self.rows[index])

    def _record(self, row: tuple[str, str, str]) -> RawRecord:
        ref, at, payload = row
        received = datetime.fromisoformat(at.replace("Z", "+00:00"))
        return trusted_raw(self.source, self.channel, ref, received, loads_exact(payload))


@dataclass
class Reject:
    """Input the connector could not turn into a record: goes to the dead letters."""

    reason: str
    raw: bytes | None = None
    blob_sha256: str | None = None
    source_ref: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class SourceBatch:
    """Records fetched together, committed together, then acknowledged together.

    Attributes:
        records: raw records (blobs already written to the blob store); a list, or
            :class:`PackedRecords` from connectors on a hot path.
        rejects: bad input for the dead letters.
        checkpoint: the connector's state after this batch (None keeps the previous one).
        ack_token: anything the connector needs in :meth:`Connector.ack`.
    """

    records: list[RawRecord] | PackedRecords = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None
    ack_token: Any = None


@dataclass
class IngestContext:
    """What a connector may use while fetching."""

    blobs: BlobStore
    checkpoint: dict[str, Any] | None
    now: datetime
    #: Stop fetching after this many records in one run (bounded work per run).
    max_records: int | None = None
    #: Store-backed advisory lock helpers and state, provided by the pipeline.
    services: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Connector(Protocol):
    """A source of raw records."""

    #: The connector type name used in config (``type: jsonfile``).
    type_name: ClassVar[str]
    name: str
    channel: Channel

    def fetch(self, ctx: IngestContext) -> Iterator[SourceBatch]:
        """Yield batches of new records since ``ctx.checkpoint``."""
        ...

    def ack(self, batch: SourceBatch) -> None:
        """Acknowledge a batch at the source. Called only after the batch is committed."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class ReparseError(ValueError):
    """Raised when replayed raw bytes still cannot be parsed."""


class Reparser(Protocol):
    """Optional: connectors that can turn dead-lettered raw bytes into records again."""

    def reparse(self, raw: bytes, source_ref: str | None, now: datetime) -> list[RawRecord]:
        """Parse raw bytes (possibly corrected by an operator) into records."""
        ...


class Listener(Protocol):
    """Optional: connectors that can run continuously (MQTT subscriptions, IMAP IDLE).

    ``feedback-hub listen`` calls :meth:`listen` in its own thread. The connector calls
    ``commit(batch)`` for each batch; ``commit`` stores the batch in one transaction and then
    calls the connector's :meth:`Connector.ack` (so acks still follow commits). ``listen``
    returns when ``stop`` is set, and should reconnect with backoff on its own.
    """

    def listen(self, ctx: IngestContext, commit: Callable[[SourceBatch], None],
               stop: threading.Event) -> None:
        """Run until ``stop`` is set."""
        ...
