"""Prometheus metrics of the server (one registry per app, so tests can build several)."""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from hub.metrics import StoreCollector


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
