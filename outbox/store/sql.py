"""The durable store, written once in portable SQL for SQLite and PostgreSQL.

Dialects differ only in how they connect, start a write transaction, name parameters and
claim outbox rows; everything else (tables, queries, guarantees) lives here.

Guarantees this module provides:

* raw records are unique on (source, source_ref); a batch of records, its dead letters and the
  connector checkpoint are committed in one transaction (:meth:`SqlStore.commit_ingest`);
* a case, its index keys, its timeline event and its outbox rows are committed in the same
  transaction as the raw record's state change (:class:`ProcessTx`);
* outbox rows are unique on their idempotency key, so reprocessing never queues a second
  delivery; a human reference is allocated once per case and never reused.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from connectors.base import BlobRef, PackedRecords, RawRecord, Reject, trusted_raw
from normalizer.case import Case, CaseUpdate, Channel, fast_uuid5, reporter_key
from outbox.blobs import BlobStore
from outbox.store.migrations import MIGRATIONS
from outbox.store.timefmt import now_utc, parse_ts, ts

logger = logging.getLogger(__name__)

#: Namespace for idempotency keys (stable forever).
DELIVERY_NAMESPACE = uuid.UUID("0b7f3c8e-59a2-5d61-8f3e-4a1d2c9e6b70")
#: Grid cell size in degrees for proximity lookups (~111 m north-south).
CELL_DEG = 0.001


def idempotency_key(sink: str, case_id: str, kind: str, event_id: str | None) -> str:
    """The stable idempotency key of one delivery to one sink."""
    return fast_uuid5(DELIVERY_NAMESPACE, f"{sink}|{case_id}|{kind}|{event_id or ''}")


def cell_of(lat: float | None, lon: float | None) -> str | None:
    """The grid cell a point falls in (index key for proximity lookups)."""
    if lat is None or lon is None:
        return None
    return f"{math.floor(lat / CELL_DEG)}:{math.floor(lon / CELL_DEG)}"


def neighbour_cells(lat: float, lon: float, radius_m: float) -> list[str]:
    """All cells within ``radius_m`` of a point (a small square of cells)."""
    dlat = radius_m / 111_320.0
    dlon = radius_m / (111_320.0 * max(math.cos(math.radians(lat)), 0.01))
    r_lat = math.ceil(dlat / CELL_DEG)
    r_lon = math.ceil(dlon / CELL_DEG)
    base_lat = math.floor(lat / CELL_DEG)
    base_lon = math.floor(lon / CELL_DEG)
    return [f"{base_lat + i}:{base_lon + j}"
            for i in range(-r_lat, r_lat + 1) for j in range(-r_lon, r_lon + 1)]


def box_cells(lat_min: float, lat_max: float, lon_min: float, lon_max: float) -> list[str]:
    """The cells a bounding box touches (2 to 6 for the 50 m default in Shanghai, where the
    square of :func:`neighbour_cells` always has 9).

    Exactly the cells that can hold a point inside the box (:func:`cell_of` floors the same
    way), so a lookup by these cells AND the box finds what the wider square of
    :func:`neighbour_cells` AND the box finds, with fewer index probes.
    """
    lat_lo, lat_hi = math.floor(lat_min / CELL_DEG), math.floor(lat_max / CELL_DEG)
    lon_lo, lon_hi = math.floor(lon_min / CELL_DEG), math.floor(lon_max / CELL_DEG)
    return [f"{i}:{j}" for i in range(lat_lo, lat_hi + 1) for j in range(lon_lo, lon_hi + 1)]


#: Raw records per INSERT statement in commit_ingest (8 parameters each: well under the
#: parameter limits of SQLite and PostgreSQL).
_INGEST_ROWS = 500
_ORJSON_OPTS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                | orjson.OPT_PASSTHROUGH_DATACLASS)


def _dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII kept; anything else is written as ``str(value)``.

    orjson writes the same text as ``json.dumps(ensure_ascii=False, separators=(",", ":"),
    default=str)`` several times faster (large floats may be spelled ``1e16`` for ``1e+16``,
    the same number); what it refuses (integers over 64 bits, lone surrogates) goes through
    :mod:`json`.
    """
    try:
        return orjson.dumps(value, default=str, option=_ORJSON_OPTS).decode()
    except (TypeError, UnicodeEncodeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _loads(value: Any) -> Any:
    if value is None or isinstance(value, (dict, list)):
        return value
    return json.loads(value)


#: every ASCII digit to "0", every other byte to a space: a run of 19 digits in a text is
#: then the bytes :data:`_LONG_RUN` in its translation (C-speed translate and find; a str
#: regex ``\d{19}`` took longer on a case body than json.loads itself)
_DIGIT_MASK = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))
_LONG_RUN = b"0" * 19


def _long_digit_run(text: str) -> bool:
    """Whether ``text`` has 19 ASCII digits in a row: it may hold an integer orjson would
    read as a float (> 64 bits). JSON numbers are ASCII digits only; UTF-8 continuation and
    lead bytes are never ASCII digits, so bytes and characters agree."""
    return _LONG_RUN in text.encode("utf-8", "surrogatepass").translate(_DIGIT_MASK)


def _loads_stored(text: str) -> Any:
    """Parse JSON the store wrote (a case body, a raw payload): orjson where it gives json's
    values, :mod:`json` where the text may hold an integer beyond 64 bits or orjson refuses
    it (lone surrogates, NaN), so an upstream number reaches the sink exactly as received."""
    if not _long_digit_run(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def _fast_dumps(value: dict[str, Any]) -> str:
    """Compact JSON of a small dict of plain values (what :func:`_dumps` writes, faster)."""
    return orjson.dumps(value, default=str).decode("utf-8")


#: The ways an outbox row is due for a claim (each one index range of ``outbox_due``).
CLAIM_DUE = ("o.state = 'pending' AND o.next_attempt_at <= ?",
             "o.state = 'retrying' AND o.next_attempt_at <= ?",
             "o.state = 'in_flight' AND o.claimed_until < ?")
#: Rows per multi-row statement (8 values each stays far under SQLite's 32,766 variables).
_ROWS_PER_STATEMENT = 200


def _parts(seq: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def _marks(n: int) -> str:
    return ",".join("?" * n)


@functools.lru_cache(maxsize=64)
def _rows_marks(rows: int, cols: int) -> str:
    """``(?,?),(?,?)`` for a multi-row VALUES list."""
    one = f"({_marks(cols)})"
    return ",".join([one] * rows)


def _delivered_text(d: ClaimedDelivery, remote_id: str | None) -> str:
    what = "delivered" if d.kind == "case" else "update delivered"
    return f"{what} to {d.sink}" + (f" as {remote_id}" if remote_id else "")


def _delivered_data(d: ClaimedDelivery, remote_id: str | None,
                    status_code: int | None) -> dict[str, Any]:
    return {"sink": d.sink, "remote_id": remote_id, "kind": d.kind, "event_id": d.event_id,
            "status_code": status_code}


@dataclass
class IngestResult:
    """What one committed ingest batch did."""

    inserted: int = 0
    duplicates: int = 0
    dead: int = 0
    raw_ids: list[int] | None = None


@dataclass
class StoredRaw:
    """A raw record as stored, with its row id."""

    id: int
    record: RawRecord
    state: str


@dataclass
class ClaimedDelivery:
    """An outbox row claimed by a delivery worker."""

    id: int
    sink: str
    case_id: str
    kind: str
    event_id: str | None
    idempotency_key: str
    attempts: int
    first_attempt_at: datetime | None
    created_at: datetime
    last_error: dict[str, Any] | None
    remote_id: str | None


class SqlStore:
    """Dialect-neutral store. Subclasses provide the connection and a few SQL details."""

    dialect = "sql"
    #: DDL fragments per dialect.
    ddl_types: dict[str, str] = {}

    def __init__(self, blobs: BlobStore, timezone: str = "Asia/Shanghai") -> None:
        self.blobs = blobs
        self.tz = ZoneInfo(timezone)
        self.timezone = timezone
        self.conn: Any = None

    # ------------------------------------------------------------------ dialect hooks
    def _sql(self, sql: str) -> str:
        """Translate ``?`` placeholders to the driver's style."""
        return sql

    @contextmanager
    def _write_tx(self) -> Iterator[Any]:  # pragma: no cover - abstract
        raise NotImplementedError
        yield

    @contextmanager
    def _batch_tx(self) -> Iterator[Any]:
        """A write transaction whose statements return nothing the caller reads: a dialect
        may send them all before waiting for the server (PostgreSQL's pipeline mode)."""
        with self._write_tx() as cur:
            yield cur

    def _claim_sql(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        """Close the connection."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # ------------------------------------------------------------------ helpers
    def _exec(self, cur: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        cur.execute(self._sql(sql), tuple(params))
        return cur

    def _rows(self, cur: Any) -> list[dict[str, Any]]:
        cols = [d[0] for d in cur.description] if cur.description else []
        return [dict(zip(cols, row, strict=False)) for row in cur.fetchall()]

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read-only query and return rows as dicts (for reports and the CLI)."""
        cur = self.conn.cursor()
        try:
            self._exec(cur, sql, params)
            return self._rows(cur)
        finally:
            cur.close()
            self._end_read()

    def _end_read(self) -> None:
        """Finish an implicit read transaction where the driver opened one."""

    # ------------------------------------------------------------------ migrations
    def migrate(self) -> int:
        """Apply pending migrations; return the schema version."""
        with self._write_tx() as cur:
            self._exec(cur, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                            "version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                            "applied_at TEXT NOT NULL)")
            self._exec(cur, "SELECT version FROM schema_migrations")
            done = {r[0] for r in cur.fetchall()}
            for version, description, statements in MIGRATIONS:
                if version in done:
                    continue
                for stmt in statements:
                    self._exec(cur, stmt.format(**self.ddl_types))
                self._exec(cur, "INSERT INTO schema_migrations (version, description, applied_at)"
                                " VALUES (?, ?, ?)", (version, description, ts(now_utc())))
                logger.info("migration applied", extra={"version": version,
                                                         "description": description})
        return max([v for v, _, _ in MIGRATIONS])

    def schema_version(self) -> int:
        """The applied schema version (0 when none)."""
        rows = self.query("SELECT MAX(version) AS v FROM schema_migrations")
        return int(rows[0]["v"] or 0)

    # ------------------------------------------------------------------ ingest
    def get_checkpoint(self, source: str) -> dict[str, Any] | None:
        """The connector's last committed checkpoint."""
        rows = self.query("SELECT value FROM checkpoints WHERE source = ?", (source,))
        return _loads(rows[0]["value"]) if rows else None

    def commit_ingest(
        self,
        source: str,
        records: Sequence[RawRecord],
        rejects: Sequence[Reject] = (),
        checkpoint: dict[str, Any] | None = None,
    ) -> IngestResult:
        """Commit raw records, dead letters and the checkpoint in ONE transaction."""
        result = IngestResult(raw_ids=[])
        now = ts(now_utc())
        rows = []
        last_at: datetime | None = None
        at = ""
        packed: PackedRecords | None = None
        if isinstance(records, PackedRecords):  # already in the form written here
            packed, records = records, ()
        for rec in records:
            if rec.received_at is not last_at:  # a batch's records often share one time
                last_at, at = rec.received_at, ts(rec.received_at)
            rows.append((rec.source, rec.channel.value, rec.source_ref, at, now,
                         _dumps(rec.payload),
                         _dumps([a.model_dump(exclude_none=True) for a in rec.attachments])
                         if rec.attachments else "[]", rec.raw_blob))
        with self._write_tx() as cur:
            if packed is not None and packed.rows:
                result.raw_ids = self._insert_packed(cur, packed.source, packed.channel.value,
                                                     now, packed.rows)
                result.inserted = len(result.raw_ids)
                result.duplicates = len(packed.rows) - result.inserted
            elif rows:
                result.raw_ids = self._insert_raw(cur, rows)
                result.inserted = len(result.raw_ids)
                result.duplicates = len(rows) - result.inserted
            for rej in rejects:
                blob = self._reject_blob(rej)
                if blob is not None:
                    # the same bad bytes offered again (a re-sent file): one open letter is enough
                    self._exec(cur, "SELECT id FROM dead_letters WHERE stage = 'ingest' AND "
                                    "source = ? AND blob_sha256 = ? AND replay_state = 'new'",
                               (source, blob))
                    if cur.fetchone() is not None:
                        result.duplicates += 1
                        continue
                self._insert_dead_letter(cur, "ingest", source, rej.source_ref, rej.reason,
                                         blob, detail=rej.detail)
                result.dead += 1
            if checkpoint is not None:
                self._exec(cur, "INSERT INTO checkpoints (source, value, updated_at) "
                                "VALUES (?,?,?) ON CONFLICT (source) DO UPDATE SET "
                                "value = excluded.value, updated_at = excluded.updated_at",
                           (source, _dumps(checkpoint), now))
            self._bump_stats(cur, source, records=result.inserted, duplicates=result.duplicates,
                             errors=result.dead)
        return result

    _INSERT_RAW = ("INSERT INTO raw_records (source, channel, source_ref, received_at, "
                   "ingested_at, payload, attachments, raw_blob) VALUES (?,?,?,?,?,?,?,?) "
                   "ON CONFLICT (source, source_ref) DO NOTHING")

    def _insert_packed(self, cur: Any, source: str, channel: str, ingested_at: str,
                       rows: Sequence[tuple[str, str, str]]) -> list[int]:
        """Insert :class:`PackedRecords` rows ``(source_ref, received_at, payload)`` of one
        source (no attachments, no raw blob); duplicates skipped; the ids of the new ones."""
        return self._insert_raw(cur, [(source, channel, ref, at, ingested_at, payload, "[]", None)
                                      for ref, at, payload in rows])

    def _insert_raw(self, cur: Any, rows: list[tuple[Any, ...]]) -> list[int]:
        """Insert raw record rows (duplicates skipped); return the ids of the new ones.

        One multi-row INSERT per chunk of :data:`_INGEST_ROWS`; RETURNING lists the rows
        inserted (duplicates, also within the chunk, are skipped by ON CONFLICT).
        """
        ids: list[int] = []
        for i in range(0, len(rows), _INGEST_ROWS):
            chunk = rows[i:i + _INGEST_ROWS]
            self._exec(cur, "INSERT INTO raw_records (source, channel, source_ref, received_at, "
                            "ingested_at, payload, attachments, raw_blob) VALUES "
                       + ",".join(["(?,?,?,?,?,?,?,?)"] * len(chunk))
                       + " ON CONFLICT (source, source_ref) DO NOTHING RETURNING id",
                       [v for row in chunk for v in row])
            ids.extend(sorted(int(r[0]) for r in cur.fetchall()))
        return ids

    def _reject_blob(self, rej: Reject) -> str | None:
        if rej.blob_sha256:
            return rej.blob_sha256
        if rej.raw is not None:
            return self.blobs.put_bytes(rej.raw).sha256
        return None

    def _bump_stats(self, cur: Any, source: str, *, records: int = 0, duplicates: int = 0,
                    errors: int = 0) -> None:
        self._exec(cur, "INSERT INTO connector_stats (source, records_total, duplicates_total, "
                        "errors_total) VALUES (?,?,?,?) ON CONFLICT (source) DO UPDATE SET "
                        "records_total = connector_stats.records_total + excluded.records_total, "
                        "duplicates_total = connector_stats.duplicates_total "
                        "+ excluded.duplicates_total, "
                        "errors_total = connector_stats.errors_total + excluded.errors_total",
                   (source, records, duplicates, errors))

    def record_run(self, source: str, *, ok: bool, error: str | None = None) -> None:
        """Record the outcome of one connector run (for ``status``)."""
        now = ts(now_utc())
        with self._write_tx() as cur:
            self._bump_stats(cur, source)
            if ok:
                self._exec(cur, "UPDATE connector_stats SET last_run_at = ?, last_success_at = ? "
                                "WHERE source = ?", (now, now, source))
            else:
                self._exec(cur, "UPDATE connector_stats SET last_run_at = ?, last_error = ?, "
                                "last_error_at = ?, errors_total = errors_total + 1 "
                                "WHERE source = ?", (now, (error or "")[:1000], now, source))

    def add_dead_letter(self, stage: str, source: str | None, reason: str, *,
                        source_ref: str | None = None, blob_sha256: str | None = None,
                        raw_record_id: int | None = None, outbox_id: int | None = None,
                        detail: dict[str, Any] | None = None) -> int:
        """Record a dead letter in its own transaction."""
        with self._write_tx() as cur:
            return self._insert_dead_letter(cur, stage, source, source_ref, reason, blob_sha256,
                                            raw_record_id=raw_record_id, outbox_id=outbox_id,
                                            detail=detail)

    def _insert_dead_letter(self, cur: Any, stage: str, source: str | None,
                            source_ref: str | None, reason: str, blob_sha256: str | None, *,
                            raw_record_id: int | None = None, outbox_id: int | None = None,
                            detail: dict[str, Any] | None = None) -> int:
        self._exec(cur, "INSERT INTO dead_letters (stage, source, source_ref, reason, blob_sha256,"
                        " raw_record_id, outbox_id, detail, created_at) VALUES (?,?,?,?,?,?,?,?,?)"
                        " RETURNING id",
                   (stage, source, source_ref, reason[:4000], blob_sha256, raw_record_id,
                    outbox_id, _dumps(detail or {}), ts(now_utc())))
        return int(cur.fetchone()[0])

    # ------------------------------------------------------------------ process
    def pending_raw(self, limit: int, after_id: int = 0,
                    sources: Sequence[str] | None = None) -> list[StoredRaw]:
        """Raw records waiting for the process stage, oldest first."""
        sql = ("SELECT id, source, channel, source_ref, received_at, payload, attachments, "
               "raw_blob, state FROM raw_records WHERE state = 'pending' AND id > ?")
        params: list[Any] = [after_id]
        if sources:
            sql += f" AND source IN ({','.join('?' * len(sources))})"
            params.extend(sources)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return [self._raw_from_row(r) for r in self.query(sql, params)]

    def get_raw(self, raw_id: int) -> StoredRaw | None:
        """Load one raw record by row id."""
        rows = self.query("SELECT id, source, channel, source_ref, received_at, payload, "
                          "attachments, raw_blob, state FROM raw_records WHERE id = ?", (raw_id,))
        return self._raw_from_row(rows[0]) if rows else None

    def _raw_from_row(self, r: dict[str, Any]) -> StoredRaw:
        # rows were validated before they were written: rebuild without validating again;
        # the payload through orjson unless it may hold an integer past 64 bits (or text
        # orjson refuses), as for case bodies: the values json.loads gives, faster
        payload = r["payload"]
        rec = trusted_raw(r["source"], Channel(r["channel"]), r["source_ref"],
                          parse_ts(r["received_at"]),
                          _loads_stored(payload) if isinstance(payload, str) else _loads(payload))
        if r["attachments"] not in ("[]", []):
            rec.__dict__["attachments"] = [BlobRef.model_construct(**a)
                                           for a in _loads(r["attachments"])]
        rec.__dict__["raw_blob"] = r["raw_blob"]
        return StoredRaw(id=int(r["id"]), record=rec, state=r["state"])

    @contextmanager
    def process_tx(self, now: datetime | None = None) -> Iterator[ProcessTx]:
        """A write transaction for the process stage (one batch of raw records)."""
        with self._write_tx() as cur:
            tx = ProcessTx(self, cur, now or now_utc())
            yield tx
            tx.flush()

    # ------------------------------------------------------------------ deliver
    def claim_due(self, worker: str, limit: int, lease_s: float,
                  now: datetime | None = None, sinks: Sequence[str] | None = None
                  ) -> list[ClaimedDelivery]:
        """Claim due outbox rows for this worker (a lease; expired leases are reclaimable).

        An update is due only once the case it belongs to was delivered to the same sink.
        """
        now = now or now_utc()
        until = ts(now + timedelta(seconds=lease_s))
        sink_filter = ""
        sink_params: list[Any] = []
        if sinks:
            sink_filter = f" AND o.sink IN ({','.join('?' * len(sinks))})"
            sink_params.extend(sinks)
        with self._write_tx() as cur:
            # one query per way of being due, each an ordered index range cut at ``limit``
            # (one OR-ed query sorts every due row of the backlog at every claim), merged here
            candidates: list[tuple[str, int]] = []
            for due in CLAIM_DUE:
                self._exec(cur, self._claim_sql().format(due=due, sink_filter=sink_filter),
                           (ts(now), *sink_params, limit))
                candidates.extend((str(r[1]), int(r[0])) for r in cur.fetchall())
            ids = [i for _, i in sorted(candidates)[:limit]]
            if not ids:
                return []
            marks = ",".join("?" * len(ids))
            self._exec(cur, f"UPDATE outbox SET state = 'in_flight', claimed_by = ?, "
                            f"claimed_until = ? WHERE id IN ({marks})", (worker, until, *ids))
            self._exec(cur, f"SELECT o.id, o.sink, o.case_id, o.kind, o.event_id, "
                            f"o.idempotency_key, o.attempts, o.first_attempt_at, o.created_at, "
                            f"o.last_error, (SELECT c.remote_id FROM outbox c WHERE "
                            f"c.sink = o.sink AND c.case_id = o.case_id AND c.kind = 'case') "
                            f"AS case_remote_id FROM outbox o WHERE o.id IN ({marks}) "
                            f"ORDER BY o.id", ids)
            rows = self._rows(cur)
        return self._claimed(rows, now)

    @staticmethod
    def _claimed(rows: list[dict[str, Any]], now: datetime) -> list[ClaimedDelivery]:
        return [ClaimedDelivery(
            id=int(r["id"]), sink=r["sink"], case_id=r["case_id"], kind=r["kind"],
            event_id=r["event_id"], idempotency_key=r["idempotency_key"],
            attempts=int(r["attempts"]), first_attempt_at=parse_ts(r["first_attempt_at"]),
            created_at=parse_ts(r["created_at"]) or now, last_error=_loads(r["last_error"]),
            remote_id=r["case_remote_id"]) for r in rows]

    def expire_claims_of_dead_workers(self, host: str) -> int:
        """Expire leases held by processes on ``host`` that no longer exist (after a crash).

        Workers are named ``host:pid``; a lease of a dead local process can be taken at once
        instead of waiting for it to run out. Leases of other hosts are left to expire.
        """
        from hub.leases import holder_is_dead

        rows = self.query("SELECT DISTINCT claimed_by FROM outbox WHERE state = 'in_flight' "
                          "AND claimed_by LIKE ?", (f"{host}:%",))
        dead = [r["claimed_by"] for r in rows if holder_is_dead(str(r["claimed_by"]), host)]
        if not dead:
            return 0
        with self._write_tx() as cur:
            marks = ",".join("?" * len(dead))
            self._exec(cur, f"UPDATE outbox SET claimed_until = ? WHERE state = 'in_flight' "
                            f"AND claimed_by IN ({marks})", ("1970-01-01T00:00:00.000000Z", *dead))
            n = cur.rowcount
        logger.warning("expired leases of crashed workers", extra={"workers": dead, "rows": n})
        return int(n)

    def start_attempts(self, ids: Sequence[int], worker: str, at: datetime | None = None
                       ) -> None:
        """Record that attempts are being made for several rows (one transaction)."""
        if not ids:
            return
        with self._write_tx() as cur:
            self._start_attempts(cur, ids, worker, ts(at or now_utc()))

    def _start_attempts(self, cur: Any, ids: Sequence[int], worker: str, at_s: str) -> None:
        for part in _parts(ids, _ROWS_PER_STATEMENT):
            self._exec(cur, f"UPDATE outbox SET attempts = attempts + 1, last_attempt_at = "
                            f"?, first_attempt_at = COALESCE(first_attempt_at, ?) WHERE "
                            f"claimed_by = ? AND id IN ({_marks(len(part))})",
                       (at_s, at_s, worker, *part))

    def delivery_payloads(self, rows: Sequence[ClaimedDelivery]
                          ) -> dict[int, tuple[dict[str, Any], dict[str, Any] | None]]:
        """Case (and update) JSON for several claimed rows, read in one query each."""
        case_ids = sorted({d.case_id for d in rows})
        bodies: dict[str, Any] = {}
        cur = self.conn.cursor()
        try:
            for i in range(0, len(case_ids), 500):
                part = case_ids[i:i + 500]
                self._exec(cur, f"SELECT case_id, body FROM cases WHERE case_id IN "
                                f"({','.join('?' * len(part))})", part)
                bodies.update((cid, _loads_stored(body)) for cid, body in cur.fetchall())
        finally:
            cur.close()
            self._end_read()
        out: dict[int, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        for d in rows:
            if d.case_id not in bodies:
                continue
            update = None
            if d.kind == "update":
                ev = self.query("SELECT data FROM case_events WHERE case_id = ? AND "
                                "event_id = ?", (d.case_id, d.event_id))
                update = _loads(ev[0]["data"]) if ev else None
            out[d.id] = (bodies[d.case_id], update)
        return out

    def complete_deliveries(self, items: Sequence[tuple[ClaimedDelivery, str | None,
                                                        int | None, dict[str, Any]]],
                            at: datetime | None = None, *, start: Sequence[int] = (),
                            worker: str | None = None, start_at: datetime | None = None
                            ) -> None:
        """Record several receipts in one transaction: (row, remote_id, status, detail).

        A few statements for the whole chunk, each over many rows (multi-row ``VALUES``,
        ``IN`` lists): the receipts, the ``delivered`` timeline events, the rows marked
        delivered (with the remote id of their receipt), the case status. ``start``: rows of
        ``worker`` whose attempts (at ``start_at``) are recorded in the same transaction, as
        :meth:`start_attempts` would (one commit for one chunk's end and the next's start).
        """
        if not items and not start:
            return
        at_s = ts(at or now_utc())
        with self._batch_tx() as cur:
            if start:
                assert worker is not None
                self._start_attempts(cur, start, worker, ts(start_at or now_utc()))
            for part in _parts(items, _ROWS_PER_STATEMENT):
                self._exec(cur, "INSERT INTO receipts (outbox_id, sink, case_id, "
                                "idempotency_key, remote_id, status_code, at, detail) VALUES "
                                + _rows_marks(len(part), 8),
                           [v for d, remote_id, status_code, detail in part
                            for v in (d.id, d.sink, d.case_id, d.idempotency_key, remote_id,
                                      status_code, at_s, _fast_dumps(detail or {}))])
                self._exec(cur, "INSERT INTO case_events (case_id, event_id, at, kind, text, "
                                "data) VALUES " + _rows_marks(len(part), 6)
                                + " ON CONFLICT (case_id, event_id) DO NOTHING",
                           [v for d, remote_id, status_code, _ in part
                            for v in (d.case_id, f"delivery:{d.id}", at_s, "delivered",
                                      _delivered_text(d, remote_id),
                                      _fast_dumps(_delivered_data(d, remote_id, status_code)))])
                self._exec(cur, "UPDATE outbox SET state = 'delivered', delivered_at = ?, "
                                "remote_id = (SELECT r.remote_id FROM receipts r WHERE "
                                "r.outbox_id = outbox.id ORDER BY r.id DESC LIMIT 1), "
                                "claimed_by = NULL, claimed_until = NULL, last_error = NULL "
                                f"WHERE id IN ({_marks(len(part))})",
                           (at_s, *(d.id for d, *_ in part)))
                # one lock order for every worker (PostgreSQL): by case id
                cases = sorted({d.case_id for d, *_ in part if d.kind == "case"})
                if cases:
                    self._exec(cur, "UPDATE cases SET status = CASE WHEN status = 'new' THEN "
                                    "'delivered' ELSE status END, updated_at = ? WHERE "
                                    f"case_id IN ({_marks(len(cases))})", (at_s, *cases))

    def complete_delivery(self, d: ClaimedDelivery, *, remote_id: str | None,
                          status_code: int | None, detail: dict[str, Any] | None = None,
                          at: datetime | None = None) -> None:
        """Record a receipt and mark the row delivered (one transaction)."""
        self.complete_deliveries([(d, remote_id, status_code, detail or {})], at)

    def retry_delivery(self, d: ClaimedDelivery, error: dict[str, Any],
                       next_attempt_at: datetime) -> None:
        """Schedule another attempt."""
        with self._write_tx() as cur:
            self._exec(cur, "UPDATE outbox SET state = 'retrying', next_attempt_at = ?, "
                            "last_error = ?, claimed_by = NULL, claimed_until = NULL "
                            "WHERE id = ?", (ts(next_attempt_at), _dumps(error), d.id))

    def fail_delivery(self, d: ClaimedDelivery, error: dict[str, Any], reason: str) -> int:
        """Dead-letter a delivery (one transaction); return the dead letter id."""
        now = ts(now_utc())
        with self._write_tx() as cur:
            self._exec(cur, "UPDATE outbox SET state = 'dead', last_error = ?, claimed_by = NULL,"
                            " claimed_until = NULL WHERE id = ?", (_dumps(error), d.id))
            dl = self._insert_dead_letter(cur, "deliver", d.sink, d.case_id, reason, None,
                                          outbox_id=d.id, detail=error)
            self._insert_event(cur, d.case_id, f"dead:{d.id}:{dl}", now, "delivery_failed",
                               f"delivery to {d.sink} failed: {reason}",
                               {"sink": d.sink, "dead_letter": dl})
        return dl

    def withdraw_attempt(self, d: ClaimedDelivery, worker: str) -> None:
        """Undo an attempt that was recorded but never made (its call was not started before
        the claim's lease margin ran out) and give the row back, as it was when claimed.

        A no-op when the claim is no longer this worker's: then another worker has the row.
        """
        first = ts(d.first_attempt_at) if d.first_attempt_at else None
        with self._write_tx() as cur:
            self._exec(cur, "UPDATE outbox SET attempts = ?, first_attempt_at = ?, "
                            "last_attempt_at = CASE WHEN ? = 0 THEN NULL ELSE last_attempt_at "
                            "END, state = CASE WHEN ? = 0 THEN 'pending' ELSE 'retrying' END, "
                            "claimed_by = NULL, claimed_until = NULL WHERE id = ? AND "
                            "claimed_by = ? AND state = 'in_flight'",
                       (d.attempts, first, d.attempts, d.attempts, d.id, worker))

    def release(self, d: ClaimedDelivery) -> None:
        """Give a claimed row back untouched (shutdown)."""
        with self._write_tx() as cur:
            self._exec(cur, "UPDATE outbox SET state = CASE WHEN attempts = 0 THEN 'pending' "
                            "ELSE 'retrying' END, claimed_by = NULL, claimed_until = NULL "
                            "WHERE id = ? AND state = 'in_flight'", (d.id,))

    def connector_stats(self) -> list[dict[str, Any]]:
        """Per-source counters and last run outcome, with checkpoints."""
        rows = self.query("SELECT s.*, c.value AS checkpoint FROM connector_stats s "
                          "LEFT JOIN checkpoints c ON c.source = s.source ORDER BY s.source")
        for r in rows:
            r["checkpoint"] = _loads(r["checkpoint"])
        return rows

    def outbox_stats(self) -> list[dict[str, Any]]:
        """Per-sink counts by state."""
        return self.query("SELECT sink, state, COUNT(*) AS n FROM outbox GROUP BY sink, state "
                          "ORDER BY sink, state")

    def raw_stats(self) -> list[dict[str, Any]]:
        """Raw record counts by source and state."""
        return self.query("SELECT source, state, COUNT(*) AS n FROM raw_records "
                          "GROUP BY source, state ORDER BY source, state")

    def list_cases(self, limit: int = 50, **filters: Any) -> list[dict[str, Any]]:
        """Recent cases (newest first) with summary columns."""
        sql = ("SELECT case_id, reference, channel, source, kind, category_code, department, "
               "urgency, status, received_at, needs_review, body FROM cases")
        where, params = [], []
        for col in ("channel", "kind", "status", "category_code", "urgency", "source"):
            if filters.get(col):
                where.append(f"{col} = ?")
                params.append(filters[col])
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY received_at DESC, reference DESC LIMIT ?"
        params.append(limit)
        rows = self.query(sql, params)
        for r in rows:
            r["body"] = _loads(r["body"])
        return rows

    def find_case(self, ref: str) -> Case | None:
        """Load a case by reference or case_id."""
        rows = self.query("SELECT body FROM cases WHERE reference = ? OR case_id = ?", (ref, ref))
        return Case.model_validate(_loads(rows[0]["body"])) if rows else None

    def case_row(self, ref: str) -> dict[str, Any] | None:
        """A case's summary row by reference or case_id."""
        rows = self.query("SELECT case_id, reference, status, kind, category_code, urgency, "
                          "received_at, updated_at FROM cases WHERE reference = ? OR "
                          "case_id = ?", (ref, ref))
        return rows[0] if rows else None

    def timeline(self, case_id: str) -> list[dict[str, Any]]:
        """A case's events in order."""
        rows = self.query("SELECT at, kind, text, data, event_id FROM case_events "
                          "WHERE case_id = ? ORDER BY at, id", (case_id,))
        for r in rows:
            r["data"] = _loads(r["data"])
        return rows

    def deliveries(self, case_id: str) -> list[dict[str, Any]]:
        """A case's outbox rows."""
        rows = self.query("SELECT id, sink, kind, event_id, state, attempts, next_attempt_at, "
                          "remote_id, last_error, idempotency_key FROM outbox WHERE case_id = ? "
                          "ORDER BY id", (case_id,))
        for r in rows:
            r["last_error"] = _loads(r["last_error"])
        return rows

    def dead_letters(self, state: str | None = "new", limit: int = 100,
                     stage: str | None = None) -> list[dict[str, Any]]:
        """Dead letters, newest first."""
        sql = "SELECT * FROM dead_letters"
        where, params = [], []
        if state:
            where.append("replay_state = ?")
            params.append(state)
        if stage:
            where.append("stage = ?")
            params.append(stage)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        rows = self.query(sql, params)
        for r in rows:
            r["detail"] = _loads(r["detail"])
        return rows

    def dead_letter(self, dl_id: int) -> dict[str, Any] | None:
        """One dead letter."""
        rows = self.query("SELECT * FROM dead_letters WHERE id = ?", (dl_id,))
        if not rows:
            return None
        rows[0]["detail"] = _loads(rows[0]["detail"])
        return rows[0]

    def mark_dead_letter(self, dl_id: int, state: str, result: str) -> None:
        """Record the outcome of a replay (or a discard)."""
        with self._write_tx() as cur:
            self._exec(cur, "UPDATE dead_letters SET replay_state = ?, replayed_at = ?, "
                            "replay_result = ? WHERE id = ?",
                       (state, ts(now_utc()), result[:2000], dl_id))

    def requeue_raw(self, raw_id: int, payload: dict[str, Any] | None = None,
                    note: str = "") -> None:
        """Send a raw record back to the process stage (optionally with a corrected payload)."""
        with self._write_tx() as cur:
            if payload is not None:
                self._exec(cur, "UPDATE raw_records SET payload = ? WHERE id = ?",
                           (_dumps(payload), raw_id))
            self._exec(cur, "UPDATE raw_records SET state = 'pending', state_reason = ? "
                            "WHERE id = ?", (note or None, raw_id))

    def requeue_outbox(self, outbox_id: int) -> None:
        """Queue a dead delivery again with the SAME idempotency key."""
        with self._write_tx() as cur:
            self._exec(cur, "UPDATE outbox SET state = 'pending', attempts = 0, "
                            "next_attempt_at = ?, claimed_by = NULL, claimed_until = NULL "
                            "WHERE id = ? AND state = 'dead'", (ts(now_utc()), outbox_id))

    # ------------------------------------------------------------------ timeline and locks
    def _insert_event(self, cur: Any, case_id: str, event_id: str, at: str, kind: str,
                      text: str, data: dict[str, Any] | None) -> bool:
        self._exec(cur, "INSERT INTO case_events (case_id, event_id, at, kind, text, data) "
                        "VALUES (?,?,?,?,?,?) ON CONFLICT (case_id, event_id) DO NOTHING "
                        "RETURNING id", (case_id, event_id, at, kind, text, _dumps(data or {})))
        return cur.fetchone() is not None

    def add_event(self, case_id: str, event_id: str, kind: str, text: str,
                  data: dict[str, Any] | None = None, at: datetime | None = None,
                  status: str | None = None) -> bool:
        """Add a timeline event (idempotent on event_id); optionally set the case status."""
        with self._write_tx() as cur:
            added = self._insert_event(cur, case_id, event_id, ts(at or now_utc()), kind, text,
                                       data)
            if added and status:
                self._exec(cur, "UPDATE cases SET status = ?, updated_at = ? WHERE case_id = ?",
                           (status, ts(now_utc()), case_id))
        return added

    def get_state(self, namespace: str, key: str) -> dict[str, Any] | None:
        """Read one entry of component state (the table mapper state lives in)."""
        rows = self.query("SELECT value FROM mapper_state WHERE namespace = ? AND key = ?",
                          (namespace, key))
        return _loads(rows[0]["value"]) if rows else None

    def put_state(self, namespace: str, key: str, value: dict[str, Any]) -> None:
        """Write one entry of component state in its own transaction."""
        with self._write_tx() as cur:
            self._exec(cur, "INSERT INTO mapper_state (namespace, key, value, updated_at) "
                            "VALUES (?,?,?,?) ON CONFLICT (namespace, key) DO UPDATE SET "
                            "value = excluded.value, updated_at = excluded.updated_at",
                       (namespace, key, _dumps(value), ts(now_utc())))

    def acquire_lock(self, name: str, owner: str, ttl_s: float) -> bool:
        """Take (or renew) a named lock; False when another live owner holds it."""
        now = now_utc()
        with self._write_tx() as cur:
            self._exec(cur, "DELETE FROM locks WHERE name = ? AND expires_at < ?",
                       (name, ts(now)))
            self._exec(cur, "INSERT INTO locks (name, owner, expires_at) VALUES (?,?,?) "
                            "ON CONFLICT (name) DO UPDATE SET expires_at = excluded.expires_at "
                            "WHERE locks.owner = excluded.owner RETURNING owner",
                       (name, owner, ts(now + timedelta(seconds=ttl_s))))
            row = cur.fetchone()
        return row is not None

    def purge_expired_locks(self, prefix: str) -> int:
        """Delete the expired locks whose name starts with ``prefix``; how many went."""
        with self._write_tx() as cur:
            self._exec(cur, "DELETE FROM locks WHERE substr(name, 1, ?) = ? AND expires_at < ?",
                       (len(prefix), prefix, ts(now_utc())))
            return int(cur.rowcount or 0)

    def release_lock(self, name: str, owner: str) -> None:
        """Release a lock held by ``owner``."""
        with self._write_tx() as cur:
            self._exec(cur, "DELETE FROM locks WHERE name = ? AND owner = ?", (name, owner))


class _Savepoint:
    """:meth:`ProcessTx.savepoint` (a class, not a generator: it runs once per record).

    One name for every level: SQLite and PostgreSQL resolve a reused name to the innermost
    savepoint, and the fixed SQL text keeps the prepared-statement cache warm. On error the
    write-behind buffers are cut back to where they were.
    """

    __slots__ = ("marks", "tx")

    def __init__(self, tx: ProcessTx) -> None:
        self.tx = tx
        self.marks = (0, 0, 0)

    def __enter__(self) -> None:
        tx = self.tx
        self.marks = (len(tx._events), len(tx._outbox), len(tx._raw))
        tx.cur.execute("SAVEPOINT rec")

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        tx = self.tx
        if exc_type is None:
            tx.cur.execute("RELEASE SAVEPOINT rec")
            return False
        tx.cur.execute("ROLLBACK TO SAVEPOINT rec")
        tx.cur.execute("RELEASE SAVEPOINT rec")
        events, outbox, raw = self.marks
        del tx._events[events:], tx._outbox[outbox:], tx._raw[raw:]
        return False


class ProcessTx:
    """One process-stage transaction; also the :class:`~normalizer.mapping.MapContext`.

    Each raw record is handled inside a SAVEPOINT, so a failure rolls back that record alone
    and the batch goes on.
    """

    _EVENT_SQL = ("INSERT INTO case_events (case_id, event_id, at, kind, text, data) "
                  "VALUES (?,?,?,?,?,?) ON CONFLICT (case_id, event_id) DO NOTHING")
    _OUTBOX_SQL = ("INSERT INTO outbox (sink, case_id, kind, event_id, idempotency_key, state, "
                   "next_attempt_at, created_at) VALUES (?,?,?,?,?,'pending',?,?) "
                   "ON CONFLICT (idempotency_key) DO NOTHING")
    _RAW_SQL = ("UPDATE raw_records SET state = ?, state_reason = ?, case_id = ?, "
                "processed_at = ? WHERE id = ?")
    _CASE_SQL = ("INSERT INTO cases (source, source_ref, channel, kind, category_code, "
                 "department, urgency, received_at, lat, lon, cell, district, street, "
                 "community, address, reporter_key, fingerprint, needs_review, raw_record_id, "
                 "body, created_at, updated_at, case_id, reference) VALUES "
                 "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
                 "ON CONFLICT (case_id) DO NOTHING")

    def __init__(self, store: SqlStore, cur: Any, now: datetime) -> None:
        self.store = store
        self.cur = cur
        self.now = now
        self.now_s = ts(now)
        self.blobs = store.blobs
        self.timezone = store.timezone
        # Write-behind buffers for rows nothing reads back inside the batch; flushed with
        # executemany before a read that needs them and before the commit.
        self._events: list[tuple[Any, ...]] = []
        self._outbox: list[tuple[Any, ...]] = []
        self._raw: list[tuple[Any, ...]] = []
        self._counters: dict[str, int] = {}

    def flush(self) -> None:
        """Write buffered rows (called before reads that need them and before commit)."""
        for sql, buf in ((self._EVENT_SQL, self._events), (self._OUTBOX_SQL, self._outbox),
                         (self._RAW_SQL, self._raw)):
            if buf:
                self.cur.executemany(self.store._sql(sql), buf)
                buf.clear()
        for day, last in self._counters.items():
            self._exec("UPDATE reference_counters SET last = ? WHERE day = ? AND last < ?",
                       (last, day, last))

    def _next_reference_seq(self, day: str) -> int:
        if day not in self._counters:
            # touching the row also locks it (PostgreSQL) until this transaction ends
            self._exec("INSERT INTO reference_counters (day, last) VALUES (?, 0) ON CONFLICT "
                       "(day) DO UPDATE SET last = reference_counters.last RETURNING last",
                       (day,))
            self._counters[day] = int(self.cur.fetchone()[0])
        self._counters[day] += 1  # a rolled-back record leaves a gap, never a reuse
        return self._counters[day]

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.store._exec(self.cur, sql, params)

    def savepoint(self) -> _Savepoint:
        """Run a block in a savepoint; roll back just the block on error."""
        return _Savepoint(self)

    # ---------------------------------------------------------------- MapContext
    def find_case_by_key(self, key_type: str, key: str) -> str | None:
        """Return the case_id indexed under (key_type, key) (``reference`` looks up cases)."""
        if key_type == "reference":
            self._exec("SELECT case_id FROM cases WHERE reference = ?", (key,))
        else:
            self._exec("SELECT case_id FROM case_keys WHERE key_type = ? AND key = ?",
                       (key_type, key))
        row = self.cur.fetchone()
        return row[0] if row else None

    def get_case(self, case_id: str) -> Case | None:
        """Load a stored case."""
        self._exec("SELECT body FROM cases WHERE case_id = ?", (case_id,))
        row = self.cur.fetchone()
        return Case.model_validate(_loads(row[0])) if row else None

    def state_get(self, namespace: str, key: str) -> dict[str, Any] | None:
        """Read mapper state."""
        self._exec("SELECT value FROM mapper_state WHERE namespace = ? AND key = ?",
                   (namespace, key))
        row = self.cur.fetchone()
        return _loads(row[0]) if row else None

    def state_put(self, namespace: str, key: str, value: dict[str, Any] | None) -> None:
        """Write (or delete with None) mapper state."""
        if value is None:
            self._exec("DELETE FROM mapper_state WHERE namespace = ? AND key = ?",
                       (namespace, key))
            return
        self._exec("INSERT INTO mapper_state (namespace, key, value, updated_at) VALUES "
                   "(?,?,?,?) ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value,"
                   " updated_at = excluded.updated_at",
                   (namespace, key, _dumps(value), ts(self.now)))

    def state_scan(self, namespace: str, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        """List mapper state by key prefix."""
        self._exec("SELECT key, value FROM mapper_state WHERE namespace = ? AND key >= ? "
                   "AND key < ? ORDER BY key", (namespace, prefix, prefix + "\U0010ffff"))
        return [(k, _loads(v)) for k, v in self.cur.fetchall()]

    _NEARBY_COLS = ("case_id, reference, category_code, received_at, lat, lon, community, "
                    "address, reporter_key, fingerprint")
    _NEARBY_NAMES = tuple(c.strip() for c in _NEARBY_COLS.split(","))

    def nearby_cases(self, *, category_code: str | None, since: datetime,
                     until: datetime | None = None, lat: float | None = None,
                     lon: float | None = None, radius_m: float | None = None,
                     community: str | None = None, address: str | None = None,
                     reporter_key: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Earlier cases near this one, found through indexes only (one statement).

        Up to ``limit`` most recent cases per lookup: same category in the grid cells around the
        point and within the radius' bounding box, in the same community (or, without one, at
        the same address), and from the same reporter; received between ``since`` and
        ``until``.
        """
        window_p: list[Any] = [ts(since)] if until is None else [ts(since), ts(until)]
        cat_p: list[Any] = [] if category_code is None else [category_code]
        params: list[Any] = []
        ncells = 0
        if lat is not None and lon is not None and radius_m:
            dlat = radius_m / 111_320.0
            dlon = radius_m / (111_320.0 * max(math.cos(math.radians(lat)), 0.01))
            box = (lat - dlat, lat + dlat, lon - dlon, lon + dlon)
            cells = box_cells(*box)
            ncells = len(cells)
            params += [*cat_p, *cells, *box, *window_p, limit]
        place = "community" if community else "address" if address else ""
        if place:  # distance OR the same community (or, without one, the same address)
            params += [*cat_p, community or address, *window_p, limit]
        if reporter_key:
            params += [reporter_key, *window_p, limit]
        if not (ncells or place or reporter_key):
            return []
        shape = (category_code is None, until is None, ncells, place, bool(reporter_key))
        sql = self._nearby_sql.get(shape)
        if sql is None:
            sql = self._nearby_sql[shape] = self._nearby_statement(*shape)
        self.cur.execute(self.store._sql(sql), params)
        names = self._NEARBY_NAMES
        found: dict[str, dict[str, Any]] = {}
        for row in self.cur.fetchall():
            if row[0] not in found:
                found[row[0]] = dict(zip(names, row, strict=True))
        return list(found.values())[: limit * 2]

    #: nearby-cases statement per shape (the SQL text depends only on which lookups run)
    _nearby_sql: dict[tuple[Any, ...], str] = {}

    @classmethod
    def _nearby_statement(cls, no_category: bool, no_until: bool, ncells: int, place: str,
                          reporter: bool) -> str:
        """The UNION of the lookups :meth:`nearby_cases` runs, in its parameter order."""
        cols = cls._NEARBY_COLS
        window = "received_at >= ?" + ("" if no_until else " AND received_at <= ?")
        cat_sql = "category_code IS NULL" if no_category else "category_code = ?"
        parts: list[str] = []

        def lookup(where: str) -> None:
            parts.append(f"SELECT * FROM (SELECT {cols} FROM cases WHERE {where} AND {window} "
                         f"ORDER BY received_at DESC LIMIT ?) AS q{len(parts)}")

        if ncells:
            lookup(f"{cat_sql} AND cell IN ({','.join('?' * ncells)}) "
                   "AND lat BETWEEN ? AND ? AND lon BETWEEN ? AND ?")
        if place:
            lookup(f"{cat_sql} AND {place} = ?")
        if reporter:
            lookup("reporter_key = ?")
        return " UNION ALL ".join(parts)

    # ---------------------------------------------------------------- writes
    def save_case(self, case: Case, raw_id: int | None, sinks: Sequence[str],
                  index_keys: Sequence[tuple[str, str]] = (), fingerprint: str | None = None
                  ) -> tuple[Case, bool]:
        """Insert or refresh a case, its keys, its 'received' event and its outbox rows.

        Returns the case (with its reference) and whether it is new.
        """
        now_s = self.now_s
        if raw_id is not None:
            case.origin.raw_record_id = raw_id
        loc = case.location
        local = case.origin.received_at.astimezone(self.store.tz)
        day = f"{local.year:04d}{local.month:02d}{local.day:02d}"  # strftime costs more
        seq = self._next_reference_seq(day)
        case.reference = f"FB-{day}-{seq:06d}"
        cols = (
            case.origin.source, case.origin.source_ref,
            case.origin.channel.value, case.kind.value, case.classification.category_code,
            case.classification.department, case.urgency.level.value,
            ts(case.origin.received_at), loc.lat, loc.lon,
            cell_of(loc.lat, loc.lon), loc.district, loc.street, loc.community, loc.address,
            reporter_key(case), fingerprint, int(case.review.needs_review), raw_id,
        )
        # Optimistic insert: a new case (the common path) costs one statement.
        self.cur.execute(self.store._sql(self._CASE_SQL),
                         (*cols, case.model_dump_json(), now_s, now_s, case.case_id,
                          case.reference))
        is_new = self.cur.rowcount == 1
        if not is_new:
            # reprocessing: give the number back (nothing was allocated after it) and keep
            # the reference the case already has
            self._counters[day] -= 1
            self._exec("SELECT reference FROM cases WHERE case_id = ?", (case.case_id,))
            case.reference = self.cur.fetchone()[0]
            self._exec("UPDATE cases SET source = ?, source_ref = ?, channel = ?, kind = ?, "
                       "category_code = ?, department = ?, urgency = ?, received_at = ?, "
                       "lat = ?, lon = ?, cell = ?, district = ?, street = ?, community = ?, "
                       "address = ?, reporter_key = ?, fingerprint = ?, needs_review = ?, "
                       "raw_record_id = ?, body = ?, updated_at = ? WHERE case_id = ?",
                       (*cols, case.model_dump_json(), now_s, case.case_id))
        for key_type, key in index_keys:
            self._exec("INSERT INTO case_keys (key_type, key, case_id) VALUES (?,?,?) "
                       "ON CONFLICT (key_type, key) DO NOTHING", (key_type, key, case.case_id))
        if is_new:
            text = (f"received via {case.origin.channel.value} ({case.origin.source}); case "
                    f"{case.reference} created"
                    + (f", routed to {', '.join(sinks)}" if sinks else ", no sink matched"))
            data = {"sinks": list(sinks), "category": case.classification.category_code,
                    "urgency": case.urgency.level.value, "raw_record_id": raw_id,
                    "source_ref": case.origin.source_ref,
                    "received_at": case.origin.received_at.isoformat()}
            self._events.append((case.case_id, "created", now_s, "created", text, _dumps(data)))
        for sink in sinks:
            self._queue(sink, case.case_id, "case", None)
        return case, is_new

    def save_update(self, update: CaseUpdate, sinks: Sequence[str]) -> bool:
        """Record a follow-up on a case and queue it for the case's sinks (idempotent)."""
        data = update.model_dump(mode="json")
        added = self.store._insert_event(self.cur, update.case_id, f"update:{update.update_id}",
                                         ts(update.at), update.kind, update.text, data)
        if not added:
            return False
        self._exec("SELECT body FROM cases WHERE case_id = ?", (update.case_id,))
        row = self.cur.fetchone()
        if row is not None:
            body = _loads(row[0])
            body.setdefault("links", {})["updates"] = body.get("links", {}).get("updates", 0) + 1
            self._exec("UPDATE cases SET body = ?, updated_at = ? WHERE case_id = ?",
                       (_dumps(body), ts(self.now), update.case_id))
        if update.deliver:
            for sink in sinks:
                self._queue(sink, update.case_id, "update", f"update:{update.update_id}")
        return True

    def add_keys(self, case_id: str, index_keys: Sequence[tuple[str, str]]) -> None:
        """Index an existing case under more keys (e.g. the Message-ID of a reply)."""
        for key_type, key in index_keys:
            self._exec("INSERT INTO case_keys (key_type, key, case_id) VALUES (?,?,?) "
                       "ON CONFLICT (key_type, key) DO NOTHING", (key_type, key, case_id))

    def case_sinks(self, case_id: str) -> list[str]:
        """The sinks a case was routed to."""
        self.flush()
        self._exec("SELECT DISTINCT sink FROM outbox WHERE case_id = ? AND kind = 'case' "
                   "ORDER BY sink", (case_id,))
        return [r[0] for r in self.cur.fetchall()]

    def _queue(self, sink: str, case_id: str, kind: str, event_id: str | None) -> None:
        self._outbox.append((sink, case_id, kind, event_id,
                             idempotency_key(sink, case_id, kind, event_id), self.now_s,
                             self.now_s))

    def mark_raw(self, raw_id: int, state: str, reason: str | None = None,
                 case_id: str | None = None) -> None:
        """Set a raw record's processing state."""
        self._raw.append((state, reason, case_id, self.now_s, raw_id))

    def dead_letter(self, stage: str, source: str | None, reason: str, *,
                    source_ref: str | None = None, blob_sha256: str | None = None,
                    raw_record_id: int | None = None, detail: dict[str, Any] | None = None
                    ) -> int:
        """Record a dead letter inside this transaction."""
        return self.store._insert_dead_letter(self.cur, stage, source, source_ref, reason,
                                              blob_sha256, raw_record_id=raw_record_id,
                                              detail=detail)
