"""``feedback-hub listen``: run continuously.

* Each connector that implements :class:`~connectors.base.Listener` (MQTT, IMAP IDLE) gets its
  own thread and its own store connection; every batch it hands over is committed and then
  acknowledged at the source.
* Connectors without ``listen`` are polled every ``poll_interval``.
* One worker thread processes pending records and delivers due rows, woken as soon as a batch
  is committed (so latency stays low) and at least every ``tick`` seconds (retries, sweeps).

SIGINT / SIGTERM stop everything cleanly: listeners return, in-flight work finishes.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from connectors.base import IngestContext, SourceBatch
from hub import faults
from hub.config import HubConfig
from hub.metrics import StoreCollector, WorkerMetrics
from hub.pipeline import Hub, deliver, ingest, process
from outbox.store.timefmt import now_utc

logger = logging.getLogger(__name__)


class Listen:
    """The long-running runtime (also usable from tests: call :meth:`stop`)."""

    def __init__(self, config: HubConfig, *, poll_interval: float = 30.0, tick: float = 5.0,
                 extra_stages: list[Callable[[Hub], Any]] | None = None) -> None:
        self.config = config
        self.poll_interval = poll_interval
        self.tick = tick
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.extra_stages = extra_stages or []
        self.metrics = WorkerMetrics()
        self._metrics_hub: Hub | None = None
        self._metrics_server: Any = None

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve Prometheus metrics (this worker's counters and the store's figures) on
        ``host:port`` (0 picks a free port); return the port."""
        from prometheus_client import start_http_server

        self._metrics_hub = Hub(self.config)
        self.metrics.registry.register(StoreCollector(self._metrics_hub, self.metrics.lock))
        server, _thread = start_http_server(port, addr=host, registry=self.metrics.registry)
        self._metrics_server = server
        bound = int(server.server_address[1])
        logger.info("metrics served", extra={"host": host, "port": bound})
        return bound

    def stop(self) -> None:
        """Ask every thread to finish."""
        self.stop_event.set()
        self.wake.set()

    def close(self) -> None:
        """Stop serving metrics (after :meth:`join`)."""
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._metrics_hub is not None:
            with self.metrics.lock:
                self._metrics_hub.close()
            self._metrics_hub = None

    def start(self) -> None:
        """Start listener, poller and worker threads."""
        probe = Hub(self.config, worker_id=None)
        listeners, pollers = [], []
        for cfg in self.config.connectors:
            if not cfg.enabled:
                continue
            conn = probe.connector(cfg.name)
            (listeners if hasattr(conn, "listen") else pollers).append(cfg.name)
        probe.close()
        for name in listeners:
            self._spawn(f"listen-{name}", self._listen_loop, name)
        if pollers:
            self._spawn("poll", self._poll_loop, pollers)
        self._spawn("worker", self._worker_loop)
        logger.info("listening", extra={"listeners": listeners, "polled": pollers})

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=self._guard, args=(name, target, *args), name=name,
                             daemon=True)
        t.start()
        self.threads.append(t)

    def _guard(self, name: str, target: Callable[..., None], *args: Any) -> None:
        backoff = 1.0
        while not self.stop_event.is_set():
            try:
                target(*args)
                return
            except Exception as exc:
                self.errors.append(f"{name}: {exc}")
                self.metrics.restarts.labels(name.split("-", 1)[0]).inc()
                logger.error("thread failed, restarting", extra={"thread": name,
                                                                 "error": str(exc)},
                             exc_info=True)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 60.0)

    def _listen_loop(self, name: str) -> None:
        hub = Hub(self.config)
        try:
            conn = hub.connector(name)

            def commit(batch: SourceBatch) -> None:
                res = hub.store.commit_ingest(name, batch.records, batch.rejects,
                                              batch.checkpoint)
                self.metrics.record_ingest(name, res.inserted, len(batch.rejects))
                if batch.checkpoint is not None:
                    ctx.checkpoint = batch.checkpoint
                faults.point("after_ingest_commit")
                conn.ack(batch)
                if batch.records:
                    self.wake.set()

            ctx = IngestContext(blobs=hub.blobs, checkpoint=hub.store.get_checkpoint(name),
                                now=now_utc(), services={"store": hub.store,
                                                         "worker_id": hub.worker_id})
            conn.listen(ctx, commit, self.stop_event)  # type: ignore[attr-defined]
            hub.store.record_run(name, ok=True)
        finally:
            hub.close()

    def _poll_loop(self, names: list[str]) -> None:
        hub = Hub(self.config)
        try:
            while not self.stop_event.is_set():
                stats = ingest(hub, names)
                for st in stats:
                    self.metrics.record_ingest(st.source, st.inserted, st.dead)
                if any(s.inserted for s in stats):
                    self.wake.set()
                self.stop_event.wait(self.poll_interval)
        finally:
            hub.close()

    def _worker_loop(self) -> None:
        hub = Hub(self.config)
        try:
            while not self.stop_event.is_set():
                self.wake.clear()
                self._pass(hub)
                for stage in self.extra_stages:
                    stage(hub)
                self.wake.wait(self.tick)
            # finish what was committed before the stop
            self._pass(hub)
        finally:
            hub.close()

    def _pass(self, hub: Hub) -> None:
        started = time.perf_counter()
        p = process(hub, wait=0)  # another worker processing: it has the records
        middle = time.perf_counter()
        self.metrics.record_process(p, middle - started)
        d = deliver(hub)
        self.metrics.record_deliver(d, time.perf_counter() - middle)

    def join(self, timeout: float | None = None) -> None:
        """Wait for every thread to end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self.threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def run_forever(config: HubConfig, *, metrics_port: int | None = None,
                metrics_host: str = "127.0.0.1", **kwargs: Any) -> int:
    """Run until SIGINT/SIGTERM; return an exit code."""
    runtime = Listen(config, **kwargs)
    if metrics_port is not None:
        runtime.serve_metrics(metrics_port, metrics_host)

    def _stop(signum: int, _frame: Any) -> None:
        logger.info("stopping", extra={"signal": signum})
        runtime.stop()

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    runtime.start()
    while not runtime.stop_event.is_set():
        runtime.stop_event.wait(1.0)
    runtime.join(timeout=30)
    runtime.close()
    return 0
