"""``webhook`` sink: POST each case (schema-versioned JSON) to a URL, signed, idempotent.

Request (see docs/sinks.md for how a receiver verifies it)::

    POST <url>
    Content-Type: application/json
    Idempotency-Key: <stable across retries and replays>
    X-FeedbackHub-Timestamp: <unix seconds>
    X-FeedbackHub-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>

    {"schema": "feedback-hub.delivery/1", "kind": "case", "idempotency_key": "...",
     "case": {...Case v1...}, "update": null}

A 2xx answer is the receipt (``id`` or ``reference`` in a JSON answer becomes the remote id).
Failures are classified by :mod:`outbox.sinks.http`. The receiver must dedupe on
``Idempotency-Key``: after a timeout the same delivery is sent again with the same key.

With ``batch_size > 1`` the delivery loop may call :meth:`WebhookSink.deliver_batch`, which
posts ``{"schema": "feedback-hub.batch/1", "deliveries": [...]}`` with one Idempotency-Key for
the batch (derived from the keys it contains); a receiver may answer ``{"results": [{"
idempotency_key": ..., "status": 200, "id": ...}]}`` for per-item outcomes.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, SecretStr

from hub.config_types import ComponentConfig, Duration
from outbox.sinks.base import Delivery, DeliveryError, Receipt
from outbox.sinks.http import HttpTransport, SessionFactory, TransportMux, json_body
from outbox.sinks.signing import Signer

logger = logging.getLogger(__name__)

DELIVERY_SCHEMA = "feedback-hub.delivery/1"
BATCH_SCHEMA = "feedback-hub.batch/1"


class WebhookSinkConfig(ComponentConfig):
    """Config of a ``webhook`` sink."""

    type: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://", description="Where to POST (http:// or https://).")
    secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 signing secret "
                                     "(use ${WEBHOOK_SECRET}); unsigned when empty.")
    timeout: Duration = Field(default=10.0, description="Read timeout per request.")
    connect_timeout: Duration = Field(default=5.0, description="Connect timeout.")
    verify_tls: bool = Field(default=True, description="Verify the server certificate.")
    ca_bundle: str | None = Field(default=None, description="CA file to verify against.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    batch_size: int = Field(default=1, ge=1, le=1000,
                            description="Deliveries per request (1 = one POST per case).")
    retry_after_cap: Duration = Field(default=3600.0, description="Longest Retry-After honoured.")
    concurrency: int = Field(default=4, ge=1, le=16, description="Requests in flight at once "
                       "(1 = strictly one after another).")


class WebhookSink:
    """Posts deliveries as signed JSON."""

    type_name: ClassVar[str] = "webhook"
    Config = WebhookSinkConfig

    def __init__(self, config: WebhookSinkConfig,
                 session_factory: SessionFactory | None = None) -> None:
        self.config = config
        self.name = config.name
        self.concurrency = config.concurrency
        self.batch_size = config.batch_size
        verify: bool | str = (config.ca_bundle or True) if config.verify_tls else False
        self.transport = HttpTransport(session_factory, timeout=config.timeout,
                                       connect_timeout=config.connect_timeout, verify=verify,
                                       headers=config.headers,
                                       retry_after_cap=config.retry_after_cap,
                                       pool_size=max(10, config.concurrency),
                                       base_url=config.url)
        self._signer = Signer(config.secret.get_secret_value()) if config.secret else None

    @classmethod
    def from_config(cls, config: WebhookSinkConfig, runtime: Any) -> WebhookSink:
        """Build from config."""
        return cls(config)

    @staticmethod
    def envelope(delivery: Delivery) -> dict[str, Any]:
        """The JSON document sent for one delivery."""
        return {"schema": DELIVERY_SCHEMA, "kind": delivery.kind,
                "idempotency_key": delivery.idempotency_key,
                "case": delivery.case, "update": delivery.update}

    def _headers(self, body: bytes, key: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if self._signer is not None:
            headers.update(self._signer.headers(body))  # signed now: the timestamp is fresh
        return headers

    def _post(self, body: bytes, key: str) -> Any:
        return self.transport.request("POST", self.config.url, data=body,
                                      headers=self._headers(body, key),
                                      what=f"POST {self.name}")

    def deliver(self, delivery: Delivery) -> Receipt:
        """POST one delivery; raise a classified DeliveryError on failure."""
        body = orjson.dumps(self.envelope(delivery))  # compact UTF-8, as json.dumps would
        resp = self._post(body, delivery.idempotency_key)
        return Receipt(remote_id=_remote_id(resp), status_code=resp.status_code)

    def open_mux(self, width: int, wake: Any = None) -> WebhookMux | None:
        """Deliveries kept in flight ``width`` at a time by one thread (the same requests and
        outcomes as :meth:`deliver`), or None where the transport cannot (a proxy or a
        session factory: then calls run on threads)."""
        mux = self.transport.mux(self.config.url, width, wake)
        return WebhookMux(self, mux) if mux is not None else None

    def deliver_batch(self, deliveries: list[Delivery]) -> list[Receipt | DeliveryError]:
        """POST several deliveries in one request; one outcome per delivery, in order."""
        if len(deliveries) == 1:
            try:
                return [self.deliver(deliveries[0])]
            except DeliveryError as exc:
                return [exc]
        keys = [d.idempotency_key for d in deliveries]
        batch_key = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32]
        body = orjson.dumps({"schema": BATCH_SCHEMA, "idempotency_key": batch_key,
                             "deliveries": [self.envelope(d) for d in deliveries]})
        try:
            resp = self._post(body, batch_key)
        except DeliveryError as exc:
            return [exc for _ in deliveries]
        per_item: dict[str, dict[str, Any]] = {}
        if resp.content:
            try:
                doc = json_body(resp, f"POST {self.name}")
            except DeliveryError:
                doc = None
            if isinstance(doc, dict) and isinstance(doc.get("results"), list):
                per_item = {str(r.get("idempotency_key")): r for r in doc["results"]
                            if isinstance(r, dict)}
        out: list[Receipt | DeliveryError] = []
        for d in deliveries:
            r = per_item.get(d.idempotency_key)
            status = int(r.get("status", resp.status_code)) if r else resp.status_code
            if 200 <= status < 300:
                rid = r.get("id") if r else None
                out.append(Receipt(remote_id=str(rid) if rid is not None else None,
                                   status_code=status, detail={"batch": batch_key}))
            else:
                retry = status in (408, 425, 429) or status >= 500
                out.append(DeliveryError(f"POST {self.name}: item answered {status}"
                                         + (f": {r.get('error')}" if r and r.get("error") else ""),
                                         retryable=retry, status_code=status))
        return out

    def close(self) -> None:
        """Close the HTTP session."""
        self.transport.close()


class WebhookMux:
    """One delivery per request, several requests in flight, driven by one thread."""

    def __init__(self, sink: WebhookSink, mux: TransportMux) -> None:
        self.sink = sink
        self._mux = mux
        self._what = f"POST {sink.name}"

    def free(self) -> int:
        """How many more deliveries may be sent now."""
        return self._mux.free()

    def pending(self) -> int:
        """Deliveries sent whose outcome has not been polled yet."""
        return self._mux.pending()

    def send(self, token: Any, delivery: Delivery) -> None:
        """Write the request of one delivery; its outcome comes back from :meth:`poll`."""
        body = orjson.dumps(self.sink.envelope(delivery))
        self._mux.send(token, "POST", self.sink.config.url, what=self._what, data=body,
                       headers=self.sink._headers(body, delivery.idempotency_key))

    def poll(self, timeout: float | None = None
             ) -> list[tuple[Any, Receipt | DeliveryError, float]]:
        """``(token, receipt or classified error, seconds)`` of finished deliveries."""
        out: list[tuple[Any, Receipt | DeliveryError, float]] = []
        for token, resp, seconds in self._mux.poll(timeout):
            if isinstance(resp, DeliveryError):
                out.append((token, resp, seconds))
            else:
                out.append((token, Receipt(remote_id=_remote_id(resp),
                                           status_code=resp.status_code), seconds))
        return out

    def close(self) -> None:
        """Give up on deliveries still in flight (their connections are closed)."""
        self._mux.close()


def _remote_id(resp: Any) -> str | None:
    if not resp.content or "json" not in resp.headers.get("Content-Type", ""):
        return None
    try:
        doc = resp.json()
    except ValueError:
        return None
    if isinstance(doc, dict):
        for key in ("id", "reference", "remote_id"):
            if doc.get(key) is not None:
                return str(doc[key])
    return None
