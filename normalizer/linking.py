"""Repeat complaints, duplicates and related cases.

Candidates come from :meth:`MapContext.nearby_cases`: earlier cases of the same category in the
grid cells around the case (radius), in the same community or at the same address, or from the
same reporter, within the window. The store answers through indexes (no scan per record), so it
stays fast with a million cases. Each candidate is scored by text similarity of title and
description using stored fingerprints (:mod:`normalizer.similarity`).

* related: same category, same place, similarity ≥ ``related_threshold``;
* duplicate: the most similar related case, similarity ≥ ``duplicate_threshold`` and at most
  ``duplicate_window`` older;
* repeat complaint: the same reporter raising the same matter (same category and either the same
  place or text similarity ≥ ``repeat_threshold``, lower than for strangers because the same
  reporter is already strong evidence) again; flagged for review;
* many reports: ``urgent_after`` or more reports of one problem make the case urgent.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from normalizer.case import Case, RelatedCase, Urgency, reporter_key
from normalizer.similarity import fingerprint, similarity

__all__ = ["Linker", "case_text", "distance_m", "reporter_key"]


def _parse(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _as_duplicate(rel: RelatedCase) -> RelatedCase:
    # a new link rather than model_copy(update=...), which costs several times more
    return RelatedCase(case_id=rel.case_id, reference=rel.reference, relation="duplicate",
                       score=rel.score, reason=rel.reason)


def case_text(case: Case) -> str:
    """The text a case is fingerprinted on (the pipeline stores ``fingerprint`` of this)."""
    return f"{case.title}\n{case.description}"


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_000 * math.asin(math.sqrt(h))


class Linker:
    """Enricher: ``links.related_cases``, ``duplicate_of``, ``repeat_complaint``, and urgency
    when many residents report the same problem."""

    name = "linking"
    #: reads earlier cases from the store (MapContext.nearby_cases)
    reads_store = True

    def __init__(self, radius_m: float = 50.0, window_days: float = 30.0,
                 related_threshold: float = 0.2, duplicate_threshold: float = 0.35,
                 duplicate_window_days: float = 7.0, urgent_after: int = 3,
                 max_links: int = 10, candidates: int = 50,
                 repeat_threshold: float = 0.1) -> None:
        self.radius_m = radius_m
        self.window = timedelta(days=window_days)
        self.related_threshold = related_threshold
        self.duplicate_threshold = duplicate_threshold
        self.duplicate_window = timedelta(days=duplicate_window_days)
        self.urgent_after = urgent_after
        self.max_links = max_links
        self.candidates = candidates
        self.repeat_threshold = repeat_threshold

    def same_place(self, case: Case, c: dict[str, Any]) -> str | None:
        """Why a candidate is at the same place as the case (None if it is not)."""
        loc = case.location
        if loc.lat is not None and loc.lon is not None and c.get("lat") is not None \
                and c.get("lon") is not None:
            d = distance_m(loc.lat, loc.lon, float(c["lat"]), float(c["lon"]))
            if d <= self.radius_m:
                return f"{d:.0f} m apart"
        if loc.address and loc.address == c.get("address"):
            return "same address"
        if loc.community and loc.community == c.get("community"):
            return f"same community {loc.community}"
        return None

    def enrich(self, case: Case, ctx: Any) -> None:
        """Link the case to earlier ones (bounded, index-backed lookups)."""
        nearby = getattr(ctx, "nearby_cases", None)
        if nearby is None:
            return
        cat = case.classification.category_code
        received = case.origin.received_at
        rkey = reporter_key(case)
        loc = case.location
        if loc.lat is None and not loc.community and not loc.address and rkey is None:
            return  # nothing to look up by
        cands = nearby(category_code=cat, since=received - self.window, until=received,
                       lat=loc.lat,
                       lon=loc.lon, radius_m=self.radius_m, community=loc.community,
                       address=loc.address, reporter_key=rkey, limit=self.candidates)
        if not cands:
            return
        mine = fingerprint(case_text(case))
        related: list[RelatedCase] = []
        duplicate: RelatedCase | None = None
        repeats: list[RelatedCase] = []
        for c in cands:
            if c["case_id"] == case.case_id:
                continue
            when = _parse(c.get("received_at"))
            if when is None or when > received:
                continue  # only earlier cases (reprocessing sees later ones too)
            if c.get("category_code") != cat:
                continue
            place = self.same_place(case, c)
            same_reporter = rkey is not None and c.get("reporter_key") == rkey
            if not place and not same_reporter:
                continue  # neither related nor a repeat: no need to compare texts
            fp = c.get("fingerprint") or fingerprint(
                f"{c.get('title') or ''}\n{c.get('description') or ''}")
            sim = round(similarity(mine, fp), 3)
            if same_reporter and (place or sim >= self.repeat_threshold):
                repeats.append(RelatedCase(case_id=c["case_id"], reference=c.get("reference"),
                                           relation="repeat", score=sim,
                                           reason="same reporter, same matter"
                                           + (f", {place}" if place else "")))
                continue
            if place and sim >= self.related_threshold:
                rel = RelatedCase(case_id=c["case_id"], reference=c.get("reference"),
                                  relation="related", score=sim, reason=place)
                related.append(rel)
                if (sim >= self.duplicate_threshold and received - when <= self.duplicate_window
                        and (duplicate is None or sim > duplicate.score)):
                    duplicate = _as_duplicate(rel)
        links = sorted(repeats + related, key=lambda r: (-r.score, r.case_id))
        case.links.related_cases = links[: self.max_links]
        case.links.repeat_complaint = bool(repeats)
        if duplicate is None and repeats:
            best = max(repeats, key=lambda r: (r.score, r.case_id))
            if best.score >= self.duplicate_threshold:
                duplicate = _as_duplicate(best)
        case.links.duplicate_of = duplicate
        if repeats:
            case.flag("repeat_complaint", "the same reporter raised this matter before: "
                      + ", ".join(r.reference or r.case_id for r in repeats[:5]))
        reports = 1 + len(related) + len(repeats)
        if reports >= self.urgent_after:
            if case.urgency.level is Urgency.normal:
                case.urgency.level = Urgency.urgent
            reason = (f"{reports} reports of the same problem within "
                      f"{self.window.days} days")
            if reason not in case.urgency.reasons:
                case.urgency.reasons.append(reason)
