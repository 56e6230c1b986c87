"""The one case schema (v1) every channel is normalized into.

A :class:`Case` is what downstream case systems receive. It is deterministic: the same raw
record always yields the same ``case_id`` (UUIDv5 of source + source_ref), so reprocessing
never creates a second case. The human ``reference`` (``FB-YYYYMMDD-NNNNNN``) is allocated
once by the store and never reused.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from enum import Enum
from functools import lru_cache
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.0"

#: Namespace for deterministic case ids. Never change it: ids would change with it.
CASE_NAMESPACE = uuid.UUID("6f1c7a52-3d2b-5f0e-9a4e-2c8b1f0d7e11")

REFERENCE_PATTERN = r"^FB-\d{8}-\d{6}$"


def fast_uuid5(namespace: uuid.UUID, name: str) -> str:
    """``str(uuid.uuid5(namespace, name))`` without building UUID objects (hot path)."""
    h = bytearray(hashlib.sha1(namespace.bytes + name.encode("utf-8")).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x50
    h[8] = (h[8] & 0x3F) | 0x80
    x = h.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def case_id_for(source: str, source_ref: str) -> str:
    """Return the deterministic case id for a raw record.

    Args:
        source: the configured connector name.
        source_ref: the record's reference, stable and unique within the source.
    """
    return fast_uuid5(CASE_NAMESPACE, f"{source}\x1f{source_ref}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=False, populate_by_name=True)


class Channel(str, Enum):
    """Where a record came in."""

    email = "email"
    hotline = "hotline"
    iot = "iot"
    scan = "scan"
    forward = "forward"


class CaseKind(str, Enum):
    """The nature of the matter (12345 types plus device faults)."""

    complaint = "complaint"  # 投诉
    report = "report"  # 举报
    help = "help"  # 求助
    inquiry = "inquiry"  # 咨询
    suggestion = "suggestion"  # 建议
    praise = "praise"  # 表扬
    device_fault = "device_fault"  # 设备故障


KIND_LABELS_ZH: dict[CaseKind, str] = {
    CaseKind.complaint: "投诉",
    CaseKind.report: "举报",
    CaseKind.help: "求助",
    CaseKind.inquiry: "咨询",
    CaseKind.suggestion: "建议",
    CaseKind.praise: "表扬",
    CaseKind.device_fault: "设备故障",
}


class Urgency(str, Enum):
    """How fast the matter needs a response."""

    normal = "normal"
    urgent = "urgent"
    emergency = "emergency"


class LocationSource(str, Enum):
    """How a case's location was obtained."""

    reporter = "reporter"  # given as structured fields by the reporter or upstream platform
    text = "text"  # found in free text and matched against the gazetteer
    device_registry = "device_registry"
    exif = "exif"
    upstream = "upstream"
    unknown = "unknown"


class Origin(_Model):
    """Provenance: where the case came from, back to its raw record."""

    channel: Channel
    source: str = Field(description="Configured connector name.")
    source_ref: str = Field(description="Reference unique within the source.")
    received_at: AwareDatetime = Field(description="When the hub (or the channel) received it.")
    occurred_at: AwareDatetime | None = Field(
        default=None, description="When the matter happened, if the reporter said."
    )
    raw_record_id: int | None = Field(default=None, description="Row id of the raw record.")
    upstream_id: str | None = Field(default=None, description="Id in the forwarding platform.")


class Reporter(_Model):
    """Who raised the matter. Held as data; masked in logs."""

    name: str | None = None
    phone: str | None = None
    email: str | None = None
    anonymous: bool = False
    preferred_language: str | None = None


class Location(_Model):
    """Where the matter is."""

    address: str | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    district: str | None = None
    street: str | None = None
    community: str | None = None
    grid: str | None = None
    device_id: str | None = None
    asset_id: str | None = None
    source: LocationSource = LocationSource.unknown
    confidence: float | None = Field(default=None, ge=0, le=1)


class Evidence(_Model):
    """Why a classification was made: matched terms or the rule, and where."""

    rule: str
    terms: list[str] = Field(default_factory=list)
    field: str | None = Field(default=None, description="title, description, attachment text...")
    weight: float | None = None


class Candidate(_Model):
    """A runner-up category kept for human review."""

    code: str
    label: str | None = None
    score: float


class Classification(_Model):
    """Category and the departments responsible for it."""

    category_code: str | None = None
    category_label: str | None = None
    category_label_en: str | None = None
    department: str | None = Field(default=None, description="Lead unit (牵头部门).")
    co_departments: list[str] = Field(default_factory=list, description="协办单位.")
    confidence: float = Field(default=0.0, ge=0, le=1)
    evidence: list[Evidence] = Field(default_factory=list)
    candidates: list[Candidate] = Field(default_factory=list)
    major: bool = Field(default=False, description="A major matter (7 working days to resolve).")


class UrgencyInfo(_Model):
    """Urgency level with the reasons that set it."""

    level: Urgency = Urgency.normal
    reasons: list[str] = Field(default_factory=list)


class Deadlines(_Model):
    """Service-level deadlines."""

    respond_by: AwareDatetime | None = None
    resolve_by: AwareDatetime | None = None
    calendar: str | None = Field(default=None, description="Calendar and version used.")
    policy: str | None = Field(default=None, description="Which deadline rule applied.")


class Attachment(_Model):
    """A file that came with the record, with any text derived from it."""

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    mime: str
    size: int = Field(ge=0)
    filename: str | None = None
    role: str | None = Field(default=None, description="photo, voice, scan, inline, original...")
    derived_text: str | None = None
    processor: str | None = Field(default=None, description="e.g. tesseract, faster-whisper.")
    model: str | None = None
    confidence: float | None = Field(default=None, ge=0, le=1)


class RelatedCase(_Model):
    """A link to another case with the similarity that made it."""

    case_id: str
    reference: str | None = None
    relation: str = Field(description="related, duplicate, repeat")
    score: float = Field(ge=0, le=1)
    reason: str | None = None


class Links(_Model):
    """How this case relates to others."""

    related_cases: list[RelatedCase] = Field(default_factory=list)
    duplicate_of: RelatedCase | None = None
    repeat_complaint: bool = False
    updates: int = Field(default=0, description="Follow-ups recorded on this case.")


class ReviewFlag(_Model):
    """A reason a person should look at the case."""

    code: str = Field(description="e.g. low_ocr_confidence, unknown_device, pii_in_text")
    reason: str


class Review(_Model):
    """Human review status."""

    needs_review: bool = False
    flags: list[ReviewFlag] = Field(default_factory=list)


class Case(_Model):
    """A resident feedback case, schema v1."""

    schema_version: str = SCHEMA_VERSION
    case_id: str = Field(description="UUIDv5 of source + source_ref.")
    reference: str | None = Field(
        default=None,
        pattern=REFERENCE_PATTERN,
        description="Human reference FB-YYYYMMDD-NNNNNN, allocated by the store.",
    )
    origin: Origin
    kind: CaseKind = CaseKind.complaint
    title: str = Field(max_length=500)
    description: str = ""
    language: str | None = Field(default=None, description="BCP 47, e.g. zh-Hans, zh-Hant, en.")
    reporter: Reporter = Field(default_factory=Reporter)
    location: Location = Field(default_factory=Location)
    classification: Classification = Field(default_factory=Classification)
    urgency: UrgencyInfo = Field(default_factory=UrgencyInfo)
    deadlines: Deadlines = Field(default_factory=Deadlines)
    attachments: list[Attachment] = Field(default_factory=list)
    links: Links = Field(default_factory=Links)
    review: Review = Field(default_factory=Review)
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Channel-specific fields kept for downstream use."
    )

    def flag(self, code: str, reason: str) -> None:
        """Mark the case for human review (idempotent per code)."""
        if not any(f.code == code for f in self.review.flags):
            self.review.flags.append(ReviewFlag(code=code, reason=reason))
        self.review.needs_review = True


class CaseUpdate(_Model):
    """A follow-up on an existing case (a reply mail, a device restored, a status change)."""

    case_id: str
    update_id: str = Field(description="Deterministic id of this update, unique per case.")
    kind: str = Field(description="reply, episode_update, restored, status, note...")
    at: AwareDatetime
    text: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    deliver: bool = Field(default=True, description="Send to the sinks as an update.")


def reporter_key(case: Case) -> str | None:
    """A privacy-preserving key for 'same reporter' lookups (hash of the phone or e-mail).

    The store indexes it and repeat linking queries by it, so both must use this function.
    """
    r = case.reporter
    return _reporter_key(r.phone, r.email, r.anonymous)


@lru_cache(maxsize=4096)
def _reporter_key(phone: str | None, email: str | None, anonymous: bool) -> str | None:
    # cached: linking looks the key up and the store indexes it, for the same case
    ident = "".join(filter(str.isdigit, phone or ""))[-11:] or (email or "").lower()
    if not ident or anonymous:
        return None
    return hashlib.sha256(f"reporter|{ident}".encode()).hexdigest()[:32]


def case_json_schema() -> dict[str, Any]:
    """Return the published JSON Schema of :class:`Case`."""
    schema = Case.model_json_schema()
    schema["$id"] = f"https://feedback-hub.example/schema/case-{SCHEMA_VERSION}.json"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def utc_now() -> datetime:
    """Timezone-aware now (UTC)."""
    from datetime import timezone

    return datetime.now(timezone.utc)
