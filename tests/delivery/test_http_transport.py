"""The shared HTTP layer: classification of real failures, and a pluggable session."""

from __future__ import annotations

import socket

import pytest
import requests

from outbox.sinks.base import Delivery, DeliveryError
from outbox.sinks.http import HttpTransport
from outbox.sinks.webhook import WebhookSink, WebhookSinkConfig
from tests.delivery.receivers import WebhookReceiver

pytestmark = pytest.mark.integration


def test_a_foreign_session_can_be_plugged_in() -> None:
    """What an Airflow HttpHook does: hand over a configured requests.Session."""
    seen = []

    def factory() -> requests.Session:
        s = requests.Session()
        s.headers["X-From-Hook"] = "yes"
        seen.append(s)
        return s

    with WebhookReceiver() as w:
        sink = WebhookSink(WebhookSinkConfig(name="h", url=w.url, secret=w.secret),
                           session_factory=factory)
        receipt = sink.deliver(Delivery(outbox_id=1, kind="case", idempotency_key="k",
                                        case={"case_id": "c"}))
        assert receipt.status_code == 200 and len(seen) == 1
        sink.close()


def test_connect_timeout_is_not_ambiguous() -> None:
    # a listening socket that never accepts: the SYN queue fills, connects then time out
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    port = srv.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", port))
            fillers.append(c)
        t = HttpTransport(timeout=0.3, connect_timeout=0.3)
        with pytest.raises(DeliveryError) as info:
            t.request("POST", f"http://127.0.0.1:{port}/", data=b"x")
        assert info.value.retryable
        # either the connect timed out or the kernel accepted it and the read timed out
        assert info.value.ambiguous is ("no response" in info.value.reason)
    finally:
        for c in fillers:
            c.close()
        srv.close()


def test_read_timeout_is_ambiguous() -> None:
    with WebhookReceiver() as w:
        w.inject(("slow", 1.0))
        t = HttpTransport(timeout=0.2)
        from outbox.sinks.signing import sign_headers

        body = b'{"idempotency_key":"k"}'
        with pytest.raises(DeliveryError) as info:
            t.request("POST", w.url, data=body, headers={**sign_headers(w.secret, body),
                                                         "Idempotency-Key": "k"})
        assert info.value.retryable and info.value.ambiguous
