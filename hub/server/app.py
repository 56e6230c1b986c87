"""The FastAPI app behind ``feedback-hub serve``.

Routes:

* ``POST /v1/records``: a signed JSON batch of upstream records → ``202`` with references;
* ``GET /v1/cases/{reference}``: status and timeline for a resident-facing progress page, no PII;
* ``/open311/v2/...``: the GeoReport v2 facade (:mod:`hub.server.open311_api`);
* ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /openapi.json``.

Every request body is limited to ``server.max_body`` bytes (``413``), counted while it streams
in, so a client that lies about (or omits) ``Content-Length`` cannot push more. Store access is
serialized with one lock per app (SQLite connections are not shared across threads).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from hub.access_code import access_code
from hub.access_code import check as check_code
from hub.config import HubConfig
from hub.logsetup import redact
from hub.server.auth import SignatureLedger, check_hmac
from hub.server.intake import Intake, IntakeBusy, IntakeResponse, RecordsBatch, field_errors
from hub.server.metrics import Metrics
from hub.server.open311_api import build_router, geo_error, load_services
from normalizer.case import REFERENCE_PATTERN
from outbox.sinks.signing import SIGNATURE_HEADER

logger = logging.getLogger(__name__)

#: Timeline events a resident may see, with the wording shown (no sink names, no PII).
PUBLIC_EVENTS = {
    "created": "received (已受理)",
    "delivered": "forwarded to the responsible department (已转办)",
    "status": None,  # text built from the status and the department's notes
}


#: Seconds a client is told to wait when another worker holds the process stage.
BUSY_RETRY_AFTER = 5


class TimelineEntry(BaseModel):
    """One public step of a case."""

    at: str
    event: str
    text: str


class CaseProgress(BaseModel):
    """A case as a resident may see it."""

    reference: str
    status: str = Field(description="new, delivered, open or closed.")
    kind: str
    category: str | None
    received_at: str
    updated_at: str
    timeline: list[TimelineEntry]


class Problem(BaseModel):
    """An error answer."""

    error: str
    fields: list[dict[str, str]] | None = None


class State:
    """What the routes share: config, hub, lock, intake, metrics, services."""

    def __init__(self, config: HubConfig, hub: Any) -> None:
        self.config = config
        self.hub = hub
        self.lock = threading.Lock()
        self.intake = Intake(hub, config.server.source, self.lock)
        self.metrics = Metrics(hub, self.lock)
        self.signatures = SignatureLedger(hub.store, self.lock, config.server.replay_window)
        self.services = load_services(config)

    async def read_body(self, request: Request) -> bytes | None:
        """The body, or None when it is larger than ``server.max_body``."""
        limit = self.config.server.max_body
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def case_view(self, reference: str) -> dict[str, Any] | None:
        """The public view of a case (None when unknown)."""
        with self.lock:
            row = self.hub.store.case_row(reference)
            if row is None or row["reference"] != reference:
                return None
            case = self.hub.store.find_case(reference)
            events = self.hub.store.timeline(row["case_id"])
        timeline, notes = [], None
        for ev in events:
            if ev["kind"] not in PUBLIC_EVENTS:
                continue
            text = PUBLIC_EVENTS[ev["kind"]]
            if ev["kind"] == "status":
                data = ev["data"] or {}
                notes = data.get("status_notes")
                text = f"{data.get('status', '')}" + (f": {redact(notes)}" if notes else "")
            elif ev["kind"] == "delivered" and (ev["data"] or {}).get("kind") != "case":
                continue
            timeline.append({"at": ev["at"], "event": ev["kind"], "text": text or ""})
        return {"reference": row["reference"], "status": row["status"], "kind": row["kind"],
                "category": row["category_code"], "received_at": row["received_at"],
                "updated_at": row["updated_at"], "timeline": timeline,
                "title": case.title if case else "",
                "status_notes": redact(notes) if notes else None}


def create_app(config: HubConfig, hub: Any = None) -> FastAPI:
    """Build the app for a config (opens the store unless a Hub is given)."""
    owned = hub is None
    if hub is None:
        from hub.pipeline import Hub

        hub = Hub(config)
    state = State(config, hub)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            hub.close()

    app = FastAPI(title="Feedback Hub", version="1.0", lifespan=lifespan,
                  description="Upstream intake (signed JSON batches, Open311 GeoReport v2), "
                              "case progress, health and metrics. See docs/server.md.")
    app.state.hub_state = state

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        state.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        state.metrics.duration.labels(path).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"path": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
                  for e in exc.errors()]
        return JSONResponse({"error": "validation failed", "fields": fields}, status_code=400)

    @app.exception_handler(IntakeBusy)
    async def intake_busy(request: Request, exc: IntakeBusy) -> JSONResponse:
        logger.warning("intake could not process in time", extra={"reason": str(exc)})
        headers = {"Retry-After": str(BUSY_RETRY_AFTER)}
        if request.url.path.startswith("/open311/"):
            resp = geo_error(503, str(exc))
            resp.headers.update(headers)
            return resp
        return JSONResponse({"error": str(exc)}, status_code=503, headers=headers)

    @app.post("/v1/records", status_code=202, response_model=IntakeResponse,
              summary="Submit a signed batch of upstream records",
              responses={400: {"model": Problem}, 401: {"model": Problem},
                         409: {"model": Problem}, 413: {"model": Problem},
                         503: {"model": Problem}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": RecordsBatch.model_json_schema(
                      ref_template="#/components/schemas/{model}")}}},
                  "parameters": [
                      {"name": h, "in": "header", "required": True, "schema": {"type": "string"}}
                      for h in ("X-FeedbackHub-Key-Id", "X-FeedbackHub-Timestamp",
                                "X-FeedbackHub-Signature")]})
    async def post_records(request: Request) -> Any:
        m = state.metrics
        body = await state.read_body(request)
        if body is None:
            m.refused.labels("records", "too_large").inc()
            return JSONResponse({"error": "request body too large",
                                 "limit": config.server.max_body}, status_code=413)
        key_id, problem = check_hmac(request.headers, body, config.server.hmac_secrets,
                                     config.server.replay_window)
        if problem:
            m.refused.labels("records", problem).inc()
            logger.warning("intake refused", extra={"reason": problem, "key_id": key_id})
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        if not await run_in_threadpool(state.signatures.check_and_add,
                                       request.headers[SIGNATURE_HEADER]):
            m.refused.labels("records", "replayed").inc()
            return JSONResponse({"error": "request already received; sign each request "
                                 "anew"}, status_code=409)
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            m.refused.labels("records", "invalid_json").inc()
            return JSONResponse({"error": "body is not valid JSON",
                                 "fields": [{"path": "(body)", "message": str(exc)[:200]}]},
                                status_code=400)
        try:
            batch = RecordsBatch.model_validate(doc)
        except ValidationError as exc:
            m.refused.labels("records", "invalid").inc()
            return JSONResponse({"error": "validation failed", "fields": field_errors(exc)},
                                status_code=400)
        seen: set[str] = set()
        for i, r in enumerate(batch.records):
            rid = str(r.id).strip()
            if rid in seen:
                m.refused.labels("records", "invalid").inc()
                return JSONResponse({"error": "validation failed", "fields": [
                    {"path": f"records[{i}].id", "message": "duplicate id in this batch"}]},
                    status_code=400)
            seen.add(rid)
        records = [r.model_dump(exclude_none=True) for r in batch.records]
        results = await run_in_threadpool(state.intake.submit, records)
        secret = config.server.progress_secret
        if secret is not None:
            for r in results:
                if r.reference:
                    r.access_code = access_code(secret.get_secret_value(), r.reference)
        for r in results:
            m.intake.labels("records", r.status).inc()
        logger.info("records received", extra={"key_id": key_id, "count": len(results)})
        return IntakeResponse(accepted=sum(r.status != "rejected" for r in results),
                              records=results)

    @app.get("/v1/cases/{reference}", response_model=CaseProgress,
             responses={404: {"model": Problem}},
             summary="Progress of a case for the resident (no personal data)")
    async def get_case(reference: str, code: str | None = Query(
            default=None, description="The case's access code; required when the server has "
            "a progress_secret.")) -> Any:
        if not re.match(REFERENCE_PATTERN, reference):
            return JSONResponse({"error": "not found"}, status_code=404)
        secret = config.server.progress_secret
        if secret is not None and not check_code(secret.get_secret_value(), reference, code):
            m = state.metrics
            m.refused.labels("cases", "bad_code" if code else "no_code").inc()
            # the same answer as an unknown reference: no oracle for which references exist
            return JSONResponse({"error": "not found"}, status_code=404)
        view = await run_in_threadpool(state.case_view, reference)
        if view is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return CaseProgress(**{k: v for k, v in view.items() if k in CaseProgress.model_fields})

    @app.get("/healthz", summary="Liveness and store reachability")
    async def healthz() -> Any:
        def probe() -> dict[str, Any]:
            with state.lock:
                return {"status": "ok", "store": hub.store.dialect,
                        "schema_version": hub.store.schema_version()}

        try:
            return await run_in_threadpool(probe)
        except Exception as exc:
            logger.error("health check failed", extra={"error": type(exc).__name__})
            return JSONResponse({"status": "error", "store": "unreachable"}, status_code=503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        data = await run_in_threadpool(generate_latest, state.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    app.include_router(build_router(state))
    _document_raw_bodies(app)
    return app


def _document_raw_bodies(app: FastAPI) -> None:
    """Hoist the models of hand-parsed request bodies into the OpenAPI components."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = original()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        batch = RecordsBatch.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(batch.pop("$defs", {}))
        schemas["RecordsBatch"] = batch
        body = doc["paths"]["/v1/records"]["post"]["requestBody"]
        body["content"]["application/json"]["schema"] = {
            "$ref": "#/components/schemas/RecordsBatch"}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
