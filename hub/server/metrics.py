"""Prometheus metrics of the server (one registry per app, so tests can build several)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class StoreCollector(Collector):
    """Outbox and case gauges read from the store at scrape time."""

    def __init__(self, hub: Any, lock: threading.Lock) -> None:
        self.hub = hub
        self.lock = lock

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield ``feedback_hub_outbox_rows`` and ``feedback_hub_cases``."""
        outbox = GaugeMetricFamily("feedback_hub_outbox_rows",
                                   "Outbox rows by sink and state.", labels=["sink", "state"])
        cases = GaugeMetricFamily("feedback_hub_cases", "Cases by status.", labels=["status"])
        dead = GaugeMetricFamily("feedback_hub_dead_letters_open",
                                 "Dead letters waiting for an operator.")
        with self.lock:
            for r in self.hub.store.outbox_stats():
                outbox.add_metric([r["sink"], r["state"]], int(r["n"]))
            for r in self.hub.store.query("SELECT status, COUNT(*) AS n FROM cases "
                                          "GROUP BY status"):
                cases.add_metric([r["status"]], int(r["n"]))
            n = self.hub.store.query("SELECT COUNT(*) AS n FROM dead_letters "
                                     "WHERE replay_state = 'new'")
            dead.add_metric([], int(n[0]["n"]))
        yield outbox
        yield cases
        yield dead


class Metrics:
    """The server's metrics."""

    def __init__(self, hub: Any, lock: threading.Lock) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("feedback_hub_http_requests_total", "HTTP requests answered.",
                                ["route", "method", "status"], registry=self.registry)
        self.duration = Histogram("feedback_hub_http_request_duration_seconds",
                                  "Time to answer an HTTP request.", ["route"],
                                  registry=self.registry)
        self.intake = Counter("feedback_hub_intake_records_total",
                              "Records received through the server, by outcome.",
                              ["endpoint", "outcome"], registry=self.registry)
        self.refused = Counter("feedback_hub_intake_refused_total",
                               "Requests refused before anything was stored, by reason.",
                               ["endpoint", "reason"], registry=self.registry)
        self.registry.register(StoreCollector(hub, lock))
