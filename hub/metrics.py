"""Prometheus metrics shared by ``serve`` and ``listen``.

* :class:`StoreCollector` reads the store at scrape time: connector health (records, errors,
  last success, records waiting), outbox rows by sink and state, cases by status, open dead
  letters. Every worker sees the same figures, whichever worker did the work.
* :class:`WorkerMetrics` counts what this ``listen`` process did (records committed, cases made,
  deliveries by outcome, pass durations, thread restarts); ``listen --metrics-port`` serves
  both.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from outbox.store.timefmt import parse_ts


class StoreCollector(Collector):
    """Gauges and totals read from the store at scrape time."""

    def __init__(self, hub: Any, lock: threading.Lock) -> None:
        self.hub = hub
        self.lock = lock

    def collect(self) -> Iterator[Metric]:
        """Yield the store-derived metric families."""
        outbox = GaugeMetricFamily("feedback_hub_outbox_rows",
                                   "Outbox rows by sink and state.", labels=["sink", "state"])
        cases = GaugeMetricFamily("feedback_hub_cases", "Cases by status.", labels=["status"])
        dead = GaugeMetricFamily("feedback_hub_dead_letters_open",
                                 "Dead letters waiting for an operator.")
        records = CounterMetricFamily("feedback_hub_connector_records",
                                      "Records a connector committed (all workers).",
                                      labels=["connector"])
        errors = CounterMetricFamily("feedback_hub_connector_errors",
                                     "Connector passes that failed (all workers).",
                                     labels=["connector"])
        success = GaugeMetricFamily("feedback_hub_connector_last_success_timestamp_seconds",
                                    "When a connector last ran without error (Unix time).",
                                    labels=["connector"])
        pending = GaugeMetricFamily("feedback_hub_raw_pending",
                                    "Raw records waiting for the process stage.",
                                    labels=["connector"])
        store = self.hub.store
        with self.lock:
            for r in store.outbox_stats():
                outbox.add_metric([r["sink"], r["state"]], int(r["n"]))
            for r in store.query("SELECT status, COUNT(*) AS n FROM cases GROUP BY status"):
                cases.add_metric([r["status"]], int(r["n"]))
            n = store.query("SELECT COUNT(*) AS n FROM dead_letters WHERE replay_state = 'new'")
            dead.add_metric([], int(n[0]["n"]))
            for r in store.connector_stats():
                name = r["source"]
                records.add_metric([name], int(r.get("records_total") or 0))
                errors.add_metric([name], int(r.get("errors_total") or 0))
                when = parse_ts(r.get("last_success_at"))
                if when is not None:
                    success.add_metric([name], when.timestamp())
            for r in store.raw_stats():
                if r["state"] == "pending":
                    pending.add_metric([r["source"]], int(r["n"]))
        yield from (outbox, cases, dead, records, errors, success, pending)


class WorkerMetrics:
    """What one ``listen`` process did (and, once registered, the store's figures)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self.ingested = Counter("feedback_hub_worker_records_ingested_total",
                                "Records this worker committed, by connector.", ["connector"],
                                registry=reg)
        self.ingest_dead = Counter("feedback_hub_worker_ingest_dead_letters_total",
                                   "Inputs this worker dead-lettered at ingest.", ["connector"],
                                   registry=reg)
        self.cases = Counter("feedback_hub_worker_cases_created_total",
                             "Cases this worker created, by kind.", ["kind"], registry=reg)
        self.process_failed = Counter("feedback_hub_worker_process_failed_total",
                                      "Records this worker dead-lettered at process.",
                                      registry=reg)
        self.delivered = Counter("feedback_hub_worker_delivered_total",
                                 "Deliveries this worker completed, by sink.", ["sink"],
                                 registry=reg)
        self.failed = Counter("feedback_hub_worker_delivery_failures_total",
                              "Failed delivery attempts by this worker: retried (will be "
                              "tried again) or dead (dead-lettered).", ["outcome"],
                              registry=reg)
        self.passes = Histogram("feedback_hub_worker_pass_seconds",
                                "Duration of a process or deliver pass.", ["stage"],
                                registry=reg)
        self.restarts = Counter("feedback_hub_worker_thread_restarts_total",
                                "Worker threads restarted after an error.", ["thread"],
                                registry=reg)
        #: serializes scrapes of the store (``listen`` registers a :class:`StoreCollector`)
        self.lock = threading.Lock()

    def record_process(self, stats: Any, seconds: float) -> None:
        """Count a process pass (skipped passes count no cases)."""
        self.passes.labels("process").observe(seconds)
        for kind, n in stats.kinds.items():
            self.cases.labels(kind).inc(n)
        if stats.failed:
            self.process_failed.inc(stats.failed)

    def record_deliver(self, stats: Any, seconds: float) -> None:
        """Count a deliver pass."""
        self.passes.labels("deliver").observe(seconds)
        for sink, n in stats.by_sink.items():
            self.delivered.labels(sink).inc(n)
        if stats.retried:
            self.failed.labels("retried").inc(stats.retried)
        if stats.dead:
            self.failed.labels("dead").inc(stats.dead)

    def record_ingest(self, connector: str, inserted: int, dead: int) -> None:
        """Count records committed (and inputs dead-lettered) by a connector."""
        if inserted:
            self.ingested.labels(connector).inc(inserted)
        if dead:
            self.ingest_dead.labels(connector).inc(dead)
