"""The lean HTTP/1.1 client against a real socket server that answers scripted bytes.

Each case is a wire-level situation a sink meets: chunked bodies, interim 1xx answers,
HTTP/1.0 bodies delimited by close, bodies cut short, connections the server closed while idle,
redirects (followed for GET only), header injection.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import requests

from outbox.sinks.base import DeliveryError
from outbox.sinks.http import HttpTransport
from outbox.sinks.http11 import Headers, request_head
from outbox.sinks.httpclient import HttpClient, encode_body, encode_query
from outbox.sinks.signing import Signer, sign_headers

pytestmark = pytest.mark.integration

OK = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
      b'{"id": 42}\n')


class Scripted:
    """Accepts connections; answers each request with the next scripted reply.

    A reply is bytes, or a callable ``(conn) -> None`` that writes (and may close) itself.
    """

    def __init__(self, replies: list[bytes | Callable[[socket.socket], None]]) -> None:
        self.replies = list(replies)
        self.requests: list[bytes] = []
        self.connections = 0
        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(16)
        self.port = self.srv.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while self.replies:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                reply = self.replies.pop(0)
                if callable(reply):
                    reply(conn)
                    return
                conn.sendall(reply)

    def close(self) -> None:
        self.srv.close()


@contextmanager
def scripted(*replies: bytes | Callable[[socket.socket], None]) -> Iterator[Scripted]:
    s = Scripted(list(replies))
    try:
        yield s
    finally:
        s.close()


def client(**kw: float) -> HttpClient:
    return HttpClient(connect_timeout=kw.get("connect", 2.0), read_timeout=kw.get("read", 2.0))


def test_keep_alive_reuses_one_connection_and_sends_what_was_asked() -> None:
    with scripted(OK, OK) as s:
        c = client()
        for i in range(2):
            r = c.request("POST", s.url + "/hook?x=1", data=b'{"a":1}',
                          headers={"Idempotency-Key": f"k{i}"})
            assert r.status_code == 200 and r.json() == {"id": 42}
            assert r.headers.get("content-type") == r.headers["Content-Type"]
        assert s.connections == 1
        first = s.requests[0].decode()
        assert first.startswith("POST /hook?x=1 HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{s.port}\r\n" in first and "Content-Length: 7\r\n" in first
        assert "Idempotency-Key: k0\r\n" in first and first.endswith('\r\n\r\n{"a":1}')
        c.close()


def test_chunked_body_with_interim_answer_and_repeated_headers() -> None:
    reply = (b"HTTP/1.1 100 Continue\r\n\r\n"
             b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\nx-a: 2\r\n"
             b"Content-Type: text/plain; charset=gbk\r\n\r\n"
             b"4;ext=1\r\n\xc4\xe3\xba\xc3\r\n3\r\nabc\r\n0\r\nTrailer: t\r\n\r\n")
    with scripted(reply, OK) as s:
        c = client()
        r = c.request("GET", s.url + "/x")
        assert r.status_code == 201 and r.reason == "Created"
        assert r.content == "你好".encode("gbk") + b"abc" and r.text == "你好abc"
        assert r.headers.get("X-A") == "1, 2"
        assert c.request("GET", s.url + "/y").status_code == 200  # the stream stayed in step
        assert s.connections == 1


def test_http10_body_until_close_is_read_and_connection_not_reused() -> None:
    def until_close(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhello")  # no length: the close ends the body

    with scripted(until_close, OK) as s:
        c = client()
        assert c.request("GET", s.url).content == b"hello"
        assert c.request("GET", s.url).status_code == 200
        assert s.connections == 2


def test_body_cut_short_is_ambiguous() -> None:
    def short(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        conn.shutdown(socket.SHUT_WR)

    with scripted(short) as s:
        t = HttpTransport(timeout=2)
        with pytest.raises(DeliveryError) as info:
            t.request("POST", s.url + "/hook", data=b"x")
        assert "cut short" in info.value.reason
        assert info.value.retryable and info.value.ambiguous


def test_reset_without_answer_is_ambiguous_and_garbage_is_lost() -> None:
    with scripted(lambda conn: conn.sendall(b"SSH-2.0-nope\r\n")) as s:
        with pytest.raises(DeliveryError) as info:
            HttpTransport(timeout=2).request("POST", s.url, data=b"x")
        assert "connection lost after sending" in info.value.reason and info.value.ambiguous


def test_a_connection_closed_while_idle_is_replaced_before_reuse() -> None:
    def answer_then_close(conn: socket.socket) -> None:
        conn.sendall(OK)  # a keep-alive answer; the server then closes the idle connection

    with scripted(answer_then_close, OK) as s:
        c = client()
        assert c.request("POST", s.url, data=b"1").status_code == 200
        time.sleep(0.2)  # let the FIN arrive
        assert c.request("POST", s.url, data=b"2").status_code == 200
        assert s.connections == 2


def test_redirects_are_followed_for_get_only() -> None:
    moved = b"HTTP/1.1 302 Found\r\nLocation: /new\r\nContent-Length: 0\r\n\r\n"
    with scripted(moved, OK, moved) as s:
        t = HttpTransport(timeout=2)
        r = t.request("GET", s.url + "/old")
        assert r.status_code == 200 and r.url.endswith("/new")
        assert s.requests[1].startswith(b"GET /new HTTP/1.1")
        with pytest.raises(DeliveryError) as info:
            t.request("POST", s.url + "/old", data=b"x")
        assert not info.value.retryable and "redirect to /new" in info.value.reason


def test_read_timeout_is_ambiguous_connect_refused_is_not() -> None:
    with scripted(lambda conn: time.sleep(1.0)) as s:
        with pytest.raises(DeliveryError) as info:
            HttpTransport(timeout=0.2).request("POST", s.url, data=b"x")
        assert info.value.ambiguous and "no response" in info.value.reason
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(DeliveryError) as info:
        HttpTransport(timeout=0.5).request("POST", f"http://127.0.0.1:{port}/", data=b"x")
    assert info.value.retryable and not info.value.ambiguous
    assert "cannot connect" in info.value.reason


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError):
        request_head("POST", "/", "h", {"X-A": "1\r\nX-Evil: 2"}, b"")
    with pytest.raises(ValueError):
        request_head("POST", "/", "h", {"X A": "1"}, b"")


def test_form_encoding_matches_requests() -> None:
    form = [("api_key", "k&y"), ("description", "路灯 不亮\n[feedback-hub FB-1]"),
            ("attribute[hub_reference]", "FB-1")]
    headers: dict[str, str] = {}
    ours = encode_body(form, headers)
    theirs = requests.Request("POST", "http://x/", data=form).prepare()
    assert ours == theirs.body.encode() and headers["Content-Type"] == \
        theirs.headers["Content-Type"]
    params = {"service_request_id": "a,b", "jurisdiction_id": None, "n": 3,
              "code": ["001", "002"]}
    theirs = requests.Request("GET", "http://x/r", params=params).prepare()
    assert "http://x/r?" + encode_query(params) == theirs.url


def test_headers_ignore_case() -> None:
    h = Headers({"retry-after": "5", "content-type": 'application/json; charset="utf-8"'})
    assert h.get("Retry-After") == "5" and "RETRY-AFTER" in h and h["Retry-after"] == "5"
    assert h.content_charset() == "utf-8" and h.get("missing", "d") == "d"


def test_signer_matches_sign_headers() -> None:
    body = "路灯".encode()
    assert Signer("s3cret").headers(body, now=1700000000) == \
        sign_headers("s3cret", body, now=1700000000)
    assert "s3cret" not in repr(Signer("s3cret"))


def test_proxied_origins_go_through_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("NO_PROXY", "direct.example")
    t = HttpTransport()
    assert not t._pooled("http://city.example/hook")
    assert t._pooled("http://direct.example/hook")
    assert not HttpTransport(lambda: requests.Session())._pooled("http://direct.example/")


def test_credentials_in_the_url_become_basic_auth_and_never_show_in_errors() -> None:
    with scripted(OK) as s:
        url = s.url.replace("http://", "http://hub:s%3Acret@") + "/hook"
        assert client().request("POST", url, data=b"x").status_code == 200
        # what requests sends for the same URL
        expected = requests.Request("POST", url).prepare().headers["Authorization"]
        assert f"Authorization: {expected}\r\n".encode() in s.requests[0]
    with pytest.raises(DeliveryError) as info:
        HttpTransport().request("POST", "ftp://hub:s3cret@example.org/x", data=b"x")
    assert not info.value.retryable and "s3cret" not in info.value.reason
