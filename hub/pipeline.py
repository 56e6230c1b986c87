"""The pipeline: ``ingest`` → ``process`` → ``deliver``, each idempotent and re-runnable.

* ingest: connector batch → raw records + blobs + dead letters + checkpoint (one commit) → ack.
* process: pending raw → channel mapper → enrichers → case / updates + outbox rows (one commit
  per batch, one savepoint per record so a bad record is dead-lettered alone).
* deliver: due outbox rows → sink → receipt | retry with backoff | dead letter.

The CLI, ``listen``, ``serve`` and the Airflow DAGs all call these same functions.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from connectors.base import Connector, IngestContext
from connectors.registry import connector_class
from hub import faults
from hub.config import HubConfig
from hub.logsetup import register_secrets
from hub.routing import route
from normalizer.case import CaseUpdate
from normalizer.mappers import build_mapper
from normalizer.mapping import Enricher, Mapper, MappingError, MapResult
from outbox.blobs import BlobStore
from outbox.sinks.base import Delivery, DeliveryError, Sink
from outbox.sinks.registry import sink_class
from outbox.store import SqlStore, open_store
from outbox.store.sql import ClaimedDelivery
from outbox.store.timefmt import now_utc

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int | None], None]


def _secret_values(obj: Any) -> list[str]:
    from pydantic import BaseModel, SecretStr

    out: list[str] = []
    if isinstance(obj, SecretStr):
        out.append(obj.get_secret_value())
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            out.extend(_secret_values(getattr(obj, name)))
    elif isinstance(obj, dict):
        for v in obj.values():
            out.extend(_secret_values(v))
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            out.extend(_secret_values(v))
    return out


class Hub:
    """Everything a stage needs, built once from config: store, blobs, connectors, sinks."""

    def __init__(self, config: HubConfig, worker_id: str | None = None) -> None:
        self.config = config
        register_secrets(_secret_values(config))
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.blobs = BlobStore(config.resolve_path(config.blobs))
        self.store: SqlStore = open_store(config.store_url(), self.blobs, config.timezone)
        self._connectors: dict[str, Connector] = {}
        self._sinks: dict[str, Sink] = {}
        self._mappers: dict[str, Mapper] = {}
        self._enrichers: list[Enricher] | None = None

    # ---------------------------------------------------------------- components
    def connector(self, name: str) -> Connector:
        """The connector named ``name`` (built on first use)."""
        if name not in self._connectors:
            cfg = self.config.connector(name)
            self._connectors[name] = connector_class(cfg.type).from_config(cfg, self)
        return self._connectors[name]

    def sink(self, name: str) -> Sink:
        """The sink named ``name`` (built on first use)."""
        if name not in self._sinks:
            cfg = self.config.sink(name)
            self._sinks[name] = sink_class(cfg.type).from_config(cfg, self)
        return self._sinks[name]

    def sink_names(self) -> list[str]:
        """Enabled sinks."""
        return [s.name for s in self.config.sinks if s.enabled]

    def mapper(self, source: str, channel: str) -> Mapper:
        """The mapper for records of a source."""
        key = f"{source}\x1f{channel}"
        if key not in self._mappers:
            try:
                cfg = self.config.connector(source)
                ctype: str | None = cfg.type
            except KeyError:
                cfg, ctype = None, None
            self._mappers[key] = build_mapper(ctype, channel, cfg, self.config)
        return self._mappers[key]

    @property
    def enrichers(self) -> list[Enricher]:
        """The enricher chain from ``enrichment:``."""
        if self._enrichers is None:
            from normalizer.enrichment_config import build_enrichers

            self._enrichers = build_enrichers(self.config.enrichment,
                                              base_dir=self.config.base_dir,
                                              timezone=self.config.timezone)
        return self._enrichers

    def close(self) -> None:
        """Close connectors, sinks and the store."""
        for c in self._connectors.values():
            try:
                c.close()
            except Exception:
                logger.warning("connector close failed", exc_info=True)
        for s in self._sinks.values():
            try:
                s.close()
            except Exception:
                logger.warning("sink close failed", exc_info=True)
        self.store.close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ==================================================================== ingest
@dataclass
class IngestStats:
    """Outcome of ingesting one source."""

    source: str
    inserted: int = 0
    duplicates: int = 0
    dead: int = 0
    batches: int = 0
    error: str | None = None


def ingest(hub: Hub, names: Sequence[str] | None = None, *, max_records: int | None = None,
           progress: Progress | None = None) -> list[IngestStats]:
    """Pull every enabled connector (or the named ones) once.

    A connector that fails (server down, bad credentials) is recorded and skipped; the others
    still run. Nothing is acknowledged at a source before its batch is committed.
    """
    results = []
    targets = [c for c in hub.config.connectors if c.enabled and (not names or c.name in names)]
    if names:
        unknown = set(names) - {c.name for c in hub.config.connectors}
        if unknown:
            raise KeyError(f"no connector named {', '.join(sorted(unknown))}")
    for cfg in targets:
        stats = IngestStats(cfg.name)
        results.append(stats)
        try:
            conn = hub.connector(cfg.name)
            ctx = IngestContext(blobs=hub.blobs, checkpoint=hub.store.get_checkpoint(cfg.name),
                                now=now_utc(), max_records=max_records,
                                services={"store": hub.store, "worker_id": hub.worker_id})
            for batch in conn.fetch(ctx):
                res = hub.store.commit_ingest(cfg.name, batch.records, batch.rejects,
                                              batch.checkpoint)
                if batch.checkpoint is not None:
                    ctx.checkpoint = batch.checkpoint
                faults.point("after_ingest_commit")
                conn.ack(batch)
                stats.inserted += res.inserted
                stats.duplicates += res.duplicates
                stats.dead += res.dead
                stats.batches += 1
                if progress:
                    progress(f"ingest {cfg.name}", stats.inserted + stats.duplicates, None)
            hub.store.record_run(cfg.name, ok=True)
            logger.info("ingested", extra={"source": cfg.name, "inserted": stats.inserted,
                                           "duplicates": stats.duplicates, "dead": stats.dead})
        except Exception as exc:
            stats.error = f"{type(exc).__name__}: {exc}"
            logger.error("connector failed", extra={"source": cfg.name, "error": stats.error})
            hub.store.record_run(cfg.name, ok=False, error=stats.error)
    return results


# ==================================================================== process
@dataclass
class ProcessStats:
    """Outcome of one process run."""

    seen: int = 0
    cases_new: int = 0
    cases_refreshed: int = 0
    updates: int = 0
    ignored: int = 0
    failed: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    ignored_reasons: Counter[str] = field(default_factory=Counter)
    new_references: list[str] = field(default_factory=list)


def process(hub: Hub, *, limit: int | None = None, sources: Sequence[str] | None = None,
            progress: Progress | None = None) -> ProcessStats:
    """Turn pending raw records into cases, updates and outbox rows."""
    stats = ProcessStats()
    batch_size = hub.config.process.batch_size
    sink_names = hub.sink_names()
    enrichers = hub.enrichers
    fingerprint = _fingerprint_fn()
    after_id = 0
    total = None
    if progress:
        rows = hub.store.query("SELECT COUNT(*) AS n FROM raw_records WHERE state = 'pending'")
        total = int(rows[0]["n"])
    while limit is None or stats.seen < limit:
        size = batch_size if limit is None else min(batch_size, limit - stats.seen)
        pending = hub.store.pending_raw(size, after_id, sources)
        if not pending:
            break
        after_id = pending[-1].id
        with hub.store.process_tx() as tx:
            for stored in pending:
                stats.seen += 1
                raw = stored.record
                try:
                    with tx.savepoint():
                        result = hub.mapper(raw.source, raw.channel.value).map(raw, tx)
                        if result.case is None and not result.updates:
                            reason = result.ignored_reason or "mapper returned nothing"
                            tx.mark_raw(stored.id, "ignored", reason)
                            stats.ignored += 1
                            stats.ignored_reasons[reason.split(":")[0]] += 1
                            continue
                        case_id = _apply(hub, tx, result, stored.id, stats, sink_names,
                                         enrichers, fingerprint)
                        tx.mark_raw(stored.id, "processed", None, case_id)
                except Exception as exc:
                    expected = isinstance(exc, MappingError)
                    reason = str(exc) if expected else f"unexpected {type(exc).__name__}: {exc}"
                    with tx.savepoint():
                        tx.dead_letter("process", raw.source, reason, source_ref=raw.source_ref,
                                       blob_sha256=raw.raw_blob, raw_record_id=stored.id,
                                       detail={"channel": raw.channel.value,
                                               "error_type": type(exc).__name__})
                        tx.mark_raw(stored.id, "failed", reason[:1000])
                    stats.failed += 1
                    log = logger.warning if expected else logger.error
                    log("record dead-lettered", extra={"stage": "process", "source": raw.source,
                                                       "source_ref": raw.source_ref,
                                                       "reason": reason},
                        exc_info=not expected)
        faults.point("after_case_commit")
        if progress:
            progress("process", stats.seen, total)
    if not sources:
        sweep(hub, stats)
    logger.info("processed", extra={"seen": stats.seen, "new": stats.cases_new,
                                    "updates": stats.updates, "ignored": stats.ignored,
                                    "failed": stats.failed})
    return stats


def _apply(hub: Hub, tx: Any, result: MapResult, raw_id: int | None, stats: ProcessStats,
           sink_names: list[str], enrichers: list[Enricher],
           fingerprint: Callable[[str], str] | None) -> str | None:
    """Enrich, route and save what a mapper returned; return the case id it concerns."""
    case_id = None
    if result.case is not None:
        case = result.case
        for enricher in enrichers:
            enricher.enrich(case, tx)
        sinks = route(case, hub.config.routing, sink_names)
        fp = fingerprint(f"{case.title}\n{case.description}") if fingerprint else None
        case, is_new = tx.save_case(case, raw_id, sinks, result.index_keys, fp)
        case_id = case.case_id
        if is_new:
            stats.cases_new += 1
            stats.kinds[case.kind.value] += 1
            stats.new_references.append(case.reference or "")
        else:
            stats.cases_refreshed += 1
    for upd in result.updates:
        _save_update(tx, upd, stats)
        case_id = case_id or upd.case_id
    return case_id


def sweep(hub: Hub, stats: ProcessStats | None = None) -> ProcessStats:
    """Run the time-based work of mappers that have a ``sweep`` (e.g. devices gone silent)."""
    stats = stats or ProcessStats()
    sink_names = hub.sink_names()
    for cfg in hub.config.connectors:
        if not cfg.enabled:
            continue
        mapper = hub.mapper(cfg.name, "")  # configured sources pick their mapper by type
        if not hasattr(mapper, "sweep"):
            continue
        try:
            with hub.store.process_tx() as tx:
                for result in mapper.sweep(tx):
                    _apply(hub, tx, result, None, stats, sink_names, hub.enrichers,
                           _fingerprint_fn())
        except Exception:
            logger.error("sweep failed", extra={"source": cfg.name}, exc_info=True)
    return stats


def _save_update(tx: Any, upd: CaseUpdate, stats: ProcessStats) -> None:
    if tx.save_update(upd, tx.case_sinks(upd.case_id)):
        stats.updates += 1


def _fingerprint_fn() -> Callable[[str], str] | None:
    try:
        from normalizer.similarity import fingerprint
    except ImportError:
        return None
    return fingerprint  # type: ignore[no-any-return]


# ==================================================================== deliver
@dataclass
class DeliverStats:
    """Outcome of one delivery run."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    by_sink: Counter[str] = field(default_factory=Counter)
    dead_reasons: list[str] = field(default_factory=list)


def backoff_delay(attempts: int, policy: Any, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before the next attempt: exponential, jittered, capped; Retry-After wins."""
    rng = rng or random.Random()
    base = min(policy.backoff_max,
               policy.backoff_initial * policy.backoff_multiplier ** max(attempts - 1, 0))
    delay = base * (1 + policy.jitter * (2 * rng.random() - 1))
    if retry_after is not None:
        delay = max(delay, retry_after)
    return max(0.0, delay)


def deliver(hub: Hub, *, limit: int | None = None, sinks: Sequence[str] | None = None,
            progress: Progress | None = None, now_fn: Callable[[], datetime] = now_utc
            ) -> DeliverStats:
    """Deliver every due outbox row once (rows scheduled later are left for later)."""
    stats = DeliverStats()
    policy = hub.config.delivery
    configured = set(hub.sink_names())
    target = [s for s in (sinks or configured) if s in configured]
    hub.store.expire_claims_of_dead_workers(socket.gethostname())
    done = 0
    while limit is None or done < limit:
        size = policy.batch_size if limit is None else min(policy.batch_size, limit - done)
        claimed = hub.store.claim_due(hub.worker_id, size, policy.lease, now_fn(), target)
        if not claimed:
            break
        for d in claimed:
            done += 1
            deliver_one(hub, d, stats, now_fn)
            if progress:
                progress("deliver", done, None)
    if stats.delivered or stats.retried or stats.dead:
        logger.info("delivered", extra={"delivered": stats.delivered, "retried": stats.retried,
                                        "dead": stats.dead})
    return stats


def deliver_one(hub: Hub, d: ClaimedDelivery, stats: DeliverStats,
                now_fn: Callable[[], datetime] = now_utc) -> None:
    """Attempt one claimed delivery and record the outcome."""
    store = hub.store
    try:
        case_json, update_json = store.delivery_payload(d)
    except LookupError as exc:
        reason = str(exc)
        store.fail_delivery(d, {"reason": reason, "retryable": False}, reason)
        stats.dead += 1
        stats.dead_reasons.append(reason)
        return
    attempt_at = now_fn()
    previous = d.last_error
    if d.attempts > int((previous or {}).get("attempt") or 0):
        # an attempt was started but its outcome never recorded (a crash or a lost lease
        # between the sink call and the receipt): the remote may have it already
        previous = {**(previous or {}), "ambiguous_seen": True,
                    "unrecorded_attempt": d.attempts}
    store.start_attempt(d.id, hub.worker_id, attempt_at)
    delivery = Delivery(outbox_id=d.id, kind=d.kind, idempotency_key=d.idempotency_key,
                        case=case_json, update=update_json, attempt=d.attempts + 1,
                        first_attempt_at=d.first_attempt_at,
                        previous_error=previous, remote_id=d.remote_id)
    started = time.monotonic()
    try:
        receipt = hub.sink(d.sink).deliver(delivery)
    except DeliveryError as exc:
        err = exc.as_dict()
        err["attempt"] = d.attempts + 1
        err["at"] = attempt_at.isoformat()
        if exc.ambiguous or (previous or {}).get("ambiguous_seen"):
            err["ambiguous_seen"] = True  # sinks reconcile before re-posting after this
        _failed(hub, d, err, exc.retryable, exc.retry_after, stats, now_fn)
        return
    except Exception as exc:
        # we cannot tell how far the sink got: treat it as possibly received
        err = {"reason": f"unexpected {type(exc).__name__}: {exc}", "retryable": True,
               "attempt": d.attempts + 1, "at": attempt_at.isoformat(),
               "ambiguous_seen": True}
        logger.error("sink raised", extra={"sink": d.sink, "outbox_id": d.id}, exc_info=True)
        _failed(hub, d, err, True, None, stats, now_fn)
        return
    faults.point("after_sink_call")
    detail = dict(receipt.detail)
    detail["seconds"] = round(time.monotonic() - started, 6)
    store.complete_delivery(d, remote_id=receipt.remote_id, status_code=receipt.status_code,
                            detail=detail)
    stats.delivered += 1
    stats.by_sink[d.sink] += 1


def _failed(hub: Hub, d: ClaimedDelivery, err: dict[str, Any], retryable: bool,
            retry_after: float | None, stats: DeliverStats,
            now_fn: Callable[[], datetime]) -> None:
    policy = hub.config.delivery
    attempts = d.attempts + 1
    now = now_fn()
    age = (now - d.created_at).total_seconds()
    reason = err["reason"]
    if err.get("status_code"):
        reason = f"HTTP {err['status_code']}: {reason}"
    if not retryable:
        why = f"{reason} (not retryable)"
    elif attempts >= policy.max_attempts:
        why = f"gave up after {attempts} attempts: {reason}"
    elif age >= policy.max_age:
        why = f"gave up after {age:.0f}s (max_age): {reason}"
    else:
        delay = backoff_delay(attempts, policy, retry_after)
        hub.store.retry_delivery(d, err, now + timedelta(seconds=delay))
        stats.retried += 1
        logger.warning("delivery will be retried", extra={"sink": d.sink, "outbox_id": d.id,
                                                          "attempt": attempts,
                                                          "in_seconds": round(delay, 1),
                                                          "reason": reason})
        return
    hub.store.fail_delivery(d, err, why)
    stats.dead += 1
    stats.dead_reasons.append(why)
    logger.error("delivery dead-lettered", extra={"sink": d.sink, "outbox_id": d.id,
                                                  "reason": why})


# ==================================================================== all stages
@dataclass
class RunSummary:
    """What ``run --once`` did."""

    ingest: list[IngestStats]
    process: ProcessStats
    deliver: DeliverStats

    @property
    def connector_errors(self) -> int:
        """Sources that failed this run."""
        return sum(1 for s in self.ingest if s.error)


def run_once(hub: Hub, connectors: Sequence[str] | None = None,
             stages: Sequence[str] = ("ingest", "process", "deliver"),
             progress: Progress | None = None) -> RunSummary:
    """One pass of every requested stage."""
    ing = ingest(hub, connectors, progress=progress) if "ingest" in stages else []
    proc = process(hub, progress=progress) if "process" in stages else ProcessStats()
    dlv = deliver(hub, progress=progress) if "deliver" in stages else DeliverStats()
    return RunSummary(ing, proc, dlv)
