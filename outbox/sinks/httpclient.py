"""A lean HTTP/1.1 client for the sinks: pooled keep-alive connections, no retries.

A small signed POST through a :class:`requests.Session` costs about 530 µs of CPU (session
merging, hooks, cookie jars, adapters, urllib3's retry and response layers, the email header
parser); through this client about 60 µs. Under the interpreter lock that cost, not the
network, bounds a delivery worker. This client keeps only what the sinks need:

* one pool of idle keep-alive connections per origin (scheme, host, port), shared by the
  delivery threads; a connection the server closed while idle is noticed before reuse;
* a connect timeout for TCP + TLS, then a read timeout for every later socket operation;
* TLS verified by default (``requests``' CA bundle, or a given bundle/folder, or none when
  ``verify`` is False), hostname checked;
* redirects followed for GET/HEAD only (up to :data:`MAX_REDIRECTS`; ``Authorization`` is dropped
  when the origin changes); any other answer, 3xx included, is returned as it is;
* no retries at all: the outbox owns them.

Failures without an HTTP answer raise :class:`HttpClientError` with a ``kind`` saying how far
the request got (see :data:`KINDS`); :mod:`outbox.sinks.http` turns it into a classified
delivery error. Proxies are not handled here: the transport sends proxied origins through
:mod:`requests`.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import select
import socket
import ssl
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import unquote, urlencode, urljoin, urlsplit

from outbox.sinks.http11 import Headers, ProtocolError, Truncated, read_response, request_head

#: How far a failed request got: ``connect`` (refused, DNS, unreachable), ``connect_timeout``
#: and ``tls`` (handshake or certificate) sent nothing; ``read_timeout``, ``lost`` (reset or
#: closed after sending) and ``truncated`` (body cut short) may have been acted on.
KINDS = frozenset({"connect", "connect_timeout", "tls", "read_timeout", "lost", "truncated",
                   "invalid_url"})
MAX_REDIRECTS = 10
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "feedback-hub"

Params = Mapping[str, Any] | Sequence[tuple[str, Any]] | None
Body = bytes | str | Mapping[str, Any] | Sequence[tuple[str, Any]] | None


class HttpClientError(Exception):
    """A request that got no HTTP answer; ``kind`` is one of :data:`KINDS`."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class HttpResponse:
    """An answer read in full (the attributes the sinks use, named as in :mod:`requests`)."""

    __slots__ = ("content", "headers", "reason", "status_code", "url")

    def __init__(self, status_code: int, reason: str, headers: Headers,
                 content: bytes, url: str) -> None:
        self.status_code = status_code
        self.reason = reason
        self.headers = headers  # case-insensitive .get()
        self.content = content
        self.url = url

    @property
    def text(self) -> str:
        """The body decoded with the charset the answer names (UTF-8 otherwise)."""
        charset = self.headers.content_charset() or "utf-8"
        try:
            return self.content.decode(charset, errors="replace")
        except LookupError:  # an unknown charset name
            return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON (raises ValueError when it is not)."""
        return json.loads(self.content)


def ssl_context(verify: bool | str) -> ssl.SSLContext:
    """A client TLS context: ``True`` = the CA bundle requests would use, a path, or ``False``."""
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if verify is True:
        from requests.utils import DEFAULT_CA_BUNDLE_PATH

        verify = DEFAULT_CA_BUNDLE_PATH
    if os.path.isdir(verify):
        return ssl.create_default_context(capath=verify)
    return ssl.create_default_context(cafile=verify)


def encode_query(params: Params) -> str:
    """``a=1&b=x+y`` as requests encodes it: a list value repeats the key, None is left out."""
    if not params:
        return ""
    pairs: list[tuple[str, Any]] = []
    for key, values in (params.items() if isinstance(params, Mapping) else params):
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            values = [values]
        pairs.extend((key, v) for v in values if v is not None)
    return urlencode(pairs)


def encode_body(data: Body, headers: dict[str, str]) -> bytes | None:
    """Request body bytes; a mapping or list of pairs becomes a form (sets Content-Type)."""
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return encode_query(data).encode("ascii")


class _Target(NamedTuple):
    """Where a URL sends a request."""

    origin: tuple[str, str, int]  # scheme, host, port
    path: str  # the request target: path and query
    host: str  # the Host header
    auth: str | None  # Basic credentials from user:password@ in the URL, as requests sends


@functools.lru_cache(maxsize=256)
def _parse_url(url: str) -> _Target:
    """Parse an absolute http(s) URL once (sinks reuse a few URLs)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        raise HttpClientError("invalid_url", "the port is not a number") from None
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        # never echo the URL: it may carry credentials
        raise HttpClientError("invalid_url", f"not an http(s) URL with a host (scheme "
                                             f"{scheme!r})")
    default = 443 if scheme == "https" else 80
    host_header = f"[{host}]" if ":" in host else host
    if port and port != default:
        host_header += f":{port}"
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode("latin-1")).decode("ascii")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target((scheme, host, port or default), path, host_header, auth)


class _Connection:
    """One keep-alive connection, connected within ``connect_timeout`` (TCP and the TLS
    handshake); every later socket operation waits at most ``read_timeout``."""

    __slots__ = ("rfile", "sock")

    def __init__(self, origin: tuple[str, str, int], connect_timeout: float,
                 read_timeout: float, tls: ssl.SSLContext | None) -> None:
        _, host, port = origin
        sock = socket.create_connection((host, port), connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)
            sock.settimeout(read_timeout)
        except BaseException:
            sock.close()
            raise
        self.sock: socket.socket | None = sock
        self.rfile = sock.makefile("rb")  # buffered, kept for the connection's life

    def dropped(self) -> bool:
        """True when the server closed this idle connection (readable means EOF or junk)."""
        if self.sock is None:
            return True
        try:
            return bool(select.select([self.sock], [], [], 0)[0])
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        """Close the socket."""
        if self.sock is not None:
            self.rfile.close()
            self.sock.close()
            self.sock = None


class HttpClient:
    """Pooled keep-alive connections per origin; thread-safe; no retries.

    Args:
        connect_timeout: seconds for TCP connect and TLS handshake.
        read_timeout: seconds for each later socket operation (the answer included).
        verify: see :func:`ssl_context`.
        headers: sent with every request (per-request headers win).
        pool_size: idle connections kept per origin.
    """

    def __init__(self, *, connect_timeout: float, read_timeout: float,
                 verify: bool | str = True, headers: Mapping[str, str] | None = None,
                 pool_size: int = 10) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.verify = verify
        self.headers = {"User-Agent": USER_AGENT, "Accept": "*/*",
                        "Accept-Encoding": "identity", **(headers or {})}
        self.pool_size = pool_size
        self._idle: dict[tuple[str, str, int], deque[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    def request(self, method: str, url: str, *, params: Params = None, data: Body = None,
                headers: Mapping[str, str] | None = None,
                follow_redirects: bool | None = None) -> HttpResponse:
        """Send one request and read the whole answer; raise :class:`HttpClientError`."""
        method = method.upper()
        if follow_redirects is None:
            follow_redirects = method in ("GET", "HEAD")
        hdrs = {**self.headers, **(headers or {})}
        body = encode_body(data, hdrs)
        query = encode_query(params)
        if query:
            url = f"{url}{'&' if '?' in url else '?'}{query}"
        for _ in range(MAX_REDIRECTS + 1):
            resp = self._once(method, url, body, hdrs)
            location = resp.headers.get("Location")
            if not (follow_redirects and resp.status_code in REDIRECT_STATUS and location):
                return resp
            target = urljoin(url, location)
            if _parse_url(target).origin != _parse_url(url).origin:
                hdrs.pop("Authorization", None)
            url = target
        return resp

    def _once(self, method: str, url: str, body: bytes | None,
              headers: dict[str, str]) -> HttpResponse:
        origin, conn = self._send(method, url, body, headers)
        return self._receive(origin, conn, method, url)

    def _send(self, method: str, url: str, body: bytes | None, headers: dict[str, str]
              ) -> tuple[tuple[str, str, int], _Connection]:
        """Write one request on a pooled (or new) connection; return where it went."""
        origin, path, host, auth = _parse_url(url)
        if auth is not None and "Authorization" not in headers:
            headers = {**headers, "Authorization": auth}
        head = request_head(method, path, host, headers, body)
        conn = self._checkout(origin)
        sock = conn.sock
        assert sock is not None
        try:
            sock.sendall(head + body if body else head)
        except BaseException as exc:
            conn.close()
            raise _failure(exc) from None
        return origin, conn

    def _receive(self, origin: tuple[str, str, int], conn: _Connection, method: str,
                 url: str) -> HttpResponse:
        """Read the answer to the request just sent on ``conn``; pool or close it after."""
        try:
            answer = read_response(conn.rfile, method)
        except BaseException as exc:
            conn.close()
            raise _failure(exc) from None
        content = answer.body
        encoding = (answer.headers.get("content-encoding") or "").lower()
        if encoding in ("gzip", "deflate") and content:
            try:
                content = zlib.decompress(content, 47 if encoding == "gzip" else 15)
            except zlib.error as exc:
                conn.close()
                raise HttpClientError("truncated", f"bad {encoding} body: {exc}") from None
        if answer.will_close:
            conn.close()
        else:
            self._checkin(origin, conn)
        return HttpResponse(answer.status, answer.reason, answer.headers, content, url)

    def _checkout(self, origin: tuple[str, str, int]) -> _Connection:
        """An idle connection to ``origin`` that is still open, or a new one."""
        idle = self._idle.get(origin)
        while idle:
            try:
                conn = idle.pop()
            except IndexError:  # another thread took the last one
                break
            if not conn.dropped():
                return conn
            conn.close()
        tls = None
        if origin[0] == "https":
            if self._tls is None:
                self._tls = ssl_context(self.verify)
            tls = self._tls
        try:
            return _Connection(origin, self.connect_timeout, self.read_timeout, tls)
        except TimeoutError as exc:
            raise HttpClientError("connect_timeout", _why(exc)) from None
        except (ssl.SSLError, ssl.CertificateError) as exc:
            raise HttpClientError("tls", _why(exc)) from None
        except OSError as exc:
            raise HttpClientError("connect", _why(exc)) from None

    def _checkin(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, deque())
        if len(idle) < self.pool_size:
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        pools, self._idle = self._idle, {}
        for idle in pools.values():
            while idle:
                idle.pop().close()


def _failure(exc: BaseException) -> BaseException:
    """What a socket or protocol error while sending or reading an answer means."""
    if isinstance(exc, TimeoutError):
        return HttpClientError("read_timeout", _why(exc))
    if isinstance(exc, Truncated):
        return HttpClientError("truncated", str(exc))
    if isinstance(exc, (OSError, ProtocolError)):
        return HttpClientError("lost", _why(exc))
    return exc


def _why(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


__all__ = [
    "KINDS",
    "HttpClient",
    "HttpClientError",
    "HttpResponse",
    "encode_body",
    "encode_query",
    "ssl_context",
]
