"""Deadlines: respond within 24 h; simple matters the same working day, ordinary matters within 3
working days, major matters (a plan) within 7; emergencies faster.

``respond_by`` counts clock hours from receipt. ``resolve_by`` is the end (23:59:59 local time) of
the n-th working day after the day of receipt on the mainland working-day calendar; for simple
matters (n = 0) it is the end of the day of receipt, or of the next working day when the message
came on a day off or after ``same_day_cutoff``. Hours and days are configurable per urgency, per
policy and per category (``enrichment.deadlines``).

When the calendar does not know a year the deadline reaches into, the case is never dropped: it
keeps ``respond_by``, gets no ``resolve_by`` and is flagged ``deadline_unknown`` for review (or,
with ``calendar_fallback: weekdays``, a Monday–Friday estimate flagged ``deadline_provisional``).
"""

from __future__ import annotations

import datetime as dt
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from normalizer.case import Case, CaseKind, Deadlines, Urgency
from normalizer.taxonomy import Taxonomy, TermMatcher, canon
from normalizer.textnorm import message_text, normalize
from normalizer.workcalendar import CalendarRangeError, WorkCalendar

DEFAULT_RESPOND_HOURS = {"normal": 24.0, "urgent": 12.0, "emergency": 2.0}
DEFAULT_RESOLVE_DAYS = {"simple": 0, "ordinary": 3, "major": 7, "emergency": 1}
DEFAULT_SIMPLE_KINDS = ("inquiry", "praise")
POLICY_LABELS = {"simple": "simple matter", "ordinary": "ordinary matter",
                 "major": "major matter (plan)", "emergency": "emergency"}


@lru_cache(maxsize=256)
def _rule_text(policy: str, hours: float, days: int) -> str:
    """The rule recorded in ``deadlines.policy`` (a handful of distinct texts: cached)."""
    return (f"{POLICY_LABELS[policy]}: respond within {hours:g} h, resolve "
            + ("the same working day" if days == 0 else
               f"within {days} working day{'s' if days != 1 else ''}"))


class DeadlineSetter:
    """Enricher: fills ``case.deadlines`` and records the calendar and the rule used."""

    name = "deadlines"
    #: works on the case alone (nothing read from the store)
    reads_store = False

    def __init__(self, calendar: WorkCalendar, timezone: str,
                 respond_hours: dict[str, float] | None = None,
                 resolve_days: dict[str, int] | None = None,
                 per_category: dict[str, dict[str, Any]] | None = None,
                 major: dict[str, Any] | None = None,
                 simple_kinds: tuple[str, ...] | list[str] = DEFAULT_SIMPLE_KINDS,
                 same_day_cutoff: dt.time = dt.time(17, 0),
                 tax: Taxonomy | None = None) -> None:
        self.calendar = calendar
        self.tz = ZoneInfo(timezone)
        self.timezone = timezone
        self.respond_hours = {**DEFAULT_RESPOND_HOURS, **(respond_hours or {})}
        self.resolve_days = {**DEFAULT_RESOLVE_DAYS, **(resolve_days or {})}
        self.per_category = per_category or {}
        self.major_categories = set((major or {}).get("categories") or [])
        self.tax = tax
        self.major_terms = TermMatcher(
            [canon(t) for t in (major or {}).get("terms") or [] if str(t).strip()])
        self.simple_kinds = {str(k) for k in simple_kinds}
        self.cutoff = same_day_cutoff
        self._label: tuple[int, str] | None = None

    def _calendar_label(self) -> str:
        key = len(self.calendar.override_years)
        if self._label is None or self._label[0] != key:
            self._label = (key, f"{self.calendar.source}; {self.timezone}")
        return self._label[1]

    def is_major(self, case: Case) -> bool:
        """A major matter: a major category or wording (whole estate, years unresolved...)."""
        if case.classification.major:
            return True
        if case.classification.category_code in self.major_categories:
            return True
        text = message_text(case.title, case.description)
        if self.tax is not None:  # the taxonomy's cue scan, shared with kind and urgency
            return bool(self.tax.cue_groups(self.tax.prepare(text), "major"))
        return bool(self.major_terms) and bool(self.major_terms.find(normalize(text)))

    def policy(self, case: Case) -> str:
        """Which resolution rule applies: emergency, major, simple or ordinary."""
        if case.urgency.level is Urgency.emergency:
            return "emergency"
        if self.is_major(case):
            return "major"
        if case.kind.value in self.simple_kinds and case.kind is not CaseKind.device_fault:
            return "simple"
        return "ordinary"

    def _rule(self, code: str | None, key: str, sub: str, default: float) -> float:
        rules = self.per_category.get(code or "", {})
        value = rules.get(key)
        if isinstance(value, dict):
            return float(value.get(sub, default))
        return float(value) if value is not None else default

    def enrich(self, case: Case, ctx: object) -> None:
        """Set respond_by and resolve_by (never raises for an unknown calendar year)."""
        received = case.origin.received_at.astimezone(self.tz)
        level = case.urgency.level.value
        code = case.classification.category_code
        policy = self.policy(case)
        case.classification.major = policy == "major" or case.classification.major
        hours = self._rule(code, "respond_hours", level, self.respond_hours[level])
        days = int(self._rule(code, "resolve_days", policy, self.resolve_days[policy]))
        respond_by = received + dt.timedelta(hours=hours)
        start = received.date()
        if days == 0 and received.time() >= self.cutoff:
            start += dt.timedelta(days=1)  # too late to answer today: the next working day
        rule = _rule_text(policy, hours, days)
        calendar = self._calendar_label()
        try:
            last = self.calendar.add_workdays(start, days)
        except CalendarRangeError as exc:
            case.deadlines = Deadlines(respond_by=respond_by, calendar=calendar,
                                       policy=f"{rule} (resolve_by not computed)")
            case.flag("deadline_unknown", str(exc))
            return
        resolve_by = dt.datetime.combine(last, dt.time(23, 59, 59), tzinfo=self.tz)
        unknown = self.calendar.unknown_years(start, last)
        if unknown:  # only possible with the weekday fallback on
            years = ", ".join(map(str, unknown))
            calendar += f" + Monday-Friday estimate for {years}"
            case.flag("deadline_provisional",
                      f"resolve_by counts Monday-Friday in {years}: no holiday schedule known; "
                      f"add it to enrichment.calendar_override")
        case.deadlines = Deadlines(respond_by=respond_by, resolve_by=resolve_by,
                                   calendar=calendar, policy=rule)
