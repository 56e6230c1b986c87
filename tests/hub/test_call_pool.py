"""The delivery call pool: every queued call comes back once, whatever the sink does."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

from hub.pipeline import CallPool, _Attempt
from outbox.sinks.base import Delivery, DeliveryError, Receipt
from outbox.store.sql import ClaimedDelivery

T0 = datetime(2026, 11, 25, tzinfo=timezone.utc)


class FlakySink:
    """Answers even outbox ids, refuses odd ones, and crashes on id 7 (a bug in a sink)."""

    name = "flaky"

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def deliver(self, delivery: Delivery) -> Receipt:
        self.threads.add(threading.current_thread().name)
        if delivery.outbox_id == 7:
            raise RuntimeError("bug")
        if delivery.outbox_id % 2:
            raise DeliveryError("no", retryable=True)
        return Receipt(remote_id=str(delivery.outbox_id), status_code=200)

    def close(self) -> None:
        pass


def attempt(i: int) -> _Attempt:
    row = ClaimedDelivery(id=i, sink="flaky", case_id=f"c{i}", kind="case", event_id=None,
                          idempotency_key=f"k{i}", attempts=0, first_attempt_at=None,
                          created_at=T0, last_error=None, remote_id=None)
    return _Attempt(row, Delivery(outbox_id=i, kind="case", idempotency_key=f"k{i}",
                                  case={}), T0, None)


def test_every_call_comes_back_once_with_its_outcome() -> None:
    sink = FlakySink()
    pool = CallPool(sink, workers=3)
    first = [[attempt(i)] for i in range(10)]
    second = [[attempt(i)] for i in range(10, 12)]
    got_first = list(pool.start(first))
    got_second = list(pool.start(second))
    threads = list(pool._threads)
    pool.close()
    assert sorted(c[0].row.id for c in got_first) == list(range(10))
    assert sorted(c[0].row.id for c in got_second) == [10, 11]
    by_id = {c[0].row.id: c[0].outcome for c in got_first + got_second}
    assert isinstance(by_id[7], RuntimeError)  # a sink bug is an outcome, not a lost call
    assert isinstance(by_id[3], DeliveryError) and by_id[4].remote_id == "4"
    assert len(threads) == 3 and sink.threads <= {t.name for t in threads}
    assert not any(t.is_alive() for t in threads)  # close() stopped them


def test_threads_start_only_as_needed() -> None:
    sink = FlakySink()
    pool = CallPool(sink, workers=8)
    assert [c[0].outcome.remote_id for c in pool.start([[attempt(2)]])] == ["2"]
    assert len(pool._threads) == 1
    pool.close()


def test_mux_pool_brings_every_call_back_once_and_survives_a_sink_bug() -> None:
    """One thread, many requests in flight to a real receiver: every queued call comes back
    once with its receipt; a delivery the sink cannot even encode (a bug) comes back with the
    exception as its outcome, and the pool goes on with later calls."""
    import sys

    from hub.pipeline import MuxPool, _SinkFlow
    from outbox.sinks.webhook import WebhookSink, WebhookSinkConfig
    from tests.delivery.receivers import WebhookReceiver

    def call(i: int, case: dict) -> list[_Attempt]:  # type: ignore[type-arg]
        a = attempt(i)
        a.delivery.case = case
        return [a]

    with WebhookReceiver() as receiver:
        sink = WebhookSink(WebhookSinkConfig(name="wh", url=receiver.url + "/hook",
                                             secret=receiver.secret, concurrency=4))
        pool = MuxPool.open(sink, 4)
        assert pool is not None
        first = list(pool.start([call(i, {"n": i}) for i in range(10)]))
        broken = list(pool.start([call(10, {"n": object()}), call(11, {"n": 11})]))
        after = list(pool.start([call(i, {"n": i}) for i in range(12, 20)]))
        pool.close()
        assert sorted(c[0].row.id for c in first) == list(range(10))
        assert all(c[0].outcome.status_code == 200 for c in first + after)
        outcomes = {c[0].row.id: c[0].outcome for c in broken}
        assert isinstance(outcomes[10], TypeError) and outcomes[11].status_code == 200
        assert len(receiver.keys) == 19
        assert receiver.redeliveries() == 0 and receiver.bad_signatures == 0
        sink.close()

        # a delivery flow uses the short switch interval only while its pool runs
        before = sys.getswitchinterval()
        flow = _SinkFlow(None, sink, None, None)  # type: ignore[arg-type]
        assert isinstance(flow.pool, MuxPool) and sys.getswitchinterval() < before
        flow.close()
        assert sys.getswitchinterval() == before


def test_sinks_without_a_mux_use_threads() -> None:
    from hub.pipeline import _SinkFlow

    sink = FlakySink()
    sink.concurrency = 3  # type: ignore[attr-defined]
    flow = _SinkFlow(None, sink, None, None)  # type: ignore[arg-type]
    assert isinstance(flow.pool, CallPool)
    flow.close()
