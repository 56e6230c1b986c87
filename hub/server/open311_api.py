"""A GeoReport v2 facade, so a platform that already speaks Open311 can post to the hub.

* ``GET /open311/v2/services.json``: the taxonomy's categories as services.
* ``GET /open311/v2/services/{code}.json``: a service definition (no attributes required).
* ``POST /open311/v2/requests.json``: form-encoded (or JSON) request, ``api_key`` checked;
  stored as a forward record and processed; answers ``[{"service_request_id": <reference>}]``.
* ``GET /open311/v2/requests/{id}.json``: status of one request (PII masked).

Errors use GeoReport's format: ``[{"code": 400, "description": "..."}]``. A request posted
twice with the same content yields the same case (source_ref is a hash of the fields).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from hub.logsetup import redact
from hub.server.auth import check_api_key
from normalizer.case import REFERENCE_PATTERN

PREFIX = "/open311/v2"


def geo_error(code: int, description: str) -> JSONResponse:
    """A GeoReport error array."""
    return JSONResponse([{"code": code, "description": description}], status_code=code)


def load_services(config: Any) -> list[dict[str, Any]]:
    """The taxonomy's categories as GeoReport services."""
    from normalizer.taxonomy import load_taxonomy

    path = (config.enrichment or {}).get("taxonomy")
    if path and not Path(path).is_absolute():
        path = str(Path(config.base_dir) / path)
    tax = load_taxonomy(path)
    return [{"service_code": c.code, "service_name": c.label, "description": c.label_en,
             "metadata": False, "type": "realtime", "keywords": ", ".join(c.keywords[:8]),
             "group": c.code.split(".")[0]} for c in tax.categories.values()]


def build_router(app_state: Any) -> APIRouter:
    """The Open311 routes, bound to the app's state (hub, intake, metrics, config)."""
    router = APIRouter(prefix=PREFIX, tags=["open311"])

    @router.get("/services.json", summary="List services (the taxonomy's categories)")
    def services() -> list[dict[str, Any]]:
        return app_state.services

    @router.get("/services/{code}.json", summary="A service definition")
    def service_definition(code: str) -> Any:
        if code not in {s["service_code"] for s in app_state.services}:
            return geo_error(404, f"service_code {code} not found")
        return {"service_code": code, "attributes": []}

    @router.post("/requests.json", summary="Create a service request (GeoReport v2)",
                 openapi_extra={"requestBody": {"content": {
                     "application/x-www-form-urlencoded": {"schema": {
                         "type": "object", "required": ["api_key", "service_code"],
                         "properties": {k: {"type": "string"} for k in (
                             "api_key", "jurisdiction_id", "service_code", "lat", "long",
                             "address_string", "address_id", "description", "first_name",
                             "last_name", "email", "phone", "device_id", "media_url")}}}}}})
    async def post_request(request: Request) -> Any:
        body = await app_state.read_body(request)
        if body is None:
            app_state.metrics.refused.labels("open311", "too_large").inc()
            return geo_error(413, "request body too large")
        form = _parse_form(request.headers.get("content-type", ""), body)
        if form is None:
            app_state.metrics.refused.labels("open311", "invalid_body").inc()
            return geo_error(400, "body must be form-encoded (or a JSON object)")
        if not check_api_key(form.get("api_key"), app_state.config.server.api_keys):
            app_state.metrics.refused.labels("open311", "api_key").inc()
            return geo_error(403, "api_key missing or invalid")
        code = form.get("service_code")
        if not code:
            return geo_error(400, "service_code is required")
        if code not in {s["service_code"] for s in app_state.services}:
            return geo_error(404, f"service_code {code} not found")
        lat, lon = form.get("lat"), form.get("long")
        if not ((lat and lon) or form.get("address_string") or form.get("address_id")):
            return geo_error(400, "lat and long, address_string or address_id is required")
        if (lat or lon) and not _floats(lat, lon):
            return geo_error(400, "lat and long must be numbers")
        if not (form.get("description") or "").strip():
            return geo_error(400, "description is required")
        if len(form["description"]) > 4000:
            return geo_error(400, "description is longer than 4000 characters")
        record = _record(form)
        canon = json.dumps({k: v for k, v in sorted(form.items()) if k != "api_key"},
                           ensure_ascii=False, sort_keys=True)
        source_ref = "open311:" + hashlib.sha256(canon.encode()).hexdigest()
        result = await run_in_threadpool(app_state.intake.submit_one, record, source_ref)
        app_state.metrics.intake.labels("open311", result.status).inc()
        if result.reference is None:
            return geo_error(400, result.reason or "request could not be accepted")
        return [{"service_request_id": result.reference, "service_notice": "",
                 "account_id": None}]

    @router.get("/requests/{sr_id}.json", summary="One service request's status")
    async def get_request(sr_id: str, api_key: str | None = Query(
            default=None, description="Required when the server has a progress_secret "
            "(references are sequential: only known clients may look them up).")) -> Any:
        import re

        server = app_state.config.server
        if server.progress_secret is not None and not check_api_key(api_key, server.api_keys):
            app_state.metrics.refused.labels("open311", "api_key").inc()
            return geo_error(403, "api_key missing or invalid")
        if not re.match(REFERENCE_PATTERN, sr_id):
            return geo_error(404, f"service_request_id {sr_id} not found")
        view = await run_in_threadpool(app_state.case_view, sr_id)
        if view is None:
            return geo_error(404, f"service_request_id {sr_id} not found")
        return [{"service_request_id": view["reference"],
                 "status": "closed" if view["status"] == "closed" else "open",
                 "status_notes": view.get("status_notes"),
                 "service_code": view.get("category"), "description": redact(view["title"]),
                 "requested_datetime": view["received_at"],
                 "updated_datetime": view["updated_at"]}]

    return router


def _parse_form(content_type: str, body: bytes) -> dict[str, str] | None:
    try:
        if "json" in content_type:
            doc = json.loads(body)
            if not isinstance(doc, dict):
                return None
            return {str(k): str(v) for k, v in doc.items() if v is not None}
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    return {k: v[0] for k, v in parsed.items()}


def _floats(*values: str | None) -> bool:
    try:
        for v in values:
            float(v or "")
    except ValueError:
        return False
    return True


def _record(form: dict[str, str]) -> dict[str, Any]:
    name = " ".join(x for x in (form.get("first_name"), form.get("last_name")) if x) or None
    location: dict[str, Any] = {"address": form.get("address_string") or form.get("address_id")}
    if form.get("lat") and form.get("long"):
        location.update(lat=float(form["lat"]), lon=float(form["long"]))
    attrs = {k[len("attribute["):-1]: v for k, v in form.items()
             if k.startswith("attribute[") and k.endswith("]")}
    rec: dict[str, Any] = {
        "description": form["description"], "category": form["service_code"],
        "platform": "open311", "location": location,
        "reporter": {"name": name, "email": form.get("email"), "phone": form.get("phone")},
    }
    if form.get("requested_datetime"):
        rec["created_at"] = form["requested_datetime"]
    if form.get("media_url"):
        rec["attachments"] = [{"url": form["media_url"]}]
    if attrs:
        rec["attributes"] = attrs
    return rec
