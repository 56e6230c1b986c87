"""Mapper for records forwarded by upstream platforms (jsonfile drops and ``POST /v1/records``).

The upstream record format is documented in docs/connectors/jsonfile.md. Field names in
Chinese platform exports vary, so common aliases are accepted (``content``/``text``/``内容``...).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo

from connectors.base import RawRecord
from normalizer.case import (
    Case,
    CaseKind,
    Location,
    LocationSource,
    Origin,
    Reporter,
    case_id_for,
)
from normalizer.mapping import MapContext, MappingError, MapResult

KIND_ALIASES: dict[str, CaseKind] = {
    "complaint": CaseKind.complaint, "投诉": CaseKind.complaint,
    "report": CaseKind.report, "举报": CaseKind.report, "舉報": CaseKind.report,
    "help": CaseKind.help, "求助": CaseKind.help, "help_request": CaseKind.help,
    "inquiry": CaseKind.inquiry, "enquiry": CaseKind.inquiry, "question": CaseKind.inquiry,
    "咨询": CaseKind.inquiry, "諮詢": CaseKind.inquiry,
    "suggestion": CaseKind.suggestion, "建议": CaseKind.suggestion, "建議": CaseKind.suggestion,
    "praise": CaseKind.praise, "compliment": CaseKind.praise, "表扬": CaseKind.praise,
    "表揚": CaseKind.praise,
    "device_fault": CaseKind.device_fault, "fault": CaseKind.device_fault,
    "设备故障": CaseKind.device_fault,
}
_ALIASES = {
    "title": ("title", "subject", "标题", "主题"),
    "description": ("description", "content", "text", "body", "details", "内容", "诉求内容",
                    "问题描述"),
    "kind": ("kind", "type", "类型", "诉求类型"),
    "name": ("name", "reporter_name", "contact_name", "姓名", "联系人"),
    "phone": ("phone", "mobile", "tel", "contact_phone", "电话", "联系电话"),
    "email": ("email", "mail", "邮箱"),
    "address": ("address", "location_text", "地址", "事发地址"),
    "occurred_at": ("occurred_at", "event_time", "happened_at", "发生时间"),
    "created_at": ("created_at", "submitted_at", "reported_at", "提交时间"),
}
_CJK = re.compile(r"[\u3400-\u9fff]")
MAX_TITLE = 120


def _pick(rec: dict[str, Any], key: str) -> Any:
    for alias in _ALIASES[key]:
        v = rec.get(alias)
        if v not in (None, ""):
            return v
    return None


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise MappingError(f"{field}: expected text, got {type(value).__name__}")
    return value.strip() or None


def parse_time(value: Any, field: str, tz: str) -> datetime | None:
    """Parse an upstream timestamp (ISO 8601 or epoch seconds); naive times are local."""
    if value in (None, ""):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(float(value), timezone.utc)
    if not isinstance(value, str):
        raise MappingError(f"{field}: expected an ISO 8601 time, got {type(value).__name__}")
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise MappingError(f"{field}: expected an ISO 8601 time like "
                           f"2026-11-24T08:30:00+08:00, got {value!r}") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=ZoneInfo(tz))


def guess_language(text: str) -> str:
    """A cheap language tag: zh when the text has CJK characters, else en."""
    return "zh" if _CJK.search(text) else "en"


class ForwardMapper:
    """Maps upstream platform records (JSON objects) to cases."""

    #: maps from the record alone (no store lookups): the process stage may map a whole batch
    #: before saving any of it
    reads_store = False

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def map(self, raw: RawRecord, ctx: MapContext) -> MapResult:
        """Map one forwarded record; raise MappingError naming the bad field."""
        rec = raw.payload.get("record", raw.payload)
        if not isinstance(rec, dict):
            raise MappingError("record: expected a JSON object")
        title = _text(_pick(rec, "title"), "title")
        description = _text(_pick(rec, "description"), "description")
        if not title and not description:
            raise MappingError("record has neither a title nor a description "
                               "(expected one of: title, subject, description, content, text)")
        description = description or title or ""
        if not title:
            first = re.split(r"[。！？!?\n]", description, maxsplit=1)[0].strip()
            title = first[:MAX_TITLE] or description[:MAX_TITLE]
        title = title[:MAX_TITLE]

        kind_raw = _pick(rec, "kind")
        kind = CaseKind.complaint
        if kind_raw is not None:
            key = str(kind_raw).strip().lower()
            if key not in KIND_ALIASES:
                raise MappingError(f"kind: unknown value {kind_raw!r} (expected one of "
                                   f"complaint, report, help, inquiry, suggestion, praise, "
                                   f"device_fault or 投诉/举报/求助/咨询/建议/表扬)")
            kind = KIND_ALIASES[key]

        reporter_in = rec.get("reporter") if isinstance(rec.get("reporter"), dict) else {}
        reporter = Reporter(
            name=_text(reporter_in.get("name") or _pick(rec, "name"), "reporter.name"),
            phone=_text(reporter_in.get("phone") or _pick(rec, "phone"), "reporter.phone"),
            email=_text(reporter_in.get("email") or _pick(rec, "email"), "reporter.email"),
            anonymous=bool(reporter_in.get("anonymous", rec.get("anonymous", False))),
        )
        location = self._location(rec)
        tz = ctx.timezone
        occurred = parse_time(_pick(rec, "occurred_at"), "occurred_at", tz)
        created = parse_time(_pick(rec, "created_at"), "created_at", tz)
        upstream_id = rec.get("id")
        case = Case(
            case_id=case_id_for(raw.source, raw.source_ref),
            origin=Origin(channel=raw.channel, source=raw.source, source_ref=raw.source_ref,
                          received_at=created or raw.received_at, occurred_at=occurred,
                          upstream_id=str(upstream_id) if upstream_id is not None else None),
            kind=kind,
            title=title,
            description=description,
            language=_text(rec.get("language"), "language") or guess_language(
                f"{title} {description}"),
            reporter=reporter,
            location=location,
            extra={**{k: rec[k] for k in ("category", "platform", "attachments", "channel")
                      if k in rec}, **({"kind_explicit": True} if kind_raw is not None else {})},
        )
        # no extra index key: the case id is already deterministic from (source, upstream id)
        return MapResult(case=case)

    def _location(self, rec: dict[str, Any]) -> Location:
        loc_in = rec.get("location") if isinstance(rec.get("location"), dict) else {}
        address = _text(loc_in.get("address") or _pick(rec, "address"), "location.address")
        lat = loc_in.get("lat", rec.get("lat"))
        lon = loc_in.get("lon", loc_in.get("lng", rec.get("lon", rec.get("lng"))))
        try:
            lat_f = float(lat) if lat not in (None, "") else None
            lon_f = float(lon) if lon not in (None, "") else None
        except (TypeError, ValueError) as exc:
            raise MappingError(f"location: lat/lon must be numbers, got {lat!r}, {lon!r}") from exc
        if (lat_f is None) != (lon_f is None):
            raise MappingError("location: lat and lon must be given together")
        if lat_f is not None and not (-90 <= lat_f <= 90 and -180 <= lon_f <= 180):  # type: ignore[operator]
            raise MappingError(f"location: lat/lon out of range: {lat_f}, {lon_f}")
        has_any = address or lat_f is not None or any(
            loc_in.get(k) for k in ("district", "street", "community"))
        return Location(
            address=address, lat=lat_f, lon=lon_f,
            district=_text(loc_in.get("district"), "location.district"),
            street=_text(loc_in.get("street"), "location.street"),
            community=_text(loc_in.get("community"), "location.community"),
            grid=_text(loc_in.get("grid"), "location.grid"),
            source=LocationSource.upstream if has_any else LocationSource.unknown,
        )
