"""``open311`` sink: a GeoReport v2 client (http://wiki.open311.org/GeoReport_v2).

One delivery of a new case:

1. category → ``service_code`` from ``service_codes`` (exact code, then its parent:
   ``noise.construction`` falls back to ``noise``), else ``default_service_code``; no mapping
   is a dead letter naming the missing key.
2. ``GET services.json`` (cached for ``services_ttl``): the code must be offered.
3. ``GET services/{code}.json`` when the service has metadata: required attributes must get a
   value (from ``attributes``) of the declared datatype, list values must be declared keys.
4. Reconciliation: when an earlier attempt may have reached the remote (a read timeout, a reset
   after sending, a 500/502/504, a crash between the POST and the receipt) the sink first
   searches ``GET requests.json`` from the first attempt on for a request whose description
   carries this case's reference, and adopts its ``service_request_id`` instead of posting
   again. GeoReport has no idempotency key; this is how we stay exactly-once.
5. ``POST requests.json`` form-encoded; a ``token`` answer is polled through
   ``GET tokens/{token}.json`` (and polled again on the next attempt, never re-posted).

Error arrays (``[{"code": 400, "description": "..."}]``) become the dead-letter reason.

Updates (``Delivery.kind == "update"``): GeoReport v2 has no standard way to post an update.
With ``updates: mysociety`` they go to mySociety's ``POST servicerequestupdates.json``
extension; with ``updates: skip`` (default) the update is acknowledged with a receipt that says
it was not sent, so it never blocks the queue.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from hub.config_types import ComponentConfig, Duration
from outbox.sinks.base import Delivery, DeliveryError, Receipt
from outbox.sinks.http import HttpTransport, SessionFactory, json_body

logger = logging.getLogger(__name__)

#: GeoReport's limit on ``description``.
MAX_DESCRIPTION = 4000
TRUNCATION_NOTE = "\n[…truncated; the full text is kept in the hub]"


class Open311SinkConfig(ComponentConfig):
    """Config of an ``open311`` sink."""

    type: Literal["open311"] = "open311"
    base_url: str = Field(pattern=r"^https?://",
                          description="Endpoint base, e.g. https://city.example/open311/v2/.")
    api_key: SecretStr | None = Field(default=None, description="api_key for POSTs "
                                      "(use ${OPEN311_API_KEY}).")
    jurisdiction_id: str | None = Field(default=None, description="Sent when the endpoint "
                                        "serves several jurisdictions.")
    service_codes: dict[str, str] = Field(default_factory=dict, description="Category code → "
                                          "service_code (a parent code covers its children).")
    default_service_code: str | None = Field(default=None, description="For categories "
                                             "without a mapping; unset = dead letter.")
    attributes: dict[str, str] = Field(default_factory=dict, description="Attribute code → "
                                       "case field path (urgency.level) or =literal.")
    reference_attribute: str = Field(default="hub_reference", description="attribute[...] "
                                     "carrying the hub reference (the remote can dedupe on it).")
    send_reporter: bool = Field(default=True, description="Send name, e-mail and phone "
                                "(never for anonymous reporters).")
    default_address: str | None = Field(default=None, description="address_string for cases "
                                        "without coordinates or address (else dead letter).")
    media_base_url: str | None = Field(default=None, description="Public URL prefix of blobs "
                                       "(media_url = prefix + sha256) for photo attachments.")
    services_ttl: Duration = Field(default=3600.0, description="Cache services.json and "
                                   "service definitions this long.")
    timeout: Duration = Field(default=15.0, description="Read timeout per request.")
    connect_timeout: Duration = Field(default=5.0, description="Connect timeout.")
    verify_tls: bool = Field(default=True, description="Verify the server certificate.")
    ca_bundle: str | None = Field(default=None, description="CA file to verify against.")
    token_poll_interval: Duration = Field(default=2.0, description="Wait between token polls.")
    token_poll_limit: int = Field(default=5, ge=0, description="Token polls per attempt "
                                  "(later attempts poll again).")
    reconcile_slack: Duration = Field(default=600.0, description="Search this much before the "
                                      "first attempt (clock skew) when reconciling.")
    updates: Literal["skip", "mysociety"] = Field(default="skip", description="How case "
                                                  "updates are sent (see docs/sinks.md).")
    status_sync: bool = Field(default=True, description="Poll GET requests.json for status "
                              "changes of delivered cases.")
    status_batch: int = Field(default=50, ge=1, description="Ids per status poll.")
    retry_after_cap: Duration = Field(default=3600.0, description="Longest Retry-After honoured.")
    concurrency: int = Field(default=2, ge=1, le=16, description="Requests in flight at once "
                       "(1 = strictly one after another).")


class Open311Error(DeliveryError):
    """A DeliveryError that carries sink state to the next attempt (e.g. a pending token)."""

    def __init__(self, reason: str, *, extra: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(reason, **kwargs)
        self.extra = extra or {}

    def as_dict(self) -> dict[str, Any]:
        """The error as stored in the outbox row, with the carried state."""
        return {**super().as_dict(), **self.extra}


def describe_errors(resp: Any) -> str:
    """Read a GeoReport error array into one line."""
    try:
        doc = resp.json()
    except ValueError:
        return ""
    if isinstance(doc, dict):
        doc = doc.get("errors") or [doc]
    if not isinstance(doc, list):
        return ""
    parts = []
    for e in doc[:5]:
        if isinstance(e, dict) and (e.get("description") or e.get("code")):
            parts.append(f"Open311 error {e.get('code', '?')}: {e.get('description', '')}")
    return "; ".join(parts)


def _case_path(case: dict[str, Any], path: str) -> Any:
    if path.startswith("="):
        return path[1:]
    node: Any = case
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _reference(case: dict[str, Any]) -> str:
    return str(case.get("reference") or case.get("case_id"))


def description_for(case: dict[str, Any], limit: int = MAX_DESCRIPTION) -> str:
    """Title + description, truncated with a note, always ending with the hub reference."""
    title = (case.get("title") or "").strip()
    text = (case.get("description") or "").strip()
    body = text if not title or text.startswith(title) else f"{title}\n{text}"
    tail = f"\n\n[feedback-hub {_reference(case)}]"
    room = limit - len(tail)
    if len(body) > room:
        body = body[: room - len(TRUNCATION_NOTE)].rstrip() + TRUNCATION_NOTE
    return body + tail


def _split_name(name: str) -> tuple[str | None, str | None]:
    name = name.strip()
    if " " in name:
        first, _, last = name.rpartition(" ")
        return first, last
    if re.match(r"[\u3400-\u9fff]", name) and len(name) >= 2:
        return name[1:], name[0]  # 姓 is the family name (last_name), 名 the given name
    return name, None


class Open311Sink:
    """Posts cases to a GeoReport v2 endpoint and reads their status back."""

    type_name: ClassVar[str] = "open311"
    Config = Open311SinkConfig

    def __init__(self, config: Open311SinkConfig, session_factory: SessionFactory | None = None,
                 sleep: Any = time.sleep) -> None:
        self.config = config
        self.name = config.name
        self.concurrency = config.concurrency
        self.base = config.base_url.rstrip("/") + "/"
        verify: bool | str = (config.ca_bundle or True) if config.verify_tls else False
        self.transport = HttpTransport(session_factory, timeout=config.timeout,
                                       connect_timeout=config.connect_timeout, verify=verify,
                                       retry_after_cap=config.retry_after_cap,
                                       pool_size=max(10, config.concurrency),
                                       base_url=self.base)
        self._api_key = config.api_key.get_secret_value() if config.api_key else None
        self._services: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._definitions: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._sleep = sleep

    @classmethod
    def from_config(cls, config: Open311SinkConfig, runtime: Any) -> Open311Sink:
        """Build from config."""
        return cls(config)

    def close(self) -> None:
        """Close the HTTP session."""
        self.transport.close()

    # ---------------------------------------------------------------- plumbing
    def _url(self, path: str) -> str:
        return self.base + path

    def _common(self) -> dict[str, str]:
        return {"jurisdiction_id": self.config.jurisdiction_id} if self.config.jurisdiction_id \
            else {}

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        resp = self.transport.request("GET", self._url(path), params={**self._common(),
                                                                      **(params or {})},
                                      what=f"GET {path}", describe=describe_errors)
        return json_body(resp, f"GET {path}")

    # ---------------------------------------------------------------- services
    def services(self, refresh: bool = False) -> dict[str, dict[str, Any]]:
        """``services.json`` by service_code (cached for ``services_ttl``; one fetch at a time)."""
        with self._lock:
            now = time.monotonic()
            cached = self._services
            if cached and not refresh and now - cached[0] < self.config.services_ttl:
                return cached[1]
            try:
                doc = self._get("services.json")
            except DeliveryError:
                if cached:  # a stale list beats no delivery while the endpoint hiccups
                    logger.warning("services.json unavailable, using cached list",
                                   extra={"sink": self.name})
                    return cached[1]
                raise
            if not isinstance(doc, list):
                raise DeliveryError("GET services.json: expected a JSON array", retryable=True)
            services = {str(s["service_code"]): s for s in doc
                        if isinstance(s, dict) and s.get("service_code") is not None}
            self._services = (now, services)
            return services

    def definition(self, code: str) -> dict[str, Any]:
        """``services/{code}.json`` (cached for ``services_ttl``; one fetch at a time)."""
        with self._lock:
            now = time.monotonic()
            cached = self._definitions.get(code)
            if cached and now - cached[0] < self.config.services_ttl:
                return cached[1]
            doc = self._get(f"services/{code}.json")
            if isinstance(doc, list):  # some servers wrap it in an array
                doc = doc[0] if doc else {}
            if not isinstance(doc, dict):
                raise DeliveryError(f"GET services/{code}.json: expected a JSON object",
                                    retryable=True)
            self._definitions[code] = (now, doc)
            return doc

    def service_code_for(self, category: str | None) -> str:
        """The service_code of a category; DeliveryError(not retryable) when unmapped."""
        codes = self.config.service_codes
        c = category or ""
        while c:
            if c in codes:
                return codes[c]
            c = c.rpartition(".")[0]
        if self.config.default_service_code:
            return self.config.default_service_code
        raise DeliveryError(
            f"no Open311 service_code for category {category!r}: add "
            f"sinks.{self.name}.service_codes.{category or '<category>'} "
            f"(or default_service_code)", retryable=False)

    # ---------------------------------------------------------------- attributes
    def attributes_for(self, case: dict[str, Any], code: str, service: dict[str, Any]
                       ) -> list[tuple[str, str]]:
        """Form fields ``attribute[...]`` for a case, checked against the service definition."""
        values: dict[str, Any] = {k: _case_path(case, p) for k, p in
                                  self.config.attributes.items()}
        values[self.config.reference_attribute] = _reference(case)
        declared: dict[str, dict[str, Any]] = {}
        if service.get("metadata") in (True, "true", "True"):
            for a in self.definition(code).get("attributes") or []:
                if isinstance(a, dict) and a.get("code") is not None:
                    declared[str(a["code"])] = a
        fields: list[tuple[str, str]] = []
        for acode, attr in declared.items():
            if attr.get("variable") in (False, "false"):
                continue
            required = attr.get("required") in (True, "true")
            value = values.get(acode)
            if value in (None, "", []):
                if required:
                    label = attr.get("description") or acode
                    raise DeliveryError(
                        f"service {code} requires attribute {acode!r} ({label}) and the case "
                        f"has no value for it: map it in sinks.{self.name}.attributes.{acode}",
                        retryable=False)
                continue
            fields.extend(self._typed(acode, attr, value, code))
        for acode, value in values.items():
            if acode in declared or value in (None, "", []):
                continue
            fields.append((f"attribute[{acode}]", str(value)))
        return fields

    def _typed(self, acode: str, attr: dict[str, Any], value: Any, code: str
               ) -> list[tuple[str, str]]:
        dtype = str(attr.get("datatype") or "string")
        name = f"attribute[{acode}]"
        bad = f"service {code} attribute {acode!r} expects {dtype}"
        if dtype == "number":
            try:
                num = float(value)
            except (TypeError, ValueError):
                raise DeliveryError(f"{bad}, the case gives {value!r}", retryable=False) from None
            return [(name, str(int(num)) if num.is_integer() else str(num))]
        if dtype == "datetime":
            try:
                dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            except ValueError:
                raise DeliveryError(f"{bad}, the case gives {value!r}", retryable=False) from None
            return [(name, dt.isoformat())]
        if dtype in ("singlevaluelist", "multivaluelist"):
            keys = {str(v.get("key")): str(v.get("name", "")) for v in attr.get("values") or []
                    if isinstance(v, dict)}
            by_name = {n: k for k, n in keys.items()}
            items = value if isinstance(value, list) else (
                str(value).split(",") if dtype == "multivaluelist" else [value])
            chosen = []
            for item in items:
                s = str(item).strip()
                k = s if s in keys else by_name.get(s)
                if k is None:
                    raise DeliveryError(f"{bad} with one of {sorted(keys)}, the case gives "
                                        f"{s!r}", retryable=False)
                chosen.append(k)
            if dtype == "singlevaluelist":
                return [(name, chosen[0])]
            return [(f"{name}[]", k) for k in chosen]
        return [(name, str(value))]

    # ---------------------------------------------------------------- the request form
    def form_for(self, case: dict[str, Any], code: str, service: dict[str, Any]
                 ) -> list[tuple[str, str]]:
        """The form fields of ``POST requests.json`` for a case."""
        form: list[tuple[str, str]] = []
        if self._api_key:
            form.append(("api_key", self._api_key))
        form.extend(self._common().items())
        form.append(("service_code", code))
        loc = case.get("location") or {}
        if loc.get("lat") is not None and loc.get("lon") is not None:
            form += [("lat", str(loc["lat"])), ("long", str(loc["lon"]))]
            if loc.get("address"):
                form.append(("address_string", str(loc["address"])))
        else:
            address = loc.get("address") or " ".join(
                str(loc[k]) for k in ("district", "street", "community") if loc.get(k)) \
                or self.config.default_address
            if not address:
                raise DeliveryError(
                    "case has no coordinates and no address, and Open311 requires one: set "
                    f"sinks.{self.name}.default_address or fix the case", retryable=False)
            form.append(("address_string", str(address)))
        if loc.get("device_id"):
            form.append(("device_id", str(loc["device_id"])))
        form.append(("description", description_for(case)))
        rep = case.get("reporter") or {}
        if self.config.send_reporter and not rep.get("anonymous"):
            if rep.get("name"):
                first, last = _split_name(str(rep["name"]))
                if first:
                    form.append(("first_name", first))
                if last:
                    form.append(("last_name", last))
            if rep.get("email"):
                form.append(("email", str(rep["email"])))
            if rep.get("phone"):
                form.append(("phone", str(rep["phone"])))
        media = self._media_url(case)
        if media:
            form.append(("media_url", media))
        form.extend(self.attributes_for(case, code, service))
        return form

    def _media_url(self, case: dict[str, Any]) -> str | None:
        for a in (case.get("extra") or {}).get("attachments") or []:
            url = a.get("url") if isinstance(a, dict) else a
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                return url
        if self.config.media_base_url:
            for a in case.get("attachments") or []:
                if str(a.get("mime", "")).startswith("image/"):
                    return self.config.media_base_url.rstrip("/") + "/" + a["sha256"]
        return None

    # ---------------------------------------------------------------- deliver
    def deliver(self, delivery: Delivery) -> Receipt:
        """Deliver a case (or an update); raise a classified DeliveryError on failure."""
        if delivery.kind == "update":
            return self._deliver_update(delivery)
        prev = delivery.previous_error or {}
        case = delivery.case
        code = self.service_code_for((case.get("classification") or {}).get("category_code"))
        token = prev.get("token")
        if token:
            return self._resolve_token(str(token), code, carried=True)
        if prev.get("ambiguous_seen"):
            found = self.reconcile(case, code, delivery.first_attempt_at)
            if found is not None:
                logger.info("adopted existing request", extra={
                    "sink": self.name, "reference": _reference(case), "remote_id": found})
                return Receipt(remote_id=found, status_code=200,
                               detail={"service_code": code, "reconciled": True})
        services = self.services()
        if code not in services:
            services = self.services(refresh=True)
        if code not in services:
            raise DeliveryError(f"service_code {code!r} is not offered by {self.base}"
                                f"services.json (check sinks.{self.name}.service_codes)",
                                retryable=False)
        form = self.form_for(case, code, services[code])
        resp = self.transport.request("POST", self._url("requests.json"), data=form,
                                      what="POST requests.json", describe=describe_errors)
        doc = json_body(resp, "POST requests.json")
        item = doc[0] if isinstance(doc, list) and doc else doc
        if not isinstance(item, dict):
            raise DeliveryError("POST requests.json: answer has no service_request_id or "
                                "token", retryable=True, ambiguous=True,
                                status_code=resp.status_code, body=resp.text[:2000])
        detail = {"service_code": code}
        if item.get("service_notice"):
            detail["service_notice"] = str(item["service_notice"])[:500]
        if item.get("service_request_id") not in (None, ""):
            return Receipt(remote_id=str(item["service_request_id"]),
                           status_code=resp.status_code, detail=detail)
        if item.get("token") not in (None, ""):
            return self._resolve_token(str(item["token"]), code)
        raise DeliveryError("POST requests.json: answer has no service_request_id or token",
                            retryable=True, ambiguous=True, status_code=resp.status_code,
                            body=resp.text[:2000])

    def _resolve_token(self, token: str, code: str, carried: bool = False) -> Receipt:
        """Poll ``tokens/{token}.json`` until it names a service_request_id."""
        polls = max(1, self.config.token_poll_limit) if carried else self.config.token_poll_limit
        for i in range(polls):
            if i or not carried:
                self._sleep(self.config.token_poll_interval)
            try:
                doc = self._get(f"tokens/{token}.json")
            except DeliveryError as exc:
                if exc.status_code == 404:  # not known yet: some servers answer 404 until then
                    continue
                raise Open311Error(exc.reason, extra={"token": token}, retryable=True,
                                   retry_after=exc.retry_after, status_code=exc.status_code,
                                   body=exc.body) from None
            item = doc[0] if isinstance(doc, list) and doc else doc
            if isinstance(item, dict) and item.get("service_request_id") not in (None, ""):
                return Receipt(remote_id=str(item["service_request_id"]), status_code=200,
                               detail={"service_code": code, "token": token})
        raise Open311Error(f"token {token} has no service_request_id yet", retryable=True,
                           extra={"token": token})

    def reconcile(self, case: dict[str, Any], code: str, since: datetime | None
                  ) -> str | None:
        """Find a request this case already created (matching the hub reference)."""
        ref = _reference(case)
        now = datetime.now(timezone.utc)
        start = (since or now - timedelta(days=1)) - timedelta(seconds=self.config.reconcile_slack)
        params = {"service_code": code, "start_date": _iso(start),
                  "end_date": _iso(now + timedelta(seconds=self.config.reconcile_slack))}
        doc = self._get("requests.json", params)
        pattern = re.compile(rf"(?<![\w-]){re.escape(ref)}(?![\w-])")
        for item in doc if isinstance(doc, list) else []:
            if not isinstance(item, dict) or item.get("service_request_id") in (None, ""):
                continue
            attrs = item.get("attributes")
            if isinstance(attrs, dict) and attrs.get(self.config.reference_attribute) == ref:
                return str(item["service_request_id"])
            if pattern.search(str(item.get("description") or "")):
                return str(item["service_request_id"])
        logger.info("nothing to adopt, posting", extra={"sink": self.name, "reference": ref})
        return None

    def _deliver_update(self, delivery: Delivery) -> Receipt:
        if self.config.updates == "skip":
            return Receipt(remote_id=delivery.remote_id, detail={
                "skipped": "GeoReport v2 has no update request; set updates: mysociety to "
                           "send updates to servicerequestupdates.json"})
        if not delivery.remote_id:
            raise DeliveryError("update of a case without a service_request_id",
                                retryable=False)
        upd = delivery.update or {}
        form = [*([("api_key", self._api_key)] if self._api_key else []),
                *self._common().items(),
                ("service_request_id", delivery.remote_id),
                ("update_id", delivery.idempotency_key),
                ("updated_datetime", str(upd.get("at") or _iso(datetime.now(timezone.utc)))),
                ("status", "OPEN"),
                ("description", (str(upd.get("text") or upd.get("kind") or "update"))
                 [:MAX_DESCRIPTION])]
        resp = self.transport.request("POST", self._url("servicerequestupdates.json"), data=form,
                                      what="POST servicerequestupdates.json",
                                      describe=describe_errors)
        doc = json_body(resp, "POST servicerequestupdates.json")
        item = doc[0] if isinstance(doc, list) and doc else doc
        rid = item.get("update_id") if isinstance(item, dict) else None
        return Receipt(remote_id=str(rid) if rid else delivery.remote_id,
                       status_code=resp.status_code)

    # ---------------------------------------------------------------- status (closed loop)
    def fetch_requests(self, ids: list[str]) -> list[dict[str, Any]]:
        """``GET requests.json?service_request_id=a,b,c`` (status, notes, agency, times)."""
        out: list[dict[str, Any]] = []
        step = self.config.status_batch
        for i in range(0, len(ids), step):
            doc = self._get("requests.json",
                            {"service_request_id": ",".join(ids[i:i + step])})
            out.extend(d for d in (doc if isinstance(doc, list) else []) if isinstance(d, dict))
        return out


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
