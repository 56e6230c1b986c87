"""Intake of upstream records: validation, then the same raw → case → outbox path as connectors.

Records are stored as ``forward`` raw records of the source ``server.source`` with
``source_ref = "id:<upstream id>"`` (the jsonfile connector's convention), committed, and
processed at once, so the answer can carry each case's reference. The same upstream record
posted twice yields the same reference (raw records are unique on (source, source_ref), and the
case id is derived from them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from connectors.base import RawRecord
from normalizer.case import Channel, case_id_for

#: Keys any of which makes a record describable (the forward mapper's aliases).
TEXT_KEYS = ("title", "subject", "description", "content", "text", "body", "details", "标题",
             "主题", "内容", "诉求内容", "问题描述")
MAX_RECORDS = 1000


class UpstreamRecord(BaseModel):
    """One record from an upstream platform (other fields are kept; see docs/server.md)."""

    model_config = ConfigDict(extra="allow")

    id: str | int = Field(description="The record's id in the upstream platform (idempotency).")
    title: str | None = Field(default=None, max_length=500)
    description: str | None = Field(default=None, max_length=20_000)
    kind: str | None = Field(default=None, description="complaint, report, help, inquiry, "
                             "suggestion, praise or 投诉/举报/求助/咨询/建议/表扬.")
    created_at: str | None = Field(default=None, description="ISO 8601 time at the platform.")
    reporter: dict[str, Any] | None = Field(default=None, description="name, phone, email, "
                                            "anonymous.")
    location: dict[str, Any] | None = Field(default=None, description="address, lat, lon, "
                                            "district, street, community.")

    @model_validator(mode="after")
    def _has_text(self) -> UpstreamRecord:
        if isinstance(self.id, str) and not self.id.strip():
            raise ValueError("id: must not be empty")
        extra = self.model_extra or {}
        if not self.title and not self.description and not any(
                isinstance(extra.get(k), str) and extra[k].strip() for k in TEXT_KEYS):
            raise ValueError("needs a title or a description")
        return self


class RecordsBatch(BaseModel):
    """``POST /v1/records`` body."""

    model_config = ConfigDict(extra="forbid")

    records: list[UpstreamRecord] = Field(min_length=1, max_length=MAX_RECORDS)


class RecordResult(BaseModel):
    """The outcome for one record."""

    id: str
    reference: str | None = Field(description="The case reference (FB-YYYYMMDD-NNNNNN).")
    status: str = Field(description="new, duplicate or rejected.")
    reason: str | None = None
    access_code: str | None = Field(default=None, description="The code the resident needs "
                                    "with the reference on the progress page (only when "
                                    "server.progress_secret is set).")


class IntakeResponse(BaseModel):
    """``202`` answer of ``POST /v1/records``."""

    accepted: int
    records: list[RecordResult]


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Pydantic errors as ``{"path": "records[2].id", "message": ...}`` (no input echoed)."""
    out = []
    for e in exc.errors(include_url=False, include_input=False):
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = e["msg"].removeprefix("Value error, ")
        out.append({"path": path or "(body)", "message": msg})
    return out


class IntakeBusy(RuntimeError):
    """Records were stored but could not be processed in time to answer (retry later)."""


@dataclass
class Intake:
    """Stores validated records and processes them (one at a time per process)."""

    hub: Any
    source: str
    lock: threading.Lock

    def _process(self) -> None:
        from hub.pipeline import process

        stats = process(self.hub, sources=[self.source])
        if stats.busy:
            raise IntakeBusy(f"another worker kept the process stage for "
                             f"{self.hub.config.process.lease_wait:.0f} s; the "
                             "records are stored and will be processed: post the same batch "
                             "again for their references")

    def submit(self, records: list[dict[str, Any]]) -> list[RecordResult]:
        """Commit raw records, run the process stage, and return one result per record.

        Raises:
            IntakeBusy: the records are stored but another worker held the process stage too
                long to answer with references (posting the batch again is safe).
        """
        now = datetime.now(timezone.utc)
        raws = []
        for rec in records:
            raws.append(RawRecord(source=self.source, channel=Channel.forward,
                                  source_ref=f"id:{str(rec['id']).strip()}", received_at=now,
                                  payload={"record": rec, "origin": "POST /v1/records"}))
        with self.lock:
            store = self.hub.store
            res = store.commit_ingest(self.source, raws)
            new_ids = set(res.raw_ids or [])
            self._process()
            out = []
            for raw in raws:
                row = store.query("SELECT id, state, state_reason FROM raw_records WHERE "
                                  "source = ? AND source_ref = ?", (self.source, raw.source_ref))
                case = store.case_row(case_id_for(self.source, raw.source_ref))
                rid = raw.source_ref[3:]
                if case is None:
                    reason = (row[0]["state_reason"] if row else None) or "not processed"
                    out.append(RecordResult(id=rid, reference=None, status="rejected",
                                            reason=reason))
                    continue
                status = "new" if row and int(row[0]["id"]) in new_ids else "duplicate"
                out.append(RecordResult(id=rid, reference=case["reference"], status=status))
        return out

    def submit_one(self, record: dict[str, Any], source_ref: str) -> RecordResult:
        """Store and process one record under an explicit source_ref (Open311 facade)."""
        raw = RawRecord(source=self.source, channel=Channel.forward, source_ref=source_ref,
                        received_at=datetime.now(timezone.utc),
                        payload={"record": record, "origin": "POST /open311/v2/requests.json"})
        with self.lock:
            res = self.hub.store.commit_ingest(self.source, [raw])
            self._process()
            case = self.hub.store.case_row(case_id_for(self.source, source_ref))
        if case is None:
            return RecordResult(id=source_ref, reference=None, status="rejected",
                                reason="the record could not be turned into a case")
        return RecordResult(id=source_ref, reference=case["reference"],
                            status="new" if res.inserted else "duplicate")
