"""The HTTP layer shared by the ``webhook`` and ``open311`` sinks.

One :class:`HttpTransport` per sink owns its connections, fixed timeouts and TLS settings, and
turns every outcome into the sink contract: a response to keep, or a classified
:class:`~outbox.sinks.base.DeliveryError`.

* By default requests go through :class:`~outbox.sinks.httpclient.HttpClient`: pooled
  keep-alive HTTP/1.1 connections at about a ninth of the CPU of a :mod:`requests` call,
  which is what bounds a delivery worker. Origins that need a proxy (``HTTPS_PROXY``,
  ``NO_PROXY``... in the environment) and transports given a session factory use a
  :class:`requests.Session` instead; both classify failures the same way.
* No retries happen here (no urllib3 retries, no redirects for POST): the outbox owns
  retries, so every attempt is counted, backed off and visible in the timeline.
* 2xx is success; 408, 425, 429 and 5xx are retryable (honouring ``Retry-After`` given as
  seconds or an HTTP date, capped); any other 4xx (and an unexpected 3xx) is final.
* ``ambiguous`` means the request may have reached the remote and been acted on: a read timeout,
  a connection reset or close after the request was written, a body cut short, or a 500/502/504
  (a gateway may have forwarded it). A connect timeout, a refused connection, a DNS failure or a
  TLS handshake failure are NOT ambiguous: nothing was sent.

The session comes from a factory so another owner of sessions can be plugged in, e.g. Airflow's
``HttpHook`` (apache-airflow-providers-http), whose ``get_conn()`` returns a configured
:class:`requests.Session`; every request of that transport then goes through it::

    hook = HttpHook(method="POST", http_conn_id="city_open311")
    transport = HttpTransport(hook.get_conn)
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
)
from urllib3.util.retry import Retry

from outbox.sinks.base import DeliveryError
from outbox.sinks.httpclient import Body, HttpClient, HttpClientError, HttpResponse, Params
from outbox.sinks.httpmux import HttpMux

logger = logging.getLogger(__name__)

#: Statuses worth another attempt later (the request was not acted on, or may succeed later).
RETRYABLE_STATUS = frozenset({408, 425, 429})
#: 5xx statuses after which the remote may already have acted on the request.
AMBIGUOUS_STATUS = frozenset({500, 502, 504})
#: Longest body kept in an error (dead letters show it to the operator).
MAX_ERROR_BODY = 2000

SessionFactory = Callable[[], requests.Session]
#: An answer from either client (same attribute names).
Response = HttpResponse | requests.Response


def default_session(pool_size: int = 10, base_url: str | None = None) -> requests.Session:
    """A session with pooled keep-alive connections and no transport-level retries.

    With ``base_url``, proxy settings (``HTTPS_PROXY``, ``NO_PROXY``...) are read from the
    environment once for that URL instead of on every request, which requests otherwise does
    and which costs more than the request itself on a local network.
    """
    session = requests.Session()
    if base_url is not None:
        session.proxies.update(requests.utils.get_environ_proxies(base_url))
        session.trust_env = False
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size,
                          max_retries=Retry(total=0, connect=0, read=False, redirect=0,
                                            status=0, raise_on_status=False))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def parse_retry_after(value: str | None, now: datetime | None = None,
                      cap: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date).

    Args:
        value: the header value.
        now: the current time (for HTTP dates).
        cap: never return more than this.

    Returns:
        Seconds (>= 0), or None when the header is missing or unreadable.
    """
    if not value:
        return None
    value = value.strip()
    seconds: float | None
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())
    if cap is not None:
        seconds = min(seconds, cap)
    return seconds


def body_excerpt(resp: Response, limit: int = MAX_ERROR_BODY) -> str:
    """The start of a response body as text (for dead letters)."""
    try:
        text = resp.text
    except Exception:  # a body that cannot be decoded is still worth a hint
        text = repr(resp.content[:limit])
    return text[:limit]


def classify_response(resp: Response, *, what: str = "request",
                      retry_after_cap: float | None = 3600.0,
                      describe: Callable[[Response], str] | None = None) -> None:
    """Raise a classified :class:`DeliveryError` unless the response is a 2xx.

    Args:
        resp: the response.
        what: names the call in the reason (``POST requests.json``).
        retry_after_cap: longest ``Retry-After`` honoured, seconds.
        describe: turns an error body into a short reason (e.g. Open311 error arrays).
    """
    code = resp.status_code
    if 200 <= code < 300:
        return
    detail = ""
    if describe is not None:
        try:
            detail = describe(resp)
        except Exception:
            detail = ""
    reason = f"{what} answered {code} {resp.reason or ''}".rstrip()
    if detail:
        reason += f": {detail}"
    body = body_excerpt(resp)
    if code in RETRYABLE_STATUS or code >= 500:
        raise DeliveryError(reason, retryable=True, status_code=code, body=body,
                            retry_after=parse_retry_after(resp.headers.get("Retry-After"),
                                                          cap=retry_after_cap),
                            ambiguous=code in AMBIGUOUS_STATUS)
    if 300 <= code < 400:
        reason += f" (redirect to {resp.headers.get('Location', '?')}; fix the configured URL)"
    raise DeliveryError(reason, retryable=False, status_code=code, body=body)


def classify_exception(exc: BaseException, *, what: str = "request") -> DeliveryError:
    """Turn a :mod:`requests` exception into a classified :class:`DeliveryError`."""
    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return DeliveryError(f"{what}: connect timeout", retryable=True)
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return DeliveryError(f"{what}: no response within the timeout (the remote may have "
                             f"acted on it)", retryable=True, ambiguous=True)
    if isinstance(exc, requests.exceptions.SSLError):
        # a certificate problem does not fix itself: dead-letter so an operator looks at it
        return DeliveryError(f"{what}: TLS error ({_root(exc)}); check verify_tls/ca_bundle",
                             retryable=False)
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return DeliveryError(f"{what}: response cut short ({_root(exc)})", retryable=True,
                             ambiguous=True)
    if isinstance(exc, requests.exceptions.ConnectionError):
        inner = exc.args[0] if exc.args else None
        if isinstance(inner, MaxRetryError):
            inner = inner.reason
        if isinstance(inner, (NewConnectionError, ConnectTimeoutError, NameResolutionError)):
            return DeliveryError(f"{what}: cannot connect ({_root(exc)})", retryable=True)
        if isinstance(inner, ProtocolError) or inner is None or isinstance(inner, OSError):
            return DeliveryError(f"{what}: connection lost after sending ({_root(exc)})",
                                 retryable=True, ambiguous=True)
        return DeliveryError(f"{what}: connection error ({_root(exc)})", retryable=True,
                             ambiguous=True)
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                        requests.exceptions.InvalidSchema)):
        return DeliveryError(f"{what}: invalid URL ({exc})", retryable=False)
    return DeliveryError(f"{what}: {name}: {_root(exc)}", retryable=True, ambiguous=True)


def classify_client_error(exc: HttpClientError, *, what: str = "request") -> DeliveryError:
    """Turn an :class:`HttpClientError` into a classified :class:`DeliveryError`.

    Reasons read the same as those of :func:`classify_exception`.
    """
    kind, detail = exc.kind, exc.detail
    if kind == "connect_timeout":
        return DeliveryError(f"{what}: connect timeout", retryable=True)
    if kind == "connect":
        return DeliveryError(f"{what}: cannot connect ({detail})", retryable=True)
    if kind == "tls":
        return DeliveryError(f"{what}: TLS error ({detail}); check verify_tls/ca_bundle",
                             retryable=False)
    if kind == "invalid_url":
        return DeliveryError(f"{what}: invalid URL ({detail})", retryable=False)
    if kind == "read_timeout":
        return DeliveryError(f"{what}: no response within the timeout (the remote may have "
                             f"acted on it)", retryable=True, ambiguous=True)
    if kind == "truncated":
        return DeliveryError(f"{what}: response cut short ({detail})", retryable=True,
                             ambiguous=True)
    return DeliveryError(f"{what}: connection lost after sending ({detail})", retryable=True,
                         ambiguous=True)


def _root(exc: BaseException) -> str:
    """The innermost readable cause of a requests/urllib3 exception chain."""
    seen = exc
    for _ in range(6):
        nxt = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        nxt = nxt or getattr(seen, "reason", None)
        if not isinstance(nxt, BaseException):
            break
        seen = nxt
    text = str(seen) or type(seen).__name__
    # urllib3 messages carry pool object reprs: keep the useful tail
    if "):" in text:
        text = text.rsplit("):", 1)[-1].strip()
    return f"{type(seen).__name__}: {text}"[:300]


class HttpTransport:
    """A sink's HTTP client: pooled connections, fixed timeouts and TLS, classified failures.

    Args:
        session_factory: when given, every request goes through the :class:`requests.Session`
            it builds (on first use), e.g. an Airflow ``HttpHook(...).get_conn``; otherwise
            the lean pooled client is used, and a default session only for proxied origins.
        timeout: read timeout in seconds (also the longest wait between bytes of the answer).
        connect_timeout: TCP/TLS connect timeout in seconds.
        verify: True (the CA bundle requests uses, or ``REQUESTS_CA_BUNDLE``), False, or a CA
            bundle path.
        headers: sent with every request.
        retry_after_cap: longest ``Retry-After`` honoured, in seconds.
        base_url: where requests go (proxy settings are resolved for it once).
        pool_size: keep-alive connections kept (at least the sink's concurrency).
    """

    def __init__(self, session_factory: SessionFactory | None = None, *, timeout: float = 10.0,
                 connect_timeout: float = 5.0, verify: bool | str = True,
                 headers: Mapping[str, str] | None = None,
                 retry_after_cap: float = 3600.0, base_url: str | None = None,
                 pool_size: int = 10) -> None:
        self._factory = session_factory or (lambda: default_session(pool_size, base_url))
        self._session: requests.Session | None = None
        self.timeout = (connect_timeout, timeout)
        if verify is True and session_factory is None:
            # neither the pooled client nor the default session reads the environment per
            # request: honour a CA bundle named there once, as requests would
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get(
                "CURL_CA_BUNDLE") or True
        self.verify = verify
        self.headers = dict(headers or {})
        self.retry_after_cap = retry_after_cap
        self._client = None if session_factory is not None else HttpClient(
            connect_timeout=connect_timeout, read_timeout=timeout, verify=verify,
            pool_size=pool_size)
        self._direct: dict[str, bool] = {}  # scheme://host:port -> no proxy applies

    @property
    def session(self) -> requests.Session:
        """The requests session (built on first use) for proxied origins or a factory."""
        if self._session is None:
            self._session = self._factory()
        return self._session

    def _pooled(self, url: str) -> bool:
        """True when ``url`` goes through the lean client (no factory, no proxy for it)."""
        if self._client is None:
            return False
        origin = url.split("/", 3)[:3]
        key = "/".join(origin)
        direct = self._direct.get(key)
        if direct is None:
            proxies = requests.utils.get_environ_proxies(url)
            direct = self._direct[key] = requests.utils.select_proxy(url, proxies) is None
        return direct

    def request(self, method: str, url: str, *, what: str | None = None,
                describe: Callable[[Response], str] | None = None, check: bool = True,
                params: Params = None, data: Body = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """Send one request; raise a classified :class:`DeliveryError` on failure.

        Args:
            method: HTTP method (redirects are followed for GET and HEAD only).
            url: absolute URL.
            what: names the call in error reasons (default ``METHOD path``).
            describe: extracts a reason from an error body.
            check: raise for non-2xx responses (else return them as they are).
            params: query parameters (a mapping or pairs).
            data: body bytes or text, or form fields (a mapping or pairs).
            headers: added to the transport's headers for this request.
        """
        what = what or f"{method} {url.split('?')[0].rsplit('/', 1)[-1]}"
        hdrs = {**self.headers, **(headers or {})}
        started = time.monotonic()
        resp: Response
        try:
            if self._pooled(url):
                assert self._client is not None
                resp = self._client.request(method, url, params=params, data=data,
                                            headers=hdrs)
            else:
                resp = self.session.request(method, url, params=params, data=data,
                                            headers=hdrs, timeout=self.timeout,
                                            verify=self.verify, allow_redirects=method.upper()
                                            in ("GET", "HEAD"))
        except HttpClientError as exc:
            err = self._result(exc, what, describe, time.monotonic() - started)
            assert isinstance(err, DeliveryError)
            raise err from None
        except requests.exceptions.RequestException as exc:
            err = classify_exception(exc, what=what)
            logger.info("http failure", extra={"what": what, "reason": err.reason,
                                               "ambiguous": err.ambiguous,
                                               "seconds": round(time.monotonic() - started, 3)})
            raise err from None
        if check:
            classify_response(resp, what=what, retry_after_cap=self.retry_after_cap,
                              describe=describe)
        return resp

    def mux(self, url: str, width: int, wake: Any = None) -> TransportMux | None:
        """Requests to ``url`` kept in flight ``width`` at a time by one thread (see
        :mod:`outbox.sinks.httpmux`), or None where they go through :mod:`requests` (a session
        factory, a proxy)."""
        if not self._pooled(url):
            return None
        assert self._client is not None
        return TransportMux(self, HttpMux(self._client, width, wake))

    def _result(self, result: HttpResponse | HttpClientError, what: str,
                describe: Callable[[Response], str] | None, seconds: float
                ) -> Response | DeliveryError:
        """What :meth:`request` returns or raises for one answer (or failure)."""
        if isinstance(result, HttpClientError):
            err = classify_client_error(result, what=what)
            logger.info("http failure", extra={"what": what, "reason": err.reason,
                                               "ambiguous": err.ambiguous,
                                               "seconds": round(seconds, 3)})
            return err
        try:
            classify_response(result, what=what, retry_after_cap=self.retry_after_cap,
                              describe=describe)
        except DeliveryError as err:
            return err
        return result

    def close(self) -> None:
        """Close pooled connections and the session."""
        if self._client is not None:
            self._client.close()
        if self._session is not None:
            self._session.close()
            self._session = None


class TransportMux:
    """:class:`~outbox.sinks.httpmux.HttpMux` with a transport's headers and classification:
    each result is what :meth:`HttpTransport.request` would return, or the
    :class:`DeliveryError` it would raise."""

    def __init__(self, transport: HttpTransport, mux: HttpMux) -> None:
        self.transport = transport
        self._mux = mux

    def free(self) -> int:
        """How many more requests may be sent now."""
        return self._mux.free()

    def pending(self) -> int:
        """Requests sent whose result has not been polled yet."""
        return self._mux.pending()

    def send(self, token: Any, method: str, url: str, *, what: str, data: Body = None,
             headers: Mapping[str, str] | None = None,
             describe: Callable[[Response], str] | None = None) -> None:
        """Write one request; its result comes back from :meth:`poll` with ``token``."""
        self._mux.send((token, what, describe), method, url, data=data,
                       headers={**self.transport.headers, **(headers or {})})

    def poll(self, timeout: float | None = None
             ) -> list[tuple[Any, Response | DeliveryError, float]]:
        """``(token, response or classified error, seconds)`` of finished requests."""
        return [(token, self.transport._result(result, what, describe, seconds), seconds)
                for (token, what, describe), result, seconds in self._mux.poll(timeout)]

    def close(self) -> None:
        """Close the connections still waiting for an answer."""
        self._mux.close()


def json_body(resp: Response, what: str) -> Any:
    """Parse a JSON response body or raise a retryable, ambiguous DeliveryError."""
    try:
        return resp.json()
    except (ValueError, json.JSONDecodeError) as exc:
        # a 2xx we cannot read: the remote probably acted on it, so reconcile before a re-post
        raise DeliveryError(f"{what}: answered {resp.status_code} with a body that is not "
                            f"JSON", retryable=True, status_code=resp.status_code,
                            body=body_excerpt(resp), ambiguous=True) from exc


__all__ = ["HttpTransport", "Response", "TransportMux", "body_excerpt", "classify_client_error",
           "classify_exception", "classify_response", "default_session", "json_body",
           "parse_retry_after"]
