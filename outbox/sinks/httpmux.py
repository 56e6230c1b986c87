"""Several requests in flight from ONE thread over the lean client's pooled connections.

A delivery worker that keeps N calls in flight on N threads pays for every answer twice: the
thread that blocked on it wakes, then waits for the interpreter lock, which the thread writing
receipts to the store holds (about 110 µs of CPU per signed POST on 8 threads, against about
62 µs from one thread watching the sockets; docs/sinks.md). :class:`HttpMux` writes each
request on a connection of the :class:`~outbox.sinks.httpclient.HttpClient` pool, watches the
connections with ``select``, and reads an answer once its connection is readable, with the
same classification of failures as :meth:`HttpClient.request`:

* nothing could be sent (refused, DNS, connect timeout, TLS) → ``connect``/``tls``/...;
* no answer ``read_timeout`` seconds after the request was written → ``read_timeout`` (the
  connection is closed: its answer can no longer be told from the next one's);
* reset or closed after sending, body cut short → ``lost``/``truncated``.

An answer whose first bytes have arrived is read to its end with the socket's read timeout per
operation, as the blocking client does (a server that trickles one answer delays the others by
at most that much). No redirects are followed (it is meant for POST, which never follows them).
"""

from __future__ import annotations

import select
import time
from collections.abc import Mapping
from typing import Any

from outbox.sinks.httpclient import (
    Body,
    HttpClient,
    HttpClientError,
    HttpResponse,
    _Connection,
    encode_body,
)

Result = HttpResponse | HttpClientError


class _Exchange:
    """One request written, its answer not read yet."""

    __slots__ = ("conn", "deadline", "method", "origin", "sent_at", "token", "url")

    def __init__(self, token: Any, origin: tuple[str, str, int], conn: _Connection,
                 method: str, url: str, sent_at: float, deadline: float) -> None:
        self.token, self.origin, self.conn = token, origin, conn
        self.method, self.url, self.sent_at, self.deadline = method, url, sent_at, deadline


class HttpMux:
    """Up to ``width`` requests of one :class:`HttpClient` in flight, driven by one thread.

    Not thread-safe: one thread calls :meth:`send` and :meth:`poll`. Connections come from and
    go back to the client's pool, so blocking requests of the same client may share them.

    Args:
        client: whose connections, headers and timeouts are used.
        width: requests in flight at most.
        wake: a file descriptor (or object with ``fileno()``) that another thread makes
            readable to end a :meth:`poll` early (e.g. when more requests are queued).
    """

    def __init__(self, client: HttpClient, width: int, wake: Any = None) -> None:
        self.client = client
        self.width = max(1, width)
        # select() over the few sockets in flight: one system call per poll, none per request
        # (an epoll set would need two per request, to add and remove its connection)
        self._wake = [wake] if wake is not None else []
        self._ready: list[tuple[Any, Result, float]] = []
        self._busy: dict[Any, _Exchange] = {}  # by socket

    def free(self) -> int:
        """How many more requests may be sent now."""
        return self.width - len(self._busy) - len(self._ready)

    def pending(self) -> int:
        """Requests sent whose result :meth:`poll` has not returned yet."""
        return len(self._busy) + len(self._ready)

    def send(self, token: Any, method: str, url: str, *, data: Body = None,
             headers: Mapping[str, str] | None = None) -> None:
        """Write a request now; its result comes back from :meth:`poll` with ``token``."""
        method = method.upper()
        hdrs = {**self.client.headers, **(headers or {})}
        started = time.monotonic()
        try:
            body = encode_body(data, hdrs)
            origin, conn = self.client._send(method, url, body, hdrs)
        except HttpClientError as exc:
            self._ready.append((token, exc, started))
            return
        assert conn.sock is not None
        self._busy[conn.sock] = _Exchange(
            token, origin, conn, method, url, started, started + self.client.read_timeout)

    def poll(self, timeout: float | None = None) -> list[tuple[Any, Result, float]]:
        """Results of finished requests as ``(token, response or error, seconds)``.

        Waits until at least one request finishes, ``timeout`` passes, or the wake descriptor
        becomes readable (then the list may be empty; the caller drains the descriptor).
        """
        out, self._ready = self._ready, []
        if not self._busy:
            return out
        now = time.monotonic()
        wait = min(x.deadline for x in self._busy.values()) - now
        if timeout is not None:
            wait = min(wait, timeout)
        if out:
            wait = 0.0
        readable = select.select([*self._busy, *self._wake], [], [], max(0.0, wait))[0]
        for sock in readable:
            x = self._busy.pop(sock, None)
            if x is None:  # the wake descriptor: the caller has more to send
                continue
            try:
                result: Result = self.client._receive(x.origin, x.conn, x.method, x.url)
            except HttpClientError as exc:
                result = exc
            out.append((x.token, result, time.monotonic() - x.sent_at))
        now = time.monotonic()
        for sock in [sock for sock, x in self._busy.items() if x.deadline <= now]:
            x = self._busy.pop(sock)
            x.conn.close()  # a late answer on it could be taken for the next request's
            out.append((x.token, HttpClientError(
                "read_timeout", f"no answer within {self.client.read_timeout:g}s"),
                now - x.sent_at))
        return out

    def close(self) -> None:
        """Close the connections of requests still in flight (their answers are lost)."""
        for x in self._busy.values():
            x.conn.close()
        self._busy.clear()


__all__ = ["HttpMux", "Result"]
