"""The HTTP/1.1 wire format the lean client speaks: a request head out, a response in.

Only what a client of JSON and form APIs needs (RFC 9112): a request line and headers with
``Content-Length``; a status line, headers (case-insensitive, repeated ones joined with ``, ``),
interim 1xx answers skipped, and a body delimited by ``Transfer-Encoding: chunked``,
``Content-Length``, or the end of the connection; no body for HEAD, 1xx, 204 and 304.
:mod:`http.client` does the same with an :mod:`email` header parser that costs more than the
rest of a small request together.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

MAX_LINE = 65536
MAX_HEADERS = 100
#: What a header name or value must not hold: it would split or corrupt the request.
_BAD_NAME = re.compile(r"[\r\n\0:\s]|^$")
#: Header names already checked against _BAD_NAME (bounded: names come from code and config).
_GOOD_NAMES: set[str] = set()


class ProtocolError(Exception):
    """The server closed the connection or answered something that is not HTTP/1.x."""


class Truncated(Exception):
    """The body ended before its announced length."""


class Headers(dict[str, str]):
    """Response headers by lower-case name; lookups ignore case."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        """The value of ``name`` (any case), or ``default``."""
        return dict.get(self, name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return dict.__getitem__(self, name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and dict.__contains__(self, name.lower())

    def content_charset(self) -> str | None:
        """The ``charset`` parameter of ``Content-Type``, if any."""
        for param in (self.get("content-type") or "").split(";")[1:]:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset":
                return value.strip().strip('"') or None
        return None


@dataclass
class Answer:
    """A response read in full."""

    status: int
    reason: str
    headers: Headers
    body: bytes
    will_close: bool


def request_head(method: str, target: str, host: str, headers: Mapping[str, str],
                 body: bytes | None) -> bytes:
    """The request line and headers, ``Content-Length`` set from the body.

    Raises ValueError for a header name or value that would split the request (CR, LF, NUL),
    as :mod:`http.client` does.
    """
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        value = str(value)
        if name not in _GOOD_NAMES:  # a sink sends the same few names again and again
            if _BAD_NAME.search(name):
                raise ValueError(f"invalid header {name!r}")
            if len(_GOOD_NAMES) < 1024:
                _GOOD_NAMES.add(name)
        if "\r" in value or "\n" in value or "\0" in value:  # would split the request
            raise ValueError(f"invalid header {name!r}")
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    elif method in ("POST", "PUT", "PATCH"):
        lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _line(rfile: BinaryIO) -> bytes:
    line = rfile.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ProtocolError("line too long")
    return line


def _read_headers(rfile: BinaryIO) -> Headers:
    headers = Headers()
    for _ in range(MAX_HEADERS + 1):
        line = _line(rfile)
        if line in (b"\r\n", b"\n"):
            return headers
        if not line:
            raise ProtocolError("connection closed inside the headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line {line[:60]!r}")
        key = name.strip().lower()
        value = value.strip()
        old = dict.get(headers, key)
        dict.__setitem__(headers, key, value if old is None else f"{old}, {value}")
    raise ProtocolError(f"more than {MAX_HEADERS} headers")


def _read_exact(rfile: BinaryIO, n: int) -> bytes:
    data = rfile.read(n)
    if len(data) < n:
        raise Truncated(f"{len(data)} of {n} bytes read")
    return data


def _read_chunked(rfile: BinaryIO) -> bytes:
    parts = []
    while True:
        line = _line(rfile)
        if not line:
            raise Truncated("connection closed inside a chunked body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {line[:40]!r}") from None
        if size == 0:
            _read_headers(rfile)  # trailers, ignored
            return b"".join(parts)
        parts.append(_read_exact(rfile, size))
        if _line(rfile) not in (b"\r\n", b"\n"):
            raise ProtocolError("chunk not followed by CRLF")


def read_response(rfile: BinaryIO, method: str) -> Answer:
    """Read one whole response (interim 1xx answers skipped) from a buffered socket file.

    Raises:
        ProtocolError: the connection closed before an answer, or the answer is not HTTP.
        Truncated: the body is shorter than announced.
        OSError: from the socket (TimeoutError included).
    """
    while True:
        line = _line(rfile)
        if not line:
            raise ProtocolError("connection closed without an answer")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ProtocolError(f"bad status line {line[:60]!r}")
        status = int(code)
        headers = _read_headers(rfile)
        if not 100 <= status < 200 or status == 101:
            break
    tokens = (headers.get("connection") or "").lower()
    will_close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        body = b""
    elif "chunked" in (headers.get("transfer-encoding") or "").lower():
        body = _read_chunked(rfile)
    elif headers.get("content-length") is not None:
        try:
            length = int(headers["content-length"].split(",")[0])
        except ValueError:
            raise ProtocolError("bad Content-Length") from None
        body = _read_exact(rfile, length)
    else:  # delimited by the end of the connection
        body = rfile.read()
        will_close = True
    return Answer(status, reason.strip(), headers, body, will_close)


__all__ = ["Answer", "Headers", "ProtocolError", "Truncated", "read_response", "request_head"]
