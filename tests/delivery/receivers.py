"""Real HTTP receivers for delivery tests (threads on free ports, not mocked clients).

* :class:`Open311Receiver`: a small GeoReport v2 server following the spec: ``services.json``,
  ``services/{code}.json`` (with a required attribute), form-encoded ``POST requests.json``
  checking ``api_key`` and required fields, token mode with ``tokens/{token}.json``,
  ``GET requests.json`` by ids or date window, error arrays; plus fault injection.
* :class:`WebhookReceiver`: verifies the HMAC signature and the timestamp window, dedupes on
  ``Idempotency-Key`` like a careful receiver would, and counts what it saw.

Faults are queued per receiver and consumed by the next POSTs: ``("status", code, body,
headers)`` answers without acting; ``("slow", seconds)`` acts, then answers late (a read
timeout on the hub side: ambiguous); ``("reset_after",)`` acts, then resets the connection;
``("reset_before",)`` resets without acting.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter, deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from outbox.sinks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: while the accepting thread waits for the
    # interpreter lock (the first requests are being handled), the 6th of 8 connections opened
    # at once overflows it, and that client's SYN is retried only after 1 s
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # resets we inject on purpose are not errors


class _Reset(Exception):
    pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    receiver: Any = None
    # one write per answer and no Nagle: otherwise every answer waits for a delayed ACK
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def send(self, code: int, doc: Any = None, headers: dict[str, str] | None = None,
             raw: bytes | None = None) -> None:
        body = raw if raw is not None else (b"" if doc is None else json.dumps(doc).encode())
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def reset(self) -> None:
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        raise _Reset

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (_Reset, OSError, ValueError):
            self.close_connection = True

    def do_GET(self) -> None:
        self.receiver.handle(self, "GET")

    def do_POST(self) -> None:
        self.receiver.handle(self, "POST")


class _Receiver:
    """Base: a threaded server on a free port with a fault queue."""

    def __init__(self, tls: Any = None) -> None:
        self.faults: deque[tuple[Any, ...]] = deque()
        self.lock = threading.Lock()
        handler = type("H", (_Handler,), {"receiver": self})
        self.server = _Server(("127.0.0.1", 0), handler)
        if tls is not None:  # an ssl.SSLContext with the server certificate loaded
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.scheme = "https" if tls is not None else "http"
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> Any:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, *faults: tuple[Any, ...]) -> None:
        with self.lock:
            self.faults.extend(faults)

    def next_fault(self) -> tuple[Any, ...] | None:
        with self.lock:
            return self.faults.popleft() if self.faults else None

    def handle(self, h: _Handler, method: str) -> None:
        raise NotImplementedError


class Open311Receiver(_Receiver):
    """A GeoReport v2 endpoint under ``/open311/v2/``."""

    def __init__(self, api_key: str = "test-key", token_mode: bool = False,
                 token_polls: int = 2) -> None:
        super().__init__()
        self.api_key = api_key
        self.token_mode = token_mode
        self.token_polls = token_polls
        self.services = [
            {"service_code": "001", "service_name": "Streetlight", "metadata": True,
             "type": "realtime", "keywords": "lamp", "group": "street"},
            {"service_code": "002", "service_name": "Other", "metadata": False,
             "type": "realtime", "keywords": "", "group": "misc"},
        ]
        self.definitions = {"001": {"service_code": "001", "attributes": [
            {"variable": True, "code": "hub_reference", "datatype": "string", "required": False,
             "order": 1, "description": "Reference in the sending system"},
            {"variable": True, "code": "urgency", "datatype": "singlevaluelist",
             "required": True, "order": 2, "description": "How urgent",
             "values": [{"key": "normal", "name": "Normal"}, {"key": "urgent", "name": "Urgent"},
                        {"key": "emergency", "name": "Emergency"}]},
        ]}}
        self.requests: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, dict[str, Any]] = {}
        self.posts = 0
        self.gets: Counter[str] = Counter()
        self.refs: Counter[str] = Counter()
        self.updates: dict[str, dict[str, list[str]]] = {}
        self._seq = 1000

    def duplicates(self) -> int:
        """Requests created more than once for the same hub reference."""
        return sum(n - 1 for n in self.refs.values() if n > 1)

    def set_status(self, sr_id: str, status: str, notes: str = "", updated: str | None = None,
                   agency: str = "城市管理局") -> None:
        with self.lock:
            r = self.requests[sr_id]
            r.update(status=status, status_notes=notes, agency_responsible=agency,
                     updated_datetime=updated or datetime.now(timezone.utc).isoformat())

    def _errors(self, h: _Handler, code: int, description: str) -> None:
        h.send(code, [{"code": code, "description": description}])

    def _create(self, form: dict[str, list[str]]) -> dict[str, Any]:
        with self.lock:
            self._seq += 1
            sr_id = str(self._seq)
            now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
            ref = (form.get("attribute[hub_reference]") or [""])[0]
            self.refs[ref] += 1
            rec = {"service_request_id": sr_id, "status": "open", "status_notes": None,
                   "service_code": form["service_code"][0],
                   "description": form.get("description", [""])[0],
                   "agency_responsible": None, "requested_datetime": now,
                   "updated_datetime": now, "address": form.get("address_string", [None])[0],
                   "lat": form.get("lat", [None])[0], "long": form.get("long", [None])[0],
                   "form": form}
            self.requests[sr_id] = rec
            return rec

    def handle(self, h: _Handler, method: str) -> None:
        parts = urlsplit(h.path)
        path = parts.path.removeprefix("/open311/v2/")
        query = parse_qs(parts.query)
        self.gets[path] += method == "GET"
        if method == "GET" and path == "services.json":
            return h.send(200, self.services)
        if method == "GET" and path.startswith("services/"):
            code = path[len("services/"):-len(".json")]
            if code not in self.definitions:
                return self._errors(h, 404, f"service_code {code} not found")
            return h.send(200, self.definitions[code])
        if method == "GET" and path.startswith("tokens/"):
            token = path[len("tokens/"):-len(".json")]
            with self.lock:
                t = self.tokens.get(token)
                if t is None:
                    return self._errors(h, 404, "token not found")
                t["polls"] += 1
                if t["polls"] < self.token_polls:
                    return h.send(200, [])
                if t["sr"] is None:
                    t["sr"] = self._create_unlocked(t["form"])
            return h.send(200, [{"service_request_id": t["sr"], "token": token}])
        if method == "GET" and path == "requests.json":
            return h.send(200, self._search(query))
        if method == "POST" and path == "requests.json":
            return self._post(h)
        if method == "POST" and path == "servicerequestupdates.json":
            return self._post_update(h)
        return self._errors(h, 404, "not found")

    def _create_unlocked(self, form: dict[str, list[str]]) -> str:
        self.lock.release()
        try:
            return str(self._create(form)["service_request_id"])
        finally:
            self.lock.acquire()

    def _search(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        with self.lock:
            items = list(self.requests.values())
        if "service_request_id" in query:
            ids = set(query["service_request_id"][0].split(","))
            items = [r for r in items if r["service_request_id"] in ids]
        if "service_code" in query:
            items = [r for r in items if r["service_code"] == query["service_code"][0]]
        if "start_date" in query:
            start = datetime.fromisoformat(query["start_date"][0].replace("Z", "+00:00"))
            items = [r for r in items
                     if datetime.fromisoformat(r["requested_datetime"]) >= start]
        if "end_date" in query:
            end = datetime.fromisoformat(query["end_date"][0].replace("Z", "+00:00"))
            items = [r for r in items if datetime.fromisoformat(r["requested_datetime"]) <= end]
        return [{k: v for k, v in r.items() if k != "form"} for r in items]

    def _post_update(self, h: _Handler) -> None:
        """mySociety's extension: an update on an existing request (deduped on update_id)."""
        form = parse_qs(h._body().decode("utf-8"), keep_blank_values=True)
        if (form.get("api_key") or [""])[0] != self.api_key:
            return self._errors(h, 403, "Invalid api_key")
        sr_id = (form.get("service_request_id") or [""])[0]
        if sr_id not in self.requests:
            return self._errors(h, 404, f"service_request_id {sr_id} not found")
        update_id = (form.get("update_id") or [""])[0]
        with self.lock:
            self.updates.setdefault(update_id, form)
        return h.send(200, [{"update_id": f"U-{update_id[:8]}"}])

    def _post(self, h: _Handler) -> None:
        raw = h._body()
        if len(raw) < int(h.headers.get("Content-Length") or 0):
            h.close_connection = True  # the client went away mid-request: nothing happened
            return
        form = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
        with self.lock:
            self.posts += 1
        fault = self.next_fault()
        if fault and fault[0] == "reset_before":
            h.reset()
        if fault and fault[0] == "status":
            return h.send(fault[1], fault[2] if len(fault) > 2 else None,
                          fault[3] if len(fault) > 3 else None)
        if (form.get("api_key") or [""])[0] != self.api_key:
            return self._errors(h, 403, "Invalid api_key")
        for key in ("service_code", "description"):
            if not (form.get(key) or [""])[0]:
                return self._errors(h, 400, f"{key} is required")
        code = form["service_code"][0]
        if code not in {s["service_code"] for s in self.services}:
            return self._errors(h, 404, f"service_code {code} not found")
        if not form.get("lat") and not form.get("address_string"):
            return self._errors(h, 400, "lat/long or address_string is required")
        for attr in self.definitions.get(code, {}).get("attributes", []):
            if attr["required"] and not form.get(f"attribute[{attr['code']}]"):
                return self._errors(h, 400, f"attribute {attr['code']} is required")
        if len(form["description"][0]) > 4000:
            return self._errors(h, 400, "description longer than 4000 characters")
        if self.token_mode:
            with self.lock:
                token = f"tok-{len(self.tokens) + 1}"
                self.tokens[token] = {"form": form, "polls": 0, "sr": None}
            answer: dict[str, Any] = {"token": token, "service_notice": "queued"}
        else:
            rec = self._create(form)
            answer = {"service_request_id": rec["service_request_id"],
                      "service_notice": "", "account_id": None}
        if fault and fault[0] == "slow":
            time.sleep(fault[1])
        if fault and fault[0] == "reset_after":
            h.reset()
        h.send(201, [answer])


class WebhookReceiver(_Receiver):
    """A webhook endpoint that verifies signatures and dedupes on Idempotency-Key."""

    def __init__(self, secret: str = "webhook-secret", window: float = 300.0,
                 tls: Any = None) -> None:
        super().__init__(tls)
        self.secret = secret
        self.window = window
        self.keys: Counter[str] = Counter()  # every delivery seen, by key
        self.created: dict[str, dict[str, Any]] = {}  # what was acted on, once per key
        self.ids: dict[str, str] = {}
        self.bad_signatures = 0
        self.requests = 0

    def redeliveries(self) -> int:
        return sum(n - 1 for n in self.keys.values() if n > 1)

    def handle(self, h: _Handler, method: str) -> None:
        if method != "POST":
            return h.send(405, {"error": "POST only"})
        body = h._body()
        with self.lock:
            self.requests += 1
        problem = verify(self.secret, h.headers.get(TIMESTAMP_HEADER),
                         h.headers.get(SIGNATURE_HEADER), body, window=self.window)
        if problem:
            with self.lock:
                self.bad_signatures += 1
            return h.send(401, {"error": "bad signature"})
        fault = self.next_fault()
        if fault and fault[0] in ("reset_before",):
            h.reset()
        if fault and fault[0] == "status":
            return h.send(fault[1], fault[2] if len(fault) > 2 else None,
                          fault[3] if len(fault) > 3 else None)
        doc = json.loads(body)
        if doc.get("schema") != "feedback-hub.batch/1":
            assert h.headers.get("Idempotency-Key") == doc["idempotency_key"]
        items = doc["deliveries"] if doc.get("schema") == "feedback-hub.batch/1" else [doc]
        results = []
        with self.lock:
            for item in items:
                key = item["idempotency_key"]
                self.keys[key] += 1
                if key not in self.created:
                    self.created[key] = item
                    self.ids[key] = f"WH-{len(self.ids) + 1}"
                results.append({"idempotency_key": key, "status": 200, "id": self.ids[key]})
        if fault and fault[0] == "slow":
            time.sleep(fault[1])
        if fault and fault[0] == "reset_after":
            h.reset()
        if len(items) == 1 and doc.get("schema") != "feedback-hub.batch/1":
            return h.send(200, {"id": results[0]["id"]})
        h.send(200, {"results": results})
