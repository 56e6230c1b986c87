"""The pipeline: ``ingest`` → ``process`` → ``deliver``, each idempotent and re-runnable.

* ingest: connector batch → raw records + blobs + dead letters + checkpoint (one commit) → ack.
* process: pending raw → channel mapper → enrichers → case / updates + outbox rows (one commit
  per batch, one savepoint per record so a bad record is dead-lettered alone).
* deliver: due outbox rows → sink → receipt | retry with backoff | dead letter.

The CLI, ``listen``, ``serve`` and the Airflow DAGs all call these same functions.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from queue import Empty, SimpleQueue
from typing import Any

from connectors.base import Connector, IngestContext
from connectors.registry import connector_class
from hub import faults
from hub.config import HubConfig
from hub.leases import Lease, owner_id
from hub.logsetup import register_secrets
from hub.routing import route
from normalizer.case import Case, CaseUpdate
from normalizer.mappers import build_mapper
from normalizer.mapping import Enricher, Mapper, MappingError, MapResult
from normalizer.similarity import fingerprint
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

    @contextmanager
    def side_store(self) -> Iterator[SqlStore]:
        """A short-lived store connection of its own, for a component thread that must commit
        a little state (a rotated OAuth2 refresh token) while the stages use :attr:`store`."""
        store = open_store(self.config.store_url(), self.blobs, self.config.timezone,
                           migrate=False)
        try:
            yield store
        finally:
            store.close()

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
        self.blobs.close()

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
    #: the worker that held the process lease when this run gave up waiting for it
    busy: str | None = None


#: The process stage runs in one worker at a time (mapper state such as IoT fault episodes and
#: mail threads is read and written per record); a crashed holder's lease runs out after this.
PROCESS_LEASE = "stage:process"
PROCESS_LEASE_TTL = 300.0


def process(hub: Hub, *, limit: int | None = None, sources: Sequence[str] | None = None,
            progress: Progress | None = None, wait: float | None = None) -> ProcessStats:
    """Turn pending raw records into cases, updates and outbox rows.

    One worker processes at a time (the ``stage:process`` lease in the store): a run that
    finds another worker processing waits up to ``wait`` seconds (default
    ``process.lease_wait``), then returns with ``stats.busy`` set and leaves the records to
    that worker.
    """
    stats = ProcessStats()
    lease = Lease(hub.store, PROCESS_LEASE, PROCESS_LEASE_TTL, owner_id(hub.worker_id))
    if not lease.take(hub.config.process.lease_wait if wait is None else wait):
        stats.busy = lease.holder() or "another worker"
        logger.info("process stage busy in another worker; skipped",
                    extra={"holder": stats.busy})
        return stats
    try:
        _process(hub, stats, limit, sources, progress, lease)
    finally:
        lease.release()
    return stats


_frozen = False


def _freeze_long_lived() -> None:
    """Once per process, after the first committed batch: hide what is loaded by then (the
    taxonomy, the segmentation dictionary, the gazetteer, the calendar) from the cyclic garbage
    collector. They live as long as the process; without this every full collection walks
    their hundreds of thousands of objects again (P3 in docs/benchmarks.md)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for one batch.

    A batch allocates hundreds of thousands of short-lived objects (models, dicts, rows) that
    reference counting frees; the collector, triggered every 700 allocations, mostly walks the
    ones still alive and, every tenth pass, the older generations too (about 8% of the stage's
    CPU in P3). Cycles a batch makes (a traceback of a dead-lettered record) wait until the
    batch is committed; the collector then runs on its usual thresholds.
    """
    if not gc.isenabled():  # an embedding application turned it off: leave it off
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _process(hub: Hub, stats: ProcessStats, limit: int | None, sources: Sequence[str] | None,
             progress: Progress | None, lease: Lease) -> None:
    batch_size = hub.config.process.batch_size
    sink_names = hub.sink_names()
    enrichers = hub.enrichers
    # the leading enrichers that read nothing from the store: run in a batch's first pass
    n_pure = next((i for i, e in enumerate(enrichers) if getattr(e, "reads_store", True)),
                  len(enrichers))
    pure = enrichers[:n_pure]
    after_id = 0
    total = None
    if progress:
        rows = hub.store.query("SELECT COUNT(*) AS n FROM raw_records WHERE state = 'pending'")
        total = int(rows[0]["n"])
    while limit is None or stats.seen < limit:
        lease.renew()
        size = batch_size if limit is None else min(batch_size, limit - stats.seen)
        with _gc_paused():  # from reading the batch to its commit
            pending = hub.store.pending_raw(size, after_id, sources)
            if not pending:
                break
            after_id = pending[-1].id
            with hub.store.process_tx() as tx:
                _process_batch(hub, tx, pending, stats, sink_names, enrichers, pure)
        faults.point("after_case_commit")
        _freeze_long_lived()
        if progress:
            progress("process", stats.seen, total)
    if not sources:
        sweep(hub, stats)
    logger.info("processed", extra={"seen": stats.seen, "new": stats.cases_new,
                                    "updates": stats.updates, "ignored": stats.ignored,
                                    "failed": stats.failed})


def _process_batch(hub: Hub, tx: Any, pending: Sequence[Any], stats: ProcessStats,
                   sink_names: list[str], enrichers: list[Enricher],
                   pure: list[Enricher]) -> None:
    """Process one batch in its transaction: each record in a savepoint, failures
    dead-lettered alone."""
    premapped = _premap(hub, tx, pending, pure)
    rest = enrichers[len(pure):]
    for stored in pending:
        stats.seen += 1
        raw = stored.record
        try:
            with tx.savepoint():
                early = premapped.pop(stored.id, None)
                if early is None:
                    result = hub.mapper(raw.source, raw.channel.value).map(raw, tx)
                    chain = enrichers
                elif isinstance(early, Exception):
                    raise early
                else:
                    result, chain = early, rest
                if result.case is None and not result.updates:
                    reason = result.ignored_reason or "mapper returned nothing"
                    tx.mark_raw(stored.id, "ignored", reason)
                    stats.ignored += 1
                    stats.ignored_reasons[reason.split(":")[0]] += 1
                    continue
                case_id = _apply(hub, tx, result, stored.id, stats, sink_names, chain)
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


def _premap(hub: Hub, tx: Any, pending: Sequence[Any], pure: Sequence[Enricher]
            ) -> dict[int, MapResult | Exception]:
    """Map a batch's records and run the store-free enrichers on them, before any is saved.

    Only for records whose mapper reads and writes no store state (``reads_store = False``,
    e.g. forwarded records): what they become cannot depend on the records before them in
    the batch, so working through the batch in two passes (this one pure Python, then linking
    and saving record by record) gives the same cases, and keeps each pass's code and data
    hot in the CPU caches instead of alternating with SQLite's. Within this pass the batch is
    mapped first, then each enricher runs over all of its cases before the next one starts
    (one enricher's code and tables at a time: about 15% less CPU for this pass than the
    chain record by record, P3 in docs/benchmarks.md). A failure is kept and raised at the
    record's turn, so it is dead-lettered in order as before; the enrichers after the one
    that failed skip that case. Mappers that read state (mail threads, IoT episodes) map at
    their record's turn.
    """
    out: dict[int, MapResult | Exception] = {}
    cases: list[tuple[int, Case]] = []
    for stored in pending:
        raw = stored.record
        mapper = hub.mapper(raw.source, raw.channel.value)
        if getattr(mapper, "reads_store", True):
            continue
        try:
            result = mapper.map(raw, tx)
        except Exception as exc:
            out[stored.id] = exc
            continue
        out[stored.id] = result
        if result.case is not None:
            cases.append((stored.id, result.case))
    # one enricher at a time over the batch's cases (its code and tables stay hot); a case
    # whose enricher fails keeps the error and skips the enrichers after it, as before
    for enricher in pure:
        enrich = enricher.enrich
        ok: list[tuple[int, Case]] = []
        for raw_id, case in cases:
            try:
                enrich(case, tx)
            except Exception as exc:
                out[raw_id] = exc
            else:
                ok.append((raw_id, case))
        cases = ok
    return out


def _apply(hub: Hub, tx: Any, result: MapResult, raw_id: int | None, stats: ProcessStats,
           sink_names: list[str], enrichers: list[Enricher]) -> str | None:
    """Enrich, route and save what a mapper returned; return the case id it concerns."""
    case_id = None
    if result.case is not None:
        case = result.case
        for enricher in enrichers:
            enricher.enrich(case, tx)
        sinks = route(case, hub.config.routing, sink_names)
        case, is_new = tx.save_case(case, raw_id, sinks, result.index_keys,
                                    fingerprint(f"{case.title}\n{case.description}"))
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
    if result.case is None and result.index_keys and case_id:
        tx.add_keys(case_id, result.index_keys)  # e.g. a reply's Message-ID → its case
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
                    _apply(hub, tx, result, None, stats, sink_names, hub.enrichers)
        except Exception:
            logger.error("sweep failed", extra={"source": cfg.name}, exc_info=True)
    return stats


def _save_update(tx: Any, upd: CaseUpdate, stats: ProcessStats) -> None:
    if tx.save_update(upd, tx.case_sinks(upd.case_id)):
        stats.updates += 1


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
    """Deliver every due outbox row once (rows scheduled later are left for later).

    Sinks without ``concurrency`` (or with 1) get one call at a time, each outcome recorded
    before the next call. For sinks with ``concurrency > 1`` (and ``batch_size > 1`` through
    ``deliver_batch``) every attempt of a claimed batch is recorded first, the calls run on
    that many threads, and each outcome is recorded as it completes; a crash in between leaves
    attempts without outcome, which the next run treats as ambiguous (webhooks resend with the
    same key, Open311 reconciles). Only the calling thread touches the store.
    """
    stats = DeliverStats()
    policy = hub.config.delivery
    configured = set(hub.sink_names())
    target = [s for s in (sinks or configured) if s in configured]
    hub.store.expire_claims_of_dead_workers(socket.gethostname())
    done = 0
    flows: dict[str, _SinkFlow] = {}
    try:
        while limit is None or done < limit:
            size = policy.batch_size if limit is None else min(policy.batch_size, limit - done)
            # the last chunk of the previous claim may still be in flight: this claim (and
            # the next chunk's preparation) overlaps its calls instead of waiting for them
            claimed = hub.store.claim_due(hub.worker_id, size, policy.lease, now_fn(), target)
            if not claimed:
                if not any(f.busy() for f in flows.values()):
                    break
                for f in flows.values():  # their outcomes may make rows due again (retries)
                    f.drain()
                continue
            # start no call after 80% of the lease (minus the longest call we allow for)
            deadline = time.monotonic() + policy.lease * 0.8
            by_sink: dict[str, list[ClaimedDelivery]] = {}
            for d in claimed:
                by_sink.setdefault(d.sink, []).append(d)
            for name, rows in by_sink.items():
                if name not in flows:
                    flows[name] = _SinkFlow(hub, hub.sink(name), stats, now_fn, policy.lease)
                flow = flows[name]
                # no new chunk after the deadline minus two of the longest calls, and no
                # queued call starts after it minus one (such a call comes back unstarted)
                flow.feed(rows, deadline - 2 * flow.slowest, deadline - flow.slowest)
            done += len(claimed)
            if progress:
                progress("deliver", done, None)
    finally:
        try:
            for f in flows.values():
                f.drain()
        finally:
            for f in flows.values():
                f.close()
    if stats.delivered or stats.retried or stats.dead:
        logger.info("delivered", extra={"delivered": stats.delivered, "retried": stats.retried,
                                        "dead": stats.dead})
    return stats


class _NotStarted:
    """The outcome of a queued call that was not started before its chunk's ``start_by``:
    nothing went out, so its recorded attempt is withdrawn and the row given back."""

    def __repr__(self) -> str:
        return "NOT_STARTED"


NOT_STARTED = _NotStarted()


@dataclass
class _Attempt:
    """One prepared attempt: the claimed row, what the sink gets, and the outcome."""

    row: ClaimedDelivery
    delivery: Delivery
    at: datetime
    previous: dict[str, Any] | None
    outcome: Any = None
    seconds: float = 0.0


#: A call queued on a pool: its attempts, where it comes back, when it may start at the latest.
_Queued = tuple[list["_Attempt"], "SimpleQueue[list[_Attempt]]", float]


def _call(sink: Sink, attempts: list[_Attempt], start_by: float = math.inf) -> None:
    """Run the sink for some attempts and keep each outcome (never raises); after
    ``start_by`` the sink is not called and every outcome is :data:`NOT_STARTED`."""
    started = time.monotonic()
    if started > start_by:
        for a in attempts:
            a.outcome = NOT_STARTED
        return
    try:
        if len(attempts) == 1:
            outcomes: list[Any] = [sink.deliver(attempts[0].delivery)]
        else:
            outcomes = list(sink.deliver_batch(  # type: ignore[attr-defined]
                [a.delivery for a in attempts]))
    except Exception as exc:  # DeliveryError or a bug: the same outcome for every row
        outcomes = [exc] * len(attempts)
    elapsed = time.monotonic() - started
    for a, outcome in zip(attempts, outcomes, strict=True):
        a.outcome, a.seconds = outcome, elapsed


class CallPool:
    """Up to ``workers`` threads that run one sink's calls from a queue, for one ``deliver`` run.

    A chunk's calls are queued at once; each finished call comes back through the chunk's own
    queue: two cheap queue operations per call, no future, waiter or condition variable.
    Threads are started as the calls need them (one row needs one thread).
    """

    def __init__(self, sink: Sink, workers: int) -> None:
        self.sink = sink
        self.workers = workers
        self._todo: SimpleQueue[_Queued | None] = SimpleQueue()
        self._threads: list[threading.Thread] = []

    def _work(self) -> None:
        while True:
            item = self._todo.get()
            if item is None:
                return
            calls, done, start_by = item
            try:
                _call(self.sink, calls, start_by)
            finally:
                done.put(calls)

    def start(self, calls: list[list[_Attempt]], start_by: float = math.inf
              ) -> Iterator[list[_Attempt]]:
        """Queue the calls; iterate to get each one as it completes. A call still queued at
        ``start_by`` (``time.monotonic()``) is not made: it comes back :data:`NOT_STARTED`."""
        while len(self._threads) < min(self.workers, len(calls)):
            t = threading.Thread(target=self._work, daemon=True, name=f"deliver-"
                                 f"{getattr(self.sink, 'name', '?')}-{len(self._threads)}")
            t.start()
            self._threads.append(t)
        done: SimpleQueue[list[_Attempt]] = SimpleQueue()
        for c in calls:
            self._todo.put((c, done, start_by))
        return (done.get() for _ in range(len(calls)))

    def close(self) -> None:
        """Let the threads finish the queued calls, then stop them."""
        for _ in self._threads:
            self._todo.put(None)
        for t in self._threads:
            t.join()
        self._threads.clear()


#: The interpreter's switch interval while delivery calls run on their own thread(s). The
#: default 5 ms lets the thread writing receipts keep the interpreter lock that long while an
#: answer waits to be read and the next request to be written, so the receiver idles (P6 in
#: docs/benchmarks.md); 0.2 ms hands the lock over about as soon as an answer is there.
DELIVERY_SWITCH_INTERVAL = 0.0002
_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.0


def _fast_switch(on: bool) -> None:
    """Use :data:`DELIVERY_SWITCH_INTERVAL` while any call pool runs (counted), then restore."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if on:
            if _switch_users == 0:
                _switch_saved = sys.getswitchinterval()
                sys.setswitchinterval(min(_switch_saved, DELIVERY_SWITCH_INTERVAL))
            _switch_users += 1
        else:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


class MuxPool:
    """One thread that keeps up to ``workers`` calls of one sink in flight, for one ``deliver``
    run, through the sink's multiplexer (``sink.open_mux``: requests written on pooled
    connections, answers read as their sockets become readable).

    The same contract as :class:`CallPool` (every queued call comes back once, with an outcome)
    at a fraction of its CPU: no thread per request waking for its answer and then waiting for
    the interpreter lock the store's thread holds. Built only by :meth:`open`, for sinks that
    can (the webhook sink on the lean HTTP client).
    """

    def __init__(self, sink: Any, workers: int, mux: Any, wake: tuple[int, int]) -> None:
        self.sink = sink
        self.workers = workers
        self._mux = mux
        self._wake_r, self._wake_w = wake
        self._todo: SimpleQueue[tuple[list[list[_Attempt]], SimpleQueue[list[_Attempt]],
                                      float] | None] = SimpleQueue()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, sink: Sink, workers: int) -> MuxPool | None:
        """A pool for ``sink``, or None when it has no multiplexer for its destination."""
        opener = getattr(sink, "open_mux", None)
        if opener is None:
            return None
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        mux = opener(workers, wake_r)
        if mux is None:
            os.close(wake_r)
            os.close(wake_w)
            return None
        return cls(sink, workers, mux, (wake_r, wake_w))

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # the pipe is full: a wake-up is pending anyway
            pass

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _work(self) -> None:
        backlog: deque[_Queued] = deque()
        flying: dict[int, tuple[list[_Attempt], SimpleQueue[list[_Attempt]]]] = {}
        stop = False
        while True:
            try:
                while not stop:
                    try:
                        item = self._todo.get(block=not (backlog or flying))
                    except Empty:
                        break
                    if item is None:
                        stop = True
                    else:
                        backlog.extend((call, item[1], item[2]) for call in item[0])
                self._drain_wake()
                if stop and not backlog and not flying:
                    return
                while backlog and self._mux.free() > 0:
                    call, done, start_by = backlog.popleft()
                    if time.monotonic() > start_by:  # too late to start it inside the lease
                        call[0].outcome = NOT_STARTED
                        done.put(call)
                        continue
                    try:
                        self._mux.send(id(call), call[0].delivery)
                    except Exception as exc:  # this delivery cannot be sent (a sink bug)
                        call[0].outcome = exc
                        done.put(call)
                        continue
                    flying[id(call)] = (call, done)
                for token, outcome, seconds in self._mux.poll():
                    call, done = flying.pop(token)
                    call[0].outcome, call[0].seconds = outcome, seconds
                    done.put(call)
            except Exception as exc:  # a bug: every call in flight gets it as its outcome
                logger.error("delivery multiplexer failed", exc_info=True,
                             extra={"sink": getattr(self.sink, "name", "?")})
                self._mux.close()
                for call, done, *_ in [*flying.values(), *backlog]:
                    call[0].outcome = exc
                    done.put(call)
                flying.clear()
                backlog.clear()
                self._mux = self.sink.open_mux(self.workers, self._wake_r)  # type: ignore[attr-defined]
                if self._mux is None:
                    raise

    def start(self, calls: list[list[_Attempt]], start_by: float = math.inf
              ) -> Iterator[list[_Attempt]]:
        """Queue the calls; iterate to get each one as it completes (:meth:`CallPool.start`)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, daemon=True,
                                            name=f"deliver-{getattr(self.sink, 'name', '?')}")
            self._thread.start()
        done: SimpleQueue[list[_Attempt]] = SimpleQueue()
        self._todo.put((calls, done, start_by))
        self._wake()
        return (done.get() for _ in range(len(calls)))

    def close(self) -> None:
        """Let the thread finish the queued calls, then stop it."""
        if self._thread is not None:
            self._todo.put(None)
            self._wake()
            self._thread.join()
            self._thread = None
        self._mux.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


def _start_calls(sink: Sink, calls: list[list[_Attempt]], pool: CallPool | MuxPool | None,
                 start_by: float = math.inf) -> Iterator[list[_Attempt]]:
    """Start the calls on ``pool``, or (without one) run them in order as they are iterated;
    none starts after ``start_by``."""
    return pool.start(calls, start_by) if pool is not None else \
        _run_in_order(sink, calls, start_by)


def _run_in_order(sink: Sink, calls: list[list[_Attempt]], start_by: float = math.inf
                  ) -> Iterator[list[_Attempt]]:
    for c in calls:
        _call(sink, c, start_by)
        yield c


def _finish(hub: Hub, results: Iterator[list[_Attempt]], stats: DeliverStats,
            now_fn: Callable[[], datetime], start: Sequence[_Attempt] = ()) -> None:
    """Record the outcomes of a chunk as its calls complete, then its receipts in one go,
    together with the attempts of the chunk about to start (``start``)."""
    _commit(hub, _collect(hub, results, stats, now_fn), stats, start)


def _collect(hub: Hub, results: Iterator[list[_Attempt]], stats: DeliverStats,
             now_fn: Callable[[], datetime]) -> list[Any]:
    """Wait for a chunk's outcomes; record failures, return the receipts to commit."""
    receipts: list[tuple[ClaimedDelivery, str | None, int | None, dict[str, Any]]] = []
    for c in results:
        for a in c:
            _record(hub, a, stats, now_fn, receipts)
    return receipts


def _commit(hub: Hub, receipts: list[Any], stats: DeliverStats,
            start: Sequence[_Attempt] = ()) -> None:
    # one transaction for the chunk's receipts; a crash before it makes every row's attempt
    # "unrecorded", so the next try carries ambiguous_seen (same idempotency key)
    hub.store.complete_deliveries(receipts, start=[a.row.id for a in start],
                                  worker=hub.worker_id, start_at=start[0].at if start else None)
    for d, *_ in receipts:
        stats.delivered += 1
        stats.by_sink[d.sink] += 1


#: Rows per chunk when one thread multiplexes the calls (a whole claim of the default
#: ``delivery.batch_size``), if the lease allows: each chunk costs one commit (its receipts and
#: the next chunk's attempts), and one thread keeps queued calls at no cost per call.
MIN_CHUNK = 100


class _SinkFlow:
    """The deliveries of one sink during one ``deliver`` run, chunk after chunk.

    Sinks with ``concurrency`` 1 (and no batching) get one call at a time, each outcome
    recorded before the next call. Otherwise rows go in chunks; with a call pool two chunks
    are in flight: while the older one's outcomes are recorded the newer one's calls run, and
    the receipts of the older one and the attempts of the next one are written in ONE
    transaction, just before the next one's calls start (attempts are always committed
    before their calls). Chunks in flight at the end of a claim stay in flight while the
    next claim is made (until :meth:`drain`), so claiming overlaps the calls too.
    """

    def __init__(self, hub: Hub, sink: Sink, stats: DeliverStats,
                 now_fn: Callable[[], datetime], lease: float = 300.0) -> None:
        self.hub, self.sink, self.stats, self.now_fn = hub, sink, stats, now_fn
        self.workers = max(1, int(getattr(sink, "concurrency", 1) or 1))
        self.slowest = float(getattr(getattr(sink, "config", None), "timeout", 0) or 0)
        per_call = max(1, int(getattr(sink, "batch_size", 1) or 1))
        self.per_call = per_call if hasattr(sink, "deliver_batch") else 1
        self.pool: CallPool | MuxPool | None = None
        if self.workers > 1:
            # one request per call: one thread watching the sockets, where the sink can
            self.pool = (MuxPool.open(sink, self.workers) if self.per_call == 1 else None) \
                or CallPool(sink, self.workers)
            _fast_switch(True)
        rounds = 4  # calls per connection in one chunk
        if isinstance(self.pool, MuxPool):
            # bigger chunks, as long as two of them (one finishing, one queued behind it)
            # of calls that all run into the timeout still start within 80% of the lease
            fit = int(lease * 0.4 / self.slowest) if self.slowest else rounds
            rounds = max(rounds, min(fit, -(-MIN_CHUNK // self.workers)))
        self.chunk = 1 if self.pool is None and self.per_call == 1 else \
            self.per_call * self.workers * rounds
        #: started chunks, oldest first (two at most: one finishing while the next runs)
        self.flying: deque[Iterator[list[_Attempt]]] = deque()

    def feed(self, rows: list[ClaimedDelivery], deadline: float = math.inf,
             start_by: float = math.inf) -> None:
        """Deliver claimed rows; chunks not started before ``deadline`` are released, and a
        call still queued behind others at ``start_by`` is not made (its attempt is
        withdrawn and its row given back).

        Both keep every call inside the claim's lease: a row whose lease ran out could be
        claimed by another worker while it still waits here, and an Open311 server has no
        idempotency key to see that the same case came twice.
        """
        hub, stats, now_fn = self.hub, self.stats, self.now_fn
        chunk = self.chunk
        if chunk > 1 and rows:  # equal parts, none above the chunk size (100 by 96: 50 + 50)
            parts = -(-len(rows) // chunk)
            chunk = -(-len(rows) // max(parts, 1))
        for i in range(0, len(rows), chunk):
            if i and time.monotonic() > deadline:  # the first chunk goes, unless it waits
                self._release(rows[i:])
                return
            part = rows[i:i + chunk]
            if chunk == 1:  # one at a time: record each outcome before the next call
                deliver_one(hub, part[0], stats, now_fn)
                continue
            if self.pool is None:  # strictly one after another: finish before preparing more
                prepared = _prepare_many(hub, part, stats, now_fn)
                _finish(hub, _start_calls(self.sink, self._calls(prepared), None, start_by),
                        stats, now_fn)
                continue
            prepared = _prepare_many(hub, part, stats, now_fn, record=False)
            if len(self.flying) < 2:
                hub.store.start_attempts([a.row.id for a in prepared], hub.worker_id,
                                         prepared[0].at if prepared else None)
            else:  # the oldest chunk's receipts and this chunk's attempts: one transaction
                receipts = _collect(hub, self.flying.popleft(), stats, now_fn)
                if time.monotonic() > deadline:  # that wait used up the lease's margin
                    _commit(hub, receipts, stats)
                    self._release(rows[i:])  # not attempted: their attempts were not written
                    return
                _commit(hub, receipts, stats, start=prepared)
            self.flying.append(_start_calls(self.sink, self._calls(prepared), self.pool,
                                            start_by))

    def _release(self, rows: list[ClaimedDelivery]) -> None:
        for d in rows:
            self.hub.store.release(d)
        logger.warning("lease nearly over, rows released", extra={
            "sink": getattr(self.sink, "name", "?"), "released": len(rows)})

    def _calls(self, prepared: list[_Attempt]) -> list[list[_Attempt]]:
        return [prepared[j:j + self.per_call] for j in range(0, len(prepared), self.per_call)]

    def busy(self) -> bool:
        """True while some chunk is in flight."""
        return bool(self.flying)

    def drain(self) -> None:
        """Wait for the chunks in flight and record their outcomes."""
        while self.flying:
            _finish(self.hub, self.flying.popleft(), self.stats, self.now_fn)

    def close(self) -> None:
        """Stop the call threads (after :meth:`drain`)."""
        if self.pool is not None:
            try:
                self.pool.close()
            finally:
                self.pool = None
                _fast_switch(False)


def _prepare_many(hub: Hub, rows: list[ClaimedDelivery], stats: DeliverStats,
                  now_fn: Callable[[], datetime], record: bool = True) -> list[_Attempt]:
    """Load payloads and (with ``record``) record the attempts of a chunk (two queries, one
    transaction); without, the caller records them before the calls start."""
    payloads = hub.store.delivery_payloads(rows)
    attempt_at = now_fn()
    out: list[_Attempt] = []
    for d in rows:
        if d.id not in payloads:
            reason = f"case {d.case_id} not found"
            hub.store.fail_delivery(d, {"reason": reason, "retryable": False}, reason)
            stats.dead += 1
            stats.dead_reasons.append(reason)
            continue
        case_json, update_json = payloads[d.id]
        previous = _previous_error(d)
        out.append(_Attempt(d, Delivery(
            outbox_id=d.id, kind=d.kind, idempotency_key=d.idempotency_key, case=case_json,
            update=update_json, attempt=d.attempts + 1, first_attempt_at=d.first_attempt_at,
            previous_error=previous, remote_id=d.remote_id), attempt_at, previous))
    if record:
        hub.store.start_attempts([a.row.id for a in out], hub.worker_id, attempt_at)
    return out


def _previous_error(d: ClaimedDelivery) -> dict[str, Any] | None:
    previous = d.last_error
    if d.attempts > int((previous or {}).get("attempt") or 0):
        # an attempt was started but its outcome never recorded (a crash or a lost lease
        # between the sink call and the receipt): the remote may have it already
        previous = {**(previous or {}), "ambiguous_seen": True,
                    "unrecorded_attempt": d.attempts}
    return previous


def _record(hub: Hub, a: _Attempt, stats: DeliverStats, now_fn: Callable[[], datetime],
            receipts: list[Any] | None = None) -> None:
    """Record one outcome: receipt (now, or appended to ``receipts``), retry or dead letter."""
    d, outcome = a.row, a.outcome
    if outcome is NOT_STARTED:
        hub.store.withdraw_attempt(d, hub.worker_id)
        logger.warning("lease nearly over, queued call not started, row given back",
                       extra={"sink": d.sink, "outbox_id": d.id})
        return
    if isinstance(outcome, DeliveryError):
        err = outcome.as_dict()
        err["attempt"] = d.attempts + 1
        err["at"] = a.at.isoformat()
        if outcome.ambiguous or (a.previous or {}).get("ambiguous_seen"):
            err["ambiguous_seen"] = True  # sinks reconcile before re-posting after this
        _failed(hub, d, err, outcome.retryable, outcome.retry_after, stats, now_fn)
        return
    if isinstance(outcome, BaseException) or outcome is None:
        # we cannot tell how far the sink got: treat it as possibly received
        err = {"reason": f"unexpected {type(outcome).__name__}: {outcome}", "retryable": True,
               "attempt": d.attempts + 1, "at": a.at.isoformat(), "ambiguous_seen": True}
        logger.error("sink raised", extra={"sink": d.sink, "outbox_id": d.id,
                                           "error": err["reason"]})
        _failed(hub, d, err, True, None, stats, now_fn)
        return
    faults.point("after_sink_call")
    detail = dict(outcome.detail)
    detail["seconds"] = round(a.seconds, 6)
    if receipts is not None:
        receipts.append((d, outcome.remote_id, outcome.status_code, detail))
        return
    hub.store.complete_delivery(d, remote_id=outcome.remote_id, status_code=outcome.status_code,
                                detail=detail)
    stats.delivered += 1
    stats.by_sink[d.sink] += 1


def deliver_one(hub: Hub, d: ClaimedDelivery, stats: DeliverStats,
                now_fn: Callable[[], datetime] = now_utc) -> None:
    """Attempt one claimed delivery and record the outcome."""
    for a in _prepare_many(hub, [d], stats, now_fn):  # empty when the case is gone
        _call(hub.sink(d.sink), [a])
        _record(hub, a, stats, now_fn)


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
    status: Any = None

    @property
    def connector_errors(self) -> int:
        """Sources that failed this run."""
        return sum(1 for s in self.ingest if s.error)


ALL_STAGES = ("ingest", "process", "deliver", "status")


def run_once(hub: Hub, connectors: Sequence[str] | None = None,
             stages: Sequence[str] = ALL_STAGES,
             progress: Progress | None = None) -> RunSummary:
    """One pass of every requested stage (``status`` pulls case status back from downstream)."""
    ing = ingest(hub, connectors, progress=progress) if "ingest" in stages else []
    proc = process(hub, progress=progress) if "process" in stages else ProcessStats()
    dlv = deliver(hub, progress=progress) if "deliver" in stages else DeliverStats()
    sync = None
    if "status" in stages:
        from outbox.status_sync import sync_status

        sync = sync_status(hub)
    return RunSummary(ing, proc, dlv, sync)
