"""Test helpers: cases from real sentences, and an in-memory MapContext for linking.

``MemoryContext`` is a test double of the store's lookups (no server is involved in enrichment):
it indexes cases by category + grid cell, community, address and reporter the way the store's
indexes do, so linking is exercised against the same contract as in production.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from normalizer.case import Case, Channel, Origin, Reporter
from normalizer.linking import reporter_key
from normalizer.similarity import fingerprint

T0 = datetime(2026, 11, 24, 2, 0, tzinfo=timezone.utc)
CELL = 0.001


def make_case(text: str, *, title: str | None = None, case_id: str = "c-1",
              received_at: datetime = T0, phone: str | None = None, **extra: Any) -> Case:
    case = Case(case_id=case_id, title=title if title is not None else text[:30],
                description=text,
                origin=Origin(channel=Channel.forward, source="test", source_ref=case_id,
                              received_at=received_at),
                reporter=Reporter(phone=phone))
    for k, v in extra.items():
        setattr(case, k, v)
    return case


def _cell(lat: float, lon: float) -> tuple[int, int]:
    return math.floor(lat / CELL), math.floor(lon / CELL)


class MemoryContext:
    """An in-memory stand-in for the store's MapContext lookups used by linking."""

    timezone = "Asia/Shanghai"

    def __init__(self) -> None:
        self.now = T0
        self.rows: dict[str, dict[str, Any]] = {}
        self.by_cell: dict[tuple[str | None, tuple[int, int]], list[str]] = {}
        self.by_key: dict[tuple[str, str | None, str], list[str]] = {}
        self.lookups = 0
        self.examined = 0

    def add(self, case: Case) -> None:
        """Save a case as the store does (columns + fingerprint)."""
        loc = case.location
        row = {"case_id": case.case_id, "reference": f"FB-20261124-{len(self.rows) + 1:06d}",
               "category_code": case.classification.category_code,
               "received_at": case.origin.received_at.isoformat(), "lat": loc.lat,
               "lon": loc.lon, "community": loc.community, "address": loc.address,
               "reporter_key": reporter_key(case), "title": case.title,
               "description": case.description,
               "fingerprint": fingerprint(f"{case.title}\n{case.description}")}
        self.rows[case.case_id] = row
        cat = row["category_code"]
        if loc.lat is not None and loc.lon is not None:
            self.by_cell.setdefault((cat, _cell(loc.lat, loc.lon)), []).append(case.case_id)
        if loc.community:
            self.by_key.setdefault(("community", cat, loc.community), []).append(case.case_id)
        if loc.address:
            self.by_key.setdefault(("address", cat, loc.address), []).append(case.case_id)
        if row["reporter_key"]:
            self.by_key.setdefault(("reporter", None, row["reporter_key"]), []).append(
                case.case_id)

    def nearby_cases(self, *, category_code: str | None, since: datetime,
                     until: datetime | None = None, lat: float | None = None,
                     lon: float | None = None,
                     radius_m: float | None = None, community: str | None = None,
                     address: str | None = None, reporter_key: str | None = None,
                     limit: int = 50) -> list[dict[str, Any]]:
        self.lookups += 1
        ids: list[str] = []
        if lat is not None and lon is not None and radius_m:
            r = math.ceil(radius_m / 111_320 / CELL) + 1
            base = _cell(lat, lon)
            for i in range(-r, r + 1):
                for j in range(-r, r + 1):
                    ids += self.by_cell.get((category_code, (base[0] + i, base[1] + j)), [])
        if community:
            ids += self.by_key.get(("community", category_code, community), [])
        if address:
            ids += self.by_key.get(("address", category_code, address), [])
        if reporter_key:
            ids += self.by_key.get(("reporter", None, reporter_key), [])
        out, seen = [], set()
        for cid in reversed(ids):
            row = self.rows[cid]
            self.examined += 1
            if cid in seen or row["received_at"] < since.isoformat() or (
                    until is not None and row["received_at"] > until.isoformat()):
                continue
            seen.add(cid)
            out.append(dict(row))
        return out[: limit * 2]
