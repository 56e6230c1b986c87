"""Several requests in flight from one thread (outbox.sinks.httpmux) against real sockets.

The multiplexer must give every request exactly the outcome the blocking client gives it:
answers read in full, failures classified the same way (nothing sent, read timeout, lost,
cut short), connections kept alive and shared with the pool.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from outbox.sinks.base import DeliveryError
from outbox.sinks.http import HttpTransport
from outbox.sinks.httpmux import HttpMux
from tests.delivery.test_httpclient import OK, client, scripted

pytestmark = pytest.mark.integration


def drain(mux: HttpMux, n: int, timeout: float = 5.0) -> dict[object, object]:
    """Poll until ``n`` results came back; return them by token."""
    out: dict[object, object] = {}
    end = time.monotonic() + timeout
    while len(out) < n:
        assert time.monotonic() < end, f"only {len(out)} of {n} results"
        for token, result, seconds in mux.poll(0.5):
            assert token not in out and seconds >= 0
            out[token] = result
    return out


def slow_ok(seconds: float):  # type: ignore[no-untyped-def]
    def reply(conn: socket.socket) -> None:
        time.sleep(seconds)
        conn.sendall(OK)
    return reply


def test_requests_overlap_on_width_connections_and_are_kept_alive() -> None:
    # three answers that each take 0.3 s: in flight together they take about 0.3 s, not 0.9
    with scripted(slow_ok(0.3), slow_ok(0.3), slow_ok(0.3)) as s:
        mux = HttpMux(client(), width=3)
        started = time.monotonic()
        for i in range(3):
            mux.send(i, "POST", s.url + "/hook", data=f'{{"n":{i}}}'.encode(),
                     headers={"Idempotency-Key": f"k{i}"})
        assert mux.free() == 0 and mux.pending() == 3
        got = drain(mux, 3)
        assert time.monotonic() - started < 0.8
        assert all(r.status_code == 200 and r.json() == {"id": 42} for r in got.values())
        assert s.connections == 3 and mux.pending() == 0 and mux.free() == 3
        assert sorted(r.split(b"\r\n")[-1] for r in s.requests) == [
            b'{"n":0}', b'{"n":1}', b'{"n":2}']


def test_connections_go_back_to_the_client_pool() -> None:
    with scripted(OK, OK, OK) as s:
        c = client()
        mux = HttpMux(c, width=2)
        mux.send("a", "POST", s.url, data=b"1")
        drain(mux, 1)
        mux.send("b", "POST", s.url, data=b"2")
        drain(mux, 1)
        assert c.request("POST", s.url, data=b"3").status_code == 200  # the blocking path
        assert s.connections == 1
        c.close()


def test_failures_are_classified_as_by_the_blocking_client() -> None:
    def reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def short(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        conn.shutdown(socket.SHUT_WR)

    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    refused = f"http://127.0.0.1:{free.getsockname()[1]}/"
    free.close()
    with scripted(slow_ok(1.5), reset, short) as s:
        mux = HttpMux(client(read=0.4), width=4)
        started = time.monotonic()
        for i, name in enumerate(("timeout", "reset", "short")):
            mux.send(name, "POST", s.url, data=b"x")
            while len(s.requests) <= i:  # replies go in the order requests arrive
                time.sleep(0.005)
        mux.send("refused", "POST", refused, data=b"x")
        got = drain(mux, 4)
        kinds = {k: getattr(v, "kind", v) for k, v in got.items()}
        assert kinds == {"timeout": "read_timeout", "reset": "lost", "short": "truncated",
                         "refused": "connect"}
        assert time.monotonic() - started < 1.2  # the timeout came from the mux, on time


def test_transport_mux_gives_what_request_would_give() -> None:
    retry = (b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy")
    bad = b"HTTP/1.1 400 Bad\r\nContent-Length: 5\r\n\r\nnope!"
    with scripted(retry, bad, retry, bad, OK) as s:
        t = HttpTransport(timeout=2)
        mux = t.mux(s.url, 2)
        assert mux is not None
        mux.send("retry", "POST", s.url, what="POST hook", data=b"x")
        while not s.requests:  # replies go in the order requests arrive
            time.sleep(0.005)
        mux.send("bad", "POST", s.url, what="POST hook", data=b"x")
        got = drain(mux, 2)  # type: ignore[arg-type]
        blocking = {}
        for _ in ("retry", "bad"):
            with pytest.raises(DeliveryError) as info:
                t.request("POST", s.url, what="POST hook", data=b"x")
            blocking[info.value.status_code] = info.value
        for err in got.values():
            assert isinstance(err, DeliveryError)
            same = blocking[err.status_code]
            assert (err.reason, err.retryable, err.ambiguous, err.retry_after, err.body) == (
                same.reason, same.retryable, same.ambiguous, same.retry_after, same.body)
        mux.send("ok", "POST", s.url, what="POST hook", data=b"x")
        assert drain(mux, 1)["ok"].status_code == 200  # type: ignore[arg-type, union-attr]


def test_the_wake_descriptor_ends_a_poll_early() -> None:
    r, w = os.pipe()
    with scripted(slow_ok(2.0)) as s:
        mux = HttpMux(client(), width=1, wake=r)
        mux.send("slow", "POST", s.url, data=b"x")
        os.write(w, b"\0")
        started = time.monotonic()
        assert mux.poll(5.0) == []
        assert time.monotonic() - started < 0.5
        mux.close()  # gives up on the slow one: its connection is closed
        assert mux.pending() == 0
    os.close(r)
    os.close(w)


def test_no_mux_where_requests_goes_through_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    assert HttpTransport(requests.Session).mux("http://127.0.0.1:9/", 4) is None
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert HttpTransport().mux("http://city.example/hook", 4) is None
